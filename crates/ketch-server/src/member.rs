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
//! applied index always travels with the data it covers.
//!
//! In a cluster the same loop also carries raft messages: a leader hands its
//! appends to the [`Transport`] before its own fsync (replication overlaps the
//! disk), a follower acknowledges only after its fsync. Any member proposes:
//! raft forwards a follower's proposal to the leader, and the member that took
//! the request answers it once it has applied the entry itself. Linearizable
//! reads wait for a ReadIndex round (one in flight, shared by every read that
//! arrived meanwhile) and then for the member to apply up to that index. Backend commits skip
//! their own fsync except every [`DURABLE_EVERY_ENTRIES`] entries or
//! [`DURABLE_EVERY`]; after a crash the backend opens at its last durable commit
//! and the WAL replays the rest.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ketch_lease::Lessor;
use ketch_mvcc::Store;
use ketch_proto::etcdserverpb::{self as pb, InternalRaftRequest, RequestHeader};
use ketch_raft::eraftpb::{ConfState, Entry, Message, SnapshotMetadata};
use ketch_raft::{RaftConfig, RaftCore, Restored, codec};
use ketch_wal::{Wal, WalOptions};
use prost::Message as _;
use tokio::sync::oneshot;

mod applier;
mod env;
mod sim;

use applier::{Applier, ApplyMsg, restore_lessor};
pub use env::{Clock, MemberEnv, Outbox, PlantedBugs, SnapshotSource};
pub use sim::SimMember;

use crate::apply;
use crate::cluster::{MemberInfo, Membership};
use crate::error::ServerError;
use crate::ids::{self, RequestIds};
use crate::peer::{Identity, PeerClients, PeerEvent, Transport};
use crate::storage::{self, Layout};
use crate::watch::WatchHub;

/// Proposals (and linearizable reads) waiting for the raft loop; a full queue
/// answers "too many requests".
pub const PROPOSAL_QUEUE_MAX: usize = 4096;
/// Raft messages from peers waiting for the raft loop; more are dropped (raft
/// retransmits).
const STEP_QUEUE_MAX: usize = 8192;
/// Reads waiting for a ReadIndex answer or for the apply to catch up.
const READS_WAITING_MAX: usize = 100_000;
/// A ReadIndex request unanswered for two heartbeats, but at most this long,
/// is asked again (etcd: 500 ms). A new leader drops them until it has
/// committed an entry of its term, so the first reads after an election wait
/// for a retry.
const READ_INDEX_RETRY_MAX: Duration = Duration::from_millis(500);
/// How often a member re-proposes its attributes until they are applied.
const PUBLISH_RETRY: Duration = Duration::from_secs(2);
/// How long start-up waits for the apply thread to apply the log.
const START_APPLY_WAIT: Duration = Duration::from_secs(600);
/// Committed batches queued for the apply thread before the raft loop waits.
const APPLY_QUEUE_BATCHES_MAX: usize = 1024;
/// Commands handled per loop turn before persisting, to bound batch latency.
const COMMANDS_PER_TURN_MAX: usize = 1024;
/// Loop turns a lone voter may take to apply its log at start-up (it needs two).
const START_CATCH_UP_TURNS_MAX: usize = 16;
/// Expired leases revoked per loop turn (etcd revokes at most 1000 a second).
const LEASE_REVOKES_PER_TURN_MAX: usize = 100;
/// Lease checkpoints proposed per loop turn (etcd's batch limit).
const LEASE_CHECKPOINTS_PER_TURN_MAX: usize = 1000;
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
    /// Raft log entries kept in memory behind a snapshot for lagging followers
    /// (etcd's 5000, `--experimental-snapshot-catchup-entries`).
    pub snapshot_catch_up_entries: u64,
    /// Delete WAL segments a snapshot covers (`--max-wals` other than 0).
    pub purge_wals: bool,
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
    /// A member's published attributes (nobody waits for this one's answer).
    Attributes,
}

type Reply = oneshot::Sender<Result<Applied, ServerError>>;
type Done = oneshot::Sender<Result<(), ServerError>>;

enum Command {
    Propose {
        id: u64,
        data: Vec<u8>,
        reply: Reply,
    },
    /// A raft message from a peer.
    Step(Box<Message>),
    /// A linearizable read waits for this answer before reading.
    Read(Done),
    /// `target` 0: the most caught-up follower (a graceful stop's handover).
    MoveLeader {
        target: u64,
        reply: Done,
    },
    /// The apply thread moved on (reads may be released, a snapshot marker due).
    Applied,
}

/// Members found unreachable, and snapshot deliveries (member, delivered).
type PeerReports = (HashSet<u64>, Vec<(u64, bool)>);

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
    /// The cluster's members, as last applied (written by the raft loop).
    membership: RwLock<Membership>,
    /// Unary calls to other members.
    peers: PeerClients,
    /// Clients waiting for their proposals, by request ID (answered by the
    /// apply thread).
    waiters: Mutex<HashMap<u64, Reply>>,
    /// The backend's last durable commit: (applied index, term).
    durable: Mutex<(u64, u64)>,
    /// Since when (clock ms) this member has known no leader (None while it
    /// knows one).
    leaderless_since: Mutex<Option<u64>>,
    /// An `Applied` wake-up is queued for the raft loop (at most one is).
    applied_wake: AtomicBool,
    /// Why the apply thread stopped, if it failed.
    apply_error: Mutex<Option<ServerError>>,
    /// Delivery reports from the transport, drained by the raft loop each turn.
    peer_events: Mutex<PeerReports>,
    queued_proposals: AtomicUsize,
    queued_steps: AtomicUsize,
    /// Whether this member is the only voter (reads need no ReadIndex round).
    lone_voter: AtomicBool,
    /// Set once the cluster has applied this member's attributes (etcd serves
    /// clients only after its `publish` went through raft).
    ready: tokio::sync::watch::Sender<bool>,
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
    /// The member's monotonic clock.
    clock: Clock,
    /// Test-only bugs a simulator may switch on (all off in a real member).
    bugs: PlantedBugs,
    election_ms: u64,
    lease_checkpoint_interval: Option<Duration>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
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

