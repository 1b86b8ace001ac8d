//! The member: the raft loop thread and the handle the gRPC edge talks to.
//!
//! One OS thread owns the consensus core, the WAL and all writes to the MVCC
//! store. Each turn it
//!
//! 1. takes queued commands (proposals) and due ticks,
//! 2. appends the ready entries and hard state to the WAL and `fdatasync`s once,
//! 3. tells raft they are durable, which commits them (a lone member is its own
//!    quorum),
//! 4. applies committed entries in log order in one backend transaction that
//!    also records the applied raft index, then
//! 5. answers the waiting clients.
//!
//! So a write is acknowledged only after it is in the fsynced WAL, and the
//! applied index always travels with the data it covers. Backend commits skip
//! their own fsync except every [`DURABLE_EVERY_ENTRIES`] entries or
//! [`DURABLE_EVERY`]; after a crash the backend opens at its last durable commit
//! and the WAL replays the rest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ketch_lease::{LeaseError, Lessor};
use ketch_mvcc::{RangeEnd, RangeOptions, Store};
use ketch_proto::etcdserverpb::{self as pb, InternalRaftRequest, RequestHeader};
use ketch_raft::eraftpb::{ConfState, Entry, EntryType, SnapshotMetadata};
use ketch_raft::{RaftConfig, RaftCore, Restored, codec};
use ketch_wal::{Wal, WalOptions};
use prost::Message as _;
use tokio::sync::oneshot;

use crate::apply;
use crate::error::ServerError;
use crate::ids::{self, RequestIds};
use crate::storage::{self, Layout};
use crate::watch::WatchHub;

/// Proposals waiting for the raft loop; a full queue answers "too many requests".
pub const PROPOSAL_QUEUE_MAX: usize = 4096;
/// Commands handled per loop turn before persisting, to bound batch latency.
const COMMANDS_PER_TURN_MAX: usize = 1024;
/// Applied entries between durable backend commits.
const DURABLE_EVERY_ENTRIES: u64 = 10_000;
/// Longest time applied data stays only in the WAL.
const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// Raft log entries kept in memory behind a snapshot for lagging followers (etcd's 5000).
const SNAPSHOT_CATCH_UP_ENTRIES: u64 = 5_000;
/// Loop turns a lone voter may take to apply its log at start-up (it needs two).
const START_CATCH_UP_TURNS_MAX: usize = 16;
/// Expired leases revoked per loop turn (etcd revokes at most 1000 a second).
const LEASE_REVOKES_PER_TURN_MAX: usize = 100;
/// Lease checkpoints proposed per loop turn (etcd's batch limit).
const LEASE_CHECKPOINTS_PER_TURN_MAX: usize = 1000;
/// Keys read per step when re-attaching keys to leases at start-up.
const LEASE_ATTACH_SCAN_KEYS: usize = 10_000;
/// Largest raft append message, in bytes (etcd's 1 MiB).
const RAFT_MSG_BYTES_MAX: u64 = 1 << 20;
/// Append messages in flight per follower (etcd's 4096 / 256 by default).
const RAFT_INFLIGHT_MSGS_MAX: usize = 256;

/// Settings for one member; validated by the binary's flag parsing.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub name: String,
    pub data_dir: PathBuf,
    /// `--initial-cluster`: name and peer URLs of each founding member.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    pub snapshot_count: u64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub quota_backend_bytes: u64,
    pub pre_vote: bool,
    /// etcd's `--experimental-watch-progress-notify-interval`.
    pub watch_progress_notify_interval: Duration,
    /// Interval between lease checkpoints (etcd's `--experimental-lease-checkpoint-interval`);
    /// `None` turns checkpointing off, so remaining TTLs reset on restart.
    pub lease_checkpoint_interval: Option<Duration>,
}

/// The result of applying one proposal.
#[derive(Debug)]
pub enum Applied {
    Put(pb::PutResponse),
    DeleteRange(pb::DeleteRangeResponse),
    Txn(pb::TxnResponse),
    Compaction(pb::CompactionResponse),
    LeaseGrant(pb::LeaseGrantResponse),
    LeaseRevoke(pb::LeaseRevokeResponse),
    LeaseCheckpoint(pb::LeaseCheckpointResponse),
}

