//! The lease API, and [`KeepAlive`]: a task that keeps one lease alive
//! across member failures.
//!
//! A keep-alive renews at a third of the TTL the server last granted (as
//! etcd's client does) over a `LeaseKeepAlive` stream. When the stream
//! breaks, or a renewal goes unanswered for the attempt timeout, it opens a
//! new one on the next healthy endpoint and carries on; renewals are
//! idempotent, so any failure may be retried. It ends only when the server
//! says the lease is gone (TTL ≤ 0 or `lease not found`), or when no
//! renewal succeeded before the TTL granted by the last one ran out (counted
//! from when that renewal was sent): after that the lease may have expired,
//! and the holder must stop relying on it.

use std::sync::Arc;
use std::time::Duration;

use ketch_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    lease_client::LeaseClient,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::client::Inner;
use crate::error::{Error, ErrorKind, Result};
use crate::retry::{self, Failure, Idempotence};

/// Shortest pause between renewals, whatever the TTL.
const RENEW_INTERVAL_MIN: Duration = Duration::from_millis(100);

/// The lease API of a [`crate::Client`].
#[derive(Clone)]
pub struct Lease {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

impl Lease {
    pub(crate) fn new(inner: Arc<Inner>) -> Lease {
        Lease { inner }
    }

    /// Grants a lease of `ttl` seconds with an ID the server picks (the
    /// server may raise a short TTL to its minimum). At most once.
    pub async fn grant(&self, ttl: i64) -> Result<LeaseGrantResponse> {
        self.grant_with_id(ttl, 0).await
    }

    /// Grants a lease of `ttl` seconds with ID `id` (0: the server picks).
    /// At most once.
    pub async fn grant_with_id(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse> {
        let request = LeaseGrantRequest { ttl, id };
        let response = self
            .inner
            .unary("Lease.LeaseGrant", Idempotence::Mutable, request, |ch, r| async move {
                LeaseClient::new(ch).lease_grant(r).await
            })
            .await?;
        if !response.error.is_empty() {
            return Err(Error::Server(crate::EtcdError::new(tonic::Code::Unknown, response.error)));
        }
        Ok(response)
    }

    /// Revokes lease `id`, deleting its keys. At most once.
    pub async fn revoke(&self, id: i64) -> Result<LeaseRevokeResponse> {
        self.inner
            .unary("Lease.LeaseRevoke", Idempotence::Mutable, LeaseRevokeRequest { id }, |ch, r| async move {
                LeaseClient::new(ch).lease_revoke(r).await
            })
            .await
    }

    /// Lease `id`'s remaining and granted TTL (remaining -1: gone), and its
    /// keys if `keys`.
    pub async fn time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        let request = LeaseTimeToLiveRequest { id, keys };
        self.inner
            .unary("Lease.LeaseTimeToLive", Idempotence::Immutable, request, |ch, r| async move {
                LeaseClient::new(ch).lease_time_to_live(r).await
            })
            .await
    }

    /// Every live lease's ID.
    pub async fn leases(&self) -> Result<LeaseLeasesResponse> {
        self.inner
            .unary("Lease.LeaseLeases", Idempotence::Immutable, LeaseLeasesRequest {}, |ch, r| async move {
                LeaseClient::new(ch).lease_leases(r).await
            })
            .await
    }

    /// Renews lease `id` once; [`Error::LeaseExpired`] if it is gone.
    pub async fn keep_alive_once(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        let response = self
            .inner
            .unary("Lease.LeaseKeepAlive", Idempotence::Immutable, LeaseKeepAliveRequest { id }, |ch, r| {
                keep_alive_round(ch, r)
            })
            .await
            .map_err(|e| lease_gone(e, id))?;
        if response.ttl <= 0 {
            return Err(Error::LeaseExpired { id });
        }
        Ok(response)
    }

