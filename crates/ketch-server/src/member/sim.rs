//! A member driven step by step by a simulator, on the simulator's thread.
//!
//! It is the real member (the same raft loop, applier, store and WAL code);
//! only the world around it is supplied by the caller through [`MemberEnv`]:
//! no thread is started, time moves only when the simulator says so, and
//! nothing happens between calls.

use tokio::sync::oneshot;

use super::{Applied, COMMANDS_PER_TURN_MAX, Member, MemberConfig, MemberEnv, RaftLoop};
use crate::error::ServerError;

pub struct SimMember {
    member: Member,
    raft: RaftLoop,
}

impl SimMember {
    /// Opens (or bootstraps) the member in `env`, which must supply the
    /// store, the outbox and the snapshot source, and applies its log.
    pub fn open(cfg: MemberConfig, env: MemberEnv) -> Result<SimMember, ServerError> {
        if !env.is_simulated() {
            return Err(ServerError::Internal(
                "a simulated member needs a store, an outbox and a snapshot source".into(),
            ));
        }
        let (member, mut raft, applier) = Member::open(cfg, env)?;
        raft.inline = Some(Box::new(applier));
        raft.catch_up_on_start()?;
        Ok(SimMember { member, raft })
    }

    pub fn member(&self) -> &Member {
        &self.member
    }

    /// One raft tick (a heartbeat interval has passed).
    pub fn tick(&mut self) {
        self.raft.core.tick();
    }

    /// Takes in the queued commands (client requests, peer messages) and
    /// does one loop turn: persist, send, hand committed entries to the
    /// applier. An error means the member has failed (a crash).
    pub fn turn(&mut self) -> Result<(), ServerError> {
        for _ in 0..COMMANDS_PER_TURN_MAX {
            match self.raft.rx.try_recv() {
                Ok(cmd) => self.raft.handle(cmd),
                Err(_) => break,
            }
        }
        self.raft.turn()
    }

    /// Applies up to `max` queued batches of committed entries; returns how
    /// many there were.
    pub fn apply(&mut self, max: usize) -> Result<usize, ServerError> {
        match &mut self.raft.inline {
            Some(applier) => applier.drain(max),
            None => Ok(0),
        }
    }

    /// Whether the raft core leads.
    pub fn is_leader(&self) -> bool {
        self.raft.core.is_leader()
    }

    /// Asks the raft core to hand leadership to `target` (a random leader
    /// transfer of the simulator's).
    pub fn transfer_leader(&mut self, target: u64) {
        if self.raft.core.is_leader() {
            self.raft.core.transfer_leader(target);
        }
    }
}

impl Member {
    /// Queues a write for the raft loop; the receiver gets its result once it
    /// is applied. [`Member::propose`] waits for it with a timeout.
    pub fn submit(
        &self,
        req: ketch_proto::etcdserverpb::InternalRaftRequest,
    ) -> Result<oneshot::Receiver<Result<Applied, ServerError>>, ServerError> {
        self.submit_proposal(req)
    }

    /// Queues a linearizable read barrier; `None` when none is needed (a lone
    /// voter). [`Member::linearizable_barrier`] waits for it with a timeout.
    pub fn submit_read(&self) -> Result<Option<oneshot::Receiver<Result<(), ServerError>>>, ServerError> {
        self.submit_read_barrier()
    }

    /// A raft message to `to` was lost (true: delivered) — what the
    /// transport reports for snapshots.
    pub fn report_snapshot(&self, to: u64, delivered: bool) {
        self.peer_event(crate::peer::PeerEvent::Snapshot(to, delivered));
    }

    /// `to` could not be reached.
    pub fn report_unreachable(&self, to: u64) {
        self.peer_event(crate::peer::PeerEvent::Unreachable(to));
    }
}
