//! What can go wrong, in the terms a caller acts on.
//!
//! Three outcomes of a request must stay apart, because callers react to
//! them differently:
//!
//! - the server answered with an error ([`Error::Server`], carrying etcd's
//!   gRPC code and exact message, recognised as an [`ErrorKind`] where etcd
//!   defines one): the request did not take effect;
//! - no endpoint could serve the request ([`Error::Unavailable`]): a read
//!   found no member to answer it, or a write never left this client; either
//!   way nothing happened;
//! - a write was sent and no definite answer came back
//!   ([`Error::OutcomeUnknown`]): it may or may not have been applied, and
//!   only the caller can find out (for example by reading the key back).
//!   The client never re-sends such a write on its own.

use tonic::Code;

/// Result of a client operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error answered by an etcd server: the gRPC status code and etcd's
/// message, byte for byte (e.g. `etcdserver: mvcc: required revision has
/// been compacted`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct EtcdError {
    code: Code,
    message: String,
}

impl EtcdError {
    /// An error with this gRPC code and message.
    pub fn new(code: Code, message: impl Into<String>) -> EtcdError {
        EtcdError { code, message: message.into() }
    }

    /// The gRPC status code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The server's message, e.g. `etcdserver: requested lease not found`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Which of etcd's well-known errors this is, recognised by its exact
    /// message as etcd's own client does (`rpctypes.Error`); `None` for any
    /// other message.
    pub fn kind(&self) -> Option<ErrorKind> {
        ErrorKind::from_message(&self.message)
    }
}

impl From<&tonic::Status> for EtcdError {
    fn from(status: &tonic::Status) -> EtcdError {
        EtcdError::new(status.code(), status.message())
    }
}

/// etcd's well-known server errors (`api/v3rpc/rpctypes/error.go`), each
/// identified by its exact message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `etcdserver: key is not provided`
    EmptyKey,
    /// `etcdserver: key not found` (a put with `ignore_value`/`ignore_lease` on a missing key)
    KeyNotFound,
    /// `etcdserver: value is provided`
    ValueProvided,
    /// `etcdserver: lease is provided`
    LeaseProvided,
    /// `etcdserver: too many operations in txn request`
    TooManyOps,
    /// `etcdserver: duplicate key given in txn request`
    DuplicateKey,
    /// `etcdserver: mvcc: required revision has been compacted`
    Compacted,
    /// `etcdserver: mvcc: required revision is a future revision`
    FutureRevision,
    /// `etcdserver: mvcc: database space exceeded`
    NoSpace,
    /// `etcdserver: requested lease not found`
    LeaseNotFound,
    /// `etcdserver: lease already exists`
    LeaseExists,
    /// `etcdserver: too large lease TTL`
    LeaseTtlTooLarge,
    /// `etcdserver: member ID already exist`
    MemberExists,
    /// `etcdserver: Peer URLs already exists`
    PeerUrlExists,
    /// `etcdserver: re-configuration failed due to not enough started members`
    MemberNotEnoughStarted,
    /// `etcdserver: given member URLs are invalid`
    MemberBadUrls,
    /// `etcdserver: member not found`
    MemberNotFound,
    /// `etcdserver: can only promote a learner member`
    MemberNotLearner,
    /// `etcdserver: can only promote a learner member which is in sync with leader`
    LearnerNotReady,
    /// `etcdserver: too many learner members in cluster`
    TooManyLearners,
    /// `etcdserver: request is too large`
    RequestTooLarge,
    /// `etcdserver: too many requests`
    TooManyRequests,
    /// `etcdserver: no leader`
    NoLeader,
    /// `etcdserver: not leader`
    NotLeader,
    /// `etcdserver: leader changed`
    LeaderChanged,
    /// `etcdserver: not capable`
    NotCapable,
    /// `etcdserver: server stopped`
    Stopped,
    /// `etcdserver: request timed out`
    Timeout,
    /// `etcdserver: request timed out, possibly due to previous leader failure`
    TimeoutDueToLeaderFail,
    /// `etcdserver: request timed out, possibly due to connection lost`
    TimeoutDueToConnectionLost,
    /// `etcdserver: unhealthy cluster`
    Unhealthy,
    /// `etcdserver: corrupt cluster`
    Corrupt,
    /// `etcdserver: rpc not supported for learner`
    NotSupportedForLearner,
    /// `etcdserver: bad leader transferee`
    BadLeaderTransferee,
    /// `etcdserver: permission denied`
    PermissionDenied,
    /// `etcdserver: invalid auth token`
    InvalidAuthToken,
    /// `etcdserver: root user does not exist` (enabling auth without a `root` user)
    RootUserNotExist,
    /// `etcdserver: root user does not have root role`
    RootRoleNotExist,
    /// `etcdserver: user name already exists`
    UserAlreadyExists,
    /// `etcdserver: user name is empty` (also: a request without a token
    /// while authentication is enabled)
    UserEmpty,
    /// `etcdserver: user name not found`
    UserNotFound,
    /// `etcdserver: role name already exists`
    RoleAlreadyExists,
    /// `etcdserver: role name not found`
    RoleNotFound,
    /// `etcdserver: role name is empty`
    RoleEmpty,
    /// `etcdserver: authentication failed, invalid user ID or password`
    AuthFailed,
    /// `etcdserver: role is not granted to the user`
    RoleNotGranted,
    /// `etcdserver: permission is not granted to the role`
    PermissionNotGranted,
    /// `etcdserver: authentication is not enabled`
    AuthNotEnabled,
    /// `etcdserver: invalid auth management`
    InvalidAuthMgmt,
}