type Reply = oneshot::Sender<Result<Applied, ServerError>>;

enum Command {
    Propose { id: u64, data: Vec<u8>, reply: Reply },
}

/// State the raft loop publishes for readers of status.
struct Shared {
    store: Arc<Store>,
    tx: SyncSender<Command>,
    ids: RequestIds,
    member_id: u64,
    cluster_id: u64,
    name: String,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
    term: AtomicU64,
    leader: AtomicU64,
    commit_index: AtomicU64,
    applied_index: AtomicU64,
    stopped: AtomicBool,
    /// Asks the raft loop to finish its turn and stop.
    stop_requested: AtomicBool,
    max_request_bytes: usize,
    max_txn_ops: usize,
    quota_backend_bytes: u64,
    request_timeout: Duration,
    watch_hub: WatchHub,
    watch_progress_notify_interval: Duration,
    /// Lease bookkeeping: applied state (written only by the raft loop) plus the
    /// leader's expiry clock.
    lessor: Mutex<Lessor>,
    /// The member's monotonic clock: milliseconds since this instant.
    epoch: Instant,
    election_ms: u64,
    lease_checkpoint_interval: Option<Duration>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lessor(&self) -> MutexGuard<'_, Lessor> {
        self.lessor.lock().expect("lessor lock poisoned")
    }
}

/// A cheap, cloneable handle to the running member.
#[derive(Clone)]
pub struct Member {
    shared: Arc<Shared>,
}

/// Point-in-time raft status for `Maintenance.Status`.
#[derive(Debug, Clone, Copy)]
pub struct RaftStatus {
    pub term: u64,
    pub leader: u64,
    pub commit_index: u64,
    pub applied_index: u64,
}

fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Member {
    /// Opens (or bootstraps) the data directory and starts the raft loop thread.
    pub fn start(cfg: MemberConfig) -> Result<(Member, JoinHandle<Result<(), ServerError>>), ServerError> {
        let layout = Layout::new(&cfg.data_dir);
        layout.check_not_foreign()?;
        let internal = |what: &str, e: &dyn std::fmt::Display| ServerError::Internal(format!("{what}: {e}"));
        std::fs::create_dir_all(layout.member_dir())
            .map_err(|e| internal(&layout.member_dir().display().to_string(), &e))?;
        let existing = Wal::exists(&layout.wal_dir());
        let store = Arc::new(Store::open(&layout.backend_path())?);

        let (member_id, cluster_id) = if existing {
            let member_id = storage::u64_meta(store.meta(storage::META_MEMBER_ID)?);
            let cluster_id = storage::u64_meta(store.meta(storage::META_CLUSTER_ID)?);
            match (member_id, cluster_id) {
                (Some(m), Some(c)) => {
                    tracing::info!(member = %format!("{m:x}"), cluster = %format!("{c:x}"), "restarting member; --initial-* flags are ignored");
                    (m, c)
                }
                _ => {
                    return Err(ServerError::Internal(format!(
                        "data dir {} has a WAL but no member identity in its backend: refusing to start",
                        cfg.data_dir.display()
                    )));
                }
            }
        } else {
            let (m, c) = bootstrap_ids(&cfg)?;
            let batch = store.batch()?;
            batch.commit(
                &[(storage::META_MEMBER_ID, &m.to_le_bytes()), (storage::META_CLUSTER_ID, &c.to_le_bytes())],
                true,
            )?;
            tracing::info!(member = %format!("{m:x}"), cluster = %format!("{c:x}"), "starting a new cluster");
            (m, c)
        };

        let (mut wal, replay) =
            Wal::open(&layout.wal_dir(), WalOptions::default()).map_err(|e| internal("opening the WAL", &e))?;
        if replay.repaired_bytes > 0 {
            tracing::warn!(bytes = replay.repaired_bytes, "cut a torn record off the WAL tail");
        }
        let snapshot = match &replay.snapshot {
            Some(marker) => {
                codec::decode_snapshot_metadata(&marker.payload).map_err(|e| internal("WAL snapshot marker", &e))?
            }
            None => {
                // A new member: the bootstrap configuration is snapshot 0.
                let mut meta = SnapshotMetadata::default();
                meta.set_conf_state(ConfState { voters: vec![member_id], ..Default::default() });
                wal.mark_snapshot(0, &codec::encode_snapshot_metadata(&meta)).map_err(|e| internal("WAL", &e))?;
                wal.sync().map_err(|e| internal("WAL", &e))?;
                meta
            }
        };
        let hard_state = replay
            .hard_state
            .as_deref()
            .map(codec::decode_hard_state)
            .transpose()
            .map_err(|e| internal("WAL hard state", &e))?;
        let entries = replay
            .entries
            .iter()
            .map(|(_, bytes)| codec::decode_entry(bytes))
            .collect::<Result<Vec<Entry>, _>>()
            .map_err(|e| internal("WAL entry", &e))?;
        let applied = storage::u64_meta(store.meta(storage::META_CONSISTENT_INDEX)?).unwrap_or(0);
        let applied_term = storage::u64_meta(store.meta(storage::META_CONSISTENT_TERM)?).unwrap_or(0);
        let snapshot_index = snapshot.index;
        let voters = snapshot.get_conf_state().voters.clone();

        let election_ticks = usize::try_from((cfg.election_ms / cfg.heartbeat_ms.max(1)).max(2)).unwrap_or(10);
        let raft_cfg = RaftConfig {
            id: member_id,
            election_ticks,
            heartbeat_ticks: 1,
            pre_vote: cfg.pre_vote,
            max_size_per_msg: RAFT_MSG_BYTES_MAX,
            max_inflight_msgs: RAFT_INFLIGHT_MSGS_MAX,
        };
        let restored = Restored { snapshot, hard_state, entries, applied };
        let mut core = RaftCore::new(&raft_cfg, restored).map_err(|e| internal("restoring raft state", &e))?;
        if voters == [member_id] {
            // A lone voter needs no election timeout to know it wins.
            core.campaign().map_err(|e| internal("campaign", &e))?;
        }

        let lessor = restore_lessor(&store, &cfg)?;

        let (tx, rx) = mpsc::sync_channel(PROPOSAL_QUEUE_MAX);
        let peer_urls = cfg
            .initial_cluster
            .iter()
            .find(|(n, _)| *n == cfg.name)
            .map(|(_, urls)| urls.clone())
            .unwrap_or_else(|| cfg.initial_advertise_peer_urls.clone());
        let shared = Arc::new(Shared {
            store: store.clone(),
            tx,
            ids: RequestIds::new(member_id, unix_millis()),
            member_id,
            cluster_id,
            name: cfg.name.clone(),
            peer_urls,
            client_urls: cfg.advertise_client_urls.clone(),
            term: AtomicU64::new(core.term()),
            leader: AtomicU64::new(core.leader_id()),
            commit_index: AtomicU64::new(core.commit_index()),
            applied_index: AtomicU64::new(applied),
            stopped: AtomicBool::new(false),
            stop_requested: AtomicBool::new(false),
            max_request_bytes: cfg.max_request_bytes,
            max_txn_ops: cfg.max_txn_ops,
            quota_backend_bytes: cfg.quota_backend_bytes,
            request_timeout: Duration::from_millis(5000 + 2 * cfg.election_ms),
            watch_hub: WatchHub::default(),
            watch_progress_notify_interval: cfg.watch_progress_notify_interval,
            lessor: Mutex::new(lessor),
            epoch: Instant::now(),
            election_ms: cfg.election_ms,
            lease_checkpoint_interval: cfg.lease_checkpoint_interval,
        });
        let mut raft_loop = RaftLoop {
            core,
            wal,
            store,
            rx,
            shared: shared.clone(),
            waiters: HashMap::new(),
            applied,
            durable_applied: applied,
            durable_term: applied_term,
            last_durable_at: Instant::now(),
            snapshot_index,
            snapshot_count: cfg.snapshot_count.max(1),
            tick: Duration::from_millis(cfg.heartbeat_ms.max(1)),
            was_leader: false,
        };
        // Serve nothing until every entry in the log is applied: the backend may
        // have rolled back to its last durable commit, and reads must not see that.
        raft_loop.catch_up_on_start(voters == [member_id])?;
        let handle = std::thread::Builder::new()
            .name("ketch-raft".into())
            .spawn(move || {
                let result = raft_loop.run();
                raft_loop.shared.stopped.store(true, Ordering::SeqCst);
                if let Err(e) = &result {
                    tracing::error!(error = %e, "raft loop stopped");
                }
                result
            })
            .map_err(|e| internal("spawning the raft loop", &e))?;
        Ok((Member { shared }, handle))
    }

    pub fn member_id(&self) -> u64 {
        self.shared.member_id
    }
    pub fn cluster_id(&self) -> u64 {
        self.shared.cluster_id
    }
    pub fn name(&self) -> &str {
        &self.shared.name
    }
    pub fn peer_urls(&self) -> &[String] {
        &self.shared.peer_urls
    }
    pub fn client_urls(&self) -> &[String] {
        &self.shared.client_urls
    }
    pub fn max_txn_ops(&self) -> usize {
        self.shared.max_txn_ops
    }
    pub fn max_request_bytes(&self) -> usize {
        self.shared.max_request_bytes
    }
    /// Runs `f` on the lessor with the member's clock (milliseconds).
    pub fn with_lessor<T>(&self, f: impl FnOnce(&mut Lessor, u64) -> T) -> T {
        let now = self.shared.now_ms();
        f(&mut self.shared.lessor(), now)
    }

    /// How long a request may wait for its proposal (etcd: 5 s + 2 election timeouts).
    pub fn request_timeout(&self) -> Duration {
        self.shared.request_timeout
    }

    /// A fresh positive lease ID (etcd's rule for `LeaseGrant` with ID 0).
    pub fn next_lease_id(&self) -> i64 {
        loop {
            let id = (self.shared.ids.next() & (u64::MAX >> 1)) as i64;
            if id != 0 {
                return id;
            }
        }
    }

    pub fn watch_hub(&self) -> &WatchHub {
        &self.shared.watch_hub
    }
    pub fn watch_progress_notify_interval(&self) -> Duration {
        self.shared.watch_progress_notify_interval
    }
    pub fn store(&self) -> &Arc<Store> {
        &self.shared.store
    }
    /// Stops the raft loop after its current turn (within one tick); proposals
    /// still queued are answered with `server stopped`.
    pub fn stop(&self) {
        self.shared.stop_requested.store(true, Ordering::SeqCst);
    }

    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst)
    }

    pub fn raft_status(&self) -> RaftStatus {
        RaftStatus {
            term: self.shared.term.load(Ordering::SeqCst),
            leader: self.shared.leader.load(Ordering::SeqCst),
            commit_index: self.shared.commit_index.load(Ordering::SeqCst),
            applied_index: self.shared.applied_index.load(Ordering::SeqCst),
        }
    }

    /// Fills a response header the way etcd's gRPC layer does (a revision left
    /// at 0 becomes the current one).
    pub fn fill_header(&self, header: &mut Option<pb::ResponseHeader>) {
        self.fill_header_ids(header);
        if let Some(h) = header
            && h.revision == 0
        {
            h.revision = self.shared.store.current_revision();
        }
    }

    /// Fills the cluster, member and term of a header, leaving its revision.
    pub fn fill_header_ids(&self, header: &mut Option<pb::ResponseHeader>) {
        let h = header.get_or_insert_with(Default::default);
        h.cluster_id = self.shared.cluster_id;
        h.member_id = self.shared.member_id;
        h.raft_term = self.shared.term.load(Ordering::SeqCst);
    }

    /// Runs `f` on a read view of the store off the async runtime.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ketch_mvcc::ReadTxn<'_>) -> Result<T, ServerError> + Send + 'static,
    ) -> Result<T, ServerError> {
        if self.is_stopped() {
            return Err(ServerError::Stopped);
        }
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || {
            let view = store.read()?;
            f(&view)
        })
        .await
        .map_err(|e| ServerError::Internal(format!("read task failed: {e}")))?
    }

    /// Proposes a write and waits until it is applied.
    pub async fn propose(&self, mut req: InternalRaftRequest) -> Result<Applied, ServerError> {
        if self.is_stopped() {
            return Err(ServerError::Stopped);
        }
        let id = self.shared.ids.next();
        req.header = Some(RequestHeader { id, ..Default::default() });
        let data = req.encode_to_vec();
        if data.len() > self.shared.max_request_bytes {
            return Err(ServerError::RequestTooLarge);
        }
        if adds_data(&req) && self.shared.store.file_size() + data.len() as u64 > self.shared.quota_backend_bytes {
            return Err(ServerError::NoSpace);
        }
        let (reply, rx) = oneshot::channel();
        match self.shared.tx.try_send(Command::Propose { id, data, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ServerError::TooManyRequests),
            Err(TrySendError::Disconnected(_)) => return Err(ServerError::Stopped),
        }
        match tokio::time::timeout(self.shared.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::Timeout),
        }
    }
}

