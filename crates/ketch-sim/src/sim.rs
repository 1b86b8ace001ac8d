//! The scheduler: one thread, one seeded random generator, simulated time.
//!
//! Each step advances the clock by a few milliseconds and, in a random
//! order: applies a fault when one is due, delivers the messages whose time
//! has come, ticks the members whose heartbeat interval has passed, runs one
//! loop turn of each member, lets each applier work off some of its queue
//! (or not: apply lags behind in a real member too), and lets the clients
//! send and collect. Everything random comes from the one generator, so a
//! seed replays the same run; [`Report::trace`] fingerprints it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ketch_check::convergence::{MemberDigest, check_convergence};
use ketch_check::durability::{FinalState, check_durability};
use ketch_check::history::{History, KeyValue};
use ketch_check::linearizability::{CheckConfig, Verdict};
use ketch_check::per_key::check_linearizable_per_key;
use ketch_check::watch::{EventLog, check_watchers};
use ketch_mvcc::{RangeEnd, RangeOptions, Store};
use ketch_raft::eraftpb::MessageType;
use ketch_server::ServerError;
use ketch_server::member::{Clock, Member, MemberConfig, MemberEnv, PlantedBugs, SimMember, SnapshotSource};
use ketch_server::storage;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::client::Client;
use crate::disk::Disk;
use crate::lease::LeaseClient;
use crate::net::{Net, SimOutbox, Weather};
use crate::watch::{SimWatcher, event};

/// Heartbeat and election timeout, as etcd's defaults.
const HEARTBEAT_MS: u64 = 100;
const ELECTION_MS: u64 = 1000;
/// How long a client waits for an answer before calling it unknown.
const CLIENT_TIMEOUT_MS: u64 = 3000;
/// The liveness bound: after healing, a write must go through within this.
const LIVENESS_BOUND_MS: u64 = 15_000;
/// How long members get to converge once healed and idle.
const CONVERGE_BOUND_MS: u64 = 30_000;
/// How long watchers get to receive the last revision once members converged.
const WATCH_CATCH_UP_BOUND_MS: u64 = 5_000;
/// Watchers following every workload key.
const WATCHERS: usize = 2;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub members: usize,
    pub clients: usize,
    pub keys: u64,
    /// Length of the safety phase (faults on), simulated ms.
    pub fault_ms: u64,
    /// Length of the workload after healing, simulated ms.
    pub calm_ms: u64,
    pub bugs: PlantedBugs,
    /// `--snapshot-count`: small, so snapshots and log compaction happen.
    pub snapshot_count: u64,
    /// Let the network duplicate forwarded proposals (see [`Net`]).
    pub duplicate_proposals: bool,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            members: 3 + (seed % 3 == 2) as usize * 2,
            clients: 4,
            keys: 6,
            fault_ms: 20_000,
            calm_ms: 3_000,
            bugs: PlantedBugs::default(),
            // Some seeds compact the log often, so lagging members get
            // snapshots often.
            snapshot_count: if seed % 4 == 3 { 40 } else { 300 },
            duplicate_proposals: false,
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    /// A fingerprint of everything that happened: equal seeds give equal traces.
    pub trace: u64,
    pub ops: usize,
    pub acked_writes: usize,
    pub faults: Vec<String>,
    /// Every problem found; empty when the run passed.
    pub failures: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

struct Node {
    id: u64,
    cfg: MemberConfig,
    disk: Disk,
    running: Option<SimMember>,
    next_tick: u64,
    restart_at: Option<u64>,
}

/// Other members' stores, for snapshot transfer (which the simulation does
/// not partition: it stands for a separate, retried transfer).
#[derive(Default, Clone)]
struct Registry(Arc<Mutex<BTreeMap<u64, Member>>>);

