//! A recorded client workload for nemesis runs, and the checks run on what
//! it recorded (with `ketch-check`).
//!
//! [`Workload::spawn`] starts `clients` tasks that, until a deadline, send
//! seeded random requests to random members over a small key space: puts of
//! unique values, linearizable gets, single-key deletes and transactions
//! (`if version(k) == <last seen> then put k else get k`), in the
//! proportions of a [`Mix`]. Every request and what its client saw go into a
//! [`Recorder`]'s [`History`]: a timeout or a lost connection is an
//! `Unknown` outcome for a write (it may still apply), a failed read had no
//! effect, and an error that proves a write never applied ([`definite`]) is
//! a definite failure. Clients never retry behind the recorder's back.
//!
//! [`WatchRecorder`] keeps one watch on the workload's prefix open from
//! revision 1, moving to another member (from the last revision it
//! received + 1) whenever its stream breaks; HTTP/2 keepalives notice a
//! member that stopped answering. Every attempt is a [`WatchStream`].
//!
//! After the run: [`read_event_log`] (every event a member holds, read with a
//! watch from revision 1), [`read_final_state`] (the whole keyspace at one
//! revision) and [`check_all`] (per-key linearizability, watch guarantees
//! against the event log, durability of acknowledged writes against both,
//! convergence of the members' `HashKV`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ketch_check::convergence::{MemberDigest, check_convergence};
use ketch_check::durability::{FinalState, check_durability, check_durability_log};
use ketch_check::watch::{WatchResponse, WatchSpec, WatchStream, Watcher, check_watchers};
use ketch_check::{
    CheckConfig, Compare, CompareResult, CompareTarget, Event, EventKind, EventLog, Failure, History, KeyRange,
    KeyValue, OpId, Outcome, PutResult, RangeResult, Request, Response, ResponseBody, Verdict,
    check_linearizable_per_key,
};
use ketch_proto::etcdserverpb::{
    self as pb, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
    compare::TargetUnion, kv_client::KvClient, request_op, response_op, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use ketch_proto::mvccpb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// Relative weights of the request kinds a client sends.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    /// Puts of unique values.
    pub put: u32,
    /// Linearizable single-key gets.
    pub get: u32,
    /// Single-key deletes.
    pub delete: u32,
    /// `if version(k) == v then put k else get k`.
    pub txn: u32,
}

impl Mix {
    /// Half puts, half gets.
    pub const PUT_GET: Mix = Mix { put: 1, get: 1, delete: 0, txn: 0 };
    /// Every kind.
    pub const ALL: Mix = Mix { put: 4, get: 3, delete: 1, txn: 2 };
}

/// What the clients do.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Number of concurrent clients (ids `0..clients`).
    pub clients: u64,
    /// Keys `<prefix><0..keys>`.
    pub keys: u64,
    /// Prefix of every key.
    pub prefix: String,
    /// Request kinds.
    pub mix: Mix,
    /// Bound of each request; past it the outcome is unknown (writes) or a
    /// failure (reads).
    pub op_timeout: Duration,
}

/// Counts of outcomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Answered.
    pub ok: u64,
    /// Definitely failed (reads that failed included).
    pub failed: u64,
    /// Unknown outcome.
    pub unknown: u64,
}

impl Totals {
    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Ok(_) => self.ok += 1,
            Outcome::Err(_) => self.failed += 1,
            Outcome::Unknown => self.unknown += 1,
        }
    }

    fn add(&mut self, other: Totals) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.unknown += other.unknown;
    }
}

/// A shared history, timestamps in microseconds since the recorder was made.
pub struct Recorder {
    start: Instant,
    history: Mutex<History>,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder { start: Instant::now(), history: Mutex::new(History::new()) })
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Time since the recorder was made (the history's time axis).
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `client` sends `request` now.
    pub fn invoke(&self, client: u64, request: Request) -> OpId {
        let at = self.now();
        self.lock().invoke(client, at, request)
    }

    /// Records the outcome of `op` now.
    pub fn complete(&self, op: OpId, outcome: Outcome) {
        let at = self.now();
        self.lock().complete(op, at, outcome);
    }

    /// A copy of the history so far.
    pub fn history(&self) -> History {
        self.lock().clone()
    }
}