/// Whether a request can grow the backend (etcd's quota applies to these).
fn adds_data(req: &InternalRaftRequest) -> bool {
    req.put.is_some() || req.txn.as_ref().is_some_and(|t| !apply::is_txn_read_only(t))
}

/// IDs of a new member and its cluster from the `--initial-*` flags.
fn bootstrap_ids(cfg: &MemberConfig) -> Result<(u64, u64), ServerError> {
    let mut member_ids = Vec::new();
    let mut own = None;
    for (name, urls) in &cfg.initial_cluster {
        let id = ids::member_id(urls, &cfg.initial_cluster_token, None);
        if *name == cfg.name {
            own = Some(id);
        }
        member_ids.push(id);
    }
    let own = own.ok_or_else(|| {
        ServerError::Internal(format!("couldn't find local name {:?} in the initial cluster configuration", cfg.name))
    })?;
    Ok((own, ids::cluster_id(&member_ids)))
}

struct RaftLoop {
    core: RaftCore,
    wal: Wal,
    store: Arc<Store>,
    rx: Receiver<Command>,
    shared: Arc<Shared>,
    waiters: HashMap<u64, Reply>,
    applied: u64,
    durable_applied: u64,
    durable_term: u64,
    last_durable_at: Instant,
    snapshot_index: u64,
    snapshot_count: u64,
    tick: Duration,
    /// Leadership as last seen, to promote or demote the lessor on changes.
    was_leader: bool,
}