/// Queues `cmd` for the raft loop if fewer than `max` of its kind are waiting.
fn enqueue(shared: &Shared, counter: &AtomicUsize, max: usize, cmd: Command) -> Result<(), Command> {
    if counter.fetch_add(1, Ordering::SeqCst) >= max {
        counter.fetch_sub(1, Ordering::SeqCst);
        return Err(cmd);
    }
    shared.tx.try_send(cmd).map_err(|e| {
        counter.fetch_sub(1, Ordering::SeqCst);
        match e {
            TrySendError::Full(c) | TrySendError::Disconnected(c) => c,
        }
    })
}

impl Member {
    /// Opens (or bootstraps) the data directory and starts the raft loop and
    /// apply threads.
    pub fn start(cfg: MemberConfig) -> Result<(Member, JoinHandle<Result<(), ServerError>>), ServerError> {
        let (member, mut raft_loop, mut applier) = Member::open(cfg, MemberEnv::real())?;
        let internal = |what: &str, e: &dyn std::fmt::Display| ServerError::Internal(format!("{what}: {e}"));
        let applier = std::thread::Builder::new()
            .name("ketch-apply".into())
            .spawn(move || {
                let result = applier.run();
                if let Err(e) = &result {
                    tracing::error!(error = %e, "apply thread stopped");
                    *applier.shared.apply_error.lock().expect("apply error lock poisoned") = Some(e.clone());
                    applier.shared.stop_requested.store(true, Ordering::SeqCst);
                    let _ = applier.shared.tx.try_send(Command::Applied);
                }
                result
            })
            .map_err(|e| internal("spawning the apply thread", &e))?;
        raft_loop.applier = Some(applier);
        // Serve nothing until every entry in the log is applied: the backend may
        // have rolled back to its last durable commit, and reads must not see that.
        raft_loop.catch_up_on_start()?;
        let handle = std::thread::Builder::new()
            .name("ketch-raft".into())
            .spawn(move || {
                let result = raft_loop.run();
                raft_loop.shared.stopped.store(true, Ordering::SeqCst);
                // Nobody waits for readiness of a stopped member.
                raft_loop.shared.ready.send_replace(true);
                if let Err(e) = &result {
                    tracing::error!(error = %e, "raft loop stopped");
                }
                result
            })
            .map_err(|e| internal("spawning the raft loop", &e))?;
        Ok((member, handle))
    }

