//! `etcdserverpb.Watch`: one task per bidirectional stream, multiplexing that
//! stream's watchers over the [`crate::watch`] hub and the MVCC history.

use std::collections::BTreeMap;
use std::sync::Arc;

use ketch_mvcc::{Event, EventKind, RangeEnd, RangeOptions};
use ketch_proto::etcdserverpb::watch_create_request::FilterType;
use ketch_proto::etcdserverpb::watch_request::RequestUnion;
use ketch_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse, watch_server::Watch};
use ketch_proto::mvccpb;
use prost::Message as _;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::apply::to_pb_kv;
use crate::error::ServerError;
use crate::member::Member;
use crate::watch::{Filter, KeyRange, RevisionEvents};

/// Responses queued per stream before the stream task waits for the client.
const WATCH_RESPONSES_QUEUED_MAX: usize = 256;
/// Watchers on one stream.
const WATCHERS_PER_STREAM_MAX: usize = 100_000;
/// Events read from history per catch-up step (whole revisions, so maybe a few more).
const CATCH_UP_EVENTS_MAX: usize = 1000;

const CANCEL_REASON_COMPACTED: &str = "mvcc: required revision has been compacted";
const CANCEL_REASON_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

pub struct WatchService {
    member: Member,
}

impl WatchService {
    pub fn new(member: Member) -> WatchService {
        WatchService { member }
    }
}

