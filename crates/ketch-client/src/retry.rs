//! The retry-safety rule, in one place.
//!
//! etcd's client rule (`client/v3/retry.go`): a request that only reads
//! (Range, a read-only Txn, Status, HashKV, MemberList, LeaseTimeToLive,
//! LeaseLeases, keep-alives, AlarmList, ...) may be sent again to another
//! member whenever an attempt fails for want of a member able to serve it; a
//! request that changes state (Put, DeleteRange, a Txn with writes, Compact,
//! LeaseGrant, LeaseRevoke, member changes, ...) may be sent again only if
//! the failed attempt provably never left this client. Anything else is
//! reported as [`Error::OutcomeUnknown`]: the write may or may not have been
//! applied, and re-sending it could apply it twice.
//!
//! "Provably never left" means the connection to the endpoint could not be
//! made: the request waits for a connection before a single byte of it is
//! written, and a failed dial fails exactly that request with tonic's
//! [`tonic::ConnectError`] in the error's source chain. Everything else that
//! goes wrong after a connection exists (a reset, a broken pipe, an HTTP/2
//! error, a timeout, the server's own `Unavailable` such as `etcdserver:
//! request timed out`) leaves the outcome open.
//!
//! [`classify`] turns an attempt's failure into a [`Failure`];
//! [`RetryPolicy::decide`] turns it, with the attempt count and the deadline,
//! into retry-or-stop; [`final_error`] builds the caller's error. The call
//! loop in `client.rs` only strings these together.

use std::error::Error as StdError;
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use crate::error::{Error, EtcdError};

/// Whether sending a request twice can change the outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Idempotence {
    /// Reads: may be re-sent after any failure of the serving member.
    Immutable,
    /// Writes: re-sent only if the failed attempt never left the client.
    Mutable,
}

/// What a failed attempt says about the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection could not be made: the request was never sent.
    NotSent,
    /// The request may have reached the server, which could not (or did not
    /// say whether it could) serve it: the connection broke, the server
    /// answered `Unavailable` (no leader, leader changed, request timed
    /// out, stopped, learner), the attempt timed out or was cancelled.
    Indefinite,
    /// The server answered with a definite error (invalid argument,
    /// compacted, lease not found, ...): the request took no effect and
    /// another member would answer the same.
    Definite,
}

/// Classifies a failed attempt's status.
pub(crate) fn classify(status: &Status) -> Failure {
    if never_sent(status) {
        return Failure::NotSent;
    }
    // A status with a source was made by this client from a transport error
    // (tonic keeps the error as the source); one decoded from the server's
    // trailers has none.
    if status.source().is_some() {
        return Failure::Indefinite;
    }
    match status.code() {
        // etcd: no leader, leader changed, request timed out, server
        // stopped, not capable, unhealthy, rpc not supported for learner;
        // gRPC: transport closing.
        Code::Unavailable => Failure::Indefinite,
        // The server gave up waiting, or saw the request cancelled: a write
        // may still be applied (etcd's proposal stays in the raft log).
        Code::DeadlineExceeded | Code::Cancelled => Failure::Indefinite,
        // A server error without an etcd mapping (a Go `error` that was not
        // a status) can come after the proposal: not definite.
        Code::Unknown => Failure::Indefinite,
        _ => Failure::Definite,
    }
}

/// Whether the status's source chain holds tonic's [`tonic::ConnectError`]:
/// the dial failed and the request was failed without being written.
pub(crate) fn never_sent(status: &Status) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = status.source();
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Whether a request of this class may be sent again after this failure
/// (attempts and deadline permitting). The safety rule itself.
pub(crate) fn may_retry(idempotence: Idempotence, failure: Failure) -> bool {
    match (failure, idempotence) {
        (Failure::NotSent, _) => true,
        (Failure::Indefinite, Idempotence::Immutable) => true,
        (Failure::Indefinite, Idempotence::Mutable) => false,
        (Failure::Definite, _) => false,
    }
}

/// How one failed attempt ended, for the caller's error.
#[derive(Clone, Debug)]
pub(crate) enum Cause {
    /// The attempt got this status.
    Status(EtcdError),
    /// No answer came within the attempt's time limit.
    TimedOut(Duration),
    /// A stream ended without a status.
    StreamEnded,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Status(e) => write!(f, "{e}"),
            Cause::TimedOut(limit) => write!(f, "no answer within {limit:?}"),
            Cause::StreamEnded => write!(f, "stream ended without a status"),
        }
    }
}

