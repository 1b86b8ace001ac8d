//! The Ketch member.
//!
//! * [`member`]: the raft loop thread (persist, apply, answer) and the handle to it;
//! * [`apply`]: etcd's KV semantics over the MVCC store, shared by reads and writes;
//! * [`grpc`] and [`http`]: thin edges that validate, delegate and fill headers;
//! * [`error`]: the one table from errors to etcd's gRPC codes and messages;
//! * [`watch`]: the hub that carries applied changes to watch streams;
//! * [`peer`]: member-to-member traffic (raft messages, snapshots, lease forwarding);
//! * [`cluster`]: the membership;
//! * [`storage`]: the data directory layout; [`ids`]: etcd's ID derivations.

/// A crash point for the failpoint tests, named like etcd's gofail points:
/// with the `failpoints` feature, `FAILPOINTS=<name>=return` (or
/// `<name>=3*off->return`: the fourth hit) aborts the process here (SIGABRT,
/// no cleanup; the OS keeps what was written, synced or not); with
/// `crash_point!(<name>, <condition>)` only hits where the condition holds
/// count. Without the feature it compiles to nothing.
macro_rules! crash_point {
    ($name:literal $(, $cond:expr)?) => {
        fail::fail_point!($name, $($cond,)? |_| {
            eprintln!(concat!("failpoint ", $name, ": crashing"));
            std::process::abort()
        })
    };
}

pub mod apply;
pub mod cluster;
pub mod error;
pub mod grpc;
pub mod http;
pub mod ids;
pub mod member;
pub mod peer;
pub mod storage;
pub mod watch;

pub use error::ServerError;
pub use member::{Member, MemberConfig};