    /// Keeps lease `id` alive until the returned [`KeepAlive`] is dropped
    /// or the lease is gone. Renews once first: fails at once if the lease
    /// does not exist.
    pub async fn keep_alive(&self, id: i64) -> Result<KeepAlive> {
        let sent_at = Instant::now();
        let first = self.keep_alive_once(id).await?;
        let timing = Timing::after_renewal(sent_at, first.ttl);
        let (state_tx, state_rx) = watch::channel(KeepAliveState::Alive { ttl: first.ttl });
        let task = tokio::spawn(keep_alive_task(Arc::clone(&self.inner), id, timing, state_tx));
        Ok(KeepAlive { id, state: state_rx, task })
    }
}

/// One keep-alive round on a fresh stream: send one request, take one
/// answer. The request side stays open until the answer came (a half-close
/// could end the stream before the server answers).
async fn keep_alive_round(
    channel: tonic::transport::Channel,
    request: tonic::Request<LeaseKeepAliveRequest>,
) -> Result<tonic::Response<LeaseKeepAliveResponse>, Status> {
    let (metadata, extensions, message) = request.into_parts();
    let outgoing = tokio_stream::once(message).chain(tokio_stream::pending());
    let request = tonic::Request::from_parts(metadata, extensions, outgoing);
    let (metadata, mut incoming, extensions) = LeaseClient::new(channel).lease_keep_alive(request).await?.into_parts();
    match incoming.message().await? {
        Some(answer) => Ok(tonic::Response::from_parts(metadata, answer, extensions)),
        None => Err(Status::unavailable("the keep-alive stream ended without an answer")),
    }
}

/// `requested lease not found` as [`Error::LeaseExpired`].
fn lease_gone(error: Error, id: i64) -> Error {
    if error.kind() == Some(ErrorKind::LeaseNotFound) { Error::LeaseExpired { id } } else { error }
}

/// What a [`KeepAlive`] knows about its lease.
#[derive(Clone, Debug)]
enum KeepAliveState {
    /// Renewed; the TTL the server last granted.
    Alive { ttl: i64 },
    /// Renewals stopped, for this reason.
    Ended(Error),
}

/// A running keep-alive of one lease (see the module docs). Dropping it
/// stops the renewals; the lease then expires after its TTL unless it is
/// revoked.
#[derive(Debug)]
pub struct KeepAlive {
    id: i64,
    state: watch::Receiver<KeepAliveState>,
    task: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    /// The lease ID.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL the server granted at the last renewal; `None` once the
    /// keep-alive has ended.
    pub fn ttl(&self) -> Option<i64> {
        match &*self.state.borrow() {
            KeepAliveState::Alive { ttl } => Some(*ttl),
            KeepAliveState::Ended(_) => None,
        }
    }

    /// Whether renewals are still going on.
    pub fn is_alive(&self) -> bool {
        self.ttl().is_some()
    }

