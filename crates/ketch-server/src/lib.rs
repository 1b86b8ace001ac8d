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