/// Every [`ErrorKind`] with its message, for both directions of the lookup.
const KINDS: &[(ErrorKind, &str)] = &[
    (ErrorKind::EmptyKey, "etcdserver: key is not provided"),
    (ErrorKind::KeyNotFound, "etcdserver: key not found"),
    (ErrorKind::ValueProvided, "etcdserver: value is provided"),
    (ErrorKind::LeaseProvided, "etcdserver: lease is provided"),
    (ErrorKind::TooManyOps, "etcdserver: too many operations in txn request"),
    (ErrorKind::DuplicateKey, "etcdserver: duplicate key given in txn request"),
    (ErrorKind::Compacted, "etcdserver: mvcc: required revision has been compacted"),
    (ErrorKind::FutureRevision, "etcdserver: mvcc: required revision is a future revision"),
    (ErrorKind::NoSpace, "etcdserver: mvcc: database space exceeded"),
    (ErrorKind::LeaseNotFound, "etcdserver: requested lease not found"),
    (ErrorKind::LeaseExists, "etcdserver: lease already exists"),
    (ErrorKind::LeaseTtlTooLarge, "etcdserver: too large lease TTL"),
    (ErrorKind::MemberExists, "etcdserver: member ID already exist"),
    (ErrorKind::PeerUrlExists, "etcdserver: Peer URLs already exists"),
    (ErrorKind::MemberNotEnoughStarted, "etcdserver: re-configuration failed due to not enough started members"),
    (ErrorKind::MemberBadUrls, "etcdserver: given member URLs are invalid"),
    (ErrorKind::MemberNotFound, "etcdserver: member not found"),
    (ErrorKind::MemberNotLearner, "etcdserver: can only promote a learner member"),
    (ErrorKind::LearnerNotReady, "etcdserver: can only promote a learner member which is in sync with leader"),
    (ErrorKind::TooManyLearners, "etcdserver: too many learner members in cluster"),
    (ErrorKind::RequestTooLarge, "etcdserver: request is too large"),
    (ErrorKind::TooManyRequests, "etcdserver: too many requests"),
    (ErrorKind::NoLeader, "etcdserver: no leader"),
    (ErrorKind::NotLeader, "etcdserver: not leader"),
    (ErrorKind::LeaderChanged, "etcdserver: leader changed"),
    (ErrorKind::NotCapable, "etcdserver: not capable"),
    (ErrorKind::Stopped, "etcdserver: server stopped"),
    (ErrorKind::Timeout, "etcdserver: request timed out"),
    (ErrorKind::TimeoutDueToLeaderFail, "etcdserver: request timed out, possibly due to previous leader failure"),
    (ErrorKind::TimeoutDueToConnectionLost, "etcdserver: request timed out, possibly due to connection lost"),
    (ErrorKind::Unhealthy, "etcdserver: unhealthy cluster"),
    (ErrorKind::Corrupt, "etcdserver: corrupt cluster"),
    (ErrorKind::NotSupportedForLearner, "etcdserver: rpc not supported for learner"),
    (ErrorKind::BadLeaderTransferee, "etcdserver: bad leader transferee"),
    (ErrorKind::PermissionDenied, "etcdserver: permission denied"),
    (ErrorKind::InvalidAuthToken, "etcdserver: invalid auth token"),
    (ErrorKind::RootUserNotExist, "etcdserver: root user does not exist"),
    (ErrorKind::RootRoleNotExist, "etcdserver: root user does not have root role"),
    (ErrorKind::UserAlreadyExists, "etcdserver: user name already exists"),
    (ErrorKind::UserEmpty, "etcdserver: user name is empty"),
    (ErrorKind::UserNotFound, "etcdserver: user name not found"),
    (ErrorKind::RoleAlreadyExists, "etcdserver: role name already exists"),
    (ErrorKind::RoleNotFound, "etcdserver: role name not found"),
    (ErrorKind::RoleEmpty, "etcdserver: role name is empty"),
    (ErrorKind::AuthFailed, "etcdserver: authentication failed, invalid user ID or password"),
    (ErrorKind::RoleNotGranted, "etcdserver: role is not granted to the user"),
    (ErrorKind::PermissionNotGranted, "etcdserver: permission is not granted to the role"),
    (ErrorKind::AuthNotEnabled, "etcdserver: authentication is not enabled"),
    (ErrorKind::InvalidAuthMgmt, "etcdserver: invalid auth management"),
];