/// Operations answered `Ok` per `bucket` of the history's time axis
/// (microseconds since the recorder was made), by return time: how
/// available the store was over the run.
pub fn ok_timeline(history: &History, bucket: Duration) -> Vec<u64> {
    let width = bucket.as_micros().max(1) as u64;
    let mut out: Vec<u64> = Vec::new();
    for (_, op) in history.iter() {
        if matches!(op.outcome, Outcome::Ok(_)) {
            let i = (op.returned_at / width) as usize;
            if out.len() <= i {
                out.resize(i + 1, 0);
            }
            out[i] += 1;
        }
    }
    out
}

/// Errors that prove a write had no effect; anything else may have applied.
/// A failed dial means the request never left; "no leader" and "too many
/// requests" are answered before the request is proposed.
pub fn definite(status: &tonic::Status) -> bool {
    ketch_client::request_never_sent(status)
        || matches!(status.code(), Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange | Code::NotFound)
        || matches!(status.message(), "etcdserver: no leader" | "etcdserver: too many requests")
}

/// Client tasks started by [`Workload::spawn`].
pub struct Clients {
    tasks: Vec<tokio::task::JoinHandle<Totals>>,
}

impl Clients {
    /// Waits for every client to reach its deadline; the summed outcomes.
    pub async fn join(self) -> Totals {
        let mut totals = Totals::default();
        for task in self.tasks {
            totals.add(task.await.expect("a workload client panicked"));
        }
        totals
    }
}

impl Workload {
    /// Key number `k`.
    pub fn key(&self, k: u64) -> Vec<u8> {
        format!("{}{k}", self.prefix).into_bytes()
    }

    /// Starts the clients; each sends requests to random `members` until
    /// `until`. Client `id` draws from a generator seeded by `seed` and `id`.
    pub fn spawn(&self, seed: u64, members: Vec<KvClient<Channel>>, rec: Arc<Recorder>, until: Instant) -> Clients {
        assert!(!members.is_empty(), "the workload needs at least one member");
        let tasks = (0..self.clients)
            .map(|id| {
                let rng = StdRng::seed_from_u64(seed ^ (id + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                tokio::spawn(run_client(self.clone(), id, rng, members.clone(), rec.clone(), until))
            })
            .collect();
        Clients { tasks }
    }
}

async fn run_client(
    w: Workload,
    id: u64,
    mut rng: StdRng,
    members: Vec<KvClient<Channel>>,
    rec: Arc<Recorder>,
    until: Instant,
) -> Totals {
    let mut totals = Totals::default();
    let mut n = 0u64;
    // The version this client last saw of each key, for its transactions.
    let mut seen: HashMap<Vec<u8>, i64> = HashMap::new();
    let total = w.mix.put + w.mix.get + w.mix.delete + w.mix.txn;
    assert!(total > 0, "an empty mix");
    while Instant::now() < until {
        let kv = members[rng.random_range(0..members.len())].clone();
        let k = w.key(rng.random_range(0..w.keys));
        let pick = rng.random_range(0..total);
        let outcome = if pick < w.mix.put {
            n += 1;
            put(&rec, id, kv, k, format!("c{id}-{n}").into_bytes(), w.op_timeout).await
        } else if pick < w.mix.put + w.mix.get {
            let outcome = get(&rec, id, kv, k.clone(), w.op_timeout).await;
            if let Outcome::Ok(Response { body: ResponseBody::Range(r), .. }) = &outcome {
                seen.insert(k, r.kvs.first().map_or(0, |kv| kv.version));
            }
            outcome
        } else if pick < w.mix.put + w.mix.get + w.mix.delete {
            delete(&rec, id, kv, k, w.op_timeout).await
        } else {
            n += 1;
            let version = seen.get(&k).copied().unwrap_or(0);
            let outcome =
                txn_put_if_version(&rec, id, kv, k.clone(), version, format!("c{id}-{n}"), w.op_timeout).await;
            if let Outcome::Ok(Response { body: ResponseBody::Txn(t), .. }) = &outcome {
                match t.responses.first() {
                    Some(ResponseBody::Range(r)) => {
                        seen.insert(k, r.kvs.first().map_or(0, |kv| kv.version));
                    }
                    _ => {
                        seen.insert(k, version + 1);
                    }
                }
            }
            outcome
        };
        totals.count(&outcome);
    }
    totals
}

/// Runs one request bounded by `limit`: `Ok(response)`, `Err(Some(status))`
/// for an error status, `Err(None)` for a timeout.
async fn bounded_call<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Option<tonic::Status>> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(Some(status)),
        Err(_) => Err(None),
    }
}