fn wal_err(e: ketch_wal::WalError) -> ServerError {
    ServerError::Internal(format!("WAL: {e}"))
}

impl RaftLoop {
    /// Applies the whole log before the member serves. A lone voter commits
    /// everything in its log as soon as its new term's first entry is durable, so
    /// a few turns suffice.
    fn catch_up_on_start(&mut self, lone_voter: bool) -> Result<(), ServerError> {
        self.process_ready()?;
        if !lone_voter {
            return Ok(());
        }
        for _ in 0..START_CATCH_UP_TURNS_MAX {
            if self.applied >= self.core.last_index() {
                self.lease_duties();
                self.publish();
                return Ok(());
            }
            self.process_ready()?;
        }
        Err(ServerError::Internal(format!(
            "could not apply the log at start-up: applied {} of {}",
            self.applied,
            self.core.last_index()
        )))
    }

    fn run(&mut self) -> Result<(), ServerError> {
        let mut next_tick = Instant::now() + self.tick;
        while !self.shared.stop_requested.load(Ordering::SeqCst) {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(cmd) => {
                    self.handle(cmd);
                    for _ in 1..COMMANDS_PER_TURN_MAX {
                        match self.rx.try_recv() {
                            Ok(cmd) => self.handle(cmd),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            while now >= next_tick {
                self.core.tick();
                next_tick += self.tick;
            }
            self.process_ready()?;
            self.lease_duties();
            if self.applied > self.durable_applied && self.last_durable_at.elapsed() >= DURABLE_EVERY {
                self.store.batch()?.commit(&[], true)?;
                self.mark_durable(self.applied, self.durable_term_for(self.applied))?;
            }
            self.publish();
        }
        // Clean shutdown: make the backend durable so the next start replays nothing.
        if self.applied > self.durable_applied {
            self.store.batch()?.commit(&[], true)?;
        }
        for (_, reply) in self.waiters.drain() {
            let _ = reply.send(Err(ServerError::Stopped));
        }
        while let Ok(Command::Propose { reply, .. }) = self.rx.try_recv() {
            let _ = reply.send(Err(ServerError::Stopped));
        }
        Ok(())
    }

    fn durable_term_for(&self, index: u64) -> u64 {
        self.core.term_of(index).unwrap_or(self.durable_term)
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Propose { id, data, reply } => match self.core.propose(data) {
                Ok(()) => {
                    self.waiters.insert(id, reply);
                }
                Err(ketch_raft::RaftError::ProposalDropped) => {
                    let _ = reply.send(Err(ServerError::NoLeader));
                }
                Err(e) => {
                    let _ = reply.send(Err(ServerError::Internal(e.to_string())));
                }
            },
        }
    }

    fn process_ready(&mut self) -> Result<(), ServerError> {
        while let Some(rd) = self.core.ready() {
            if !rd.messages.is_empty() || !rd.persisted_messages.is_empty() {
                tracing::warn!("raft produced peer messages but this member has no peers");
            }
            for e in &rd.entries {
                self.wal.append_entry(e.index, &codec::encode_entry(e)).map_err(wal_err)?;
            }
            if let Some(hs) = &rd.hard_state {
                self.wal.set_hard_state(&codec::encode_hard_state(hs)).map_err(wal_err)?;
            }
            if !rd.entries.is_empty() || rd.hard_state.is_some() {
                self.wal.sync().map_err(wal_err)?;
            }
            self.apply(rd.committed)?;
            let after = self.core.persisted();
            if after.commit_index.is_some() {
                // Recorded without a sync: it becomes durable with the next batch.
                self.wal.set_hard_state(&codec::encode_hard_state(&self.core.hard_state())).map_err(wal_err)?;
            }
            self.apply(after.committed)?;
        }
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), ServerError> {
        let entries: Vec<Entry> = entries.into_iter().filter(|e| e.index > self.applied).collect();
        let Some(last) = entries.last() else { return Ok(()) };
        let (last_index, last_term) = (last.index, last.term);
        let mut batch = self.store.batch()?;
        let mut results = Vec::new();
        for e in &entries {
            if e.get_entry_type() != EntryType::EntryNormal {
                tracing::warn!(
                    index = e.index,
                    "ignoring a configuration change entry: membership changes are not supported yet"
                );
                continue;
            }
            if e.data.is_empty() {
                continue; // a new leader's empty entry
            }
            let req = InternalRaftRequest::decode(&e.data[..])
                .map_err(|err| ServerError::Internal(format!("raft entry {} does not decode: {err}", e.index)))?;
            let id = req.header.as_ref().map_or(req.id, |h| h.id);
            let now = self.shared.now_ms();
            let result = apply_request(&mut batch, &req, &mut self.shared.lessor(), now);
            if let Err(ServerError::Internal(why)) = &result {
                return Err(ServerError::Internal(format!("applying entry {}: {why}", e.index)));
            }
            results.push((id, result));
        }
        let durable = last_index - self.durable_applied >= DURABLE_EVERY_ENTRIES
            || self.last_durable_at.elapsed() >= DURABLE_EVERY;
        let events = batch.commit(
            &[
                (storage::META_CONSISTENT_INDEX, &last_index.to_le_bytes()),
                (storage::META_CONSISTENT_TERM, &last_term.to_le_bytes()),
            ],
            durable,
        )?;
        self.shared.watch_hub.publish(events);
        self.applied = last_index;
        self.core.applied_to(last_index);
        self.shared.applied_index.store(last_index, Ordering::SeqCst);
        for (id, result) in results {
            if let Some(reply) = self.waiters.remove(&id) {
                let _ = reply.send(result);
            }
        }
        if durable {
            self.mark_durable(last_index, last_term)?;
        }
        Ok(())
    }

    /// The backend durably holds everything up to `index`: maybe take a snapshot
    /// (a WAL marker; the backend itself is the snapshot) and drop old log.
    fn mark_durable(&mut self, index: u64, term: u64) -> Result<(), ServerError> {
        self.durable_applied = index;
        self.durable_term = term;
        self.last_durable_at = Instant::now();
        if index - self.snapshot_index < self.snapshot_count {
            return Ok(());
        }
        let mut meta = SnapshotMetadata { index, term, ..Default::default() };
        meta.set_conf_state(self.core.conf_state());
        self.wal.mark_snapshot(index, &codec::encode_snapshot_metadata(&meta)).map_err(wal_err)?;
        self.wal.sync().map_err(wal_err)?;
        let purged = self.wal.purge().map_err(wal_err)?;
        self.core
            .compact_log(index.saturating_sub(SNAPSHOT_CATCH_UP_ENTRIES).max(1))
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        tracing::info!(index, purged_segments = purged, "snapshot taken");
        self.snapshot_index = index;
        Ok(())
    }

    /// The leader's lease clock: promote or demote the lessor when leadership
    /// changes, propose revokes for expired leases and checkpoints when due.
    fn lease_duties(&mut self) {
        let leader = self.core.is_leader();
        let now = self.shared.now_ms();
        if leader != self.was_leader {
            let mut lessor = self.shared.lessor();
            if leader {
                // etcd extends every lease by an election timeout on promotion.
                lessor.promote(now, self.shared.election_ms);
            } else {
                lessor.demote();
            }
            self.was_leader = leader;
        }
        if !leader {
            return;
        }
        let (expired, checkpoints) = {
            let mut lessor = self.shared.lessor();
            let expired = lessor.expired(now, LEASE_REVOKES_PER_TURN_MAX, ketch_lease::EXPIRED_LEASE_RETRY_MS);
            let checkpoints = match self.shared.lease_checkpoint_interval {
                Some(interval) => {
                    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
                    lessor.checkpoints_due(now, interval_ms, LEASE_CHECKPOINTS_PER_TURN_MAX)
                }
                None => Vec::new(),
            };
            (expired, checkpoints)
        };
        for id in expired {
            tracing::debug!(lease = id, "lease expired; revoking");
            self.propose_internal(InternalRaftRequest {
                lease_revoke: Some(pb::LeaseRevokeRequest { id }),
                ..Default::default()
            });
        }
        if !checkpoints.is_empty() {
            let checkpoints =
                checkpoints.into_iter().map(|(id, remaining_ttl)| pb::LeaseCheckpoint { id, remaining_ttl }).collect();
            self.propose_internal(InternalRaftRequest {
                lease_checkpoint: Some(pb::LeaseCheckpointRequest { checkpoints }),
                ..Default::default()
            });
        }
    }

    /// Proposes a request of the member's own (nobody waits for its answer).
    fn propose_internal(&mut self, mut req: InternalRaftRequest) {
        req.header = Some(RequestHeader { id: self.shared.ids.next(), ..Default::default() });
        if let Err(e) = self.core.propose(req.encode_to_vec()) {
            tracing::warn!(error = %e, "dropped an internal proposal; it will be retried");
        }
    }

    fn publish(&self) {
        self.shared.term.store(self.core.term(), Ordering::SeqCst);
        self.shared.leader.store(self.core.leader_id(), Ordering::SeqCst);
        self.shared.commit_index.store(self.core.commit_index(), Ordering::SeqCst);
    }
}

/// The lessor as the apply layer sees it.
struct LessorLeases<'a>(&'a mut Lessor);

impl apply::Leases for LessorLeases<'_> {
    fn exists(&self, id: i64) -> bool {
        self.0.exists(id)
    }
    fn attach(&mut self, key: &[u8], lease: i64) {
        if lease == 0 {
            self.0.detach(key);
        } else if let Err(e) = self.0.attach(key, lease) {
            // Checked before the write; reaching this is a bug, not bad input.
            panic!("attaching a key to lease {lease}: {e}");
        }
    }
    fn detach(&mut self, key: &[u8]) {
        self.0.detach(key);
    }
}

