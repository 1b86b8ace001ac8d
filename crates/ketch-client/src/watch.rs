//! The watch API: a [`Watcher`] per watched key or range, resumed across
//! member failures with no gap and no duplicate.
//!
//! Each watcher has its own `Watch` stream (one watch per stream keeps the
//! resume logic simple; HTTP/2 multiplexes the streams over the endpoint's
//! one connection). A task owns the stream and remembers the first revision
//! not yet delivered, `next_rev`:
//!
//! - at creation: the requested start revision, or the creation response's
//!   header revision + 1 when watching "from now";
//! - after events: the last event's mod revision + 1 (etcd never splits one
//!   revision's events over responses, fragments apart, which are
//!   reassembled before delivery);
//! - after a progress notification (no events): its header revision + 1,
//!   which etcd guarantees every future event exceeds.
//!
//! When the stream fails (connection lost, member stopped, `no leader` with
//! [`WatchOptions::require_leader`], keep-alive ping unanswered), the task
//! opens a new stream on the next healthy endpoint with `start_revision =
//! next_rev`, retrying with backoff for as long as the watcher lives.
//! Events below `next_rev` that a server might send again are dropped. A
//! resume point that has been compacted ends the watcher with
//! [`Error::Compacted`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ketch_proto::etcdserverpb::{
    self as pb, ResponseHeader, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
    watch_client::WatchClient, watch_create_request::FilterType, watch_request::RequestUnion,
};
use ketch_proto::mvccpb::Event;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::client::Inner;
use crate::endpoint::Address;
use crate::error::{Error, ErrorKind, Result};
use crate::kv::prefix_range_end;
use crate::retry::{self, Cause, Decision, Failure, Idempotence};

/// Responses queued for the caller before the watch task stops reading the
/// stream (the server then holds back through HTTP/2 flow control).
const RESPONSES_QUEUED_MAX: usize = 16;
/// Requests (progress, cancel) queued on one stream.
const REQUESTS_QUEUED_MAX: usize = 4;

/// Options of [`Watch::watch`] (etcd's `WatchCreateRequest`, plus
/// `require_leader`).
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    range_end: Option<Vec<u8>>,
    prefix: bool,
    from_key: bool,
    start_revision: i64,
    progress_notify: bool,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    require_leader: bool,
}

impl WatchOptions {
    /// The key alone, from now on.
    pub fn new() -> WatchOptions {
        WatchOptions::default()
    }

    /// Watch `[key, end)`.
    pub fn range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.range_end = Some(end.into());
        self
    }

    /// Watch every key that starts with the key (all keys if it is empty).
    pub fn prefix(mut self) -> Self {
        self.prefix = true;
        self
    }

    /// Watch every key `>=` the key.
    pub fn from_key(mut self) -> Self {
        self.from_key = true;
        self
    }

    /// Deliver events from this revision on (inclusive; 0: from now).
    pub fn start_revision(mut self, revision: i64) -> Self {
        self.start_revision = revision;
        self
    }

    /// Ask the server for periodic progress notifications (responses
    /// without events) while there are no events.
    pub fn progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }

    /// Leave out PUT events.
    pub fn no_put(mut self) -> Self {
        self.no_put = true;
        self
    }

    /// Leave out DELETE events.
    pub fn no_delete(mut self) -> Self {
        self.no_delete = true;
        self
    }

    /// Include each event's previous key-value pair.
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// Let the server split very large responses (they are reassembled
    /// before delivery).
    pub fn fragment(mut self) -> Self {
        self.fragment = true;
        self
    }

    /// Send etcd's `hasleader` metadata: a member without a leader refuses
    /// or ends the stream, and the watch moves to another member.
    pub fn require_leader(mut self) -> Self {
        self.require_leader = true;
        self
    }

    fn to_create(&self, key: Vec<u8>) -> WatchCreateRequest {
        let (key, range_end) = match (&self.range_end, self.prefix, self.from_key) {
            (Some(end), _, _) => (key, end.clone()),
            (None, true, _) if key.is_empty() => (vec![0], vec![0]),
            (None, true, _) => {
                let end = prefix_range_end(&key);
                (key, end)
            }
            (None, false, true) if key.is_empty() => (vec![0], vec![0]),
            (None, false, true) => (key, vec![0]),
            (None, false, false) => (key, Vec::new()),
        };
        let mut filters = Vec::new();
        if self.no_put {
            filters.push(FilterType::Noput as i32);
        }
        if self.no_delete {
            filters.push(FilterType::Nodelete as i32);
        }
        WatchCreateRequest {
            key,
            range_end,
            start_revision: self.start_revision,
            progress_notify: self.progress_notify,
            filters,
            prev_kv: self.prev_kv,
            watch_id: 0,
            fragment: self.fragment,
        }
    }
}