/// The outcome of a write that did not answer: definite only when the error
/// proves it.
fn write_failure(err: Option<tonic::Status>) -> Outcome {
    match err {
        Some(status) if definite(&status) => Outcome::Err(Failure::Rejected(status.message().to_string())),
        _ => Outcome::Unknown,
    }
}

/// A read that did not answer had no effect, whatever the reason.
fn read_failure(err: Option<tonic::Status>) -> Outcome {
    Outcome::Err(Failure::Rejected(err.map_or_else(|| "timed out".to_string(), |s| s.message().to_string())))
}

fn revision(header: &Option<pb::ResponseHeader>) -> i64 {
    header.as_ref().map_or(0, |h| h.revision)
}

/// A `ketch-check` pair from the wire's.
pub fn kv_of(kv: mvccpb::KeyValue) -> KeyValue {
    KeyValue::new(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version).with_lease(kv.lease)
}

fn range_result(resp: pb::RangeResponse) -> RangeResult {
    RangeResult { kvs: resp.kvs.into_iter().map(kv_of).collect(), count: resp.count, more: resp.more }
}

/// A recorded put of `key = value` through `kv`.
pub async fn put(
    rec: &Recorder,
    client: u64,
    mut kv: KvClient<Channel>,
    key: Vec<u8>,
    value: Vec<u8>,
    limit: Duration,
) -> Outcome {
    let op = rec.invoke(client, Request::put(key.clone(), value.clone()));
    let sent = PutRequest { key, value, ..Default::default() };
    let outcome = match bounded_call(limit, kv.put(sent)).await {
        Ok(resp) => Outcome::Ok(Response::put(revision(&resp.header))),
        Err(e) => write_failure(e),
    };
    rec.complete(op, outcome.clone());
    outcome
}

/// A recorded linearizable get of `key` through `kv`.
pub async fn get(rec: &Recorder, client: u64, mut kv: KvClient<Channel>, key: Vec<u8>, limit: Duration) -> Outcome {
    let op = rec.invoke(client, Request::get(key.clone()));
    let sent = RangeRequest { key, ..Default::default() };
    let outcome = match bounded_call(limit, kv.range(sent)).await {
        Ok(resp) => {
            let rev = revision(&resp.header);
            Outcome::Ok(Response { revision: rev, body: ResponseBody::Range(range_result(resp)) })
        }
        Err(e) => read_failure(e),
    };
    rec.complete(op, outcome.clone());
    outcome
}

/// A recorded delete of `key` through `kv`.
pub async fn delete(rec: &Recorder, client: u64, mut kv: KvClient<Channel>, key: Vec<u8>, limit: Duration) -> Outcome {
    let op = rec.invoke(client, Request::delete(key.clone()));
    let sent = DeleteRangeRequest { key, ..Default::default() };
    let outcome = match bounded_call(limit, kv.delete_range(sent)).await {
        Ok(resp) => Outcome::Ok(Response::delete(revision(&resp.header), resp.deleted)),
        Err(e) => write_failure(e),
    };
    rec.complete(op, outcome.clone());
    outcome
}

