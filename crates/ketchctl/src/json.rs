//! Go's `encoding/json` output of etcd's response structs, as etcdctl's
//! `-w json` prints them: fields in struct declaration order under their
//! `json` tag (the protobuf field name), `omitempty` fields left out when
//! zero, bytes in base64, 64-bit integers as plain numbers, enums as
//! numbers, and embedded structs (the lease responses' `*ResponseHeader`)
//! flattened into the outer object.

use ketch_client::proto::{
    AlarmMember, AlarmResponse, DeleteRangeResponse, HashKvResponse, LeaseRevokeResponse, Member, MemberAddResponse,
    MemberListResponse, MemberPromoteResponse, MemberRemoveResponse, MemberUpdateResponse, MoveLeaderResponse,
    PutResponse, RangeResponse, ResponseHeader, ResponseOp, StatusResponse, TxnResponse, response_op,
};
use ketch_client::{Event, KeyValue};

use crate::gofmt::{base64, json_string};

/// One JSON object being written, field by field.
#[derive(Default)]
pub struct Object {
    out: String,
}

impl Object {
    pub fn new() -> Object {
        Object { out: String::from("{") }
    }

    fn key(&mut self, name: &str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        self.out.push_str(&json_string(name));
        self.out.push(':');
    }

    /// A field written whatever its value.
    pub fn raw(&mut self, name: &str, value: &str) -> &mut Self {
        self.key(name);
        self.out.push_str(value);
        self
    }

    pub fn int(&mut self, name: &str, value: impl ToString) -> &mut Self {
        self.raw(name, &value.to_string())
    }

    /// An `omitempty` integer.
    pub fn int_omit(&mut self, name: &str, value: i128) -> &mut Self {
        if value != 0 {
            self.raw(name, &value.to_string());
        }
        self
    }

    pub fn boolean(&mut self, name: &str, value: bool) -> &mut Self {
        self.raw(name, if value { "true" } else { "false" })
    }

    /// An `omitempty` bool.
    pub fn bool_omit(&mut self, name: &str, value: bool) -> &mut Self {
        if value {
            self.raw(name, "true");
        }
        self
    }

    pub fn string(&mut self, name: &str, value: &str) -> &mut Self {
        self.raw(name, &json_string(value))
    }

    /// An `omitempty` string.
    pub fn string_omit(&mut self, name: &str, value: &str) -> &mut Self {
        if !value.is_empty() {
            self.string(name, value);
        }
        self
    }

    /// An `omitempty` byte slice.
    pub fn bytes_omit(&mut self, name: &str, value: &[u8]) -> &mut Self {
        if !value.is_empty() {
            self.raw(name, &json_string(&base64(value)));
        }
        self
    }

    /// An `omitempty` slice of strings.
    pub fn strings_omit(&mut self, name: &str, values: &[String]) -> &mut Self {
        if !values.is_empty() {
            let items: Vec<String> = values.iter().map(|v| json_string(v)).collect();
            self.raw(name, &format!("[{}]", items.join(",")));
        }
        self
    }

    /// An `omitempty` slice of already encoded items.
    pub fn array_omit(&mut self, name: &str, items: Vec<String>) -> &mut Self {
        if !items.is_empty() {
            self.raw(name, &format!("[{}]", items.join(",")));
        }
        self
    }

    /// A slice of already encoded items (`null` when `None`).
    pub fn array(&mut self, name: &str, items: Option<Vec<String>>) -> &mut Self {
        match items {
            Some(items) => self.raw(name, &format!("[{}]", items.join(","))),
            None => self.raw(name, "null"),
        }
    }

    /// An `omitempty` pointer to a message.
    pub fn message_omit(&mut self, name: &str, value: Option<String>) -> &mut Self {
        if let Some(v) = value {
            self.raw(name, &v);
        }
        self
    }

    /// The header's fields, flattened (Go's embedded `*ResponseHeader`).
    pub fn header_fields(&mut self, header: Option<&ResponseHeader>) -> &mut Self {
        if let Some(h) = header {
            self.int_omit("cluster_id", i128::from(h.cluster_id))
                .int_omit("member_id", i128::from(h.member_id))
                .int_omit("revision", i128::from(h.revision))
                .int_omit("raft_term", i128::from(h.raft_term));
        }
        self
    }

    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.out);
        out.push('}');
        out
    }
}

pub fn header(h: &ResponseHeader) -> String {
    Object::new().header_fields(Some(h)).finish()
}

fn header_opt(h: Option<&ResponseHeader>) -> Option<String> {
    h.map(header)
}

pub fn key_value(kv: &KeyValue) -> String {
    Object::new()
        .bytes_omit("key", &kv.key)
        .int_omit("create_revision", i128::from(kv.create_revision))
        .int_omit("mod_revision", i128::from(kv.mod_revision))
        .int_omit("version", i128::from(kv.version))
        .bytes_omit("value", &kv.value)
        .int_omit("lease", i128::from(kv.lease))
        .finish()
}