/// One delivered watch response: whole revisions of events, or a progress
/// notification (no events).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WatchResponse {
    /// The header; `header.revision` is the store revision the response
    /// reflects (for a progress notification: every later event has a
    /// higher revision).
    pub header: ResponseHeader,
    /// The events, in revision order.
    pub events: Vec<Event>,
}

impl WatchResponse {
    /// Whether this is a progress notification (no events).
    pub fn is_progress_notify(&self) -> bool {
        self.events.is_empty()
    }

    /// `header.revision`.
    pub fn revision(&self) -> i64 {
        self.header.revision
    }
}

/// Where a watcher stands: the first revision not yet delivered, and a
/// response being reassembled from fragments. Pure: fed the server's
/// responses, it says what to deliver.
#[derive(Debug, Default)]
struct Position {
    next_rev: i64,
    fragments: Vec<Event>,
}

impl Position {
    /// After the creation response of a watch asked from `start_revision`.
    fn created(start_revision: i64, header_revision: i64) -> Position {
        let next_rev = if start_revision > 0 { start_revision } else { header_revision + 1 };
        Position { next_rev, fragments: Vec::new() }
    }

    /// Takes one (non-cancel, non-create) response; returns what to deliver.
    fn on_response(&mut self, response: pb::WatchResponse) -> Option<WatchResponse> {
        if response.fragment {
            self.fragments.extend(response.events);
            return None;
        }
        let mut events = std::mem::take(&mut self.fragments);
        events.extend(response.events);
        let header = response.header.unwrap_or_default();
        if events.is_empty() {
            // Progress notification: nothing up to its revision is still to come.
            self.next_rev = self.next_rev.max(header.revision + 1);
            return Some(WatchResponse { header, events });
        }
        let next_rev = self.next_rev;
        let before = events.len();
        events.retain(|e| e.kv.as_ref().is_none_or(|kv| kv.mod_revision >= next_rev));
        if events.len() < before {
            tracing::debug!(dropped = before - events.len(), next_rev, "dropped events delivered before");
        }
        let last = events.iter().rev().find_map(|e| e.kv.as_ref().map(|kv| kv.mod_revision))?;
        self.next_rev = self.next_rev.max(last + 1);
        Some(WatchResponse { header, events })
    }
}

/// The watch API of a [`crate::Client`].
#[derive(Clone)]
pub struct Watch {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    pub(crate) fn new(inner: Arc<Inner>) -> Watch {
        Watch { inner }
    }

    /// Starts watching `key` (or the range the options give) and returns
    /// once the server has created the watch: every change after
    /// [`Watcher::created_revision`] (or from the start revision) will be
    /// delivered. Fails over like a read while creating.
    pub async fn watch(&self, key: impl Into<Vec<u8>>, options: WatchOptions) -> Result<Watcher> {
        let create = options.to_create(key.into());
        let deadline = Instant::now() + self.inner.options.request_timeout;
        let policy = self.inner.options.retry_policy();
        let mut attempt = 0;
        let (stream, header) = loop {
            attempt += 1;
            let failed = match open(&self.inner, &create, options.require_leader).await {
                Ok(opened) => break opened,
                Err(Opening::Fatal(e)) => return Err(e),
                Err(Opening::Failed(address, failure, cause)) => (address, failure, cause),
            };
            let (address, failure, cause) = failed;
            let jitter = rand::random::<f64>() * 2.0 - 1.0;
            let now = Instant::now().into_std();
            match policy.decide(Idempotence::Immutable, failure, attempt, now, deadline.into_std(), jitter) {
                Decision::RetryAfter(wait) => tokio::time::sleep(wait).await,
                Decision::Stop => {
                    let endpoint = address.map_or_else(String::new, |a| a.to_string());
                    return Err(retry::final_error(
                        "Watch.Watch",
                        Idempotence::Immutable,
                        failure,
                        cause,
                        &endpoint,
                        attempt,
                    ));
                }
            }
        };
        let position = Position::created(create.start_revision, header.revision);
        let (responses_tx, responses) = mpsc::channel(RESPONSES_QUEUED_MAX);
        let (control_tx, control) = mpsc::channel(REQUESTS_QUEUED_MAX);
        let task = WatchTask {
            inner: Arc::clone(&self.inner),
            create,
            require_leader: options.require_leader,
            position,
            out: responses_tx,
            control,
        };
        let task = tokio::spawn(task.run(stream));
        Ok(Watcher { responses, control: control_tx, task, header })
    }
}

