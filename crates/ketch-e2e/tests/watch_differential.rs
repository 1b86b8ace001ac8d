//! Watch differential test over gRPC: a seeded random sequence of KV writes
//! (puts, deletes, range and prefix deletes, multi-op txns, occasional
//! compactions) is applied in lockstep to a reference etcd and to the subject
//! (ketch, see `KETCH_E2E_SUBJECT` in the library docs), while watchers are
//! opened on several bidirectional Watch streams per server at random points:
//! single keys, prefixes, `[key, end)` ranges, from-key and all-keys ranges,
//! empty (refused) ranges; start revision 0 (now), past, exactly compacted,
//! compacted (refused with a compaction cancel) and future; `prev_kv`;
//! NOPUT/NODELETE filters; `progress_notify`; `fragment`; client-chosen
//! `watch_id`s, including one already in use on the stream (refused); cancels
//! of live, compaction-cancelled and unknown watch ids; progress requests.
//!
//! - The seed is printed first; `KETCH_SEED=<n>` replays a run.
//! - `KETCH_WATCH_STEPS=<n>` changes the number of steps (default 400; keep it
//!   below ~900 so that the history stays under etcd's 1,000-revision
//!   catch-up batches).
//!
//! # What is compared
//!
//! Per watcher, the sequence of *items* it received (responses demultiplexed
//! by watch id, in stream order):
//! - its created response, whole (watch id, created, canceled,
//!   cancel_reason, compact_revision, header revision);
//! - every event, whole (type, kv, prev_kv), flattened across responses;
//! - every cancel response, whole (canceled, compact_revision, cancel_reason,
//!   header revision);
//! - any other response, whole.
//!
//! Per stream: progress responses (watch id -1) and responses that belong to
//! no watcher. Headers are compared on `revision` only (`cluster_id`,
//! `member_id` and `raft_term` are cleared).
//!
//! Not compared: how events are split into responses and the header revision
//! of event responses (etcd batches catch-up events, with the revision of the
//! moment it caught up). Instead, on each side separately: a response's header
//! revision is at least the revision of its events, events are in revision
//! order, and the events of one revision are never split across responses
//! (no watcher asks for anything large enough to fragment).
//!
//! # Synchronisation
//!
//! A recorder watcher (all keys, `prev_kv`, from the start) gives etcd's full
//! event history; from it the test knows how many events each watcher must
//! have received by the current revision, and waits for that ("quiescing")
//! before it cancels a watcher or compacts, and at the end. The end is fenced
//! by a progress request on every stream: anything queued before its answer
//! is compared too.
//!
//! Orders that are timing-dependent in etcd 3.4 are avoided, not normalised:
//! - a compaction could cancel a watcher that is still catching up from a
//!   now-compacted revision, and could make etcd drop a `prev_kv` it had not
//!   looked up yet: the test quiesces before every compaction, and a
//!   catching-up watcher with nothing to deliver (no observable signal that
//!   etcd's 100 ms sync loop has moved it) is given [`SYNC_SETTLE`] since its
//!   creation before a compaction above its start revision;
//! - a progress response overtakes queued events in etcd 3.4 (it goes through
//!   a separate control channel): only the list of progress responses per
//!   stream is compared, not their position among events;
//! - a cancel response can overtake undelivered events: watchers are only
//!   cancelled when quiesced;
//! - compaction at C removes the tombstones at C itself, so a watcher from
//!   exactly C does not get the deletes of revision C (its expected event
//!   count accounts for that; the events themselves are compared as usual).
//!   etcd removes them in the background after answering a non-physical
//!   compaction, so every compaction here is `physical`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ketch_e2e::{ClearHeaders, Member, prefix_end, readable, seed, subject_kind};
use ketch_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCancelRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    request_op::Request,
    watch_create_request::FilterType,
    watch_request::RequestUnion,
};
use ketch_proto::mvccpb::{Event, event::EventType};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tonic::transport::Channel;

const KEYS: &[&[u8]] = &[
    b"a", b"a/", b"a/1", b"a/2", b"a/2/x", b"ab", b"b", b"b/1", b"c", b"foo", b"foo/bar", b"foo0", b"k\x00", b"k\xff",
    b"z", b"\xff",
];
const PREFIXES: &[&[u8]] = &[b"a", b"a/", b"a/2", b"b", b"foo", b"foo/", b"k", b"k\xff", b"z", b"\xff"];

/// Watch streams per server.
const STREAMS: usize = 3;
/// How long etcd may take to deliver what the recorder says it must.
const ETCD_WAIT: Duration = Duration::from_secs(10);
/// How long the subject may take to deliver as much as etcd did.
const SUBJECT_WAIT: Duration = Duration::from_secs(5);
/// Age a catching-up watcher with nothing to deliver must reach before a
/// compaction above its start revision (etcd syncs every 100 ms).
const SYNC_SETTLE: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(5);

