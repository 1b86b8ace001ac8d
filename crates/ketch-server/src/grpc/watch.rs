//! `etcdserverpb.Watch`: one task per bidirectional stream, multiplexing that
//! stream's watchers over the [`crate::watch`] hub and the MVCC history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// Field number of `WatchResponse.events`, for sizing fragments.
const WATCH_RESPONSE_EVENTS_TAG: u32 = 11;
const CANCEL_REASON_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
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
        let require_leader = requires_leader(request.metadata());
        if require_leader && self.member.raft_status().leader == 0 {
            return Err(ServerError::NoLeader.into());
        }
        let incoming = request.into_inner();
        let (out, rx) = mpsc::channel(WATCH_RESPONSES_QUEUED_MAX);
        // Subscribe before reading the revision: nothing after it can be missed.
        let published = self.member.watch_hub().subscribe();
        let synced_next = self.member.store().current_revision() + 1;
        let stream = WatchStream {
            member: self.member.clone(),
            out,
            watchers: BTreeMap::new(),
            synced: SyncedIndex::default(),
            unsynced: BTreeSet::new(),
            compacted: BTreeSet::new(),
            synced_next,
            next_auto_id: 0,
            require_leader,
        };
        tokio::spawn(stream.run(incoming, published));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Watcher {
    filter: Filter,
    /// The next revision this watcher owes its client. Meaningful only while
    /// the watcher is unsynced; synced watchers all owe `synced_next`.
    next_rev: i64,
    synced: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
}

/// Finds the synced watchers an event concerns without visiting the others:
/// single-key watchers by key, range watchers by a scan of those alone.
#[derive(Default)]
struct SyncedIndex {
    by_key: HashMap<Vec<u8>, BTreeSet<i64>>,
    ranged: BTreeSet<i64>,
}

impl SyncedIndex {
    fn insert(&mut self, id: i64, filter: &Filter) {
        match filter.range.single_key() {
            Some(k) => {
                self.by_key.entry(k.to_vec()).or_default().insert(id);
            }
            None => {
                self.ranged.insert(id);
            }
        }
    }

    fn remove(&mut self, id: i64, filter: &Filter) {
        match filter.range.single_key() {
            Some(k) => {
                if let Some(ids) = self.by_key.get_mut(k) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.by_key.remove(k);
                    }
                }
            }
            None => {
                self.ranged.remove(&id);
            }
        }
    }
}

/// The client went away: stop serving the stream.
struct Gone;

struct WatchStream {
    member: Member,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    synced: SyncedIndex,
    /// Watchers not in the synced group, so a turn never visits every watcher.
    unsynced: BTreeSet<i64>,
    /// Watchers canceled by compaction: as in etcd, their IDs stay taken until
    /// the client cancels them.
    compacted: BTreeSet<i64>,
    /// The revision the synced watchers owe next: every revision before it has
    /// been delivered to all of them.
    synced_next: i64,
    next_auto_id: i64,
    /// Opened with `hasleader`: ends with "no leader" when the member has had
    /// none for too long.
    require_leader: bool,
}

