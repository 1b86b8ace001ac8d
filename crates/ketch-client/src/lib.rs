//! An async etcd v3 client for tokio, for Ketch and for etcd itself.
//!
//! ```no_run
//! use ketch_client::{Client, ClientOptions, GetOptions, PutOptions, WatchOptions};
//!
//! # async fn example() -> Result<(), ketch_client::Error> {
//! let client = Client::connect(["127.0.0.1:2379", "http://127.0.0.1:22379"], ClientOptions::new()).await?;
//!
//! // Watch a prefix from now on.
//! let mut watcher = client.watch().watch("app/", WatchOptions::new().prefix()).await?;
//!
//! // Write with a lease that stays alive while `keep_alive` lives.
//! let lease = client.lease().grant(10).await?;
//! let keep_alive = client.lease().keep_alive(lease.id).await?;
//! match client.kv().put("app/config", "v1", PutOptions::new().lease(lease.id)).await {
//!     Ok(put) => println!("written at revision {}", put.header.unwrap_or_default().revision),
//!     // The write may or may not have been applied: read it back to know.
//!     Err(e) if e.is_outcome_unknown() => println!("unknown outcome: {e}"),
//!     Err(e) => return Err(e),
//! }
//!
//! let got = client.kv().get("app/", GetOptions::new().prefix()).await?;
//! println!("{} keys", got.count);
//! if let Some(response) = watcher.message().await? {
//!     println!("{} events", response.events.len());
//! }
//! drop(keep_alive);
//! # Ok(())
//! # }
//! ```
//!
//! # Design
//!
//! - **Endpoints and connections.** [`Client::connect`] takes a static list
//!   (`host:port`, `http://host:port` or `https://host:port`), or the
//!   endpoints that DNS SRV records name ([`Client::connect_srv`],
//!   [`discover_srv`]); each endpoint gets one lazily made
//!   HTTP/2 connection with a dial timeout and keep-alive pings. Requests go
//!   round-robin to the endpoints believed healthy; an endpoint whose call
//!   failed for want of a serving member (connection refused or lost, etcd's
//!   `Unavailable`) is skipped for a backoff. Optionally the endpoints follow
//!   the cluster's `MemberList` ([`ClientOptions::auto_sync_interval`]).
//! - **Failover, at most once.** A request that only reads is retried on
//!   another endpoint while attempts and its deadline allow. A request that
//!   writes is retried only when it provably never left the client (the
//!   connection could not be made); otherwise the caller gets
//!   [`Error::OutcomeUnknown`]: the write may or may not have been applied.
//!   The client never re-sends such a write, so it never applies one twice.
//! - **Watches** ([`Watcher`]) resume on another member from the first
//!   revision not yet delivered: no gap, no duplicate. A compacted resume
//!   point ends the watch with [`Error::Compacted`].
//! - **Leases** ([`KeepAlive`]) are renewed at a third of their TTL, over
//!   whichever member answers.
//! - **Errors** keep etcd's gRPC code and exact message ([`EtcdError`],
//!   [`ErrorKind`]).
//! - [`concurrency`]: sessions, locks and elections with etcd's algorithms.
//! - **Authentication** ([`ClientOptions::credentials`], [`Auth`]): the
//!   client authenticates when it connects, sends the token with every
//!   request, and authenticates again when the server refuses a token
//!   (`invalid auth token`), sending the refused request once more.
//!
//! - **TLS** ([`ClientOptions::tls`], [`TlsOptions`]): a CA bundle, a client
//!   certificate for mutual TLS, a server name to expect, or no
//!   verification at all. The handshake is part of the dial, so a failed
//!   handshake is a request that was never sent.
//!
//! Answers are etcd's own response messages from [`proto`] (as in etcd's Go
//! client); requests are built from option structs.

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod auth;
mod client;
mod cluster;
pub mod concurrency;
mod endpoint;
mod error;
mod kv;
mod lease;
mod maintenance;
mod retry;
mod srv;
mod tls;
mod watch;

pub use auth::Auth;
pub use client::{Client, ClientOptions};
pub use srv::{DiscoveryError, LookupError, LookupFailure, discover_srv};
pub use tls::{TlsError, TlsOptions};

/// Whether a failed call provably never left this process: the connection to
/// the endpoint could not be made (tonic's `ConnectError` is in the error's
/// source chain), so the request took no effect. The rule [`Client`] uses to
/// decide that a write may be sent again; exposed for tools that record
/// histories with raw gRPC clients.
pub fn request_never_sent(status: &tonic::Status) -> bool {
    retry::never_sent(status)
}
pub use cluster::Cluster;
pub use error::{Error, ErrorKind, EtcdError, Result};
pub use kv::{
    Compare, CompareOp, DeleteOptions, GetOptions, Kv, PutOptions, SortOrder, SortTarget, Txn, TxnOp, prefix_range_end,
};
pub use lease::{KeepAlive, Lease};
pub use maintenance::{AlarmType, Maintenance, Snapshot};
pub use watch::{Watch, WatchOptions, WatchResponse, Watcher};

/// etcd's wire types (`ketch-proto`): the response messages this client
/// returns, and requests for callers who build their own.
pub mod proto {
    pub use ketch_proto::authpb::{Permission, User, UserAddOptions};
    pub use ketch_proto::etcdserverpb::*;
    pub use ketch_proto::mvccpb::{Event, KeyValue, event::EventType};
}

/// The access a role's permission grants (etcd's `authpb.Permission_Type`).
pub use ketch_proto::authpb::permission::Type as PermissionType;
pub use ketch_proto::mvccpb::{Event, KeyValue, event::EventType};
pub use tonic::Code;