impl ErrorKind {
    /// The kind whose message is exactly `message`.
    pub fn from_message(message: &str) -> Option<ErrorKind> {
        KINDS.iter().find(|(_, m)| *m == message).map(|(k, _)| *k)
    }

    /// etcd's exact message for this kind.
    pub fn message(self) -> &'static str {
        KINDS.iter().find(|(k, _)| *k == self).map_or("", |(_, m)| m)
    }
}

/// Any failure of a client operation.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`crate::Client::connect`] was given no endpoint.
    #[error("no endpoints given")]
    NoEndpoints,

    /// An endpoint could not be parsed (expected `host:port` or
    /// `http://host:port`).
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An argument was rejected before anything was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The TLS options could not be used (a certificate or key that does
    /// not parse, a key that is not the certificate's, ...).
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),

    /// DNS SRV discovery of the endpoints failed ([`crate::discover_srv`]).
    #[error("{0}")]
    Discovery(Box<crate::srv::DiscoveryError>),

    /// The server answered with an error; the request did not take effect.
    #[error("{0}")]
    Server(#[from] EtcdError),

    /// No endpoint answered within the attempts and the deadline allowed.
    /// Nothing was done: a read found no member to serve it, or a write
    /// never left this client (every attempt failed to connect).
    #[error("{request}: no endpoint could serve the request after {attempts} attempt(s); last failure: {last}")]
    Unavailable {
        /// The RPC, e.g. `KV.Range`.
        request: &'static str,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's failure.
        last: String,
    },

    /// A write was sent to `endpoint` but no definite answer came back (the
    /// connection broke, the server answered `Unavailable`, or the deadline
    /// passed): it may or may not have been applied. The client does not
    /// re-send it; read the state back to find out.
    #[error("{request} on {endpoint}: outcome unknown, the request may or may not have been applied: {cause}")]
    OutcomeUnknown {
        /// The RPC, e.g. `KV.Put`.
        request: &'static str,
        /// The endpoint the request was sent to.
        endpoint: String,
        /// What happened instead of an answer.
        cause: String,
    },

    /// A watch could not start or resume because its revision has been
    /// compacted away; the caller must re-read the state and watch again.
    #[error("watch: required revision has been compacted (compact revision {compact_revision})")]
    Compacted {
        /// The server's compaction revision at that time.
        compact_revision: i64,
    },

    /// The server canceled a watch for a reason other than compaction.
    #[error("watch canceled by the server: {reason}")]
    WatchCanceled {
        /// The server's `cancel_reason`.
        reason: String,
    },

    /// The lease is gone: the server reported it expired or unknown, or no
    /// renewal succeeded before its TTL ran out.
    #[error("lease {id:x} expired or not found")]
    LeaseExpired {
        /// The lease ID.
        id: i64,
    },

    /// A concurrency session's lease is gone (see [`Error::LeaseExpired`]).
    #[error("session expired")]
    SessionExpired,

    /// [`crate::concurrency::Election::proclaim`] (or a campaign) found that
    /// this election is not led by the caller.
    #[error("election: not leader")]
    ElectionNotLeader,

    /// [`crate::concurrency::Election::leader`] found no leader.
    #[error("election: no leader")]
    ElectionNoLeader,

    /// The watcher, keep-alive or stream was closed, or the client dropped.
    #[error("closed")]
    Closed,
}