/// What the caller asks of a running watch.
enum Control {
    Progress,
    Cancel(oneshot::Sender<()>),
}

/// A running watch: a stream of [`WatchResponse`]s (see the module docs).
/// Ends with `Ok(None)` after [`Watcher::cancel`], or with one error
/// ([`Error::Compacted`], [`Error::WatchCanceled`], or a server error) after
/// which it yields `None`. Dropping it cancels the watch.
#[derive(Debug)]
pub struct Watcher {
    responses: mpsc::Receiver<Result<WatchResponse>>,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<()>,
    header: ResponseHeader,
}

impl Watcher {
    /// The next response; `Ok(None)` once the watch is over.
    pub async fn message(&mut self) -> Result<Option<WatchResponse>> {
        self.responses.recv().await.transpose()
    }

    /// The header of the server's creation response: with no start
    /// revision, events after `header.revision` are delivered.
    pub fn created_header(&self) -> &ResponseHeader {
        &self.header
    }

    /// The store revision at creation (see [`Watcher::created_header`]).
    pub fn created_revision(&self) -> i64 {
        self.header.revision
    }

    /// Asks the server for a progress notification (etcd 3.4+); it comes as
    /// a response without events. While the watch is being resumed the
    /// request waits for the new stream.
    pub async fn request_progress(&self) -> Result<()> {
        self.control.send(Control::Progress).await.map_err(|_| Error::Closed)
    }