fn lease_error(e: LeaseError) -> ServerError {
    match e {
        LeaseError::NotFound | LeaseError::Expired => ServerError::LeaseNotFound,
        LeaseError::AlreadyExists => ServerError::LeaseExists,
        LeaseError::TtlTooLarge => ServerError::LeaseTtlTooLarge,
        LeaseError::NotPrimary => ServerError::NotLeader,
        other => ServerError::Internal(other.to_string()),
    }
}

fn store_lease_record(batch: &mut ketch_mvcc::Batch<'_>, lessor: &Lessor, id: i64) -> Result<(), ServerError> {
    batch.set_lease_record(id, lessor.record(id).as_deref())?;
    Ok(())
}

fn apply_request(
    batch: &mut ketch_mvcc::Batch<'_>,
    req: &InternalRaftRequest,
    lessor: &mut Lessor,
    now_ms: u64,
) -> Result<Applied, ServerError> {
    let header = |rev: i64| Some(pb::ResponseHeader { revision: rev, ..Default::default() });
    if let Some(p) = &req.put {
        return apply::put(batch, p, &mut LessorLeases(lessor)).map(Applied::Put);
    }
    if let Some(d) = &req.delete_range {
        return apply::delete_range(batch, d, &mut LessorLeases(lessor)).map(Applied::DeleteRange);
    }
    if let Some(t) = &req.txn {
        return apply::txn(batch, t, &mut LessorLeases(lessor)).map(Applied::Txn);
    }
    if let Some(c) = &req.compaction {
        return apply::compact(batch, c).map(Applied::Compaction);
    }
    if let Some(g) = &req.lease_grant {
        let granted = lessor.grant(g.id, g.ttl, now_ms).map_err(lease_error)?;
        store_lease_record(batch, lessor, granted.id)?;
        let resp = pb::LeaseGrantResponse {
            header: header(batch.rev()),
            id: granted.id,
            ttl: granted.ttl,
            error: String::new(),
        };
        return Ok(Applied::LeaseGrant(resp));
    }
    if let Some(r) = &req.lease_revoke {
        let keys = lessor.revoke(r.id).map_err(lease_error)?;
        batch.set_lease_record(r.id, None)?;
        let rev = apply::delete_keys(batch, &keys)?;
        return Ok(Applied::LeaseRevoke(pb::LeaseRevokeResponse { header: header(rev) }));
    }
    if let Some(c) = &req.lease_checkpoint {
        for cp in &c.checkpoints {
            if lessor.checkpoint(cp.id, cp.remaining_ttl) {
                store_lease_record(batch, lessor, cp.id)?;
            }
        }
        return Ok(Applied::LeaseCheckpoint(pb::LeaseCheckpointResponse { header: header(batch.rev()) }));
    }
    Err(ServerError::Internal("raft entry carries no request this member can apply".into()))
}

