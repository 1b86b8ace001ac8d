//! Compiles the etcd v3 `.proto` files with the pure-Rust `protox` compiler
//! (no system `protoc` needed) and generates prost messages plus tonic
//! clients and servers. The encoded `FileDescriptorSet` is also written to
//! `$OUT_DIR/ketch_descriptor.bin` for gRPC reflection and tests.

use std::path::PathBuf;

use prost::Message;

const PROTO_ROOT: &str = "proto";

const PROTO_FILES: &[&str] = &[
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "membershippb/membership.proto",
    "etcdserverpb/raft_internal.proto",
    "ketchpeerpb/peer.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={PROTO_ROOT}/{file}");
    }

    let fds = protox::compile(PROTO_FILES, [PROTO_ROOT])?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("ketch_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;

    Ok(())
}
