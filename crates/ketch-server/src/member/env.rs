//! What a member needs from the world, so that a simulator can supply all of
//! it: a clock, the WAL's file system, the backend store, the network and
//! snapshot transfer. A real member uses [`MemberEnv::real`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ketch_mvcc::Store;
use ketch_raft::eraftpb::Message;
use ketch_wal::{OsFs, WalFs};

use crate::error::ServerError;
use crate::peer::Transport;

/// The member's monotonic clock, in milliseconds.
#[derive(Clone, Debug)]
pub enum Clock {
    /// Milliseconds since this instant.
    Real(Instant),
    /// A simulator's clock: whatever the cell says.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn real() -> Clock {
        Clock::Real(Instant::now())
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::Real(epoch) => u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX),
            Clock::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }
}

/// Where raft messages to other members go.
pub trait Outbox: Send {
    fn send(&mut self, msgs: Vec<Message>);
}

impl Outbox for Transport {
    fn send(&mut self, msgs: Vec<Message>) {
        Transport::send(self, msgs);
    }
}

/// Copies another member's store into this one's (a snapshot install).
pub trait SnapshotSource: Send + Sync {
    /// Replaces `into` with member `from`'s store once that has applied
    /// `min_index`.
    fn fetch(&self, from: u64, min_index: u64, into: &Store) -> Result<(), ServerError>;
}

/// Known bugs a simulator can switch on to prove its checkers catch them.
/// A real member never sets these.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlantedBugs {
    /// Skip the WAL's fdatasync before acknowledging and sending.
    pub ack_before_fsync: bool,
    /// Apply entries as soon as they are in the local log, committed or not.
    pub apply_uncommitted: bool,
    /// Serve linearizable reads without a ReadIndex round.
    pub read_without_read_index: bool,
    /// Make the applied index durable in a commit of its own, before the
    /// data it covers.
    pub applied_index_apart: bool,
}

/// The world a member runs in.
pub struct MemberEnv {
    pub clock: Clock,
    /// Seeds the raft core's election jitter.
    pub seed: u64,
    /// Wall-clock milliseconds that seed request IDs (etcd's ID generator).
    pub id_epoch_ms: u64,
    /// The file system the WAL lives on.
    pub wal_fs: Arc<dyn WalFs>,
    /// The backend store, already open (None: open the file in the data dir).
    pub store: Option<Arc<Store>>,
    /// The network (None: the gRPC peer transport, started on the current
    /// tokio runtime).
    pub outbox: Option<Box<dyn Outbox>>,
    /// Snapshot transfer (None: fetched over the gRPC peer link).
    pub snapshots: Option<Arc<dyn SnapshotSource>>,
    pub bugs: PlantedBugs,
}

impl MemberEnv {
    /// Real files, the real clock, the gRPC peer transport.
    pub fn real() -> MemberEnv {
        MemberEnv {
            clock: Clock::real(),
            // A real member wants a different jitter from every other member's.
            seed: rand::random(),
            id_epoch_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0)),
            wal_fs: Arc::new(OsFs),
            store: None,
            outbox: None,
            snapshots: None,
            bugs: PlantedBugs::default(),
        }
    }

    /// Whether everything is simulated (no threads, no sockets, no files).
    pub(super) fn is_simulated(&self) -> bool {
        self.store.is_some() && self.outbox.is_some() && self.snapshots.is_some()
    }
}
