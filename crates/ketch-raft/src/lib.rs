//! Ketch's consensus core.
//!
//! [`RaftCore`] wraps raft-rs's `RawNode` (a port of etcd's raft) and adds nothing
//! that does IO: it takes proposals, ticks and peer messages, and hands back
//! [`Ready`] batches that say what to persist, what to send and what to apply. The
//! member's shell does the IO in etcd's order (persist, then send what depends
//! on it, then apply) and reports back with [`RaftCore::persisted`]. The core reads
//! no clock and opens no file, so the same code runs in the server and in a
//! deterministic simulator.
//!
//! Raft-rs draws its randomized election timeout (in `[election, 2·election)`
//! ticks, as etcd does) from an unseeded RNG each time a member changes term or
//! role. The core overrides every such draw with one from its own generator,
//! seeded by [`RaftConfig::seed`], so a simulator that seeds it gets the same
//! elections every run.
//!
//! [`codec`] is the byte encoding of raft structures for the WAL.

pub mod codec;
mod logger;
pub mod wire;

use raft::eraftpb::{ConfState, Entry, HardState, Message, Snapshot, SnapshotMetadata};
use raft::storage::MemStorage;
use raft::{RawNode, SnapshotStatus, StateRole};

pub use raft::ReadState;
pub use raft::eraftpb;

#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("raft: proposal dropped (no leader, or leadership moving)")]
    ProposalDropped,
    #[error("raft log is inconsistent with the state machine: {0}")]
    Inconsistent(String),
    #[error("raft log record is corrupt: {0}")]
    Codec(String),
}

/// Consensus settings, in ticks.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub id: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub pre_vote: bool,
    /// Largest append message, in bytes.
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// Seed of the election timeout jitter.
    pub seed: u64,
}

/// SplitMix64: a tiny, seedable generator for the election timeout jitter.
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The durable raft state found at start-up.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Newest snapshot: the state machine holds everything up to its index.
    pub snapshot: SnapshotMetadata,
    pub hard_state: Option<HardState>,
    /// Entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Index the state machine has applied (from its own storage).
    pub applied: u64,
}

/// What one turn of the raft loop must do, in order: send `messages` (safe before
/// persisting), persist `entries` and `hard_state` durably, apply `committed`, then
/// call [`RaftCore::persisted`] and send `persisted_messages`.
#[derive(Debug, Default)]
pub struct Ready {
    pub messages: Vec<Message>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    pub committed: Vec<Entry>,
    pub persisted_messages: Vec<Message>,
    /// Set when leadership or role changed: (leader id, is leader).
    pub soft_state: Option<(u64, bool)>,
    /// A snapshot from the leader to install before anything else: the state
    /// machine must be replaced by one at or past this point (the leader sends
    /// only metadata; the shell fetches the data).
    pub snapshot: Option<SnapshotMetadata>,
    /// Answers to [`RaftCore::read_index`]: (context, commit index to wait for).
    pub read_states: Vec<ReadState>,
    /// Whether `entries`/`hard_state`/`snapshot` must be fsynced before going on
    /// (false when only the commit index moved).
    pub must_sync: bool,
}

/// What became possible once a [`Ready`] was persisted.
#[derive(Debug, Default)]
pub struct AfterPersist {
    pub messages: Vec<Message>,
    pub committed: Vec<Entry>,
    /// New commit index to record in the hard state (no sync needed: it can be
    /// recomputed, but recording it keeps restarts short).
    pub commit_index: Option<u64>,
}

pub struct RaftCore {
    node: RawNode<MemStorage>,
    pending: Option<raft::Ready>,
    jitter: Jitter,
    /// Election timeouts are drawn from `[election_ticks, 2 · election_ticks)`.
    election_ticks: usize,
    /// (term, role) when the election timeout was last drawn.
    drawn_for: (u64, StateRole),
}