/// The keys a watcher covers, after etcd's normalisation of the request
/// (empty key = `"\0"`, range end `"\0"` = from the key on).
#[derive(Clone, Debug)]
enum KeyRange {
    Single(Vec<u8>),
    From(Vec<u8>),
    Interval(Vec<u8>, Vec<u8>),
}

impl KeyRange {
    /// `None` for an empty range (`key >= range_end`), which etcd refuses.
    fn of(req: &WatchCreateRequest) -> Option<KeyRange> {
        let key = if req.key.is_empty() { vec![0] } else { req.key.clone() };
        match req.range_end.as_slice() {
            [] => Some(KeyRange::Single(key)),
            [0] => Some(KeyRange::From(key)),
            end if key.as_slice() < end => Some(KeyRange::Interval(key, end.to_vec())),
            _ => None,
        }
    }

    fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(key) => k == key.as_slice(),
            KeyRange::From(key) => k >= key.as_slice(),
            KeyRange::Interval(key, end) => k >= key.as_slice() && k < end.as_slice(),
        }
    }
}

/// What etcd did with a create request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Refused in the created response (duplicate id, empty range).
    Refused,
    /// Accepted, then cancelled because its start revision was compacted.
    Compacted,
    /// Accepted; delivers events.
    Live,
}

struct Watcher {
    stream: usize,
    req: WatchCreateRequest,
    step: usize,
    /// Store revision when it was created.
    created_rev: i64,
    /// Compaction revision when it was created (0 = none).
    compacted_at_creation: i64,
    created_at: Instant,
    range: Option<KeyRange>,
    fate: Fate,
    /// Revision at which the test cancelled it.
    cancelled_at: Option<i64>,
    /// The watch id each side gave it (-1 if refused).
    ids: [i64; 2],
}

impl Watcher {
    fn start(&self) -> i64 {
        if self.req.start_revision == 0 { self.created_rev + 1 } else { self.req.start_revision }
    }

    /// Whether etcd delivers `ev` (from the history) to this watcher, if it
    /// is in its revision window.
    fn wants(&self, ev: &Event) -> bool {
        let kv = ev.kv.as_ref().expect("event without kv");
        let put = ev.r#type == EventType::Put as i32;
        // Compaction at C drops the tombstones at C itself: a watcher from
        // exactly the compaction revision does not see the deletes of it.
        if !put && self.compacted_at_creation > 0 && kv.mod_revision == self.compacted_at_creation {
            return false;
        }
        let filtered = self
            .req
            .filters
            .iter()
            .any(|f| (*f == FilterType::Noput as i32 && put) || (*f == FilterType::Nodelete as i32 && !put));
        !filtered && self.range.as_ref().is_some_and(|r| r.contains(&kv.key))
    }

    fn describe(&self, i: usize) -> String {
        format!(
            "watcher #{i} (stream {}, created at step {} when the store was at revision {}, fate {:?}, \
             cancelled at {:?}, ids etcd={} subject={}): {}",
            self.stream,
            self.step,
            self.created_rev,
            self.fate,
            self.cancelled_at,
            self.ids[0],
            self.ids[1],
            readable(&self.req)
        )
    }
}

#[derive(Default)]
struct Log {
    responses: Vec<WatchResponse>,
    end: Option<String>,
}

struct Stream {
    tx: mpsc::UnboundedSender<WatchRequest>,
    log: Arc<Mutex<Log>>,
}

impl Stream {
    async fn open(member: &Member) -> Stream {
        let mut client = member.watch().await;
        let (tx, rx) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Log::default()));
        let sink = log.clone();
        tokio::spawn(async move {
            let end = match client.watch(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await {
                Err(e) => format!("watch call failed: {e}"),
                Ok(resp) => {
                    let mut stream = resp.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(r)) => sink.lock().expect("log poisoned").responses.push(r),
                            Ok(None) => break "stream ended".to_string(),
                            Err(e) => break format!("stream error: {e}"),
                        }
                    }
                }
            };
            sink.lock().expect("log poisoned").end = Some(end);
        });
        Stream { tx, log }
    }

    fn send(&self, req: RequestUnion) {
        self.tx.send(WatchRequest { request_union: Some(req) }).expect("stream task is gone");
    }

    fn snapshot(&self) -> Vec<WatchResponse> {
        self.log.lock().expect("log poisoned").responses.clone()
    }
}

struct Side {
    name: &'static str,
    member: Member,
    kv: KvClient<Channel>,
    streams: Vec<Stream>,
}

/// Responses of one stream, by watcher (indices into the log).
#[derive(Default)]
struct Demux {
    per: HashMap<usize, Vec<usize>>,
    progress: Vec<usize>,
    stray: Vec<usize>,
}

