//! Ketch's deterministic simulator.
//!
//! Whole clusters of real members ([`ketch_server::member::SimMember`]: the
//! raft loop, applier, MVCC store and WAL code that `ketch` runs) in one
//! thread, over a simulated network ([`net`]) and simulated disks
//! ([`disk`]), driven by one seeded scheduler ([`sim`]) that injects faults,
//! runs clients that record a history, and checks it with `ketch-check`.
//! The same seed replays the same run.

pub mod client;
pub mod disk;
pub mod lease;
pub mod net;
pub mod sim;
pub mod watch;

pub use sim::{Report, Sim, SimConfig, run};