impl From<crate::srv::DiscoveryError> for Error {
    fn from(e: crate::srv::DiscoveryError) -> Error {
        Error::Discovery(Box::new(e))
    }
}

impl Error {
    /// The server's error, if the server answered with one.
    pub fn etcd(&self) -> Option<&EtcdError> {
        match self {
            Error::Server(e) => Some(e),
            _ => None,
        }
    }

    /// The well-known etcd error kind of a server answer.
    pub fn kind(&self) -> Option<ErrorKind> {
        self.etcd().and_then(EtcdError::kind)
    }

    /// The gRPC code of a server answer.
    pub fn code(&self) -> Option<Code> {
        self.etcd().map(EtcdError::code)
    }

    /// Whether a revision asked for has been compacted: a read or compaction
    /// answered `ErrCompacted`, or a watch start or resume point was
    /// compacted.
    pub fn is_compacted(&self) -> bool {
        matches!(self, Error::Compacted { .. }) || self.kind() == Some(ErrorKind::Compacted)
    }

    /// Whether this is [`Error::OutcomeUnknown`]: a write that may or may not
    /// have been applied.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }

    /// Whether the lease (or the session built on it) is gone, as reported
    /// by [`Error::LeaseExpired`], [`Error::SessionExpired`] or the server's
    /// `requested lease not found`.
    pub fn is_lease_gone(&self) -> bool {
        matches!(self, Error::LeaseExpired { .. } | Error::SessionExpired)
            || self.kind() == Some(ErrorKind::LeaseNotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_messages() {
        for (kind, message) in KINDS {
            assert_eq!(ErrorKind::from_message(message), Some(*kind));
            assert_eq!(kind.message(), *message);
        }
        assert_eq!(ErrorKind::from_message("etcdserver: something else"), None);
    }

    #[test]
    fn server_errors_expose_code_message_and_kind() {
        let e = Error::Server(EtcdError::new(Code::OutOfRange, ErrorKind::Compacted.message()));
        assert_eq!(e.code(), Some(Code::OutOfRange));
        assert_eq!(e.kind(), Some(ErrorKind::Compacted));
        assert!(e.is_compacted());
        assert!(Error::Compacted { compact_revision: 4 }.is_compacted());
        let gone = Error::Server(EtcdError::new(Code::NotFound, "etcdserver: requested lease not found"));
        assert!(gone.is_lease_gone());
        assert!(!gone.is_outcome_unknown());
        assert_eq!(gone.to_string(), "etcdserver: requested lease not found (NotFound)");
    }
}