/// Attributes the responses of one stream: the n-th created response belongs
/// to the n-th watcher created on the stream; any other response with a watch
/// id belongs to the watcher whose created response last carried that id;
/// watch id -1 without anything else is a progress response.
fn demux(log: &[WatchResponse], order: &[usize]) -> Demux {
    let mut d = Demux::default();
    let mut pending: VecDeque<usize> = order.iter().copied().collect();
    let mut active: HashMap<i64, usize> = HashMap::new();
    for (i, r) in log.iter().enumerate() {
        if r.created {
            match pending.pop_front() {
                Some(w) => {
                    d.per.entry(w).or_default().push(i);
                    if !r.canceled {
                        active.insert(r.watch_id, w);
                    }
                }
                None => d.stray.push(i),
            }
        } else if r.watch_id == -1 && !r.canceled && r.events.is_empty() && r.compact_revision == 0 {
            d.progress.push(i);
        } else if let Some(w) = active.get(&r.watch_id) {
            d.per.entry(*w).or_default().push(i);
        } else {
            d.stray.push(i);
        }
    }
    d
}

/// One thing a watcher received.
#[derive(Clone, Debug, PartialEq)]
enum Item {
    Created(WatchResponse),
    Event(Event),
    Cancel(WatchResponse),
    /// No events, not a cancel: a progress notification for this watcher.
    Empty(WatchResponse),
    /// A response with events and other fields set.
    Odd(WatchResponse),
}

fn normalized(r: &WatchResponse) -> WatchResponse {
    let mut r = r.clone();
    r.header.clear_headers();
    r
}

/// The items of one watcher, and violations of the per-side invariants.
fn items(log: &[WatchResponse], idx: &[usize]) -> (Vec<Item>, Vec<String>) {
    let mut items = Vec::new();
    let mut problems = Vec::new();
    // (last revision, fragment flag) of the previous event response.
    let mut prev: Option<(i64, bool)> = None;
    for &i in idx {
        let r = &log[i];
        if r.created {
            items.push(Item::Created(normalized(r)));
        } else if r.events.is_empty() {
            if r.canceled {
                items.push(Item::Cancel(normalized(r)));
            } else {
                items.push(Item::Empty(normalized(r)));
            }
        } else {
            let clean = !r.canceled && r.compact_revision == 0 && r.cancel_reason.is_empty();
            if !clean {
                items.push(Item::Odd(normalized(r)));
                continue;
            }
            let revs: Vec<i64> = r.events.iter().map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision)).collect();
            let (first, last) = (revs[0], revs[revs.len() - 1]);
            if revs.windows(2).any(|w| w[0] > w[1]) {
                problems.push(format!("events out of revision order in one response: {revs:?}"));
            }
            let header_rev = r.header.as_ref().map_or(0, |h| h.revision);
            if header_rev < last {
                problems.push(format!("header revision {header_rev} below its events' revision {last}: {revs:?}"));
            }
            if let Some((prev_last, prev_fragment)) = prev {
                if prev_last > first {
                    problems.push(format!("response with revisions {revs:?} after one ending at {prev_last}"));
                }
                if prev_last == first && !prev_fragment {
                    problems.push(format!(
                        "events of revision {first} split across responses (no fragment flag): {revs:?}"
                    ));
                }
            }
            if r.fragment {
                problems.push(format!("fragment flag set on a small response: {revs:?}"));
            }
            prev = Some((last, r.fragment));
            items.extend(r.events.iter().cloned().map(Item::Event));
        }
    }
    (items, problems)
}

/// Items that count towards "delivered" (created, each event, each cancel).
fn item_count(log: &[WatchResponse], idx: &[usize]) -> usize {
    idx.iter().map(|&i| if log[i].events.is_empty() { 1 } else { log[i].events.len() }).sum()
}

struct Run {
    seed: u64,
    rng: StdRng,
    sides: [Side; 2],
    watchers: Vec<Watcher>,
    /// Watchers per stream, in creation order.
    order: Vec<Vec<usize>>,
    /// Progress requests sent per stream.
    progress_sent: Vec<usize>,
    rev: i64,
    compacted: i64,
    step: usize,
    /// The subject failed to keep up; the run stops and compares.
    stuck: Option<String>,
    /// Counters for the summary.
    stats: HashMap<&'static str, usize>,
}

const ETCD: usize = 0;
const SUBJECT: usize = 1;

impl Run {
    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn key(&mut self) -> Vec<u8> {
        KEYS.choose(&mut self.rng).expect("KEYS is not empty").to_vec()
    }

    fn value(&mut self) -> Vec<u8> {
        match self.rng.random_range(0..10) {
            0 => Vec::new(),
            1 => (0..self.rng.random_range(1..16)).map(|_| self.rng.random::<u8>()).collect(),
            _ => format!("v{}", self.step).into_bytes(),
        }
    }