impl SnapshotSource for Registry {
    fn fetch(&self, from: u64, min_index: u64, into: &Store) -> Result<(), ServerError> {
        let source = self.0.lock().expect("registry lock poisoned").get(&from).cloned();
        let source = source.ok_or_else(|| ServerError::Internal(format!("member {from:x} is down")))?;
        if source.raft_status().applied_index < min_index {
            return Err(ServerError::Internal(format!("member {from:x} has not applied {min_index}")));
        }
        let mut chunks = Vec::new();
        source.store().export(64 << 10, storage::LOCAL_META, |records| {
            chunks.push(records);
            true
        })?;
        let mut chunks = chunks.into_iter();
        into.install(storage::LOCAL_META, || Ok(chunks.next()))?;
        Ok(())
    }
}

/// FNV-1a, for the trace fingerprint.
struct Trace(u64);

impl Trace {
    fn add(&mut self, s: &str) {
        for b in s.bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

pub struct Sim {
    cfg: SimConfig,
    rng: StdRng,
    now: Arc<AtomicU64>,
    nodes: Vec<Node>,
    net: Net,
    registry: Registry,
    clients: Vec<Client>,
    watchers: Vec<SimWatcher>,
    /// The watchers' own random choices, apart from the rest, so that adding
    /// watchers did not change what a seed does to the cluster.
    watch_rng: StdRng,
    history: History,
    leases: LeaseClient,
    lease_rng: StdRng,
    /// Whether new leases are granted (not once healed).
    lease_grants: bool,
    /// The leader last seen, and when (sim ms) leadership last changed.
    last_leader: Option<usize>,
    last_leader_change: u64,
    trace: Trace,
    faults: Vec<String>,
    failures: Vec<String>,
    verbose: bool,
    /// A member panicked: the run stops there.
    aborted: bool,
}

fn member_config(i: usize, n: usize, snapshot_count: u64) -> MemberConfig {
    let name = |i: usize| format!("m{i}");
    MemberConfig {
        name: name(i),
        data_dir: PathBuf::from(format!("/sim/{}", name(i))),
        initial_cluster: (0..n).map(|j| (name(j), vec![format!("http://{}:2380", name(j))])).collect(),
        initial_cluster_token: "ketch-sim".into(),
        initial_advertise_peer_urls: vec![format!("http://{}:2380", name(i))],
        advertise_client_urls: vec![format!("http://{}:2379", name(i))],
        heartbeat_ms: HEARTBEAT_MS,
        election_ms: ELECTION_MS,
        snapshot_count,
        snapshot_catch_up_entries: snapshot_count / 4,
        purge_wals: true,
        max_request_bytes: 1536 * 1024,
        max_txn_ops: 128,
        quota_backend_bytes: u64::MAX / 2,
        pre_vote: true,
        watch_progress_notify_interval: Duration::from_secs(600),
        lease_checkpoint_interval: None,
    }
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let rng = StdRng::seed_from_u64(cfg.seed);
        let nodes = (0..cfg.members)
            .map(|i| {
                let mc = member_config(i, cfg.members, cfg.snapshot_count);
                let id = ketch_server::ids::member_id(&mc.initial_advertise_peer_urls, &mc.initial_cluster_token, None);
                Node { id, cfg: mc, disk: Disk::default(), running: None, next_tick: 0, restart_at: Some(0) }
            })
            .collect();
        let clients = (0..cfg.clients as u64).map(|c| Client::new(c, cfg.keys, CLIENT_TIMEOUT_MS)).collect();
        let mut net = Net::new();
        net.duplicate_proposals = cfg.duplicate_proposals;
        Sim {
            rng,
            now: Arc::new(AtomicU64::new(0)),
            nodes,
            net,
            registry: Registry::default(),
            clients,
            watchers: (0..WATCHERS).map(|_| SimWatcher::new(b"k")).collect(),
            watch_rng: StdRng::seed_from_u64(cfg.seed ^ 0x5741_5443_4845_5253),
            history: History::new(),
            leases: LeaseClient::new(),
            lease_rng: StdRng::seed_from_u64(cfg.seed ^ 0x4c45_4153_4553_5f5f),
            lease_grants: true,
            last_leader: None,
            last_leader_change: 0,
            trace: Trace(0xcbf2_9ce4_8422_2325),
            faults: Vec::new(),
            failures: Vec::new(),
            verbose: false,
            aborted: false,
            cfg,
        }
    }

    /// Prints every fault and member failure as it happens.
    pub fn verbose(mut self, on: bool) -> Sim {
        self.verbose = on;
        self
    }

    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn log(&mut self, event: String) {
        self.trace.add(&event);
        if self.verbose {
            println!("{:>8} ms  {event}", self.now());
        }
    }

    fn fault(&mut self, what: String) {
        let line = format!("{} ms: {what}", self.now());
        self.log(format!("fault {what}"));
        self.faults.push(line);
    }

    fn start(&mut self, i: usize) {
        let now = self.now();
        let seed = self.rng.random();
        let node = &mut self.nodes[i];
        node.restart_at = None;
        let label = PathBuf::from(format!("{}/member/snap/db", node.cfg.data_dir.display()));
        let store = match Store::open_with_backend(node.disk.backend(), &label) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                let msg = format!("m{i} cannot open its store: {e}");
                self.failures.push(msg.clone());
                self.log(msg);
                return;
            }
        };
        let env = MemberEnv {
            clock: Clock::Manual(self.now.clone()),
            seed,
            // Like a wall clock at start: a restarted member must not hand
            // out the request IDs of its previous life (entries still in its
            // log carry them).
            id_epoch_ms: 1_700_000_000_000 + now,
            wal_fs: node.disk.fs(),
            store: Some(store),
            outbox: Some(Box::new(SimOutbox { from: node.id, sent: self.net.sent.clone() })),
            snapshots: Some(Arc::new(self.registry.clone())),
            bugs: self.cfg.bugs,
        };
        let cfg = node.cfg.clone();
        let opened = match catch_unwind(AssertUnwindSafe(|| SimMember::open(cfg, env))) {
            Ok(r) => r,
            Err(panic) => {
                self.panicked(i, "starting", &panic);
                return;
            }
        };
        let node = &mut self.nodes[i];
        match opened {
            Ok(m) => {
                self.registry.0.lock().expect("registry lock poisoned").insert(node.id, m.member().clone());
                node.running = Some(m);
                node.next_tick = now + HEARTBEAT_MS;
                self.log(format!("m{i} started"));
            }
            Err(e) => {
                // A member that cannot restart from its own disk is a bug.
                let msg = format!("m{i} failed to start: {e}");
                self.failures.push(msg.clone());
                self.log(msg);
            }
        }
    }

    /// Kills member `i` (its unsynced writes are lost); it restarts at
    /// `restart_at`.
    fn crash(&mut self, i: usize, torn: bool, restart_at: Option<u64>) {
        let node = &mut self.nodes[i];
        let Some(m) = node.running.take() else { return };
        self.registry.0.lock().expect("registry lock poisoned").remove(&node.id);
        for w in &mut self.watchers {
            if w.member == Some(i) {
                w.broken();
            }
        }
        node.disk.crash(&mut self.rng, torn);
        drop(m);
        node.restart_at = restart_at;
    }

    fn members(&self) -> Vec<Option<Member>> {
        self.nodes.iter().map(|n| n.running.as_ref().map(|m| m.member().clone())).collect()
    }

    fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.running.as_ref().is_some_and(SimMember::is_leader))
    }

    /// One simulated step of `dt` ms.
    fn step(&mut self, faults: bool) {
        let now = self.now.fetch_add(self.rng.random_range(1..=4), Ordering::SeqCst) + 1;
        let now = now.max(self.now());
        // Restarts due.
        for i in 0..self.nodes.len() {
            if self.nodes[i].running.is_none() && self.nodes[i].restart_at.is_some_and(|t| t <= now) {
                self.start(i);
            }
        }
        if faults && self.rng.random_bool(0.004) {
            self.random_fault();
        }
        // Deliveries.
        for (msg, open) in self.net.due(now) {
            let to = self.nodes.iter().position(|n| n.id == msg.to);
            let from = self.nodes.iter().position(|n| n.id == msg.from);
            let delivered = match to.and_then(|t| self.nodes[t].running.as_ref()) {
                Some(m) if open => {
                    let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
                    m.member().step(msg);
                    snapshot.then_some(true)
                }
                _ => (msg.get_msg_type() == MessageType::MsgSnapshot).then_some(false),
            };
            if let (Some(ok), Some(f)) = (delivered, from)
                && let Some(sender) = &self.nodes[f].running
            {
                sender.member().report_snapshot(self.nodes[f].id, ok);
            }
        }
        // Members, in a random order.
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        order.shuffle(&mut self.rng);
        for i in order {
            let apply = self.rng.random_bool(0.8);
            let node = &mut self.nodes[i];
            let Some(m) = &mut node.running else { continue };
            if now >= node.next_tick {
                m.tick();
                node.next_tick = now + HEARTBEAT_MS;
            }
            let result = catch_unwind(AssertUnwindSafe(|| {
                let mut result = m.turn();
                if result.is_ok() && apply {
                    result = m.apply(usize::MAX).map(|_| ()).and_then(|()| m.turn());
                }
                result
            }));
            let result = match result {
                Ok(r) => r,
                Err(panic) => {
                    self.panicked(i, "running", &panic);
                    return;
                }
            };
            if let Err(e) = result {
                self.log(format!("m{i} stopped: {e}"));
                let delay = self.rng.random_range(100..2000);
                self.crash(i, false, Some(now + delay));
            }
        }
        self.net.take_sent(now, &mut self.rng);
        self.clients_step(now, true);
        self.watchers_step();
        self.leases_step(now);
    }

    fn leases_step(&mut self, now: u64) {
        let leader = self.leader();
        if leader != self.last_leader {
            self.last_leader = leader;
            self.last_leader_change = now;
            self.trace.add(&format!("leader {leader:?} at {now}"));
        }
        let members = self.members();
        self.leases.step(now, &mut self.lease_rng, &members, self.lease_grants);
        self.leases.keep_alive(now, leader.and_then(|l| members[l].as_ref()));
    }

    /// Watchers take what their member published; a watcher whose member
    /// is gone resumes on a random running one.
    fn watchers_step(&mut self) {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].running.is_some()).collect();
        for w in 0..self.watchers.len() {
            let current = self.watchers[w].member;
            match current.and_then(|i| self.nodes[i].running.as_ref()) {
                Some(m) => {
                    let m = m.member().clone();
                    self.watchers[w].poll(&m);
                }
                None if !running.is_empty() => {
                    let i = running[self.watch_rng.random_range(0..running.len())];
                    let m = self.nodes[i].running.as_ref().map(|m| m.member().clone());
                    if let Some(m) = m {
                        self.watchers[w].open(i, &m);
                        self.trace.add(&format!("w{w} opened on m{i} at {}", self.now()));
                    }
                }
                None => {}
            }
        }
    }

    /// A member hit an assertion (raft's own, say): the run is over.
    fn panicked(&mut self, i: usize, doing: &str, panic: &Box<dyn std::any::Any + Send>) {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into());
        let msg = format!("m{i} panicked while {doing}: {why}");
        self.log(msg.clone());
        self.failures.push(msg);
        self.aborted = true;
        if let Some(m) = self.nodes[i].running.take() {
            self.registry.0.lock().expect("registry lock poisoned").remove(&self.nodes[i].id);
            // Its state may be inconsistent: drop it without running anything.
            std::mem::forget(m);
        }
    }

    fn clients_step(&mut self, now: u64, send: bool) {
        let members = self.members();
        for c in 0..self.clients.len() {
            if self.clients[c].poll(now, &members, &mut self.history) {
                let gap = self.rng.random_range(0..50);
                self.clients[c].next_at = now + gap;
                self.trace.add(&format!("c{c} done at {now}"));
            }
            if send && self.clients[c].pending.is_none() && now >= self.clients[c].next_at {
                let target = self.rng.random_range(0..members.len());
                let member = members[target].as_ref();
                self.clients[c].send(now, &mut self.rng, target, member, &mut self.history);
                self.trace.add(&format!("c{c} sent to m{target} at {now}"));
            }
        }
    }

    fn random_fault(&mut self) {
        let n = self.nodes.len();
        let now = self.now();
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        match self.rng.random_range(0..10) {
            0 | 1 => {
                let i = self.rng.random_range(0..n);
                let torn = self.rng.random_bool(0.5);
                let back = now + self.rng.random_range(200..4000);
                if self.nodes[i].running.is_some() {
                    self.fault(format!("kill -9 m{i}{}", if torn { " (torn write)" } else { "" }));
                    self.crash(i, torn, Some(back));
                }
            }
            2 => {
                // Power loss: every member at once.
                self.fault("power loss: every member crashes".into());
                for i in 0..n {
                    let back = now + self.rng.random_range(200..3000);
                    let torn = self.rng.random_bool(0.5);
                    self.crash(i, torn, Some(back));
                }
            }
            3 => {
                let mut all: Vec<usize> = (0..n).collect();
                all.shuffle(&mut self.rng);
                let cut = self.rng.random_range(1..n);
                let (a, b) = all.split_at(cut);
                let a_ids: Vec<u64> = a.iter().map(|&i| ids[i]).collect();
                let b_ids: Vec<u64> = b.iter().map(|&i| ids[i]).collect();
                self.fault(format!("partition {a:?} | {b:?}"));
                self.net.partition(&a_ids, &b_ids);
            }
            4 => {
                let i = self.rng.random_range(0..n);
                self.fault(format!("one-way: m{i} can send nothing"));
                for (j, &id) in ids.iter().enumerate() {
                    if j != i {
                        self.net.block(ids[i], id);
                    }
                }
            }
            5 => {
                let leader = self.leader();
                if let Some(l) = leader {
                    self.fault(format!("isolate the leader m{l}"));
                    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != ids[l]).collect();
                    self.net.partition(&[ids[l]], &others);
                }
            }
            6 => {
                self.fault("heal the network".into());
                self.net.heal();
            }
            7 => {
                let w = Weather {
                    drop: [0.0, 0.01, 0.05, 0.2][self.rng.random_range(0..4)],
                    duplicate: [0.0, 0.02, 0.1][self.rng.random_range(0..3)],
                    delay_ms: [(1, 3), (1, 30), (5, 120), (1, 400)][self.rng.random_range(0..4)],
                };
                self.fault(format!("network: {w:?}"));
                self.net.weather = w;
            }
            8 => {
                if let Some(l) = self.leader() {
                    let t = (l + self.rng.random_range(1..n)) % n;
                    self.fault(format!("leader transfer m{l} -> m{t}"));
                    let target = ids[t];
                    if let Some(m) = &mut self.nodes[l].running {
                        m.transfer_leader(target);
                    }
                }
            }
            _ => {
                let i = self.rng.random_range(0..n);
                if self.nodes[i].running.is_some() {
                    let k = self.rng.random_range(0..=8);
                    if k == 0 {
                        self.fault(format!("m{i} dies right after its next backend fsync"));
                        self.nodes[i].disk.die_after_backend_sync();
                    } else {
                        self.fault(format!("m{i} dies at its fsync number {k} from now (the fsync fails)"));
                        self.nodes[i].disk.fail_sync_in(k);
                    }
                }
            }
        }
    }

    fn heal_all(&mut self) {
        self.net.heal();
        self.net.weather = Weather::calm();
        let now = self.now();
        for i in 0..self.nodes.len() {
            self.nodes[i].disk.fail_sync_in(0);
            if self.nodes[i].running.is_none() {
                self.nodes[i].restart_at = Some(now);
            }
        }
        self.lease_grants = false;
        self.leases.stop_keep_alives();
        self.log("healed".into());
    }

    /// Runs the whole simulation and checks it.
    pub fn run(mut self) -> Report {
        // Safety phase: faults on.
        while self.now() < self.cfg.fault_ms && !self.aborted {
            self.step(true);
        }
        if self.aborted {
            return self.report();
        }
        self.heal_all();
        // Liveness: a write goes through within the bound.
        let healed_at = self.now();
        let mut live = false;
        while self.now() < healed_at + LIVENESS_BOUND_MS && !self.aborted {
            self.step(false);
            if self.history.ops().iter().any(|op| {
                op.invoked_at >= healed_at
                    && op.request.may_write()
                    && matches!(op.outcome, ketch_check::history::Outcome::Ok(_))
            }) {
                live = true;
                break;
            }
        }
        if !live {
            self.failures.push(format!("liveness: no write succeeded within {LIVENESS_BOUND_MS} ms of healing"));
        }
        let calm_until = self.now() + self.cfg.calm_ms;
        while self.now() < calm_until && !self.aborted {
            self.step(false);
        }
        // Let the clients finish, then wait for the members to converge.
        let drain_until = self.now() + CLIENT_TIMEOUT_MS + 100;
        while self.now() < drain_until && !self.aborted && self.clients.iter().any(|c| c.pending.is_some()) {
            self.step_quiet();
        }
        let converge_until = self.now() + CONVERGE_BOUND_MS;
        let mut converged = false;
        while self.now() < converge_until && !self.aborted {
            self.step_quiet();
            if self.converged() {
                converged = true;
                break;
            }
        }
        if self.aborted {
            return self.report();
        }
        let watch_until = self.now() + WATCH_CATCH_UP_BOUND_MS;
        let last = self.nodes.iter().find_map(|n| n.running.as_ref()).map(|m| m.member().store().current_revision());
        if let Some(last) = last {
            while self.now() < watch_until && self.watchers.iter().any(|w| w.next_rev <= last) {
                self.step_quiet();
            }
            for (i, w) in self.watchers.iter().enumerate() {
                if w.next_rev <= last {
                    self.failures.push(format!(
                        "watch liveness: watcher {i} still waits for revision {} of {last} after {WATCH_CATCH_UP_BOUND_MS} ms",
                        w.next_rev
                    ));
                }
            }
        }
        // Every lease must be gone within its bound.
        let leases_until = self.now() + 20_000;
        while self.now() < leases_until
            && !self.aborted
            && self.now() < self.leases.all_gone_by(self.last_leader_change, ELECTION_MS)
        {
            self.step_quiet();
        }
        if self.aborted {
            return self.report();
        }
        self.check(converged)
    }

    /// A step with no new client requests.
    fn step_quiet(&mut self) {
        let saved: Vec<u64> = self.clients.iter().map(|c| c.next_at).collect();
        for c in &mut self.clients {
            c.next_at = u64::MAX;
        }
        self.step(false);
        for (c, at) in self.clients.iter_mut().zip(saved) {
            if c.pending.is_none() {
                c.next_at = at;
            }
        }
    }

    fn converged(&self) -> bool {
        let statuses: Vec<_> =
            self.nodes.iter().filter_map(|n| n.running.as_ref().map(|m| m.member().raft_status())).collect();
        statuses.len() == self.nodes.len()
            && statuses.iter().all(|s| s.leader != 0 && s.applied_index == statuses[0].applied_index)
            && statuses.iter().all(|s| s.commit_index == s.applied_index)
    }

    fn digest(&self, i: usize, m: &Member) -> Result<(MemberDigest, FinalState), ServerError> {
        let view = m.store().read()?;
        let revision = view.rev();
        let (hash, _, _) = view.hash_kv(revision)?;
        let all = view.range(b"\0", &RangeEnd::Unbounded, RangeOptions::default())?;
        let kvs = all
            .kvs
            .into_iter()
            .map(|kv| KeyValue::new(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version))
            .collect();
        Ok((
            MemberDigest {
                member: format!("m{i}"),
                revision,
                compact_revision: view.compact_rev(),
                hash: u64::from(hash),
            },
            FinalState { revision, kvs },
        ))
    }

    /// Every event of the workload's keys in `m`'s history.
    fn event_log(&self, m: &Member) -> Result<EventLog, ServerError> {
        let view = m.store().read()?;
        let last = view.rev();
        let (events, _) = view.events(1, last, usize::MAX)?;
        Ok(EventLog {
            events: events.iter().filter(|e| e.kv.key.starts_with(b"k")).map(event).collect(),
            first_revision: 1,
            last_revision: last,
            compacted_revision: view.compact_rev().max(0),
        })
    }

    fn check(mut self, converged: bool) -> Report {
        if !converged {
            let statuses: Vec<String> = self
                .nodes
                .iter()
                .map(|n| match &n.running {
                    Some(m) => format!("{:?}", m.member().raft_status()),
                    None => "down".into(),
                })
                .collect();
            self.failures.push(format!("members did not converge within {CONVERGE_BOUND_MS} ms: {statuses:?}"));
        }
        let mut digests = Vec::new();
        let mut finals = Vec::new();
        for (i, m) in self.members().into_iter().enumerate() {
            let Some(m) = m else { continue };
            match self.digest(i, &m) {
                Ok((d, f)) => {
                    digests.push(d);
                    finals.push(f);
                }
                Err(e) => self.failures.push(format!("m{i}: reading the final state: {e}")),
            }
        }
        for d in &digests {
            self.trace.add(&format!("{d:?}"));
        }
        for d in check_convergence(&digests) {
            self.failures.push(format!("convergence: {d:?}"));
        }
        if let Some(m) = self.members().into_iter().flatten().next() {
            match self.event_log(&m) {
                Ok(log) => {
                    let records: Vec<_> = self.watchers.iter().map(|w| w.record.clone()).collect();
                    for v in check_watchers(&records, Some(&log)).into_iter().take(10) {
                        self.failures.push(format!("watch: {v}"));
                    }
                }
                Err(e) => self.failures.push(format!("reading the event log: {e}")),
            }
        }
        for w in &self.watchers {
            self.trace.add(&format!("watcher responses {}", w.responses()));
        }
        if let Some(state) = finals.first() {
            let present =
                state.kvs.iter().filter(|kv| kv.key.starts_with(b"l")).map(|kv| (kv.key.clone(), kv.lease)).collect();
            let now = self.now();
            self.leases.check_gone(now, self.last_leader_change, ELECTION_MS, &present);
        }
        for v in &self.leases.violations {
            self.failures.push(format!("lease: {v}"));
        }
        self.trace.add(&format!("leases {} reads {}", self.leases.leases.len(), self.leases.reads));
        // The KV checks see only the KV workload's keys.
        for f in &mut finals {
            f.kvs.retain(|kv| kv.key.starts_with(b"k"));
        }
        let config = CheckConfig { step_budget: 5_000_000, ..CheckConfig::default() };
        if let Some(state) = finals.first() {
            for v in check_durability(&self.history, state, &config) {
                self.failures.push(format!("durability: {v:?}"));
            }
        }
        match check_linearizable_per_key(&self.history, &config) {
            Ok(Verdict::Ok(_)) => {}
            Ok(Verdict::Violation(v)) => {
                self.failures.push(format!("linearizability: {}", v.explain(&self.history)));
            }
            Ok(Verdict::Inconclusive(i)) => self.failures.push(format!("linearizability inconclusive: {i:?}")),
            Err(e) => self.failures.push(format!("malformed history: {e}")),
        }
        self.report()
    }

    fn report(mut self) -> Report {
        let seed = self.cfg.seed;
        let ops = self.history.len();
        let acked_writes = self
            .history
            .ops()
            .iter()
            .filter(|op| op.request.may_write() && matches!(op.outcome, ketch_check::history::Outcome::Ok(_)))
            .count();
        let mut summary = String::new();
        let _ = write!(summary, "ops {ops} acked {acked_writes} faults {}", self.faults.len());
        self.trace.add(&summary);
        for f in &self.failures {
            self.trace.add(f);
        }
        Report { seed, trace: self.trace.0, ops, acked_writes, faults: self.faults, failures: self.failures }
    }
}

/// Runs one seed.
pub fn run(cfg: SimConfig) -> Report {
    Sim::new(cfg).run()
}

/// The planted bug called `name` (as `--bug` spells it).
pub fn planted(name: &str) -> Option<PlantedBugs> {
    let mut b = PlantedBugs::default();
    match name {
        "ack-before-fsync" => b.ack_before_fsync = true,
        "apply-uncommitted" => b.apply_uncommitted = true,
        "read-without-read-index" => b.read_without_read_index = true,
        "applied-index-apart" => b.applied_index_apart = true,
        _ => return None,
    }
    Some(b)
}