impl Cause {
    /// The cause of a failed attempt with `status`.
    pub(crate) fn of(status: &Status) -> Cause {
        Cause::Status(EtcdError::from(status))
    }
}

/// The caller's error once no further attempt is made.
///
/// A definite server answer is passed through; a request that was never
/// sent (or a read that found no member) is [`Error::Unavailable`]; a write
/// that was sent without a definite answer is [`Error::OutcomeUnknown`].
pub(crate) fn final_error(
    request: &'static str,
    idempotence: Idempotence,
    failure: Failure,
    cause: Cause,
    endpoint: &str,
    attempts: u32,
) -> Error {
    match (failure, idempotence, cause) {
        (Failure::Definite, _, Cause::Status(e)) => Error::Server(e),
        (Failure::Indefinite | Failure::Definite, Idempotence::Mutable, cause) => {
            Error::OutcomeUnknown { request, endpoint: endpoint.to_string(), cause: cause.to_string() }
        }
        (_, _, cause) => Error::Unavailable { request, attempts, last: format!("{endpoint}: {cause}") },
    }
}

/// Bounds on retries: attempts, backoff, deadline.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    /// At most this many attempts per request.
    pub(crate) max_attempts: u32,
    /// Backoff before the second attempt; doubled for each further one.
    pub(crate) backoff: Duration,
    /// Backoff cap.
    pub(crate) backoff_max: Duration,
}

/// Relative jitter applied to every backoff (±10 %, as etcd's client), so
/// that many clients do not retry in lockstep.
pub(crate) const BACKOFF_JITTER: f64 = 0.1;

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Wait this long, then try again (on the next healthy endpoint).
    RetryAfter(Duration),
    /// Give up: report [`final_error`].
    Stop,
}