    fn logs(&self, side: usize) -> Vec<Vec<WatchResponse>> {
        self.sides[side].streams.iter().map(Stream::snapshot).collect()
    }

    /// Items delivered to each watcher so far, on one side.
    fn delivered(&self, side: usize) -> Vec<usize> {
        let logs = self.logs(side);
        let mut out = vec![0; self.watchers.len()];
        for (s, log) in logs.iter().enumerate() {
            let d = demux(log, &self.order[s]);
            for (w, idx) in d.per {
                out[w] = item_count(log, &idx);
            }
        }
        out
    }

    /// etcd's recorder events (watcher 0), flattened.
    fn history(&self) -> Vec<Event> {
        let log = self.sides[ETCD].streams[0].snapshot();
        let d = demux(&log, &self.order[0]);
        d.per.get(&0).map_or_else(Vec::new, |idx| idx.iter().flat_map(|&i| log[i].events.iter().cloned()).collect())
    }

    /// Items etcd must have delivered to watcher `w` by now.
    fn expected_items(&self, w: usize, history: &[Event]) -> usize {
        let wa = &self.watchers[w];
        let cancel = usize::from(wa.cancelled_at.is_some());
        match wa.fate {
            Fate::Refused => 1,
            Fate::Compacted => 2 + cancel,
            Fate::Live => {
                let upper = wa.cancelled_at.unwrap_or(self.rev);
                let events = history
                    .iter()
                    .filter(|e| {
                        let r = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                        r >= wa.start() && r <= upper && wa.wants(e)
                    })
                    .count();
                1 + events + cancel
            }
        }
    }