impl WatchStream {
    async fn run(
        mut self,
        mut incoming: Streaming<WatchRequest>,
        mut published: broadcast::Receiver<Arc<RevisionEvents>>,
    ) {
        let interval = self.member.watch_progress_notify_interval();
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let every = self.member.election_interval();
        let mut leader_check = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            let step = tokio::select! {
                msg = incoming.message() => match msg {
                    Ok(Some(req)) => self.on_request(req).await,
                    Ok(None) | Err(_) => return,
                },
                batch = published.recv() => match batch {
                    Ok(batch) => self.on_revision(&batch).await,
                    // Dropped messages: everyone catches up from history.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.sync_all().await.map(|_| ()),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = progress.tick() => self.on_progress_tick().await,
                _ = leader_check.tick(), if self.require_leader => {
                    if self.member.leader_lost_too_long() {
                        let _ = self.out.send(Err(ServerError::NoLeader.into())).await;
                        return;
                    }
                    Ok(())
                }
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&self, mut resp: WatchResponse) -> Result<(), Gone> {
        // Watch responses carry the revision they were built for, even 0.
        self.member.fill_header_ids(&mut resp.header);
        self.out.send(Ok(resp)).await.map_err(|_| Gone)
    }

    fn response(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            header: Some(ketch_proto::etcdserverpb::ResponseHeader { revision, ..Default::default() }),
            watch_id,
            ..Default::default()
        }
    }

    fn remove(&mut self, id: i64) -> bool {
        match self.watchers.remove(&id) {
            Some(w) => {
                if w.synced {
                    self.synced.remove(id, &w.filter);
                } else {
                    self.unsynced.remove(&id);
                }
                true
            }
            None => false,
        }
    }

    fn id_taken(&self, id: i64) -> bool {
        self.watchers.contains_key(&id) || self.compacted.contains(&id)
    }

    /// Moves every synced watcher to the unsynced side, owing `synced_next`.
    fn unsync_all(&mut self) {
        let synced_next = self.synced_next;
        for (id, w) in self.watchers.iter_mut().filter(|(_, w)| w.synced) {
            w.synced = false;
            w.next_rev = synced_next;
            self.unsynced.insert(*id);
        }
        self.synced = SyncedIndex::default();
    }

    /// Unsynced watchers that owe exactly `synced_next` join the synced group.
    fn join_synced(&mut self) {
        let synced_next = self.synced_next;
        let watchers = &mut self.watchers;
        let synced = &mut self.synced;
        self.unsynced.retain(|id| match watchers.get_mut(id) {
            Some(w) if w.next_rev == synced_next => {
                w.synced = true;
                synced.insert(*id, &w.filter);
                false
            }
            Some(_) => true,
            None => false,
        });
    }

    /// Brings every watcher up to the store's current revision from history and
    /// makes them all synced there; returns that revision.
    async fn sync_all(&mut self) -> Result<i64, Gone> {
        let to = self.member.store().current_revision();
        self.unsync_all();
        self.catch_up(to).await?;
        self.synced_next = self.synced_next.max(to + 1);
        self.join_synced();
        Ok(to)
    }

    async fn on_request(&mut self, req: WatchRequest) -> Result<(), Gone> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                // etcd answers nothing for an unknown watch id.
                if self.remove(c.watch_id) || self.compacted.remove(&c.watch_id) {
                    let rev = self.member.store().current_revision();
                    let resp = WatchResponse { canceled: true, ..self.response(c.watch_id, rev) };
                    self.send(resp).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Answer only once every watcher has been sent all it is owed, so
                // the revision promises that nothing up to it is still coming.
                let rev = self.sync_all().await?;
                self.send(self.response(-1, rev)).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Gone> {
        let rev = self.member.store().current_revision();
        // etcd's order: an empty range first, then the ID.
        let key = if c.key.is_empty() { &[0u8][..] } else { c.key.as_slice() };
        let empty_range = !c.range_end.is_empty() && c.range_end != [0] && key >= c.range_end.as_slice();
        let id = if empty_range {
            Err(CANCEL_REASON_EMPTY_RANGE.to_string())
        } else if c.watch_id == 0 {
            while self.id_taken(self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id += 1;
            Ok(self.next_auto_id - 1)
        } else if self.id_taken(c.watch_id) {
            Err(CANCEL_REASON_DUPLICATE_ID.to_string())
        } else {
            Ok(c.watch_id)
        };
        let id = match id {
            Ok(_) if self.watchers.len() + self.compacted.len() >= WATCHERS_PER_STREAM_MAX => {
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
        let watcher = Watcher {
            filter,
            next_rev,
            synced: false,
            prev_kv: c.prev_kv,
            progress_notify: c.progress_notify,
            fragment: c.fragment,
        };
        self.watchers.insert(id, watcher);
        self.unsynced.insert(id);
        self.send(WatchResponse { created: true, ..self.response(id, rev) }).await?;
        if next_rev <= rev {
            self.catch_up(rev).await?;
        }
        self.join_synced();
        Ok(())
    }

    /// A newly published revision: watchers behind it catch up from history
    /// first; then the synced ones get it from memory, through the index.
    async fn on_revision(&mut self, batch: &RevisionEvents) -> Result<(), Gone> {
        if batch.rev < self.synced_next {
            return Ok(()); // already delivered from history
        }
        if batch.rev > self.synced_next {
            // The broadcast skipped revisions for this stream.
            self.unsync_all();
            self.synced_next = batch.rev;
        }
        if self.unsynced.iter().any(|id| self.watchers.get(id).is_some_and(|w| w.next_rev < batch.rev)) {
            self.catch_up(batch.rev - 1).await?;
        }
        self.join_synced();
        let mut due: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
        for ev in &batch.events {
            let keyed = self.synced.by_key.get(&ev.kv.key).into_iter().flatten();
            for id in keyed.chain(self.synced.ranged.iter()) {
                if let Some(w) = self.watchers.get(id)
                    && w.filter.wants(ev)
                {
                    due.entry(*id).or_default().push(ev.clone());
                }
            }
        }
        self.synced_next = batch.rev + 1;
        for (id, events) in due {
            let Some(w) = self.watchers.get(&id) else { continue };
            let (prev_kv, fragment) = (w.prev_kv, w.fragment);
            let events = self.to_pb_events(events, prev_kv).await?;
            self.send_events(id, batch.rev, events, fragment).await?;
        }
        Ok(())
    }

    /// Brings every unsynced watcher that is behind up to revision `to`, from history.
    async fn catch_up(&mut self, to: i64) -> Result<(), Gone> {
        loop {
            let ids: Vec<i64> = self
                .unsynced
                .iter()
                .filter(|id| self.watchers.get(id).is_some_and(|w| w.next_rev <= to))
                .copied()
                .collect();
            let behind = || ids.iter().filter_map(|id| self.watchers.get(id));
            let Some(from) = behind().map(|w| w.next_rev).min() else {
                return Ok(());
            };
            let want_prev = behind().any(|w| w.prev_kv);
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
            for id in ids {
                let Some(w) = self.watchers.get_mut(&id) else { continue };
                if w.next_rev < compact {
                    self.remove(id);
                    self.compacted.insert(id);
                    // etcd 3.4: the revision is the compaction point, the header
                    // revision 0, and no cancel_reason (clients key on compact_revision).
                    let resp = WatchResponse { canceled: true, compact_revision: compact, ..self.response(id, 0) };
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
        // Synced watchers have everything before `synced_next`.
        let rev = self.synced_next - 1;
        let due: Vec<i64> =
            self.watchers.iter().filter(|(_, w)| w.synced && w.progress_notify).map(|(id, _)| *id).collect();
        for id in due {
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
    /// and the response reaches the request size limit (etcd's `sendFragments`:
    /// each fragment takes events while it stays under the limit, at least one).
    async fn send_events(&self, id: i64, rev: i64, events: Vec<mvccpb::Event>, fragment: bool) -> Result<(), Gone> {
        let whole = WatchResponse { events, ..self.response(id, rev) };
        // etcd's watch server fragments at the request limit plus gRPC's overhead allowance.
        let limit = self.member.max_request_bytes().saturating_add(super::GRPC_OVERHEAD_BYTES);
        if !fragment || whole.encoded_len() < limit || whole.events.len() < 2 {
            return self.send(whole).await;
        }
        let base = WatchResponse { events: Vec::new(), fragment: true, ..whole.clone() }.encoded_len();
        let mut events = whole.events.into_iter().peekable();
        while events.peek().is_some() {
            let mut chunk = Vec::new();
            let mut size = base;
            while let Some(ev) = events.peek() {
                let len = prost::encoding::message::encoded_len(WATCH_RESPONSE_EVENTS_TAG, ev);
                if !chunk.is_empty() && size + len >= limit {
                    break;
                }
                size += len;
                chunk.extend(events.next());
            }
            let more = events.peek().is_some();
            self.send(WatchResponse { events: chunk, fragment: more, ..self.response(id, rev) }).await?;
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