    /// Cancels the watch on the server (best effort, bounded by the attempt
    /// timeout) and ends the stream; responses not yet read are dropped.
    pub async fn cancel(mut self) -> Result<()> {
        let (done_tx, done) = oneshot::channel();
        if self.control.send(Control::Cancel(done_tx)).await.is_err() {
            return Ok(());
        }
        let _ = done.await;
        self.responses.close();
        Ok(())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl tokio_stream::Stream for Watcher {
    type Item = Result<WatchResponse>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.responses.poll_recv(cx)
    }
}

/// An open watch stream with its one created watch.
struct Open {
    address: Address,
    requests: mpsc::Sender<WatchRequest>,
    incoming: Streaming<pb::WatchResponse>,
    watch_id: i64,
}

/// Why a stream could not be opened.
enum Opening {
    /// Try again elsewhere (endpoint, how it failed, cause).
    Failed(Option<Address>, Failure, Cause),
    /// The watch cannot be created: tell the caller.
    Fatal(Error),
}

/// Opens a stream on the next healthy endpoint and creates the watch;
/// returns it with the creation response's header.
async fn open(
    inner: &Inner,
    create: &WatchCreateRequest,
    require_leader: bool,
) -> std::result::Result<(Open, ResponseHeader), Opening> {
    let (address, channel) = inner.pick().map_err(|_| Opening::Failed(None, Failure::NotSent, Cause::StreamEnded))?;
    let failed = |failure: Failure, cause: Cause| {
        inner.report(&address, failure);
        Opening::Failed(Some(address.clone()), failure, cause)
    };
    let (requests, outgoing) = mpsc::channel(REQUESTS_QUEUED_MAX);
    let message = WatchRequest { request_union: Some(RequestUnion::CreateRequest(create.clone())) };
    if requests.send(message).await.is_err() {
        return Err(failed(Failure::NotSent, Cause::StreamEnded));
    }
    let limit = inner.options.attempt_timeout;
    let sent_token = inner.token.as_ref().map(crate::auth::TokenState::current);
    let request = inner.request(ReceiverStream::new(outgoing), None, require_leader);
    let deadline = Instant::now() + limit;
    let mut incoming = match tokio::time::timeout_at(deadline, WatchClient::new(channel).watch(request)).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return Err(failed(retry::classify(&status), Cause::of(&status))),
        Err(_) => return Err(failed(Failure::Indefinite, Cause::TimedOut(limit))),
    };
    let created = match tokio::time::timeout_at(deadline, incoming.message()).await {
        Ok(Ok(Some(response))) => response,
        Ok(Ok(None)) => return Err(failed(Failure::Indefinite, Cause::StreamEnded)),
        Ok(Err(status)) => return Err(failed(retry::classify(&status), Cause::of(&status))),
        Err(_) => return Err(failed(Failure::Indefinite, Cause::TimedOut(limit))),
    };
    if !created.created {
        tracing::warn!(%address, "watch stream answered before acknowledging the watch; reopening");
        return Err(failed(Failure::Indefinite, Cause::StreamEnded));
    }
    if created.canceled {
        if let Some((generation, token)) = sent_token
            && crate::auth::watch_refused_token(&created.cancel_reason, token.is_some())
        {
            // The stream's token was refused before the watch was made: a
            // new token, and the watch is made again.
            tracing::debug!(%address, reason = %created.cancel_reason, "watch: authenticating again");
            inner.refresh_token(Some(generation)).await.map_err(Opening::Fatal)?;
            return Err(Opening::Failed(Some(address), Failure::NotSent, Cause::StreamEnded));
        }
        return Err(Opening::Fatal(canceled(&created)));
    }
    inner.report_success(&address);
    let header = created.header.unwrap_or_default();
    Ok((Open { address, requests, incoming, watch_id: created.watch_id }, header))
}

/// The caller's error for a watch the server canceled.
fn canceled(response: &pb::WatchResponse) -> Error {
    if response.compact_revision != 0 {
        return Error::Compacted { compact_revision: response.compact_revision };
    }
    // etcd: a negative start revision is refused with the compaction message.
    if ErrorKind::from_message(&response.cancel_reason) == Some(ErrorKind::Compacted)
        || response.cancel_reason == "mvcc: required revision has been compacted"
    {
        return Error::Compacted { compact_revision: 0 };
    }
    Error::WatchCanceled { reason: response.cancel_reason.clone() }
}

struct WatchTask {
    inner: Arc<Inner>,
    create: WatchCreateRequest,
    require_leader: bool,
    position: Position,
    out: mpsc::Sender<Result<WatchResponse>>,
    control: mpsc::Receiver<Control>,
}

/// How serving one stream ended.
enum StreamEnd {
    /// The watch is over (canceled, fatal error delivered, caller gone).
    Done,
    /// The stream failed; resume elsewhere.
    Broken,
}

impl WatchTask {
    async fn run(mut self, first: Open) {
        let mut stream = first;
        let mut pending_progress = false;
        loop {
            match self.serve(&mut stream, &mut pending_progress).await {
                StreamEnd::Done => return,
                StreamEnd::Broken => {}
            }
            match self.resume(&mut pending_progress).await {
                Some(open) => stream = open,
                None => return,
            }
        }
    }

    /// Delivers the stream's responses until it fails or the watch ends.
    async fn serve(&mut self, stream: &mut Open, pending_progress: &mut bool) -> StreamEnd {
        if std::mem::take(pending_progress) && !send_progress(stream).await {
            *pending_progress = true;
            return StreamEnd::Broken;
        }
        loop {
            tokio::select! {
                message = stream.incoming.message() => {
                    let response = match message {
                        Ok(Some(response)) => response,
                        Ok(None) => {
                            tracing::debug!(address = %stream.address, "watch stream ended; resuming");
                            self.inner.report_failure(&stream.address);
                            return StreamEnd::Broken;
                        }
                        Err(status) => return self.stream_failed(stream, &status).await,
                    };
                    if response.canceled {
                        let _ = self.out.send(Err(canceled(&response))).await;
                        return StreamEnd::Done;
                    }
                    if response.created {
                        continue;
                    }
                    if let Some(delivery) = self.position.on_response(response)
                        && !self.deliver(stream, delivery, pending_progress).await
                    {
                        return StreamEnd::Done;
                    }
                }
                control = self.control.recv() => match control {
                    Some(Control::Progress) => {
                        if !send_progress(stream).await {
                            *pending_progress = true;
                            return StreamEnd::Broken;
                        }
                    }
                    Some(Control::Cancel(done)) => {
                        cancel_on(stream, self.inner.options.attempt_timeout).await;
                        let _ = done.send(());
                        return StreamEnd::Done;
                    }
                    None => return StreamEnd::Done,
                },
            }
        }
    }