    /// Waits until etcd delivered everything the recorder says it must, then
    /// until the subject delivered as much. Panics if etcd does not (a test
    /// bug); marks the run stuck if the subject does not.
    async fn quiesce(&mut self) {
        if self.stuck.is_some() {
            return;
        }
        let deadline = Instant::now() + ETCD_WAIT;
        loop {
            let h = self.history();
            let last = h.last().and_then(|e| e.kv.as_ref()).map_or(1, |kv| kv.mod_revision);
            if last == self.rev {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "premise: etcd's recorder stopped at revision {last}, store at {} (seed {})",
                self.rev,
                self.seed
            );
            tokio::time::sleep(POLL).await;
        }
        let history = self.history();
        let want: Vec<usize> = (0..self.watchers.len()).map(|w| self.expected_items(w, &history)).collect();
        loop {
            let got = self.delivered(ETCD);
            if got.iter().zip(&want).all(|(g, w)| g >= w) {
                break;
            }
            if Instant::now() >= deadline {
                let late: Vec<String> = (0..want.len())
                    .filter(|&w| got[w] < want[w])
                    .map(|w| format!("{} got {} of {} items", self.watchers[w].describe(w), got[w], want[w]))
                    .collect();
                panic!("premise: etcd did not deliver (seed {}):\n{}", self.seed, late.join("\n"));
            }
            tokio::time::sleep(POLL).await;
        }
        let want = self.delivered(ETCD);
        let deadline = Instant::now() + SUBJECT_WAIT;
        loop {
            let got = self.delivered(SUBJECT);
            if got.iter().zip(&want).all(|(g, w)| g >= w) {
                break;
            }
            if Instant::now() >= deadline {
                let late: Vec<String> = (0..want.len())
                    .filter(|&w| got[w] < want[w])
                    .map(|w| format!("{} got {} of etcd's {} items", self.watchers[w].describe(w), got[w], want[w]))
                    .collect();
                self.stuck = Some(format!(
                    "at step {} the subject did not deliver as much as etcd within {SUBJECT_WAIT:?}:\n{}",
                    self.step,
                    late.join("\n")
                ));
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sends the same request to both servers; panics if the outcomes differ
    /// (the KV itself is covered by `differential.rs`; here lockstep matters).
    async fn write(&mut self, req: Request) {
        let mut outcomes = Vec::new();
        for side in &mut self.sides {
            let kv = &mut side.kv;
            let out = match req.clone() {
                Request::RequestPut(r) => kv.put(r).await.map(|r| r.into_inner().header),
                Request::RequestDeleteRange(r) => kv.delete_range(r).await.map(|r| r.into_inner().header),
                Request::RequestTxn(r) => kv.txn(r).await.map(|r| r.into_inner().header),
                Request::RequestRange(_) => unreachable!("reads are not generated"),
            };
            outcomes.push(out.map(|h| h.map_or(0, |h| h.revision)).map_err(|s| (s.code(), s.message().to_string())));
        }
        assert_eq!(
            outcomes[0],
            outcomes[1],
            "write outcomes differ at step {} (seed {}): {}",
            self.step,
            self.seed,
            readable(&req)
        );
        if let Ok(rev) = outcomes[0] {
            assert!(rev >= self.rev, "revision went back");
            self.rev = rev;
        }
    }

    async fn random_write(&mut self) {
        let req = match self.rng.random_range(0..100) {
            0..45 => {
                self.count("put");
                let key = self.key();
                let value = self.value();
                Request::RequestPut(PutRequest { key, value, ..Default::default() })
            }
            45..60 => {
                self.count("delete key");
                Request::RequestDeleteRange(DeleteRangeRequest { key: self.key(), ..Default::default() })
            }
            60..72 => {
                self.count("delete range");
                let (key, range_end) = match self.rng.random_range(0..3) {
                    0 => {
                        let p = PREFIXES.choose(&mut self.rng).expect("PREFIXES is not empty").to_vec();
                        let end = prefix_end(&p);
                        (p, end)
                    }
                    1 => (self.key(), vec![0]),
                    _ => {
                        let (a, b) = (self.key(), self.key());
                        (a.clone().min(b.clone()), a.max(b))
                    }
                };
                Request::RequestDeleteRange(DeleteRangeRequest { key, range_end, ..Default::default() })
            }
            _ => {
                self.count("txn");
                // Distinct keys, so that etcd's duplicate-key check passes.
                let mut keys: Vec<Vec<u8>> = KEYS.iter().map(|k| k.to_vec()).collect();
                keys.shuffle(&mut self.rng);
                let n = self.rng.random_range(1..=5);
                let success = self.txn_branch(&mut keys, n);
                let failure = self.txn_branch(&mut keys, n);
                let compare = Compare {
                    result: CompareResult::Greater as i32,
                    target: CompareTarget::Version as i32,
                    key: self.key(),
                    target_union: Some(TargetUnion::Version(0)),
                    ..Default::default()
                };
                Request::RequestTxn(TxnRequest { compare: vec![compare], success, failure })
            }
        };
        self.write(req).await;
    }

    /// Up to `n` single-key puts and deletes on keys taken from `keys`.
    fn txn_branch(&mut self, keys: &mut Vec<Vec<u8>>, n: usize) -> Vec<RequestOp> {
        let mut ops = Vec::new();
        for _ in 0..n {
            let Some(key) = keys.pop() else { break };
            let request = if self.rng.random_bool(0.7) {
                Request::RequestPut(PutRequest { key, value: self.value(), ..Default::default() })
            } else {
                Request::RequestDeleteRange(DeleteRangeRequest { key, ..Default::default() })
            };
            ops.push(RequestOp { request: Some(request) });
        }
        ops
    }

    fn watch_request(&mut self, stream: usize) -> WatchCreateRequest {
        let rng = &mut self.rng;
        let (key, range_end) = match rng.random_range(0..100) {
            0..30 => (KEYS.choose(rng).expect("KEYS").to_vec(), Vec::new()),
            30..55 => {
                let p = PREFIXES.choose(rng).expect("PREFIXES").to_vec();
                let end = prefix_end(&p);
                (p, end)
            }
            55..65 => (KEYS.choose(rng).expect("KEYS").to_vec(), vec![0]),
            65..72 => (vec![0], vec![0]),
            72..77 => (Vec::new(), vec![0]),
            77..80 => (Vec::new(), Vec::new()),
            80..92 => {
                let (a, b) = (KEYS.choose(rng).expect("KEYS").to_vec(), KEYS.choose(rng).expect("KEYS").to_vec());
                if a == b { (a, prefix_end(&b)) } else { (a.clone().min(b.clone()), a.max(b)) }
            }
            _ => {
                // Empty range: refused.
                let (a, b) = (KEYS.choose(rng).expect("KEYS").to_vec(), KEYS.choose(rng).expect("KEYS").to_vec());
                (a.clone().max(b.clone()), a.min(b))
            }
        };
        let (rev, compacted) = (self.rev, self.compacted);
        let start_revision = match rng.random_range(0..100) {
            0..40 => 0,
            40..65 => rng.random_range(compacted.max(1)..=rev),
            65..77 if compacted > 1 => rng.random_range(1..compacted),
            77..82 if compacted > 0 => compacted,
            82..97 => rev + rng.random_range(1..=4),
            _ => rng.random_range(1..=rev),
        };
        let filters = match rng.random_range(0..20) {
            0..14 => vec![],
            14..16 => vec![FilterType::Noput as i32],
            16..18 => vec![FilterType::Nodelete as i32],
            18 => vec![FilterType::Nodelete as i32, FilterType::Noput as i32],
            _ => vec![FilterType::Noput as i32, FilterType::Noput as i32],
        };
        // Ids in use on this stream (etcd's view), to provoke duplicates.
        let in_use: Vec<i64> = self.order[stream]
            .iter()
            .map(|&w| &self.watchers[w])
            .filter(|w| w.fate != Fate::Refused && w.cancelled_at.is_none())
            .map(|w| w.ids[ETCD])
            .collect();
        let rng = &mut self.rng;
        let watch_id = match rng.random_range(0..10) {
            0..6 => 0,
            6..8 => rng.random_range(1..=40),
            8 if !in_use.is_empty() => *in_use.choose(rng).expect("not empty"),
            _ => rng.random_range(0..=8),
        };
        WatchCreateRequest {
            key,
            range_end,
            start_revision,
            progress_notify: rng.random_bool(0.2),
            filters,
            prev_kv: rng.random_bool(0.4),
            watch_id,
            fragment: rng.random_bool(0.15),
        }
    }

    /// Sends a create request on `stream` of both sides and waits for both
    /// created responses.
    async fn create(&mut self, stream: usize, req: WatchCreateRequest) {
        let w = self.watchers.len();
        self.watchers.push(Watcher {
            stream,
            range: KeyRange::of(&req),
            req: req.clone(),
            step: self.step,
            created_rev: self.rev,
            compacted_at_creation: self.compacted,
            created_at: Instant::now(),
            fate: Fate::Live,
            cancelled_at: None,
            ids: [i64::MIN; 2],
        });
        self.order[stream].push(w);
        let created_before = self.order[stream].len() - 1;
        for side in &self.sides {
            side.streams[stream].send(RequestUnion::CreateRequest(req.clone()));
        }
        for side in [ETCD, SUBJECT] {
            let deadline = Instant::now() + if side == ETCD { ETCD_WAIT } else { SUBJECT_WAIT };
            loop {
                let log = self.sides[side].streams[stream].snapshot();
                let created: Vec<&WatchResponse> = log.iter().filter(|r| r.created).collect();
                if let Some(r) = created.get(created_before) {
                    self.watchers[w].ids[side] = r.watch_id;
                    if side == ETCD && r.canceled {
                        let reason = if r.cancel_reason.contains("duplicate") {
                            "watch refused: duplicate id"
                        } else if r.cancel_reason.contains("range is empty") {
                            "watch refused: empty range"
                        } else {
                            "watch refused: other"
                        };
                        *self.stats.entry(reason).or_default() += 1;
                    }
                    if side == ETCD {
                        let compacted = req.start_revision > 0 && req.start_revision < self.compacted;
                        self.watchers[w].fate = if r.canceled {
                            Fate::Refused
                        } else if compacted {
                            Fate::Compacted
                        } else {
                            Fate::Live
                        };
                    }
                    break;
                }
                if Instant::now() >= deadline {
                    assert!(side != ETCD, "premise: no created response from etcd for {}", readable(&req));
                    self.stuck = Some(format!(
                        "at step {} no created response from the subject within {SUBJECT_WAIT:?} for {}",
                        self.step,
                        self.watchers[w].describe(w)
                    ));
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        }
        let wa = &self.watchers[w];
        let what = match wa.fate {
            Fate::Refused => return,
            Fate::Compacted => "watch from a compacted revision",
            Fate::Live if wa.req.start_revision == 0 => "watch from now",
            Fate::Live if wa.req.start_revision > wa.created_rev => "watch from a future revision",
            Fate::Live if wa.req.start_revision == wa.compacted_at_creation => "watch from exactly the compaction",
            Fate::Live => "watch from a past revision",
        };
        self.count(what);
    }

    async fn random_cancel(&mut self) {
        let stream = self.rng.random_range(0..STREAMS);
        let candidates: Vec<usize> = self.order[stream]
            .iter()
            .copied()
            .filter(|&w| w != 0 && self.watchers[w].fate != Fate::Refused && self.watchers[w].cancelled_at.is_none())
            // A compaction-cancelled watcher is still known to etcd (its id
            // stays taken) and answers a cancel, but only once its
            // compaction cancel was delivered (quiesce below).
            .collect();
        if candidates.is_empty() || self.rng.random_bool(0.15) {
            // An id nobody has: no answer expected (checked by comparing
            // the stream's stray responses at the end).
            self.count("cancel of an unknown id");
            let id = self.rng.random_range(1000..2000);
            for side in &self.sides {
                side.streams[stream].send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: id }));
            }
            return;
        }
        self.quiesce().await;
        if self.stuck.is_some() {
            return;
        }
        let w = *candidates.choose(&mut self.rng).expect("not empty");
        self.count(if self.watchers[w].fate == Fate::Compacted { "cancel (compacted)" } else { "cancel" });
        self.watchers[w].cancelled_at = Some(self.rev);
        for (side, s) in self.sides.iter().enumerate() {
            let id = self.watchers[w].ids[side];
            s.streams[stream].send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id: id }));
        }
        // The cancel response carries the revision of the moment the server
        // handled it: wait for it before the next write.
        self.quiesce().await;
    }

    async fn compact(&mut self) {
        if self.rev <= self.compacted + 1 {
            return;
        }
        let target = self.rng.random_range(self.compacted + 1..=self.rev);
        self.quiesce().await;
        if self.stuck.is_some() {
            return;
        }
        // Catching-up watchers with nothing to deliver: give etcd's sync
        // loop time to move them before the compaction could cancel them.
        let history = self.history();
        let settle_until = self
            .watchers
            .iter()
            .filter(|w| {
                w.fate == Fate::Live
                    && w.cancelled_at.is_none()
                    && w.req.start_revision > 0
                    && w.req.start_revision <= w.created_rev
                    && w.req.start_revision < target
                    && !history.iter().any(|e| {
                        let r = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                        r >= w.start() && r <= w.created_rev && w.wants(e)
                    })
            })
            .map(|w| w.created_at + SYNC_SETTLE)
            .max();
        if let Some(until) = settle_until {
            let now = Instant::now();
            if until > now {
                self.count("settle before compaction");
                tokio::time::sleep(until - now).await;
            }
        }
        self.count("compaction");
        let mut outcomes = Vec::new();
        for side in &mut self.sides {
            // Physical: etcd removes compacted entries (tombstones at the
            // compaction revision included) in the background; waiting for
            // that keeps what a later watcher from exactly `target` sees
            // deterministic.
            let r = side.kv.compact(CompactionRequest { revision: target, physical: true }).await;
            outcomes
                .push(r.map(|r| r.into_inner().header.map_or(0, |h| h.revision)).map_err(|s| s.message().to_string()));
        }
        assert_eq!(outcomes[0], outcomes[1], "compaction to {target} differs (seed {})", self.seed);
        assert!(outcomes[0].is_ok(), "premise: compaction to {target} failed on etcd: {:?}", outcomes[0]);
        self.compacted = target;
    }

    /// Sends a progress request on each of `streams` and waits for the
    /// answers (they carry the revision of the moment the server handled
    /// the request, so they must arrive before the next write).
    async fn progress_request(&mut self, streams: &[usize]) {
        for &stream in streams {
            self.progress_sent[stream] += 1;
            for side in &self.sides {
                side.streams[stream].send(RequestUnion::ProgressRequest(WatchProgressRequest {}));
            }
        }
        if self.stuck.is_some() {
            return;
        }
        for side in [ETCD, SUBJECT] {
            let deadline = Instant::now() + if side == ETCD { ETCD_WAIT } else { SUBJECT_WAIT };
            loop {
                let done = streams.iter().all(|&s| {
                    let log = self.sides[side].streams[s].snapshot();
                    demux(&log, &self.order[s]).progress.len() >= self.progress_sent[s]
                });
                if done {
                    break;
                }
                if Instant::now() >= deadline {
                    assert!(side != ETCD, "premise: etcd did not answer every progress request");
                    self.stuck.get_or_insert_with(|| {
                        format!("the subject did not answer every progress request within {SUBJECT_WAIT:?}")
                    });
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// Compares everything; returns the mismatches, watchers' in the order
    /// of their creation, then the streams'.
    fn compare(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut per_watcher: Vec<(usize, String)> = Vec::new();
        let logs = [self.logs(ETCD), self.logs(SUBJECT)];
        for side in [ETCD, SUBJECT] {
            for (s, stream) in self.sides[side].streams.iter().enumerate() {
                if let Some(end) = &stream.log.lock().expect("log poisoned").end {
                    let msg = format!("{} stream {s} ended: {end}", self.sides[side].name);
                    assert!(side != ETCD, "premise: {msg}");
                    out.push(msg);
                }
            }
        }
        for (s, order) in self.order.iter().enumerate() {
            let d = [demux(&logs[ETCD][s], order), demux(&logs[SUBJECT][s], order)];
            for &w in order {
                let per = |side: usize| d[side].per.get(&w).cloned().unwrap_or_default();
                let (e_items, e_problems) = items(&logs[ETCD][s], &per(ETCD));
                let (s_items, s_problems) = items(&logs[SUBJECT][s], &per(SUBJECT));
                assert!(
                    e_problems.is_empty(),
                    "premise: etcd broke a watch invariant for {}:\n{}",
                    self.watchers[w].describe(w),
                    e_problems.join("\n")
                );
                if !s_problems.is_empty() {
                    per_watcher.push((
                        w,
                        format!("{}\n  subject: {}", self.watchers[w].describe(w), s_problems.join("\n  subject: ")),
                    ));
                }
                if e_items != s_items {
                    per_watcher
                        .push((w, format!("{}\n{}", self.watchers[w].describe(w), diff_items(&e_items, &s_items))));
                }
            }
            let pick = |side: usize, idx: &[usize]| -> Vec<WatchResponse> {
                idx.iter().map(|&i| normalized(&logs[side][s][i])).collect()
            };
            let (ep, sp) = (pick(ETCD, &d[ETCD].progress), pick(SUBJECT, &d[SUBJECT].progress));
            if ep != sp {
                out.push(format!("stream {s}: progress responses (watch id -1) differ\n{}", diff_items(&ep, &sp)));
            }
            let (es, ss) = (pick(ETCD, &d[ETCD].stray), pick(SUBJECT, &d[SUBJECT].stray));
            if es != ss {
                out.push(format!("stream {s}: responses that belong to no watcher differ\n{}", diff_items(&es, &ss)));
            }
        }
        per_watcher.sort_by_key(|(w, _)| *w);
        let mut all: Vec<String> = per_watcher.into_iter().map(|(_, m)| m).collect();
        all.extend(out);
        all
    }
}

/// The first difference between two lists, with some context.
fn diff_items<T: std::fmt::Debug + PartialEq>(e: &[T], s: &[T]) -> String {
    let first = e.iter().zip(s).position(|(a, b)| a != b).unwrap_or(e.len().min(s.len()));
    let from = first.saturating_sub(2);
    let show = |items: &[T]| -> String {
        items
            .iter()
            .enumerate()
            .skip(from)
            .take(first - from + 4)
            .map(|(i, it)| format!("    [{i}] {}", readable(it)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "  first difference at index {first} (etcd has {}, subject has {}):\n  etcd:\n{}\n  subject:\n{}",
        e.len(),
        s.len(),
        show(e),
        show(s)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_differential() {
    let seed = seed();
    println!("watch differential seed: {seed} (replay with KETCH_SEED={seed})");
    let steps: usize = std::env::var("KETCH_WATCH_STEPS")
        .ok()
        .map(|s| s.parse().expect("KETCH_WATCH_STEPS must be a number"))
        .unwrap_or(400);
    let started = Instant::now();
    let (etcd, subject) = tokio::join!(Member::etcd(), Member::subject());
    let mut sides = Vec::new();
    for (name, member) in [("etcd", etcd), ("subject", subject)] {
        let kv = member.kv().await;
        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            streams.push(Stream::open(&member).await);
        }
        sides.push(Side { name, member, kv, streams });
    }
    let sides: [Side; 2] = sides.try_into().unwrap_or_else(|_| unreachable!("two sides"));
    let mut run = Run {
        seed,
        rng: StdRng::seed_from_u64(seed),
        sides,
        watchers: Vec::new(),
        order: vec![Vec::new(); STREAMS],
        progress_sent: vec![0; STREAMS],
        rev: 1,
        compacted: 0,
        step: 0,
        stuck: None,
        stats: HashMap::new(),
    };
    // Watcher 0: the recorder of etcd's whole history.
    let recorder = WatchCreateRequest { key: vec![0], range_end: vec![0], prev_kv: true, ..Default::default() };
    run.create(0, recorder).await;
    while run.step < steps && run.stuck.is_none() {
        run.step += 1;
        run.random_write().await;
        match run.rng.random_range(0..100) {
            0..14 => {
                let stream = run.rng.random_range(0..STREAMS);
                let req = run.watch_request(stream);
                run.create(stream, req).await;
            }
            14..19 => run.random_cancel().await,
            19..22 => {
                run.count("progress request");
                let stream = run.rng.random_range(0..STREAMS);
                run.progress_request(&[stream]).await;
            }
            22..24 => run.compact().await,
            _ => {}
        }
        for side in &mut run.sides {
            assert!(side.member.is_running(), "{} died at step {} (seed {seed})", side.name, run.step);
        }
    }
    run.quiesce().await;
    // The fence: anything queued before these answers is compared too.
    if run.stuck.is_none() {
        let all: Vec<usize> = (0..STREAMS).collect();
        run.progress_request(&all).await;
    }
    let mut mismatches = run.compare();
    if let Some(stuck) = &run.stuck {
        mismatches.insert(0, stuck.clone());
    }
    let mut stats: Vec<_> = run.stats.iter().collect();
    stats.sort();
    let events = run.history().len();
    println!(
        "{} steps, {} watchers, final revision {}, compacted at {}, {events} events in the history, {:?}\n{stats:?}",
        run.step,
        run.watchers.len(),
        run.rev,
        run.compacted,
        started.elapsed()
    );
    assert!(
        mismatches.is_empty(),
        "{} watch mismatch(es) between etcd and {} (seed {seed}, replay with KETCH_SEED={seed}; first one first):\n\n{}",
        mismatches.len(),
        subject_kind().as_str(),
        mismatches.join("\n\n")
    );
}