/// A recorded `if version(key) == version then put key = value else get key`.
pub async fn txn_put_if_version(
    rec: &Recorder,
    client: u64,
    mut kv: KvClient<Channel>,
    key: Vec<u8>,
    version: i64,
    value: String,
    limit: Duration,
) -> Outcome {
    let request = Request::txn(
        vec![Compare::new(key.clone(), CompareTarget::Version(version), CompareResult::Equal)],
        vec![Request::put(key.clone(), value.clone())],
        vec![Request::get(key.clone())],
    );
    let op = rec.invoke(client, request);
    let sent = TxnRequest {
        compare: vec![pb::Compare {
            key: key.clone(),
            target: pb::compare::CompareTarget::Version as i32,
            result: pb::compare::CompareResult::Equal as i32,
            target_union: Some(TargetUnion::Version(version)),
            range_end: Vec::new(),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                value: value.into_bytes(),
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest { key, ..Default::default() })),
        }],
    };
    let outcome = match bounded_call(limit, kv.txn(sent)).await {
        Ok(resp) => {
            // Anything but a put or a range answer does not fit this
            // request; recorded as it came, the checker rejects it.
            let bodies = resp
                .responses
                .into_iter()
                .map(|r| match r.response {
                    Some(response_op::Response::ResponsePut(_)) => ResponseBody::Put(PutResult::default()),
                    Some(response_op::Response::ResponseRange(r)) => ResponseBody::Range(range_result(r)),
                    _ => ResponseBody::Compact,
                })
                .collect();
            Outcome::Ok(Response::txn(revision(&resp.header), resp.succeeded, bodies))
        }
        Err(e) => write_failure(e),
    };
    rec.complete(op, outcome.clone());
    outcome
}

// ---- The watcher ----

#[derive(Default)]
struct WatchState {
    watcher: Option<Watcher>,
    /// Everything up to this revision was delivered (last event or progress
    /// notification).
    reached: i64,
    /// Why each stream ended.
    ends: Vec<String>,
}