    /// Hands a response to the caller, serving control messages while the
    /// caller is slow; false if the watch is over (caller gone or cancel).
    async fn deliver(&mut self, stream: &mut Open, response: WatchResponse, pending_progress: &mut bool) -> bool {
        loop {
            tokio::select! {
                permit = self.out.reserve() => {
                    let Ok(permit) = permit else { return false };
                    permit.send(Ok(response));
                    return true;
                }
                control = self.control.recv() => match control {
                    Some(Control::Progress) => {
                        // A broken stream shows on the next read; ask again then.
                        if !send_progress(stream).await {
                            *pending_progress = true;
                        }
                    }
                    Some(Control::Cancel(done)) => {
                        cancel_on(stream, self.inner.options.attempt_timeout).await;
                        let _ = done.send(());
                        return false;
                    }
                    None => return false,
                },
            }
        }
    }

    async fn stream_failed(&mut self, stream: &Open, status: &tonic::Status) -> StreamEnd {
        let failure = retry::classify(status);
        if failure == Failure::Definite {
            let _ = self.out.send(Err(Error::Server(crate::EtcdError::from(status)))).await;
            return StreamEnd::Done;
        }
        tracing::debug!(
            address = %stream.address, code = ?status.code(), message = status.message(), "watch stream failed; resuming"
        );
        self.inner.report_failure(&stream.address);
        StreamEnd::Broken
    }
}

/// Cancels the watch on the server: best effort, bounded by `limit`.
async fn cancel_on(stream: &mut Open, limit: std::time::Duration) {
    let message = WatchRequest {
        request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: stream.watch_id })),
    };
    if stream.requests.send(message).await.is_err() {
        return;
    }
    let deadline = Instant::now() + limit;
    while let Ok(Ok(Some(response))) = tokio::time::timeout_at(deadline, stream.incoming.message()).await {
        if response.canceled {
            return;
        }
    }
}

impl WatchTask {
    /// Opens a new stream from the first revision not yet delivered, with
    /// backoff, for as long as the caller keeps the watcher. `None` when the
    /// watch is over.
    async fn resume(&mut self, pending_progress: &mut bool) -> Option<Open> {
        let policy = self.inner.options.retry_policy();
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let mut create = self.create.clone();
            create.start_revision = self.position.next_rev;
            // Fragments of a response cut off by the failure come again.
            self.position.fragments.clear();
            let opening = open(&self.inner, &create, self.require_leader);
            let wait = tokio::select! {
                opened = opening => match opened {
                    Ok((open, _)) => {
                        tracing::debug!(address = %open.address, from = create.start_revision, "watch resumed");
                        return Some(open);
                    }
                    Err(Opening::Fatal(e)) => {
                        let _ = self.out.send(Err(e)).await;
                        return None;
                    }
                    Err(Opening::Failed(..)) => {
                        let jitter = 1.0 + retry::BACKOFF_JITTER * (rand::random::<f64>() * 2.0 - 1.0);
                        policy.backoff(attempt).mul_f64(jitter)
                    }
                },
                control = self.control.recv() => {
                    if self.on_control_while_down(control, pending_progress) {
                        continue;
                    }
                    return None;
                }
                _ = self.out.closed() => return None,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                control = self.control.recv() => if !self.on_control_while_down(control, pending_progress) {
                    return None;
                },
                _ = self.out.closed() => return None,
            }
        }
    }

    /// A control message while no stream is open: progress requests wait
    /// for the next stream; a cancel (or a dropped watcher) ends the watch.
    fn on_control_while_down(&mut self, control: Option<Control>, pending_progress: &mut bool) -> bool {
        match control {
            Some(Control::Progress) => {
                *pending_progress = true;
                true
            }
            Some(Control::Cancel(done)) => {
                let _ = done.send(());
                false
            }
            None => false,
        }
    }
}