    /// Opens (or bootstraps) the member's state in `env`: the handle, the raft
    /// loop and the applier, none of them running yet.
    fn open(cfg: MemberConfig, env: MemberEnv) -> Result<(Member, RaftLoop, Applier), ServerError> {
        let layout = Layout::new(&cfg.data_dir);
        let internal = |what: &str, e: &dyn std::fmt::Display| ServerError::Internal(format!("{what}: {e}"));
        let store = match env.store.clone() {
            Some(store) => store,
            None => {
                layout.check_not_foreign()?;
                std::fs::create_dir_all(layout.member_dir())
                    .map_err(|e| internal(&layout.member_dir().display().to_string(), &e))?;
                Arc::new(Store::open(&layout.backend_path())?)
            }
        };
        let existing = Wal::exists_in(&*env.wal_fs, &layout.wal_dir());

        let (member_id, cluster_id, membership) = if existing {
            let member_id = storage::u64_meta(store.meta(storage::META_MEMBER_ID)?);
            let cluster_id = storage::u64_meta(store.meta(storage::META_CLUSTER_ID)?);
            match (member_id, cluster_id) {
                (Some(m), Some(c)) => {
                    let membership = match store.meta(storage::META_MEMBERS)? {
                        Some(bytes) => Membership::decode(&bytes)?,
                        // Written by a single-member build before membership was stored.
                        None => Membership::new([own_info(&cfg, m)]),
                    };
                    if !membership.contains(m) {
                        return Err(ServerError::Internal(format!(
                            "member {m:x} has been removed from cluster {c:x}: its data dir must not be reused"
                        )));
                    }
                    tracing::info!(member = %format!("{m:x}"), cluster = %format!("{c:x}"), "restarting member; --initial-* flags are ignored");
                    (m, c, membership)
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
            let membership = bootstrap_membership(&cfg);
            let batch = store.batch()?;
            batch.commit(
                &[
                    (storage::META_MEMBER_ID, &m.to_le_bytes()),
                    (storage::META_CLUSTER_ID, &c.to_le_bytes()),
                    (storage::META_MEMBERS, &membership.encode()),
                ],
                true,
            )?;
            tracing::info!(member = %format!("{m:x}"), cluster = %format!("{c:x}"), members = membership.ids().len(), "starting a new cluster");
            (m, c, membership)
        };

        let (mut wal, replay) = Wal::open_in(env.wal_fs.clone(), &layout.wal_dir(), WalOptions::default())
            .map_err(|e| internal("opening the WAL", &e))?;
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
                meta.set_conf_state(ConfState { voters: membership.ids(), ..Default::default() });
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
        let installing = store.meta(storage::META_SNAPSHOT_INSTALLING)?.is_some_and(|v| v == b"1");
        let log_end = entries.last().map_or(snapshot.index, |e| e.index);
        let (snapshot, entries, hard_state) = if installing && applied > log_end {
            // A crash came after a snapshot install replaced the store and
            // before the WAL recorded it: the store is the snapshot.
            tracing::warn!(applied, log_end, "finishing a snapshot install cut short by a crash");
            let mut meta = SnapshotMetadata { index: applied, term: applied_term, ..Default::default() };
            meta.set_conf_state(ConfState { voters: membership.ids(), ..Default::default() });
            let mut hs = hard_state.unwrap_or_default();
            if hs.term < applied_term {
                hs.term = applied_term;
                hs.vote = 0;
            }
            hs.commit = hs.commit.max(applied);
            wal.mark_snapshot(applied, &codec::encode_snapshot_metadata(&meta)).map_err(|e| internal("WAL", &e))?;
            wal.set_hard_state(&codec::encode_hard_state(&hs)).map_err(|e| internal("WAL", &e))?;
            wal.sync().map_err(|e| internal("WAL", &e))?;
            (meta, Vec::new(), Some(hs))
        } else {
            (snapshot, entries, hard_state)
        };
        if installing {
            store.batch()?.commit(&[(storage::META_SNAPSHOT_INSTALLING, b"0")], true)?;
        }
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
            seed: env.seed,
        };
        let restored = Restored { snapshot, hard_state, entries, applied };
        let mut core = RaftCore::new(&raft_cfg, restored).map_err(|e| internal("restoring raft state", &e))?;
        let lone_voter = voters == [member_id];
        if lone_voter {
            // A lone voter needs no election timeout to know it wins.
            core.campaign().map_err(|e| internal("campaign", &e))?;
        }

        let lessor = restore_lessor(&store, &cfg)?;

        let (tx, rx) = mpsc::sync_channel(PROPOSAL_QUEUE_MAX + STEP_QUEUE_MAX + 64);
        let me = Identity { cluster_id, member_id };
        let own = membership.get(member_id).cloned().unwrap_or_else(|| own_info(&cfg, member_id));
        let shared = Arc::new(Shared {
            store: store.clone(),
            tx,
            ids: RequestIds::new(member_id, env.id_epoch_ms),
            member_id,
            cluster_id,
            name: cfg.name.clone(),
            peer_urls: own.peer_urls.clone(),
            client_urls: cfg.advertise_client_urls.clone(),
            membership: RwLock::new(membership.clone()),
            peers: PeerClients::new(me),
            waiters: Mutex::new(HashMap::new()),
            durable: Mutex::new((applied, applied_term)),
            applied_wake: AtomicBool::new(false),
            leaderless_since: Mutex::new(None),
            apply_error: Mutex::new(None),
            peer_events: Mutex::new((HashSet::new(), Vec::new())),
            queued_proposals: AtomicUsize::new(0),
            queued_steps: AtomicUsize::new(0),
            lone_voter: AtomicBool::new(lone_voter),
            ready: tokio::sync::watch::Sender::new(false),
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
            clock: env.clock.clone(),
            bugs: env.bugs,
            election_ms: cfg.election_ms,
            lease_checkpoint_interval: cfg.lease_checkpoint_interval,
        });
        let events_shared = Arc::downgrade(&shared);
        let events: crate::peer::EventSink = Arc::new(move |event| {
            if let Some(shared) = events_shared.upgrade() {
                let mut pending = shared.peer_events.lock().expect("peer event lock poisoned");
                match event {
                    PeerEvent::Unreachable(id) => {
                        pending.0.insert(id);
                    }
                    PeerEvent::Snapshot(id, ok) => pending.1.push((id, ok)),
                }
            }
        });
        let runtime = tokio::runtime::Handle::try_current().ok();
        let transport: Box<dyn Outbox> = match env.outbox {
            Some(outbox) => outbox,
            None => {
                let runtime = runtime.as_ref().ok_or_else(|| {
                    ServerError::Internal("a member with the gRPC transport must start inside a tokio runtime".into())
                })?;
                let peer_list: Vec<(u64, Vec<String>)> =
                    membership.iter().map(|m| (m.id, m.peer_urls.clone())).collect();
                Box::new(Transport::start(runtime, me, &peer_list, events))
            }
        };
        let (apply_tx, apply_rx) = mpsc::sync_channel(APPLY_QUEUE_BATCHES_MAX);
        let applier = Applier {
            store,
            shared: shared.clone(),
            cfg: cfg.clone(),
            runtime,
            snapshots: env.snapshots.clone(),
            rx: apply_rx,
            applied,
            applied_term,
            durable_applied: applied,
            last_durable_at: shared.now_ms(),
            installing: false,
        };
        let raft_loop = RaftLoop {
            core,
            wal,
            rx,
            shared: shared.clone(),
            transport,
            cfg: cfg.clone(),
            apply_tx: Some(apply_tx),
            applier: None,
            inline: None,
            lone_voter_at_start: lone_voter,
            handed: applied,
            snapshot_index,
            snapshot_count: cfg.snapshot_count.max(1),
            tick: Duration::from_millis(cfg.heartbeat_ms.max(1)),
            was_leader: false,
            reads: Reads::default(),
            transfer: None,
            published_at: None,
        };
        Ok((Member { shared }, raft_loop, applier))
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
    pub async fn propose(&self, req: InternalRaftRequest) -> Result<Applied, ServerError> {
        let rx = self.submit_proposal(req)?;
        match tokio::time::timeout(self.shared.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::Timeout),
        }
    }

    fn submit_proposal(
        &self,
        mut req: InternalRaftRequest,
    ) -> Result<oneshot::Receiver<Result<Applied, ServerError>>, ServerError> {
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
        let shared = &self.shared;
        if enqueue(shared, &shared.queued_proposals, PROPOSAL_QUEUE_MAX, Command::Propose { id, data, reply }).is_err()
        {
            return Err(ServerError::TooManyRequests);
        }
        Ok(rx)
    }

    /// Waits until this member may serve a linearizable read: a ReadIndex round
    /// confirmed the leader's commit index, and this member has applied it.
    pub async fn linearizable_barrier(&self) -> Result<(), ServerError> {
        let Some(rx) = self.submit_read_barrier()? else { return Ok(()) };
        match tokio::time::timeout(self.shared.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::Timeout),
        }
    }