/// One watch on a key range, recorded across its attempts; see the module
/// docs.
pub struct WatchRecorder {
    state: Arc<Mutex<WatchState>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchRecorder {
    /// Starts watching `range` (with `prev_kv`) from revision 1 through
    /// `urls`, starting with a member chosen by `seed` and moving to the
    /// next one whenever a stream breaks.
    pub fn spawn(range: KeyRange, urls: Vec<String>, seed: u64) -> WatchRecorder {
        assert!(!urls.is_empty(), "a watch needs at least one member");
        let spec = WatchSpec { prev_kv: true, ..WatchSpec::new(range) };
        let state = Arc::new(Mutex::new(WatchState {
            watcher: Some(Watcher { spec: spec.clone(), streams: Vec::new() }),
            ..WatchState::default()
        }));
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(watch_loop(spec, urls, seed, Arc::clone(&state), stop_rx));
        WatchRecorder { state, stop, task }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything up to this revision has been delivered.
    pub fn reached(&self) -> i64 {
        self.lock().reached
    }

    /// Number of attempts (streams) so far.
    pub fn attempts(&self) -> usize {
        self.lock().watcher.as_ref().map_or(0, |w| w.streams.len())
    }

    /// Waits until everything up to `revision` has been delivered; `Err`
    /// with the stream history after `timeout`.
    pub async fn wait_reached(&self, revision: i64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let reached = self.reached();
            if reached >= revision {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let state = self.lock();
                return Err(format!(
                    "the watch reached revision {reached}, not {revision}, within {timeout:?}; streams ended: {:?}",
                    state.ends
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops watching; the recorded watcher and why each stream ended.
    pub async fn finish(self) -> (Watcher, Vec<String>) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.watcher.take().expect("finished once"), std::mem::take(&mut state.ends))
    }
}

async fn watch_loop(
    spec: WatchSpec,
    urls: Vec<String>,
    seed: u64,
    state: Arc<Mutex<WatchState>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let mut member = (seed as usize) % urls.len();
    loop {
        if *stop.borrow() {
            return;
        }
        let start = lock().reached + 1;
        {
            let mut s = lock();
            let w = s.watcher.as_mut().expect("watcher present until finish");
            w.streams.push(WatchStream { start_revision: start, responses: Vec::new() });
        }
        let url = &urls[member];
        let why = tokio::select! {
            why = one_stream(&spec, url, start, &state) => why,
            _ = stop.changed() => "stopped".to_string(),
        };
        lock().ends.push(format!("{url} from {start}: {why}"));
        if *stop.borrow() {
            return;
        }
        member = (member + 1) % urls.len();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A channel for long-lived streams: connect bounded by 1 s, HTTP/2 pings
/// every 500 ms answered within 1.5 s (a stopped or unreachable member
/// breaks the stream), no request timeout.
pub fn stream_channel(url: &str) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .http2_keep_alive_interval(Duration::from_millis(500))
        .keep_alive_timeout(Duration::from_millis(1500))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Runs one attempt until it breaks; why it ended.
async fn one_stream(spec: &WatchSpec, url: &str, start: i64, state: &Mutex<WatchState>) -> String {
    let channel = match stream_channel(url) {
        Ok(c) => c,
        Err(e) => return format!("bad url: {e}"),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: spec.range.key.clone(),
            range_end: spec.range.range_end.clone(),
            start_revision: start,
            prev_kv: spec.prev_kv,
            progress_notify: true,
            ..Default::default()
        })),
    };
    if tx.send(create).is_err() {
        return "request channel closed".into();
    }
    let mut client = WatchClient::new(channel);
    let call = client.watch(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
    let mut stream = match tokio::time::timeout(Duration::from_secs(3), call).await {
        Ok(Ok(resp)) => resp.into_inner(),
        Ok(Err(status)) => return format!("watch call failed: {status}"),
        Err(_) => return "watch call not answered within 3s".into(),
    };
    loop {
        let message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return "stream ended".into(),
            Err(status) => return format!("stream error: {status}"),
        };
        let response = watch_response(message.clone());
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = response.events.last() {
            s.reached = s.reached.max(last.revision());
        } else if response.is_progress_notify() {
            s.reached = s.reached.max(response.revision);
        }
        let canceled = response.canceled;
        let w = s.watcher.as_mut().expect("watcher present until finish");
        w.streams.last_mut().expect("a stream per attempt").responses.push(response);
        if canceled {
            return format!("canceled: {:?}", message.cancel_reason);
        }
    }
}

/// A `ketch-check` watch response from the wire's.
pub fn watch_response(r: pb::WatchResponse) -> WatchResponse {
    WatchResponse {
        revision: revision(&r.header),
        created: r.created,
        canceled: r.canceled,
        compact_revision: r.compact_revision,
        fragment: r.fragment,
        events: r.events.into_iter().map(event_of).collect(),
    }
}

/// A `ketch-check` event from the wire's.
pub fn event_of(e: mvccpb::Event) -> Event {
    let kind = if e.r#type == mvccpb::event::EventType::Delete as i32 { EventKind::Delete } else { EventKind::Put };
    Event { kind, kv: e.kv.map(kv_of).unwrap_or_default(), prev_kv: e.prev_kv.map(kv_of) }
}

// ---- After the run ----

/// Every event a member holds up to `last_revision`, read with a watch of the
/// whole keyspace from revision 1 on `url` (the reference for the watch and
/// durability checks; a store that was never compacted).
pub async fn read_event_log(url: &str, last_revision: i64, timeout: Duration) -> Result<EventLog, String> {
    let mut log = EventLog { events: Vec::new(), first_revision: 2, last_revision, compacted_revision: 0 };
    if last_revision < 2 {
        return Ok(log);
    }
    let fut = async {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: vec![0],
                range_end: vec![0],
                start_revision: 1,
                ..Default::default()
            })),
        };
        tx.send(create).map_err(|_| "request channel closed".to_string())?;
        let mut client = WatchClient::new(stream_channel(url)?);
        let mut stream = client
            .watch(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .map_err(|e| format!("watch: {e}"))?
            .into_inner();
        let mut last = 0;
        while last < last_revision {
            let message =
                stream.message().await.map_err(|e| format!("watch stream: {e}"))?.ok_or("watch stream ended")?;
            if message.canceled {
                return Err(format!("watch canceled: {}", message.cancel_reason));
            }
            for event in message.events {
                let event = event_of(event);
                last = event.revision();
                if last <= last_revision {
                    log.events.push(event);
                }
            }
        }
        drop(tx);
        Ok(())
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| format!("reading the event log took over {timeout:?}"))??;
    Ok(log)
}