pub fn event(e: &Event) -> String {
    Object::new()
        .int_omit("type", i128::from(e.r#type))
        .message_omit("kv", e.kv.as_ref().map(key_value))
        .message_omit("prev_kv", e.prev_kv.as_ref().map(key_value))
        .finish()
}

pub fn range(r: &RangeResponse) -> String {
    Object::new()
        .message_omit("header", header_opt(r.header.as_ref()))
        .array_omit("kvs", r.kvs.iter().map(key_value).collect())
        .bool_omit("more", r.more)
        .int_omit("count", i128::from(r.count))
        .finish()
}

pub fn put(r: &PutResponse) -> String {
    Object::new()
        .message_omit("header", header_opt(r.header.as_ref()))
        .message_omit("prev_kv", r.prev_kv.as_ref().map(key_value))
        .finish()
}

pub fn delete(r: &DeleteRangeResponse) -> String {
    Object::new()
        .message_omit("header", header_opt(r.header.as_ref()))
        .int_omit("deleted", i128::from(r.deleted))
        .array_omit("prev_kvs", r.prev_kvs.iter().map(key_value).collect())
        .finish()
}

fn response_op(op: &ResponseOp) -> String {
    // Go's oneof: a `Response` interface field holding a wrapper struct
    // whose one field is named after the variant (no json tag).
    let inner = match &op.response {
        None => return Object::new().raw("Response", "null").finish(),
        Some(response_op::Response::ResponseRange(r)) => Object::new().raw("ResponseRange", &range(r)).finish(),
        Some(response_op::Response::ResponsePut(r)) => Object::new().raw("ResponsePut", &put(r)).finish(),
        Some(response_op::Response::ResponseDeleteRange(r)) => {
            Object::new().raw("ResponseDeleteRange", &delete(r)).finish()
        }
        Some(response_op::Response::ResponseTxn(r)) => Object::new().raw("ResponseTxn", &txn(r)).finish(),
    };
    Object::new().raw("Response", &inner).finish()
}

pub fn txn(r: &TxnResponse) -> String {
    Object::new()
        .message_omit("header", header_opt(r.header.as_ref()))
        .bool_omit("succeeded", r.succeeded)
        .array_omit("responses", r.responses.iter().map(response_op).collect())
        .finish()
}

pub fn lease_revoke(r: &LeaseRevokeResponse) -> String {
    Object::new().message_omit("header", header_opt(r.header.as_ref())).finish()
}

pub fn member(m: &Member) -> String {
    Object::new()
        .int_omit("ID", i128::from(m.id))
        .string_omit("name", &m.name)
        .strings_omit("peerURLs", &m.peer_ur_ls)
        .strings_omit("clientURLs", &m.client_ur_ls)
        .bool_omit("isLearner", m.is_learner)
        .finish()
}

pub fn member_add(r: &MemberAddResponse) -> String {
    Object::new()
        .message_omit("header", header_opt(r.header.as_ref()))
        .message_omit("member", r.member.as_ref().map(member))
        .array_omit("members", r.members.iter().map(member).collect())
        .finish()
}

fn header_and_members(h: Option<&ResponseHeader>, members: &[Member]) -> String {
    Object::new()
        .message_omit("header", header_opt(h))
        .array_omit("members", members.iter().map(member).collect())
        .finish()
}

pub fn member_remove(r: &MemberRemoveResponse) -> String {
    header_and_members(r.header.as_ref(), &r.members)
}

pub fn member_update(r: &MemberUpdateResponse) -> String {
    header_and_members(r.header.as_ref(), &r.members)
}

pub fn member_list(r: &MemberListResponse) -> String {
    header_and_members(r.header.as_ref(), &r.members)
}

pub fn member_promote(r: &MemberPromoteResponse) -> String {
    header_and_members(r.header.as_ref(), &r.members)
}

fn alarm_member(a: &AlarmMember) -> String {
    Object::new().int_omit("memberID", i128::from(a.member_id)).int_omit("alarm", i128::from(a.alarm)).finish()
}

pub fn alarm(r: &AlarmResponse) -> String {
    Object::new()
        .message_omit("header", header_opt(r.header.as_ref()))
        .array_omit("alarms", r.alarms.iter().map(alarm_member).collect())
        .finish()
}

pub fn move_leader(r: &MoveLeaderResponse) -> String {
    Object::new().message_omit("header", header_opt(r.header.as_ref())).finish()
}

pub fn status(r: &StatusResponse) -> String {
    Object::new()
        .message_omit("header", header_opt(r.header.as_ref()))
        .string_omit("version", &r.version)
        .int_omit("dbSize", i128::from(r.db_size))
        .int_omit("leader", i128::from(r.leader))
        .int_omit("raftIndex", i128::from(r.raft_index))
        .int_omit("raftTerm", i128::from(r.raft_term))
        .int_omit("raftAppliedIndex", i128::from(r.raft_applied_index))
        .strings_omit("errors", &r.errors)
        .int_omit("dbSizeInUse", i128::from(r.db_size_in_use))
        .bool_omit("isLearner", r.is_learner)
        .finish()
}

pub fn hash_kv(r: &HashKvResponse) -> String {
    Object::new()
        .message_omit("header", header_opt(r.header.as_ref()))
        .int_omit("hash", i128::from(r.hash))
        .int_omit("compact_revision", i128::from(r.compact_revision))
        .finish()
}
