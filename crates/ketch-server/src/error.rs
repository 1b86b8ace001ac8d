//! Server errors and the one table that maps them to etcd's gRPC status codes
//! and exact messages (etcd's `rpctypes`). Clients match on the message text, so
//! every string here is etcd's, byte for byte.

use ketch_mvcc::MvccError;
use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// A failure of this member's own storage: not the client's doing.
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl ServerError {
    pub fn code(&self) -> Code {
        use ServerError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey | InvalidSortOption
            | RequestTooLarge => Code::InvalidArgument,
            Compacted | FutureRev => Code::OutOfRange,
            NoSpace | TooManyRequests => Code::ResourceExhausted,
            LeaseNotFound => Code::NotFound,
            LeaseExists => Code::FailedPrecondition,
            LeaseTtlTooLarge => Code::OutOfRange,
            NoLeader | LeaderChanged | Timeout | LeaderTransferTimeout | Stopped => Code::Unavailable,
            NotLeader | BadLeaderTransferee => Code::FailedPrecondition,
            Corrupt => Code::DataLoss,
            Internal(_) => Code::Unknown,
        }
    }
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<MvccError> for ServerError {
    fn from(e: MvccError) -> ServerError {
        match e {
            MvccError::Compacted => ServerError::Compacted,
            MvccError::FutureRev => ServerError::FutureRev,
            other => ServerError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_codes_are_etcds() {
        let s = Status::from(ServerError::Compacted);
        assert_eq!(
            (s.code(), s.message()),
            (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
        );
        let s = Status::from(ServerError::DuplicateKey);
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "etcdserver: duplicate key given in txn request"));
    }
}