/// The whole keyspace at `revision` (linearizable read through `kv`).
pub async fn read_final_state(mut kv: KvClient<Channel>, revision: i64) -> Result<FinalState, String> {
    let req = RangeRequest { key: vec![0], range_end: vec![0], revision, ..Default::default() };
    let resp = bounded_call(Duration::from_secs(10), kv.range(req))
        .await
        .map_err(|e| format!("final read: {}", e.map_or_else(|| "timed out".to_string(), |s| s.to_string())))?;
    if resp.more {
        return Err("final read: more keys than one response holds".into());
    }
    Ok(FinalState {
        revision: revision.max(self::revision(&resp.header)),
        kvs: resp.kvs.into_iter().map(kv_of).collect(),
    })
}

/// Everything the checks need.
pub struct Evidence<'a> {
    /// The recorded history.
    pub history: &'a History,
    /// The recorded watchers.
    pub watchers: &'a [Watcher],
    /// Every event up to the final revision, from one member.
    pub log: &'a EventLog,
    /// The whole keyspace at the final revision.
    pub state: &'a FinalState,
    /// Every member's `HashKV` at the final revision.
    pub digests: &'a [MemberDigest],
}

/// Runs every check; one message per failed check (empty: all passed).
/// Prints a line per check.
pub fn check_all(e: &Evidence<'_>) -> Vec<String> {
    let mut failures = Vec::new();
    let config = CheckConfig { step_budget: 20_000_000, ..CheckConfig::default() };
    let started = Instant::now();
    match check_linearizable_per_key(e.history, &config) {
        Err(err) => failures.push(format!("malformed history: {err}")),
        Ok(Verdict::Ok(_)) => {
            println!("check: per-key linearizable ({} ops, {:?})", e.history.len(), started.elapsed())
        }
        Ok(Verdict::Violation(v)) => failures.push(format!("not linearizable:\n{}", v.explain(e.history))),
        Ok(Verdict::Inconclusive(i)) => failures.push(format!("linearizability check inconclusive: {i:?}")),
    }
    let watch = check_watchers(e.watchers, Some(e.log));
    if watch.is_empty() {
        let events: usize =
            e.watchers.iter().flat_map(|w| &w.streams).flat_map(|s| &s.responses).map(|r| r.events.len()).sum();
        println!("check: watch guarantees hold ({events} events delivered)");
    } else {
        let shown: Vec<String> = watch.iter().take(10).map(ToString::to_string).collect();
        failures.push(format!("watch guarantees broken ({} problems):\n  {}", watch.len(), shown.join("\n  ")));
    }
    let lost = check_durability(e.history, e.state, &config);
    let lost_log = check_durability_log(e.history, e.log);
    if lost.is_empty() && lost_log.is_empty() {
        println!("check: acknowledged writes are durable ({} keys, {} events)", e.state.kvs.len(), e.log.events.len());
    } else {
        let explain = |v: &ketch_check::durability::DurabilityViolation| match v.op {
            Some(op) => format!("{v}\n    by {op} {}", e.history.get(op)),
            None => v.to_string(),
        };
        let all: Vec<String> = lost.iter().chain(&lost_log).take(10).map(explain).collect();
        failures.push(format!("durability ({} problems):\n  {}", lost.len() + lost_log.len(), all.join("\n  ")));
    }
    let diverged = check_convergence(e.digests);
    if diverged.is_empty() {
        println!("check: {} members converged", e.digests.len());
    } else {
        let shown: Vec<String> = diverged.iter().map(ToString::to_string).collect();
        failures.push(format!("members diverged:\n  {}", shown.join("\n  ")));
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A put of `k = v` acknowledged at revision 2, its watch event, the
    /// final state holding it and two agreeing digests: all checks pass.
    fn good() -> (History, Vec<Watcher>, EventLog, FinalState, Vec<MemberDigest>) {
        let mut history = History::new();
        let op = history.invoke(0, 1, Request::put("k", "v"));
        history.complete(op, 2, Outcome::Ok(Response::put(2)));
        let read = history.invoke(0, 3, Request::get("k"));
        history.complete(read, 4, Outcome::Ok(Response::range(2, vec![KeyValue::new("k", "v", 2, 2, 1)])));
        let event = Event::put(KeyValue::new("k", "v", 2, 2, 1), None);
        let log = EventLog { events: vec![event.clone()], first_revision: 2, last_revision: 2, compacted_revision: 0 };
        let watcher = Watcher {
            spec: WatchSpec::new(KeyRange::prefix("k")),
            streams: vec![WatchStream { start_revision: 1, responses: vec![WatchResponse::events(2, vec![event])] }],
        };
        let state = FinalState { revision: 2, kvs: vec![KeyValue::new("k", "v", 2, 2, 1)] };
        let digest = |m: &str| MemberDigest { member: m.into(), revision: 2, compact_revision: 0, hash: 7 };
        (history, vec![watcher], log, state, vec![digest("a"), digest("b")])
    }

    fn run(e: &(History, Vec<Watcher>, EventLog, FinalState, Vec<MemberDigest>)) -> Vec<String> {
        check_all(&Evidence { history: &e.0, watchers: &e.1, log: &e.2, state: &e.3, digests: &e.4 })
    }

    #[test]
    fn check_all_passes_a_good_run_and_reports_each_kind_of_failure() {
        assert_eq!(run(&good()), Vec::<String>::new());

        // A read of a value nobody wrote.
        let mut e = good();
        let op = e.0.invoke(1, 5, Request::get("k"));
        e.0.complete(op, 6, Outcome::Ok(Response::range(2, vec![KeyValue::new("k", "w", 2, 2, 1)])));
        let failures = run(&e);
        assert!(failures.iter().any(|f| f.starts_with("not linearizable")), "{failures:?}");

        // The acknowledged write is gone at the end.
        let mut e = good();
        e.3.kvs.clear();
        let failures = run(&e);
        assert!(failures.iter().any(|f| f.starts_with("durability")), "{failures:?}");

        // The watch missed the event (a progress notification says it is
        // past revision 2).
        let mut e = good();
        e.1[0].streams[0].responses[0] = WatchResponse::events(2, Vec::new());
        let failures = run(&e);
        assert!(failures.iter().any(|f| f.starts_with("watch guarantees")), "{failures:?}");

        // Two members disagree.
        let mut e = good();
        e.4[1].hash = 8;
        let failures = run(&e);
        assert!(failures.iter().any(|f| f.starts_with("members diverged")), "{failures:?}");
    }
}