/// Rebuilds the lessor from its records and the keys that name a lease.
fn restore_lessor(store: &Store, cfg: &MemberConfig) -> Result<Lessor, ServerError> {
    // etcd: minimum TTL = ceil(1.5 election timeouts), in whole ticks.
    let election_ticks = (cfg.election_ms / cfg.heartbeat_ms.max(1)).max(1);
    let min_ttl_ms = (3 * election_ticks / 2) * cfg.heartbeat_ms;
    let min_ttl_secs = i64::try_from(min_ttl_ms.div_ceil(1000)).unwrap_or(i64::MAX);
    let records = store.lease_records()?.into_iter().map(|(_, r)| r);
    let mut lessor =
        Lessor::restore(records, min_ttl_secs).map_err(|e| ServerError::Internal(format!("lease records: {e}")))?;
    let view = store.read()?;
    let mut from = vec![0u8];
    loop {
        let opts = RangeOptions { limit: LEASE_ATTACH_SCAN_KEYS, ..Default::default() };
        let page = view.range(&from, &RangeEnd::Unbounded, opts)?;
        for kv in page.kvs.iter().filter(|kv| kv.lease != 0) {
            if lessor.attach(&kv.key, kv.lease).is_err() {
                tracing::warn!(key = %String::from_utf8_lossy(&kv.key), lease = kv.lease, "key names a lease that no longer exists");
            }
        }
        match page.kvs.last() {
            Some(last) if page.kvs.len() == LEASE_ATTACH_SCAN_KEYS => {
                from = last.key.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(lessor)
}