impl RetryPolicy {
    /// Backoff after the `attempt`-th failed attempt (1-based), before
    /// jitter.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        self.backoff.saturating_mul(1 << doublings).min(self.backoff_max)
    }

    /// Decides after the `attempt`-th attempt failed with `failure`.
    /// `jitter` is a draw in `[-1, 1]` (an input, so that tests are exact).
    pub(crate) fn decide(
        &self,
        idempotence: Idempotence,
        failure: Failure,
        attempt: u32,
        now: Instant,
        deadline: Instant,
        jitter: f64,
    ) -> Decision {
        if !may_retry(idempotence, failure) || attempt >= self.max_attempts {
            return Decision::Stop;
        }
        let base = self.backoff(attempt);
        let wait = base.mul_f64((1.0 + BACKOFF_JITTER * jitter.clamp(-1.0, 1.0)).max(0.0));
        // A retry needs time for the wait and for the attempt itself.
        if now + wait >= deadline {
            return Decision::Stop;
        }
        Decision::RetryAfter(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_refused() -> Status {
        // Exactly what tonic does with a dial failure: the connector's error
        // wrapped in `ConnectError`, turned into a status by `from_error`.
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        Status::from_error(Box::new(tonic::ConnectError(Box::new(io))))
    }

    fn broken_connection() -> Status {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by peer");
        Status::from_error(Box::new(io))
    }

    #[test]
    fn a_failed_dial_is_never_sent() {
        let status = connect_refused();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(classify(&status), Failure::NotSent);
    }

    #[test]
    fn a_failed_dial_deep_in_the_chain_is_never_sent() {
        #[derive(Debug)]
        struct Wrapper(tonic::ConnectError);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "buffered: {}", self.0)
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "dial timed out");
        let status = Status::from_error(Box::new(Wrapper(tonic::ConnectError(Box::new(io)))));
        assert_eq!(classify(&status), Failure::NotSent);
    }

    #[test]
    fn transport_errors_after_connecting_are_indefinite() {
        let status = broken_connection();
        assert_eq!(status.code(), Code::Unknown);
        assert_eq!(classify(&status), Failure::Indefinite);
        // Even with a code that would be definite from a server.
        let mut local = Status::internal("h2 protocol error: stream reset");
        local.set_source(std::sync::Arc::new(std::io::Error::other("reset")));
        assert_eq!(classify(&local), Failure::Indefinite);
    }

    #[test]
    fn server_unavailable_answers_are_indefinite() {
        for message in ["etcdserver: request timed out", "etcdserver: leader changed", "etcdserver: no leader"] {
            assert_eq!(classify(&Status::unavailable(message)), Failure::Indefinite, "{message}");
        }
        assert_eq!(classify(&Status::deadline_exceeded("context deadline exceeded")), Failure::Indefinite);
        assert_eq!(classify(&Status::cancelled("context canceled")), Failure::Indefinite);
        assert_eq!(classify(&Status::unknown("raft: stopped")), Failure::Indefinite);
    }

    #[test]
    fn server_rejections_are_definite() {
        let cases = [
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted"),
            Status::not_found("etcdserver: requested lease not found"),
            Status::invalid_argument("etcdserver: key is not provided"),
            Status::failed_precondition("etcdserver: not leader"),
            Status::resource_exhausted("etcdserver: mvcc: database space exceeded"),
            Status::unimplemented("unknown method"),
            Status::permission_denied("etcdserver: permission denied"),
        ];
        for status in cases {
            assert_eq!(classify(&status), Failure::Definite, "{status:?}");
        }
    }

    #[test]
    fn the_safety_rule() {
        use Failure::*;
        use Idempotence::*;
        assert!(may_retry(Immutable, NotSent));
        assert!(may_retry(Immutable, Indefinite));
        assert!(!may_retry(Immutable, Definite));
        assert!(may_retry(Mutable, NotSent));
        assert!(!may_retry(Mutable, Indefinite), "a write that may have been applied is never re-sent");
        assert!(!may_retry(Mutable, Definite));
    }

    #[test]
    fn final_errors_keep_writes_with_open_outcome_apart() {
        use Failure::*;
        use Idempotence::*;
        let unavailable = EtcdError::new(Code::Unavailable, "etcdserver: request timed out");
        let e = final_error("KV.Put", Mutable, Indefinite, Cause::Status(unavailable.clone()), "h:1", 1);
        assert!(matches!(e, Error::OutcomeUnknown { request: "KV.Put", ref endpoint, .. } if endpoint == "h:1"));
        let e = final_error("KV.Put", Mutable, Indefinite, Cause::TimedOut(Duration::from_secs(1)), "h:1", 1);
        assert!(e.is_outcome_unknown());
        // Never sent: nothing happened, whatever the request.
        let refused = Cause::of(&connect_refused());
        let e = final_error("KV.Put", Mutable, NotSent, refused.clone(), "h:1", 3);
        assert!(matches!(e, Error::Unavailable { attempts: 3, .. }), "{e:?}");
        let e = final_error("KV.Range", Immutable, NotSent, refused, "h:1", 3);
        assert!(matches!(e, Error::Unavailable { .. }));
        let e = final_error("KV.Range", Immutable, Indefinite, Cause::Status(unavailable), "h:1", 5);
        assert!(matches!(e, Error::Unavailable { attempts: 5, .. }));
        // A definite answer is passed through, for reads and writes.
        let compacted = EtcdError::new(Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted");
        let e = final_error("KV.Range", Immutable, Definite, Cause::Status(compacted.clone()), "h:1", 1);
        assert!(e.is_compacted());
        let e = final_error("KV.Compact", Mutable, Definite, Cause::Status(compacted), "h:1", 1);
        assert!(e.is_compacted());
    }

    fn policy() -> RetryPolicy {
        RetryPolicy { max_attempts: 5, backoff: Duration::from_millis(25), backoff_max: Duration::from_millis(150) }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        let got: Vec<u128> = (1..=6).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(got, vec![25, 50, 100, 150, 150, 150]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_millis(150));
    }

    #[test]
    fn decisions_respect_rule_attempts_and_deadline() {
        use Failure::*;
        use Idempotence::*;
        let p = policy();
        let now = Instant::now();
        let far = now + Duration::from_secs(10);
        assert_eq!(p.decide(Immutable, Indefinite, 1, now, far, 0.0), Decision::RetryAfter(Duration::from_millis(25)));
        assert_eq!(p.decide(Mutable, NotSent, 2, now, far, 0.0), Decision::RetryAfter(Duration::from_millis(50)));
        assert_eq!(p.decide(Mutable, Indefinite, 1, now, far, 0.0), Decision::Stop);
        assert_eq!(p.decide(Immutable, Definite, 1, now, far, 0.0), Decision::Stop);
        // Out of attempts.
        assert_eq!(p.decide(Immutable, Indefinite, 5, now, far, 0.0), Decision::Stop);
        // Out of time: the wait would reach the deadline.
        assert_eq!(p.decide(Immutable, Indefinite, 1, now, now + Duration::from_millis(25), 0.0), Decision::Stop);
        // Jitter stays within ±10 %.
        assert_eq!(p.decide(Immutable, Indefinite, 3, now, far, 1.0), Decision::RetryAfter(Duration::from_millis(110)));
        assert_eq!(p.decide(Immutable, Indefinite, 3, now, far, -5.0), Decision::RetryAfter(Duration::from_millis(90)));
    }
}