    fn submit_read_barrier(&self) -> Result<Option<oneshot::Receiver<Result<(), ServerError>>>, ServerError> {
        if self.is_stopped() {
            return Err(ServerError::Stopped);
        }
        if self.shared.lone_voter.load(Ordering::SeqCst) {
            // A lone voter applies every write before acknowledging it.
            return Ok(None);
        }
        let (reply, rx) = oneshot::channel();
        let shared = &self.shared;
        if enqueue(shared, &shared.queued_proposals, PROPOSAL_QUEUE_MAX, Command::Read(reply)).is_err() {
            return Err(ServerError::TooManyRequests);
        }
        Ok(Some(rx))
    }

    fn peer_event(&self, event: PeerEvent) {
        let mut pending = self.shared.peer_events.lock().expect("peer event lock poisoned");
        match event {
            PeerEvent::Unreachable(id) => {
                pending.0.insert(id);
            }
            PeerEvent::Snapshot(id, ok) => pending.1.push((id, ok)),
        }
    }

    /// Queues a raft message from a peer; dropped if the loop is too far behind.
    pub fn step(&self, msg: Message) {
        let shared = &self.shared;
        let _ = enqueue(shared, &shared.queued_steps, STEP_QUEUE_MAX, Command::Step(Box::new(msg)));
    }

    /// Hands leadership to `target` (this member must lead); waits until it has.
    pub async fn move_leader(&self, target: u64) -> Result<(), ServerError> {
        let (reply, rx) = oneshot::channel();
        let shared = &self.shared;
        if enqueue(shared, &shared.queued_proposals, PROPOSAL_QUEUE_MAX, Command::MoveLeader { target, reply }).is_err()
        {
            return Err(ServerError::TooManyRequests);
        }
        match tokio::time::timeout(self.shared.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::LeaderTransferTimeout),
        }
    }

    /// Resolves once the cluster has applied this member's attributes (so
    /// `MemberList` names it); the binary serves clients only after that.
    pub async fn wait_ready(&self) {
        let mut rx = self.shared.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// If this member leads, hands leadership to its most caught-up follower
    /// and waits (at most two election timeouts) until that member leads, so
    /// a graceful stop costs the cluster no election (etcd's
    /// `TransferLeadership` on stop).
    pub async fn step_down(&self) {
        let (reply, rx) = oneshot::channel();
        let shared = &self.shared;
        if enqueue(shared, &shared.queued_proposals, PROPOSAL_QUEUE_MAX, Command::MoveLeader { target: 0, reply })
            .is_err()
        {
            return;
        }
        let limit = Duration::from_millis(2 * self.shared.election_ms);
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "leadership handover failed"),
            _ => tracing::warn!("leadership handover did not finish in time"),
        }
    }

    /// How long this member has known no leader (zero while it knows one).
    pub fn leader_lost_for(&self) -> Duration {
        let since = *self.shared.leaderless_since.lock().expect("leaderless lock poisoned");
        since.map_or(Duration::ZERO, |t| Duration::from_millis(self.shared.now_ms().saturating_sub(t)))
    }

    /// etcd's `monitorLeader`: streams opened with `hasleader` end with "no
    /// leader" once the member has known no leader for three election timeouts.
    pub fn leader_lost_too_long(&self) -> bool {
        self.leader_lost_for() >= Duration::from_millis(3 * self.shared.election_ms)
    }

    /// How often a stream that requires a leader checks for one.
    pub fn election_interval(&self) -> Duration {
        Duration::from_millis(self.shared.election_ms.max(1))
    }

    pub fn membership(&self) -> Membership {
        self.shared.membership.read().expect("membership lock poisoned").clone()
    }

    pub fn is_cluster_member(&self, id: u64) -> bool {
        self.shared.membership.read().expect("membership lock poisoned").contains(id)
    }

    /// The leader's ID and peer URLs, if there is a leader and it is another member.
    fn remote_leader(&self) -> Result<Option<(u64, Vec<String>)>, ServerError> {
        let leader = self.shared.leader.load(Ordering::SeqCst);
        if leader == 0 {
            return Err(ServerError::NoLeader);
        }
        if leader == self.shared.member_id {
            return Ok(None);
        }
        let membership = self.shared.membership.read().expect("membership lock poisoned");
        let urls = membership.get(leader).map(|m| m.peer_urls.clone()).ok_or(ServerError::NoLeader)?;
        Ok(Some((leader, urls)))
    }

    /// Renews a lease on the leader (this member, or through the peer link).
    /// `None` means this member leads: the caller answers from its own lessor.
    pub async fn forward_lease_renew(&self, id: i64) -> Result<Option<i64>, ServerError> {
        let Some((leader, urls)) = self.remote_leader()? else { return Ok(None) };
        let req = pb::LeaseKeepAliveRequest { id };
        let resp = self.shared.peers.lease_renew(leader, &urls, req, self.shared.request_timeout).await?;
        Ok(Some(resp.ttl))
    }

    /// A lease's time-to-live from the leader; `None` means ask this member.
    pub async fn forward_lease_time_to_live(
        &self,
        req: pb::LeaseTimeToLiveRequest,
    ) -> Result<Option<pb::LeaseTimeToLiveResponse>, ServerError> {
        let Some((leader, urls)) = self.remote_leader()? else { return Ok(None) };
        Ok(Some(self.shared.peers.lease_time_to_live(leader, &urls, req, self.shared.request_timeout).await?))
    }
}