    /// Waits until the keep-alive ends and returns why, usually
    /// [`Error::LeaseExpired`].
    pub async fn ended(&self) -> Error {
        let mut state = self.state.clone();
        let ended = state.wait_for(|s| matches!(s, KeepAliveState::Ended(_))).await;
        match ended.as_deref() {
            Ok(KeepAliveState::Ended(e)) => e.clone(),
            _ => Error::Closed,
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// When to renew next and until when the lease is known to live.
#[derive(Clone, Copy, Debug)]
struct Timing {
    next_renewal: Instant,
    deadline: Instant,
}

impl Timing {
    /// After a renewal sent at `sent_at` was answered with `ttl` seconds.
    fn after_renewal(sent_at: Instant, ttl: i64) -> Timing {
        let ttl = Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
        Timing { next_renewal: sent_at + (ttl / 3).max(RENEW_INTERVAL_MIN), deadline: sent_at + ttl }
    }
}

async fn keep_alive_task(inner: Arc<Inner>, id: i64, mut timing: Timing, state: watch::Sender<KeepAliveState>) {
    let policy = inner.options.retry_policy();
    let mut failures = 0;
    loop {
        tokio::time::sleep_until(timing.next_renewal).await;
        if Instant::now() >= timing.deadline {
            tracing::warn!(lease = id, "no keep-alive answered before the lease's TTL ran out");
            state.send_replace(KeepAliveState::Ended(Error::LeaseExpired { id }));
            return;
        }
        match keep_alive_stream(&inner, id, &mut timing, &state).await {
            Ok(ended) => {
                state.send_replace(KeepAliveState::Ended(ended));
                return;
            }
            Err(served) => {
                failures = if served { 1 } else { failures + 1 };
            }
        }
        let jitter = 1.0 + retry::BACKOFF_JITTER * (rand::random::<f64>() * 2.0 - 1.0);
        timing.next_renewal = Instant::now() + policy.backoff(failures).mul_f64(jitter);
    }
}

/// Renews over one stream until it fails. `Ok(reason)` when the keep-alive
/// must end; `Err(served)` when the stream failed (`served`: it renewed at
/// least once), to be retried on another endpoint.
async fn keep_alive_stream(
    inner: &Inner,
    id: i64,
    timing: &mut Timing,
    state: &watch::Sender<KeepAliveState>,
) -> std::result::Result<Error, bool> {
    let (address, channel) = inner.pick().map_err(|_| false)?;
    let (requests, outgoing) = mpsc::channel(1);
    let request = inner.request(ReceiverStream::new(outgoing), None, inner.options.require_leader);
    let mut served = false;
    // Queue the first renewal before opening: a server may send the
    // response headers only with the first answer.
    if requests.send(LeaseKeepAliveRequest { id }).await.is_err() {
        return Err(served);
    }
    let mut sent_at = Instant::now();
    let open_limit = inner.options.attempt_timeout.min(timing.deadline.saturating_duration_since(sent_at));
    let opened = tokio::time::timeout(open_limit, LeaseClient::new(channel).lease_keep_alive(request)).await;
    let mut incoming = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return stream_failed(inner, &address, id, &status, served),
        Err(_) => {
            inner.report_failure(&address);
            return Err(served);
        }
    };
    loop {
        let limit = inner.options.attempt_timeout.min(timing.deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(limit, incoming.message()).await {
            Ok(Ok(Some(answer))) if answer.ttl <= 0 => return Ok(Error::LeaseExpired { id }),
            Ok(Ok(Some(answer))) => {
                inner.report_success(&address);
                served = true;
                *timing = Timing::after_renewal(sent_at, answer.ttl);
                state.send_replace(KeepAliveState::Alive { ttl: answer.ttl });
            }
            Ok(Ok(None)) | Err(_) => {
                inner.report_failure(&address);
                return Err(served);
            }
            Ok(Err(status)) => return stream_failed(inner, &address, id, &status, served),
        }
        tokio::time::sleep_until(timing.next_renewal).await;
        if requests.send(LeaseKeepAliveRequest { id }).await.is_err() {
            return Err(served);
        }
        sent_at = Instant::now();
    }
}

/// A keep-alive stream failed with `status`: the lease is gone if the
/// server says so; anything else is retried (renewals are idempotent).
fn stream_failed(
    inner: &Inner,
    address: &crate::endpoint::Address,
    id: i64,
    status: &Status,
    served: bool,
) -> std::result::Result<Error, bool> {
    let failure = retry::classify(status);
    if failure == Failure::Definite && crate::EtcdError::from(status).kind() == Some(ErrorKind::LeaseNotFound) {
        return Ok(Error::LeaseExpired { id });
    }
    tracing::debug!(lease = id, %address, code = ?status.code(), message = status.message(), "keep-alive stream failed");
    // Even a definite answer other than "not found" (e.g. a member that
    // cannot reach the leader) is worth another member's try.
    inner.report_failure(address);
    Err(served)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_come_at_a_third_of_the_ttl_and_the_deadline_at_the_ttl() {
        let t0 = Instant::now();
        let t = Timing::after_renewal(t0, 9);
        assert_eq!(t.next_renewal - t0, Duration::from_secs(3));
        assert_eq!(t.deadline - t0, Duration::from_secs(9));
        let t = Timing::after_renewal(t0, 0);
        assert_eq!((t.next_renewal - t0, t.deadline - t0), (RENEW_INTERVAL_MIN, Duration::ZERO));
    }
}