/// etcd's `WithRequireLeader`: the client asks to be refused when there is no leader.
pub fn requires_leader(md: &tonic::metadata::MetadataMap) -> bool {
    md.get("hasleader").and_then(|v| v.to_str().ok()) == Some("true")
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        if requires_leader(request.metadata()) && self.member.raft_status().leader == 0 {
            return Err(ServerError::NoLeader.into());
        }
        let incoming = request.into_inner();
        let (out, rx) = mpsc::channel(WATCH_RESPONSES_QUEUED_MAX);
        let published = self.member.watch_hub().subscribe();
        let stream = WatchStream { member: self.member.clone(), out, watchers: BTreeMap::new(), next_auto_id: 0 };
        tokio::spawn(stream.run(incoming, published));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Watcher {
    filter: Filter,
    /// The next revision this watcher owes its client.
    next_rev: i64,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
}

/// The client went away: stop serving the stream.
struct Gone;

struct WatchStream {
    member: Member,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_auto_id: i64,
}

impl WatchStream {
    async fn run(
        mut self,
        mut incoming: Streaming<WatchRequest>,
        mut published: broadcast::Receiver<Arc<RevisionEvents>>,
    ) {
        let interval = self.member.watch_progress_notify_interval();
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            let step = tokio::select! {
                msg = incoming.message() => match msg {
                    Ok(Some(req)) => self.on_request(req).await,
                    Ok(None) | Err(_) => return,
                },
                batch = published.recv() => match batch {
                    Ok(batch) => self.on_revision(&batch).await,
                    // Dropped messages: everyone behind catches up from history.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let to = self.member.store().current_revision();
                        self.catch_up(to).await
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = progress.tick() => self.on_progress_tick().await,
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&self, mut resp: WatchResponse) -> Result<(), Gone> {
        self.member.fill_header(&mut resp.header);
        self.out.send(Ok(resp)).await.map_err(|_| Gone)
    }

    fn response(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            header: Some(ketch_proto::etcdserverpb::ResponseHeader { revision, ..Default::default() }),
            watch_id,
            ..Default::default()
        }
    }

    async fn on_request(&mut self, req: WatchRequest) -> Result<(), Gone> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                // etcd answers nothing for an unknown watch id.
                if self.watchers.remove(&c.watch_id).is_some() {
                    let rev = self.member.store().current_revision();
                    let resp = WatchResponse { canceled: true, ..self.response(c.watch_id, rev) };
                    self.send(resp).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Answer only once every watcher has been sent all it is owed, so
                // the revision promises that nothing up to it is still coming.
                let rev = self.member.store().current_revision();
                self.catch_up(rev).await?;
                self.send(self.response(-1, rev)).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Gone> {
        let rev = self.member.store().current_revision();
        let id = if c.watch_id == 0 {
            while self.watchers.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id += 1;
            Ok(self.next_auto_id - 1)
        } else if self.watchers.contains_key(&c.watch_id) {
            Err(CANCEL_REASON_DUPLICATE_ID.to_string())
        } else {
            Ok(c.watch_id)
        };
        let id = match id {
            Ok(_) if self.watchers.len() >= WATCHERS_PER_STREAM_MAX => {
                Err(format!("ketch: a watch stream holds at most {WATCHERS_PER_STREAM_MAX} watchers"))
            }
            other => other,
        };
        let id = match id {
            Ok(id) => id,
            Err(reason) => {
                let resp =
                    WatchResponse { created: true, canceled: true, cancel_reason: reason, ..self.response(-1, rev) };
                return self.send(resp).await;
            }
        };
        let filter = Filter {
            range: KeyRange::new(&c.key, &c.range_end),
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
        };
        let next_rev = if c.start_revision == 0 { rev + 1 } else { c.start_revision };
        let watcher =
            Watcher { filter, next_rev, prev_kv: c.prev_kv, progress_notify: c.progress_notify, fragment: c.fragment };
        self.watchers.insert(id, watcher);
        self.send(WatchResponse { created: true, ..self.response(id, rev) }).await?;
        if next_rev <= rev { self.catch_up(rev).await } else { Ok(()) }
    }

    /// A newly published revision: watchers behind it catch up from history
    /// first; watchers waiting for exactly this revision get it from memory.
    async fn on_revision(&mut self, batch: &RevisionEvents) -> Result<(), Gone> {
        if self.watchers.values().any(|w| w.next_rev < batch.rev) {
            self.catch_up(batch.rev - 1).await?;
        }
        let due: Vec<i64> = self.watchers.iter().filter(|(_, w)| w.next_rev == batch.rev).map(|(id, _)| *id).collect();
        for id in due {
            let Some(w) = self.watchers.get_mut(&id) else { continue };
            w.next_rev = batch.rev + 1;
            let events: Vec<Event> = batch.events.iter().filter(|e| w.filter.wants(e)).cloned().collect();
            if events.is_empty() {
                continue;
            }
            let (prev_kv, fragment) = (w.prev_kv, w.fragment);
            let events = self.to_pb_events(events, prev_kv).await?;
            self.send_events(id, batch.rev, events, fragment).await?;
        }
        Ok(())
    }

    /// Brings every watcher that is behind up to revision `to`, from history.
    async fn catch_up(&mut self, to: i64) -> Result<(), Gone> {
        loop {
            let Some(from) = self.watchers.values().map(|w| w.next_rev).filter(|&r| r <= to).min() else {
                return Ok(());
            };
            let want_prev = self.watchers.values().any(|w| w.next_rev <= to && w.prev_kv);
            let read = self
                .member
                .read(move |view| {
                    let compact = view.compact_rev();
                    let (events, last) = view.events(from.max(compact), to, CATCH_UP_EVENTS_MAX)?;
                    let prevs = if want_prev { events.iter().map(|e| prev_of(view, e)).collect() } else { Vec::new() };
                    Ok((compact, events, last, prevs))
                })
                .await;
            let Ok((compact, events, last, prevs)) = read else {
                // The store is unreadable (the member is stopping): end the stream.
                return Err(Gone);
            };
            let behind: Vec<i64> = self.watchers.iter().filter(|(_, w)| w.next_rev <= to).map(|(id, _)| *id).collect();
            for id in behind {
                let Some(w) = self.watchers.get_mut(&id) else { continue };
                if w.next_rev < compact {
                    self.watchers.remove(&id);
                    let resp = WatchResponse {
                        canceled: true,
                        compact_revision: compact,
                        cancel_reason: CANCEL_REASON_COMPACTED.to_string(),
                        ..self.response(id, 0)
                    };
                    self.send(resp).await?;
                    continue;
                }
                if w.next_rev > last {
                    continue;
                }
                let picked: Vec<mvccpb::Event> = events
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.kv.mod_revision >= w.next_rev && w.filter.wants(e))
                    .map(|(i, e)| pb_event(e.clone(), if w.prev_kv { prevs.get(i).cloned().flatten() } else { None }))
                    .collect();
                w.next_rev = last + 1;
                let fragment = w.fragment;
                if !picked.is_empty() {
                    self.send_events(id, to, picked, fragment).await?;
                }
            }
        }
    }

    async fn on_progress_tick(&mut self) -> Result<(), Gone> {
        let rev = self.member.store().current_revision();
        let synced: Vec<i64> =
            self.watchers.iter().filter(|(_, w)| w.progress_notify && w.next_rev > rev).map(|(id, _)| *id).collect();
        for id in synced {
            self.send(self.response(id, rev)).await?;
        }
        Ok(())
    }

    async fn to_pb_events(&self, events: Vec<Event>, prev_kv: bool) -> Result<Vec<mvccpb::Event>, Gone> {
        if !prev_kv {
            return Ok(events.into_iter().map(|e| pb_event(e, None)).collect());
        }
        let with_prev = move |view: &ketch_mvcc::ReadTxn<'_>| {
            Ok(events.into_iter().map(|e| (prev_of(view, &e), e)).map(|(prev, e)| pb_event(e, prev)).collect())
        };
        // An unreadable store means the member is stopping: end the stream.
        self.member.read(with_prev).await.map_err(|_| Gone)
    }

    /// Sends one watcher's events, split into fragments only if it asked for them
    /// and the response would exceed the request size limit (etcd's rule).
    async fn send_events(&self, id: i64, rev: i64, events: Vec<mvccpb::Event>, fragment: bool) -> Result<(), Gone> {
        let resp = WatchResponse { events, ..self.response(id, rev) };
        let limit = self.member.max_request_bytes();
        if !fragment || resp.encoded_len() <= limit {
            return self.send(resp).await;
        }
        let mut chunks: Vec<Vec<mvccpb::Event>> = Vec::new();
        let mut size = 0;
        for ev in resp.events {
            let len = ev.encoded_len();
            match chunks.last_mut() {
                Some(chunk) if size + len <= limit => chunk.push(ev),
                _ => chunks.push(vec![ev]),
            }
            size = if chunks.last().is_some_and(|c| c.len() == 1) { len } else { size + len };
        }
        let n = chunks.len();
        for (i, events) in chunks.into_iter().enumerate() {
            self.send(WatchResponse { events, fragment: i + 1 < n, ..self.response(id, rev) }).await?;
        }
        Ok(())
    }
}

/// The key's value just before the event (etcd reads it at `mod_revision - 1`;
/// nothing if that is compacted away).
fn prev_of(view: &ketch_mvcc::ReadTxn<'_>, e: &Event) -> Option<mvccpb::KeyValue> {
    let opts = RangeOptions { rev: e.kv.mod_revision - 1, ..Default::default() };
    view.range(&e.kv.key, &RangeEnd::Single, opts).ok()?.kvs.into_iter().next().map(to_pb_kv)
}

fn pb_event(e: Event, prev_kv: Option<mvccpb::KeyValue>) -> mvccpb::Event {
    let r#type = match e.kind {
        EventKind::Put => mvccpb::event::EventType::Put,
        EventKind::Delete => mvccpb::event::EventType::Delete,
    } as i32;
    mvccpb::Event { r#type, kv: Some(to_pb_kv(e.kv)), prev_kv }
}