impl RaftCore {
    /// Builds the core from durable state. For a new member, `restored.snapshot`
    /// carries the bootstrap configuration at index 0.
    pub fn new(cfg: &RaftConfig, restored: Restored) -> Result<RaftCore, RaftError> {
        let Restored { snapshot, hard_state, mut entries, applied } = restored;
        // An installed snapshot can cover entries logged before it.
        entries.retain(|e| e.index > snapshot.index);
        let storage = if snapshot.index == 0 {
            MemStorage::new_with_conf_state(snapshot.get_conf_state().clone())
        } else {
            let storage = MemStorage::new();
            let mut snap = Snapshot::default();
            snap.set_metadata(snapshot.clone());
            storage.wl().apply_snapshot(snap)?;
            storage
        };
        let last_index = entries.last().map_or(snapshot.index, |e| e.index);
        if applied < snapshot.index {
            return Err(RaftError::Inconsistent(format!(
                "state machine applied index {applied} is behind the log snapshot at {}",
                snapshot.index
            )));
        }
        if applied > last_index {
            return Err(RaftError::Inconsistent(format!(
                "state machine applied index {applied} is past the end of the log ({last_index}): log entries were lost"
            )));
        }
        {
            let mut wl = storage.wl();
            wl.append(&entries)?;
            let mut hs = hard_state.unwrap_or_default();
            // The commit index is recorded lazily; whatever was applied was committed.
            hs.commit = hs.commit.max(applied).min(last_index);
            hs.term = hs.term.max(snapshot.term);
            wl.set_hardstate(hs);
        }
        let config = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            min_election_tick: cfg.election_ticks,
            max_election_tick: 2 * cfg.election_ticks,
            applied,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            check_quorum: true,
            pre_vote: cfg.pre_vote,
            ..Default::default()
        };
        config.validate()?;
        let node = RawNode::new(&config, storage, &logger::tracing_logger())?;
        let drawn_for = (node.raft.term, node.raft.state);
        let mut core =
            RaftCore { node, pending: None, jitter: Jitter(cfg.seed), election_ticks: cfg.election_ticks, drawn_for };
        core.draw_election_timeout();
        Ok(core)
    }

    /// Replaces raft-rs's unseeded draw of the election timeout with ours.
    fn draw_election_timeout(&mut self) {
        let min = self.election_ticks;
        let span = u64::try_from(min).unwrap_or(1).max(1);
        let t = min + usize::try_from(self.jitter.next() % span).unwrap_or(0);
        let raft = &mut self.node.raft;
        raft.set_randomized_election_timeout(t);
        self.drawn_for = (raft.term, raft.state);
    }

    /// raft-rs redraws the timeout whenever term or role changes: redraw ours.
    fn after_change(&mut self) {
        if (self.node.raft.term, self.node.raft.state) != self.drawn_for {
            self.draw_election_timeout();
        }
    }

    pub fn tick(&mut self) -> bool {
        let ticked = self.node.tick();
        self.after_change();
        ticked
    }

    /// Starts an election now (a lone voter wins it at once).
    pub fn campaign(&mut self) -> Result<(), RaftError> {
        let r = self.node.campaign();
        self.after_change();
        Ok(r?)
    }

    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), RaftError> {
        match self.node.propose(Vec::new(), data) {
            Ok(()) => Ok(()),
            Err(raft::Error::ProposalDropped) => Err(RaftError::ProposalDropped),
            Err(e) => Err(e.into()),
        }
    }

    pub fn step(&mut self, msg: Message) -> Result<(), RaftError> {
        let r = self.node.step(msg);
        self.after_change();
        Ok(r?)
    }

    /// Asks for a linearizable read point; the answer comes back in a later
    /// [`Ready::read_states`] with the same `ctx` (or never, if leadership is
    /// unsettled: callers retry).
    pub fn read_index(&mut self, ctx: Vec<u8>) {
        self.node.read_index(ctx);
    }

    /// The transport could not reach `id`.
    pub fn report_unreachable(&mut self, id: u64) {
        self.node.report_unreachable(id);
    }

    /// Whether a snapshot message reached `id`.
    pub fn report_snapshot(&mut self, id: u64, delivered: bool) {
        let status = if delivered { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
        self.node.report_snapshot(id, status);
    }

    /// Starts handing leadership to `id` (a leader only).
    pub fn transfer_leader(&mut self, id: u64) {
        self.node.transfer_leader(id);
        self.after_change();
    }

    /// The follower whose log matches the leader's furthest (for a leadership
    /// handover), if this member leads and has one.
    pub fn most_caught_up_follower(&self) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        let me = self.node.raft.id;
        let voters: Vec<u64> = self.node.raft.prs().conf().voters().ids().iter().filter(|&id| id != me).collect();
        voters.into_iter().max_by_key(|id| self.node.raft.prs().get(*id).map_or(0, |p| p.matched))
    }

    /// Voter IDs of the current configuration.
    pub fn voters(&self) -> Vec<u64> {
        self.node.raft.prs().conf().voters().ids().iter().collect()
    }

    /// True when there is a [`Ready`] to process.
    pub fn has_ready(&self) -> bool {
        self.pending.is_none() && self.node.has_ready()
    }

    /// Takes the next batch of work. Its entries are already in the in-memory log
    /// (so a leader can replicate them while they are being persisted).
    pub fn ready(&mut self) -> Option<Ready> {
        if !self.has_ready() {
            return None;
        }
        let mut rd = self.node.ready();
        let soft_state = rd.ss().map(|ss| (ss.leader_id, ss.raft_state == StateRole::Leader));
        let snapshot = if rd.snapshot().is_empty() {
            None
        } else {
            let snap = rd.snapshot().clone();
            let meta = snap.get_metadata().clone();
            if let Err(e) = self.node.mut_store().wl().apply_snapshot(snap) {
                panic!("raft storage rejected the snapshot from its own ready: {e}");
            }
            Some(meta)
        };
        let read_states = rd.take_read_states();
        let entries = rd.take_entries();
        if let Err(e) = self.node.mut_store().wl().append(&entries) {
            // raft-rs only hands out appendable entries; anything else is a bug.
            panic!("raft storage rejected entries from its own ready: {e}");
        }
        let hard_state = rd.hs().cloned();
        if let Some(hs) = &hard_state {
            self.node.mut_store().wl().set_hardstate(hs.clone());
        }
        let out = Ready {
            messages: rd.take_messages(),
            entries,
            hard_state,
            committed: rd.take_committed_entries(),
            persisted_messages: rd.take_persisted_messages(),
            soft_state,
            snapshot,
            read_states,
            must_sync: rd.must_sync(),
        };
        self.pending = Some(rd);
        Some(out)
    }

    /// Reports that the last [`Ready`]'s entries and hard state are durable.
    pub fn persisted(&mut self) -> AfterPersist {
        let Some(rd) = self.pending.take() else { return AfterPersist::default() };
        let mut light = self.node.advance(rd);
        let commit_index = light.commit_index();
        if let Some(commit) = commit_index {
            self.node.mut_store().wl().mut_hard_state().commit = commit;
        }
        AfterPersist { messages: light.take_messages(), committed: light.take_committed_entries(), commit_index }
    }

    /// Reports that everything up to `index` has been applied.
    pub fn applied_to(&mut self, index: u64) {
        if index > self.node.raft.raft_log.applied {
            self.node.advance_apply_to(index);
        }
    }

    /// Drops in-memory log entries before `index` (already applied and covered by a
    /// durable snapshot of the state machine).
    pub fn compact_log(&mut self, index: u64) -> Result<(), RaftError> {
        Ok(self.node.mut_store().wl().compact(index)?)
    }

    pub fn hard_state(&self) -> HardState {
        self.node.store().rl().hard_state().clone()
    }

    pub fn conf_state(&self) -> ConfState {
        self.node.raft.prs().conf().to_conf_state()
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    pub fn leader_id(&self) -> u64 {
        self.node.raft.leader_id
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    /// Term of the entry at `index`, if the log still has it.
    pub fn term_of(&self, index: u64) -> Option<u64> {
        self.node.raft.raft_log.term(index).ok()
    }
}