/// This member's entry in the membership, from its flags.
fn own_info(cfg: &MemberConfig, id: u64) -> MemberInfo {
    let peer_urls = cfg
        .initial_cluster
        .iter()
        .find(|(n, _)| *n == cfg.name)
        .map(|(_, urls)| urls.clone())
        .unwrap_or_else(|| cfg.initial_advertise_peer_urls.clone());
    MemberInfo {
        id,
        name: cfg.name.clone(),
        peer_urls,
        client_urls: cfg.advertise_client_urls.clone(),
        is_learner: false,
    }
}

/// The founding members from `--initial-cluster`. Names and client URLs are
/// unknown until each member publishes its own through raft (so every member
/// learns them the same way, in log order).
fn bootstrap_membership(cfg: &MemberConfig) -> Membership {
    Membership::new(cfg.initial_cluster.iter().map(|(_, urls)| MemberInfo {
        id: ids::member_id(urls, &cfg.initial_cluster_token, None),
        name: String::new(),
        peer_urls: urls.clone(),
        client_urls: Vec::new(),
        is_learner: false,
    }))
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
    rx: Receiver<Command>,
    shared: Arc<Shared>,
    transport: Box<dyn Outbox>,
    cfg: MemberConfig,
    /// Committed entries go to the apply thread through this (None once stopping).
    apply_tx: Option<SyncSender<ApplyMsg>>,
    applier: Option<JoinHandle<Result<(), ServerError>>>,
    /// In a simulation, the applier runs on the caller's thread, draining
    /// `apply_tx` when told to (and when the raft loop must wait for it).
    inline: Option<Box<Applier>>,
    /// Whether this member was the only voter when it started.
    lone_voter_at_start: bool,
    /// Last raft index handed to the apply thread.
    handed: u64,
    snapshot_index: u64,
    snapshot_count: u64,
    tick: Duration,
    /// Leadership as last seen, to promote or demote the lessor on changes.
    was_leader: bool,
    reads: Reads,
    /// A leadership handover in progress: target, deadline (clock ms), who
    /// waits for it.
    transfer: Option<(u64, u64, Option<Done>)>,
    /// When (clock ms) this member last proposed its attributes.
    published_at: Option<u64>,
}

/// Linearizable reads in their three stages: waiting for the next ReadIndex
/// round, in the round now in flight, and confirmed but waiting for the apply.
#[derive(Default)]
struct Reads {
    pending: Vec<Done>,
    in_flight: Option<ReadRound>,
    next_ctx: u64,
    confirmed: Vec<(u64, Vec<Done>)>,
}

struct ReadRound {
    ctx: Vec<u8>,
    /// Clock ms.
    asked_at: u64,
    waiters: Vec<Done>,
}

impl Reads {
    fn waiting(&self) -> usize {
        self.pending.len()
            + self.in_flight.as_ref().map_or(0, |r| r.waiters.len())
            + self.confirmed.iter().map(|(_, w)| w.len()).sum::<usize>()
    }

    fn fail_all(&mut self, err: ServerError) {
        let rounds = self.in_flight.take().map(|r| r.waiters).into_iter();
        for w in self.pending.drain(..).chain(rounds.flatten()).chain(self.confirmed.drain(..).flat_map(|(_, w)| w)) {
            let _ = w.send(Err(err.clone()));
        }
    }
}

fn wal_err(e: ketch_wal::WalError) -> ServerError {
    ServerError::Internal(format!("WAL: {e}"))
}

