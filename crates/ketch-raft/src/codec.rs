//! Byte encodings of raft structures for the WAL: raft-rs's own protobuf
//! encoding (etcd's `raftpb` wire format) of `Entry`, `HardState` and
//! `SnapshotMetadata`. Only bytes this member wrote itself are decoded here.

use raft::eraftpb::{Entry, HardState, SnapshotMetadata};

use crate::RaftError;

fn encode(m: &impl protobuf::Message) -> Vec<u8> {
    m.write_to_bytes().expect("encoding an in-memory raft message cannot fail")
}

pub fn encode_entry(e: &Entry) -> Vec<u8> {
    encode(e)
}

pub fn encode_hard_state(hs: &HardState) -> Vec<u8> {
    encode(hs)
}

pub fn encode_snapshot_metadata(m: &SnapshotMetadata) -> Vec<u8> {
    encode(m)
}

fn decode<M: protobuf::Message>(bytes: &[u8], what: &str) -> Result<M, RaftError> {
    M::parse_from_bytes(bytes).map_err(|e| RaftError::Codec(format!("{what}: {e}")))
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, RaftError> {
    decode(bytes, "entry")
}

pub fn decode_hard_state(bytes: &[u8]) -> Result<HardState, RaftError> {
    decode(bytes, "hard state")
}

pub fn decode_snapshot_metadata(bytes: &[u8]) -> Result<SnapshotMetadata, RaftError> {
    decode(bytes, "snapshot metadata")
}