async fn send_progress(stream: &Open) -> bool {
    let message = WatchRequest { request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})) };
    stream.requests.send(message).await.is_ok()
}

#[cfg(test)]
mod tests {
    use ketch_proto::mvccpb::KeyValue;

    use super::*;

    fn event(key: &str, rev: i64) -> Event {
        Event {
            r#type: 0,
            kv: Some(KeyValue { key: key.into(), mod_revision: rev, ..Default::default() }),
            prev_kv: None,
        }
    }

    fn response(rev: i64, events: Vec<Event>, fragment: bool) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(ResponseHeader { revision: rev, ..Default::default() }),
            events,
            fragment,
            ..Default::default()
        }
    }

    fn revs(r: &WatchResponse) -> Vec<i64> {
        r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect()
    }

    #[test]
    fn the_resume_point_follows_events_and_progress() {
        let mut p = Position::created(0, 10);
        assert_eq!(p.next_rev, 11);
        let d = p.on_response(response(12, vec![event("a", 11), event("b", 11), event("a", 12)], false)).unwrap();
        assert_eq!(revs(&d), vec![11, 11, 12]);
        assert_eq!(p.next_rev, 13);
        let d = p.on_response(response(20, vec![], false)).unwrap();
        assert!(d.is_progress_notify());
        assert_eq!(p.next_rev, 21);
        // A progress notification from a member behind does not move it back.
        p.on_response(response(15, vec![], false));
        assert_eq!(p.next_rev, 21);
        assert_eq!(Position::created(5, 10).next_rev, 5);
    }

    #[test]
    fn events_delivered_before_are_dropped() {
        let mut p = Position::created(0, 10);
        p.on_response(response(12, vec![event("a", 12)], false));
        assert!(p.on_response(response(12, vec![event("a", 11), event("a", 12)], false)).is_none());
        let d = p.on_response(response(13, vec![event("a", 12), event("b", 13)], false)).unwrap();
        assert_eq!(revs(&d), vec![13]);
    }

    #[test]
    fn fragments_are_reassembled() {
        let mut p = Position::created(0, 1);
        assert!(p.on_response(response(3, vec![event("a", 2)], true)).is_none());
        assert!(p.on_response(response(3, vec![event("b", 2)], true)).is_none());
        let d = p.on_response(response(3, vec![event("c", 3)], false)).unwrap();
        assert_eq!(revs(&d), vec![2, 2, 3]);
        assert_eq!(p.next_rev, 4);
    }

    #[test]
    fn create_requests_follow_the_options() {
        let c = WatchOptions::new().prefix().start_revision(4).prev_kv().no_put().fragment().to_create(b"k/".to_vec());
        assert_eq!((c.key, c.range_end), (b"k/".to_vec(), b"k0".to_vec()));
        assert_eq!((c.start_revision, c.prev_kv, c.fragment), (4, true, true));
        assert_eq!(c.filters, vec![FilterType::Noput as i32]);
        let c = WatchOptions::new().from_key().no_delete().to_create(Vec::new());
        assert_eq!((c.key, c.range_end, c.filters), (vec![0], vec![0], vec![FilterType::Nodelete as i32]));
    }

    #[test]
    fn cancellations_map_to_errors() {
        let compacted = pb::WatchResponse { canceled: true, compact_revision: 7, ..Default::default() };
        assert!(matches!(canceled(&compacted), Error::Compacted { compact_revision: 7 }));
        let negative = pb::WatchResponse {
            created: true,
            canceled: true,
            cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
            ..Default::default()
        };
        assert!(canceled(&negative).is_compacted());
        let other = pb::WatchResponse {
            canceled: true,
            cancel_reason: "mvcc: watcher range is empty".into(),
            ..Default::default()
        };
        assert!(matches!(canceled(&other), Error::WatchCanceled { .. }));
    }
}