impl RaftLoop {
    /// Applies the whole log before the member serves. A lone voter commits
    /// everything in its log as soon as its new term's first entry is durable, so
    /// a few turns suffice; a cluster member applies what it knows committed
    /// and learns the rest from the leader (linearizable reads wait for that).
    fn catch_up_on_start(&mut self) -> Result<(), ServerError> {
        let lone_voter = self.lone_voter_at_start;
        self.process_ready()?;
        if lone_voter {
            for _ in 0..START_CATCH_UP_TURNS_MAX {
                if self.handed >= self.core.last_index() {
                    break;
                }
                self.process_ready()?;
            }
            if self.handed < self.core.last_index() {
                return Err(ServerError::Internal(format!(
                    "could not commit the log at start-up: {} of {}",
                    self.handed,
                    self.core.last_index()
                )));
            }
        }
        // Wait until the apply thread has applied what was handed over.
        let deadline = std::time::Instant::now() + START_APPLY_WAIT;
        while self.shared.applied_index.load(Ordering::SeqCst) < self.handed {
            if let Some(applier) = &mut self.inline {
                applier.drain(usize::MAX)?;
                continue;
            }
            if let Some(e) = self.shared.apply_error.lock().expect("apply error lock poisoned").clone() {
                return Err(e);
            }
            if std::time::Instant::now() >= deadline {
                return Err(ServerError::Internal(format!(
                    "could not apply the log at start-up within {START_APPLY_WAIT:?}: applied {} of {}",
                    self.shared.applied_index.load(Ordering::SeqCst),
                    self.handed
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if lone_voter {
            self.lease_duties();
        }
        self.publish();
        Ok(())
    }

    fn run(&mut self) -> Result<(), ServerError> {
        let mut next_tick = Instant::now() + self.tick;
        let mut stopping: Option<u64> = None;
        loop {
            if stopping.is_none() && self.shared.stop_requested.load(Ordering::SeqCst) {
                // Hand leadership over first, so the cluster needs no election.
                let deadline = self.shared.now_ms() + self.shared.election_ms * 2;
                if let Some(target) = self.core.most_caught_up_follower() {
                    tracing::info!(to = %format!("{target:x}"), "stopping: handing leadership over");
                    self.core.transfer_leader(target);
                    self.transfer = Some((target, deadline, None));
                }
                stopping = Some(deadline);
            }
            if let Some(deadline) = stopping
                && (self.transfer.is_none() || self.shared.now_ms() >= deadline)
            {
                break;
            }
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
            if now >= next_tick {
                // After a long stall (a snapshot install), tick once rather than
                // firing a burst of elapsed ticks that would start an election.
                self.core.tick();
                next_tick = now + self.tick;
            }
            self.turn()?;
        }
        // Clean shutdown: the apply thread finishes what it was handed and makes
        // the backend durable, so the next start replays nothing.
        self.apply_tx = None;
        if let Some(applier) = self.applier.take() {
            match applier.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "apply thread failed"),
                Err(_) => tracing::error!("apply thread panicked"),
            }
        }
        for (_, reply) in self.shared.waiters.lock().expect("waiters lock poisoned").drain() {
            let _ = reply.send(Err(ServerError::Stopped));
        }
        self.reads.fail_all(ServerError::Stopped);
        if let Some((_, _, Some(reply))) = self.transfer.take() {
            let _ = reply.send(Err(ServerError::Stopped));
        }
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Propose { reply, .. } => {
                    let _ = reply.send(Err(ServerError::Stopped));
                }
                Command::Read(reply) | Command::MoveLeader { reply, .. } => {
                    let _ = reply.send(Err(ServerError::Stopped));
                }
                Command::Step(_) | Command::Applied => {}
            }
        }
        match self.shared.apply_error.lock().expect("apply error lock poisoned").clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Everything a loop turn does after taking in commands and ticks.
    fn turn(&mut self) -> Result<(), ServerError> {
        self.peer_events();
        self.start_read_round();
        self.process_ready()?;
        self.lease_duties();
        self.publish_attributes();
        self.check_transfer();
        self.maybe_snapshot()?;
        self.release_reads();
        if let Some(e) = self.shared.apply_error.lock().expect("apply error lock poisoned").clone() {
            return Err(e);
        }
        self.publish();
        Ok(())
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Propose { id, data, reply } => {
                self.shared.queued_proposals.fetch_sub(1, Ordering::SeqCst);
                match self.core.propose(data) {
                    Ok(()) => {
                        self.shared.waiters.lock().expect("waiters lock poisoned").insert(id, reply);
                    }
                    Err(ketch_raft::RaftError::ProposalDropped) => {
                        let _ = reply.send(Err(ServerError::NoLeader));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ServerError::Internal(e.to_string())));
                    }
                }
            }
            Command::Applied => self.shared.applied_wake.store(false, Ordering::SeqCst),
            Command::Step(msg) => {
                self.shared.queued_steps.fetch_sub(1, Ordering::SeqCst);
                if let Err(e) = self.core.step(*msg) {
                    tracing::debug!(error = %e, "raft rejected a peer message");
                }
            }
            Command::Read(reply) => {
                self.shared.queued_proposals.fetch_sub(1, Ordering::SeqCst);
                if self.reads.waiting() >= READS_WAITING_MAX {
                    let _ = reply.send(Err(ServerError::TooManyRequests));
                } else {
                    self.reads.pending.push(reply);
                }
            }
            Command::MoveLeader { target, reply } => {
                self.shared.queued_proposals.fetch_sub(1, Ordering::SeqCst);
                let target = match target {
                    0 => match self.core.most_caught_up_follower() {
                        Some(t) => t,
                        // Not leading, or nobody to hand over to.
                        None => {
                            let _ = reply.send(Ok(()));
                            return;
                        }
                    },
                    t => t,
                };
                if !self.core.is_leader() {
                    let _ = reply.send(Err(ServerError::NotLeader));
                } else if target == self.shared.member_id {
                    let _ = reply.send(Ok(()));
                } else if !self.core.voters().contains(&target) {
                    let _ = reply.send(Err(ServerError::BadLeaderTransferee));
                } else {
                    if let Some((_, _, Some(old))) = self.transfer.take() {
                        let _ = old.send(Err(ServerError::LeaderChanged));
                    }
                    tracing::info!(to = %format!("{target:x}"), "moving leadership");
                    self.core.transfer_leader(target);
                    let deadline = self.shared.now_ms() + self.shared.request_timeout.as_millis() as u64;
                    self.transfer = Some((target, deadline, Some(reply)));
                }
            }
        }
    }

    /// Feeds the transport's delivery reports to raft.
    fn peer_events(&mut self) {
        let (unreachable, snapshots) = {
            let mut pending = self.shared.peer_events.lock().expect("peer event lock poisoned");
            (std::mem::take(&mut pending.0), std::mem::take(&mut pending.1))
        };
        for id in unreachable {
            self.core.report_unreachable(id);
        }
        for (id, delivered) in snapshots {
            self.core.report_snapshot(id, delivered);
        }
    }

    /// Completes (or gives up on) a leadership handover.
    fn check_transfer(&mut self) {
        let Some((target, deadline, _)) = &self.transfer else { return };
        let (target, deadline) = (*target, *deadline);
        let done = self.core.leader_id() == target;
        if (done || self.shared.now_ms() >= deadline)
            && let Some((_, _, Some(reply))) = self.transfer.take()
        {
            let _ = reply.send(if done { Ok(()) } else { Err(ServerError::LeaderTransferTimeout) });
        }
    }

    /// Starts a ReadIndex round for the reads that arrived since the last one,
    /// or asks again when the round in flight went unanswered.
    fn start_read_round(&mut self) {
        if let Some(round) = &mut self.reads.in_flight {
            let retry_ms = (self.tick * 2).min(READ_INDEX_RETRY_MAX).as_millis() as u64;
            let now = self.shared.now_ms();
            if now.saturating_sub(round.asked_at) >= retry_ms {
                round.waiters.retain(|w| !w.is_closed());
                round.asked_at = now;
                self.core.read_index(round.ctx.clone());
            }
            return;
        }
        if self.reads.pending.is_empty() {
            return;
        }
        let lone_leader = self.shared.lone_voter.load(Ordering::SeqCst) && self.core.is_leader();
        if lone_leader || self.shared.bugs.read_without_read_index {
            // Everything acknowledged is applied already.
            for w in self.reads.pending.drain(..) {
                let _ = w.send(Ok(()));
            }
            return;
        }
        self.reads.next_ctx += 1;
        let ctx = self.reads.next_ctx.to_be_bytes().to_vec();
        self.core.read_index(ctx.clone());
        let waiters = std::mem::take(&mut self.reads.pending);
        self.reads.in_flight = Some(ReadRound { ctx, asked_at: self.shared.now_ms(), waiters });
    }

    /// ReadIndex answers: the reads of that round wait for the apply to reach
    /// the index.
    fn read_states(&mut self, states: Vec<ketch_raft::ReadState>) {
        for rs in states {
            if self.reads.in_flight.as_ref().is_some_and(|r| r.ctx == rs.request_ctx) {
                let round = self.reads.in_flight.take().expect("checked above");
                self.reads.confirmed.push((rs.index, round.waiters));
            }
        }
        self.release_reads();
    }

    fn release_reads(&mut self) {
        let applied = self.shared.applied_index.load(Ordering::SeqCst);
        let (ready, waiting): (Vec<_>, Vec<_>) = self.reads.confirmed.drain(..).partition(|(i, _)| *i <= applied);
        self.reads.confirmed = waiting;
        for w in ready.into_iter().flat_map(|(_, w)| w) {
            let _ = w.send(Ok(()));
        }
    }

    fn process_ready(&mut self) -> Result<(), ServerError> {
        while let Some(rd) = self.core.ready() {
            // A leader replicates while it persists (raft thesis 10.2.1).
            self.transport.send(rd.messages);
            if let Some(meta) = rd.snapshot {
                self.install_snapshot(meta)?;
            }
            // (Entries committed in a ready are in the log already: they go to
            // the apply thread while this thread persists the new ones.)
            crash_point!("raft_before_save");
            for e in &rd.entries {
                self.wal.append_entry(e.index, &codec::encode_entry(e)).map_err(wal_err)?;
            }
            if let Some(hs) = &rd.hard_state {
                self.wal.set_hard_state(&codec::encode_hard_state(hs)).map_err(wal_err)?;
            }
            if rd.must_sync && !self.shared.bugs.ack_before_fsync {
                self.wal.sync().map_err(wal_err)?;
            }
            crash_point!("raft_after_save");
            if self.shared.bugs.apply_uncommitted {
                let uncommitted: Vec<Entry> = rd.entries.iter().filter(|e| e.index > self.handed).cloned().collect();
                if let Some(last) = uncommitted.last().map(|e| e.index) {
                    self.handed = last;
                    self.send_to_applier(ApplyMsg::Entries(uncommitted))?;
                }
            }
            self.read_states(rd.read_states);
            self.hand_over(rd.committed)?;
            let after = self.core.persisted();
            // What depends on the persisted state goes out only now.
            self.transport.send(rd.persisted_messages);
            self.transport.send(after.messages);
            if after.commit_index.is_some() {
                // Recorded without a sync: it becomes durable with the next batch.
                self.wal.set_hard_state(&codec::encode_hard_state(&self.core.hard_state())).map_err(wal_err)?;
            }
            self.hand_over(after.committed)?;
            self.release_reads();
        }
        Ok(())
    }

    /// Proposes this member's name and client URLs until the cluster has them
    /// (etcd's `publish`).
    fn publish_attributes(&mut self) {
        let stored = {
            let membership = self.shared.membership.read().expect("membership lock poisoned");
            membership.get(self.shared.member_id).map(|m| (m.name.clone(), m.client_urls.clone()))
        };
        let wanted = (self.shared.name.clone(), self.shared.client_urls.clone());
        if stored.as_ref() == Some(&wanted) {
            self.shared.ready.send_if_modified(|r| !std::mem::replace(r, true));
            return;
        }
        if self.core.leader_id() == 0 {
            return;
        }
        let now = self.shared.now_ms();
        if self.published_at.is_some_and(|t| now.saturating_sub(t) < PUBLISH_RETRY.as_millis() as u64) {
            return;
        }
        self.published_at = Some(now);
        let attrs = ketch_proto::membershippb::ClusterMemberAttrSetRequest {
            member_id: self.shared.member_id,
            member_attributes: Some(ketch_proto::membershippb::Attributes { name: wanted.0, client_urls: wanted.1 }),
        };
        self.propose_internal(InternalRaftRequest { cluster_member_attr_set: Some(attrs), ..Default::default() });
    }

    /// Hands committed entries to the apply thread (waits if it is
    /// [`APPLY_QUEUE_BATCHES_MAX`] batches behind).
    fn hand_over(&mut self, entries: Vec<Entry>) -> Result<(), ServerError> {
        let Some(last) = entries.last().map(|e| e.index) else { return Ok(()) };
        let entries: Vec<Entry> = entries.into_iter().filter(|e| e.index > self.handed).collect();
        self.core.applied_to(last);
        if entries.is_empty() {
            return Ok(()); // covered by an installed snapshot
        }
        self.handed = last;
        self.send_to_applier(ApplyMsg::Entries(entries))
    }

    /// Queues work for the applier; an inline applier works off a full queue
    /// first.
    fn send_to_applier(&mut self, msg: ApplyMsg) -> Result<(), ServerError> {
        let tx = self.apply_tx.as_ref().ok_or(ServerError::Stopped)?;
        match &mut self.inline {
            None => tx.send(msg).map_err(|_| self.apply_failure()),
            Some(applier) => match tx.try_send(msg) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(msg)) => {
                    applier.drain(usize::MAX)?;
                    tx.try_send(msg).map_err(|_| ServerError::Internal("the apply queue is stuck".into()))
                }
                Err(TrySendError::Disconnected(_)) => Err(ServerError::Stopped),
            },
        }
    }

    fn apply_failure(&self) -> ServerError {
        self.shared
            .apply_error
            .lock()
            .expect("apply error lock poisoned")
            .clone()
            .unwrap_or_else(|| ServerError::Internal("the apply thread stopped".into()))
    }

    /// Has the apply thread replace the store with a copy of another member's
    /// covering the leader's snapshot `meta` (after everything handed before),
    /// then records it in the WAL at the installed store's applied index (which
    /// may be past the snapshot's: entries up to it are skipped on apply).
    fn install_snapshot(&mut self, meta: SnapshotMetadata) -> Result<(), ServerError> {
        crash_point!("raft_before_apply_snap");
        let (reply, answer) = mpsc::sync_channel(1);
        let leader = self.core.leader_id();
        let conf_state = meta.get_conf_state().clone();
        self.send_to_applier(ApplyMsg::Snapshot { meta, leader, reply })?;
        if let Some(applier) = &mut self.inline {
            applier.drain(usize::MAX)?;
        }
        let (applied, term) = answer.recv().map_err(|_| self.apply_failure())??;
        crash_point!("raft_after_apply_snap");
        let mut marker = SnapshotMetadata { index: applied, term, ..Default::default() };
        marker.set_conf_state(conf_state);
        self.wal.mark_snapshot(applied, &codec::encode_snapshot_metadata(&marker)).map_err(wal_err)?;
        self.wal.sync().map_err(wal_err)?;
        self.handed = applied;
        self.snapshot_index = applied;
        self.was_leader = false;
        Ok(())
    }

    /// When the backend durably holds `--snapshot-count` entries past the last
    /// snapshot: take one (a WAL marker; the backend itself is the snapshot)
    /// and drop old log.
    fn maybe_snapshot(&mut self) -> Result<(), ServerError> {
        let (index, term) = *self.shared.durable.lock().expect("durable lock poisoned");
        if index < self.snapshot_index || index - self.snapshot_index < self.snapshot_count {
            return Ok(());
        }
        let mut meta = SnapshotMetadata { index, term, ..Default::default() };
        meta.set_conf_state(self.core.conf_state());
        crash_point!("raft_before_save_snap");
        self.wal.mark_snapshot(index, &codec::encode_snapshot_metadata(&meta)).map_err(wal_err)?;
        self.wal.sync().map_err(wal_err)?;
        crash_point!("raft_after_save_snap");
        let purged = if self.cfg.purge_wals { self.wal.purge().map_err(wal_err)? } else { 0 };
        crash_point!("raft_after_wal_purge", purged > 0);
        self.core
            .compact_log(index.saturating_sub(self.cfg.snapshot_catch_up_entries).max(1))
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
        self.shared.lone_voter.store(self.core.voters() == [self.shared.member_id], Ordering::SeqCst);
        self.shared.term.store(self.core.term(), Ordering::SeqCst);
        self.shared.leader.store(self.core.leader_id(), Ordering::SeqCst);
        {
            let mut since = self.shared.leaderless_since.lock().expect("leaderless lock poisoned");
            match (self.core.leader_id(), since.is_some()) {
                (0, false) => *since = Some(self.shared.now_ms()),
                (0, true) => {}
                (_, _) => *since = None,
            }
        }
        self.shared.commit_index.store(self.core.commit_index(), Ordering::SeqCst);
    }
}
