//! etcd v3 wire schema and generated code for Ketch.
//!
//! This crate holds Ketch's copy of the etcd v3 gRPC API definitions
//! (`proto/`), written to be wire-compatible with etcd 3.4 clients
//! (etcdctl, Go `clientv3`, python `etcd3`, Rust `etcd-client`), and the
//! Rust code that `prost`/`tonic` generate from them at build time. It
//! contains no logic: servers implement the generated service traits
//! elsewhere.
//!
//! The modules mirror etcd's protobuf packages and sit side by side because
//! the generated code refers to its siblings as `super::mvccpb` etc.:
//!
//! - [`mvccpb`]: `KeyValue`, `Event`.
//! - [`authpb`]: `User`, `Role`, `Permission`, `UserAddOptions`.
//! - [`etcdserverpb`]: the `KV`, `Watch`, `Lease`, `Cluster`, `Maintenance`
//!   and `Auth` services and their messages, plus the raft envelope
//!   `InternalRaftRequest`.
//! - [`v3lockpb`]: the `Lock` service.
//! - [`v3electionpb`]: the `Election` service.
//!
//! Each service `Foo` yields a `foo_server::{Foo, FooServer}` trait/wrapper
//! pair and a `foo_client::FooClient`.

/// etcd package `mvccpb`: stored key/value pairs and watch events.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd package `authpb`: users, roles and permissions.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd package `etcdserverpb`: the client-facing services and the raft
/// request envelope.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd 3.5 package `membershippb`: member attributes carried through raft.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod membershippb {
    tonic::include_proto!("membershippb");
}

/// Ketch's member-to-member protocol (raft messages, snapshots, lease
/// forwarding); not part of etcd's API.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod ketchpeerpb {
    tonic::include_proto!("ketchpeerpb");
}

/// etcd package `v3lockpb`: the `Lock` service.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd package `v3electionpb`: the `Election` service.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// Encoded `google.protobuf.FileDescriptorSet` of every `.proto` file in
/// this crate (with imports and source info), e.g. for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ketch_descriptor.bin"));

#[cfg(test)]
mod tests;
