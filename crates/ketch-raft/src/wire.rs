//! Raft messages on the wire between members.
//!
//! The bytes are raft-rs's `eraftpb.Message` (etcd's `raftpb` layout). We encode
//! with raft-rs's own types, but bytes from a peer are parsed only by prost,
//! into the mirror structs below (same field numbers), and then converted:
//! untrusted input never reaches the `protobuf` 2.x parser (RUSTSEC-2024-0437).

use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata};

use crate::RaftError;

#[derive(Clone, PartialEq, prost::Message)]
struct WireEntry {
    #[prost(int32, tag = "1")]
    entry_type: i32,
    #[prost(uint64, tag = "2")]
    term: u64,
    #[prost(uint64, tag = "3")]
    index: u64,
    #[prost(bytes = "vec", tag = "4")]
    data: Vec<u8>,
    #[prost(bytes = "vec", tag = "6")]
    context: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireConfState {
    #[prost(uint64, repeated, tag = "1")]
    voters: Vec<u64>,
    #[prost(uint64, repeated, tag = "2")]
    learners: Vec<u64>,
    #[prost(uint64, repeated, tag = "3")]
    voters_outgoing: Vec<u64>,
    #[prost(uint64, repeated, tag = "4")]
    learners_next: Vec<u64>,
    #[prost(bool, tag = "5")]
    auto_leave: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireSnapshotMetadata {
    #[prost(message, optional, tag = "1")]
    conf_state: Option<WireConfState>,
    #[prost(uint64, tag = "2")]
    index: u64,
    #[prost(uint64, tag = "3")]
    term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireSnapshot {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    metadata: Option<WireSnapshotMetadata>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireMessage {
    #[prost(int32, tag = "1")]
    msg_type: i32,
    #[prost(uint64, tag = "2")]
    to: u64,
    #[prost(uint64, tag = "3")]
    from: u64,
    #[prost(uint64, tag = "4")]
    term: u64,
    #[prost(uint64, tag = "5")]
    log_term: u64,
    #[prost(uint64, tag = "6")]
    index: u64,
    #[prost(message, repeated, tag = "7")]
    entries: Vec<WireEntry>,
    #[prost(uint64, tag = "8")]
    commit: u64,
    #[prost(message, optional, tag = "9")]
    snapshot: Option<WireSnapshot>,
    #[prost(bool, tag = "10")]
    reject: bool,
    #[prost(uint64, tag = "11")]
    reject_hint: u64,
    #[prost(bytes = "vec", tag = "12")]
    context: Vec<u8>,
    #[prost(uint64, tag = "13")]
    request_snapshot: u64,
    #[prost(uint64, tag = "14")]
    deprecated_priority: u64,
    #[prost(uint64, tag = "15")]
    commit_term: u64,
    #[prost(int64, tag = "16")]
    priority: i64,
}

/// Encodes a message for a peer.
pub fn encode_message(m: &Message) -> Vec<u8> {
    protobuf::Message::write_to_bytes(m).expect("encoding an in-memory raft message cannot fail")
}

/// Parses a message from a peer (prost only) and checks its enums.
pub fn decode_message(bytes: &[u8]) -> Result<Message, RaftError> {
    let w = <WireMessage as prost::Message>::decode(bytes).map_err(|e| RaftError::Codec(format!("message: {e}")))?;
    let msg_type = message_type(w.msg_type)?;
    let mut m = Message::default();
    m.set_msg_type(msg_type);
    m.to = w.to;
    m.from = w.from;
    m.term = w.term;
    m.log_term = w.log_term;
    m.index = w.index;
    m.commit = w.commit;
    m.commit_term = w.commit_term;
    m.request_snapshot = w.request_snapshot;
    m.reject = w.reject;
    m.reject_hint = w.reject_hint;
    m.context = w.context.into();
    m.deprecated_priority = w.deprecated_priority;
    m.priority = w.priority;
    let mut entries = Vec::with_capacity(w.entries.len());
    for e in w.entries {
        let mut entry = Entry::default();
        entry.set_entry_type(entry_type(e.entry_type)?);
        entry.term = e.term;
        entry.index = e.index;
        entry.data = e.data.into();
        entry.context = e.context.into();
        entries.push(entry);
    }
    m.entries = entries.into();
    if let Some(s) = w.snapshot {
        let mut snap = Snapshot { data: s.data.into(), ..Default::default() };
        if let Some(md) = s.metadata {
            let mut meta = SnapshotMetadata { index: md.index, term: md.term, ..Default::default() };
            if let Some(cs) = md.conf_state {
                meta.set_conf_state(ConfState {
                    voters: cs.voters,
                    learners: cs.learners,
                    voters_outgoing: cs.voters_outgoing,
                    learners_next: cs.learners_next,
                    auto_leave: cs.auto_leave,
                    ..Default::default()
                });
            }
            snap.set_metadata(meta);
        }
        m.set_snapshot(snap);
    }
    Ok(m)
}

fn message_type(v: i32) -> Result<MessageType, RaftError> {
    <MessageType as protobuf::ProtobufEnum>::from_i32(v)
        .ok_or_else(|| RaftError::Codec(format!("unknown raft message type {v}")))
}

fn entry_type(v: i32) -> Result<EntryType, RaftError> {
    <EntryType as protobuf::ProtobufEnum>::from_i32(v)
        .ok_or_else(|| RaftError::Codec(format!("unknown raft entry type {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_prost() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 7;
        m.log_term = 6;
        m.index = 41;
        m.commit = 40;
        m.commit_term = 6;
        m.reject_hint = 3;
        m.context = b"ctx".to_vec().into();
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.term = 7;
        e.index = 42;
        e.data = b"data".to_vec().into();
        m.entries = vec![e.clone(), Entry::default()].into();
        let mut snap = Snapshot::default();
        let mut meta = SnapshotMetadata { index: 9, term: 2, ..Default::default() };
        meta.set_conf_state(ConfState { voters: vec![1, 2, 3], learners: vec![4], ..Default::default() });
        snap.set_metadata(meta);
        m.set_snapshot(snap);
        let back = decode_message(&encode_message(&m)).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_message(&[0xff, 0xff, 0xff]).is_err());
        // msg_type 99 does not exist.
        assert!(decode_message(&[0x08, 99]).is_err());
    }
}
