//! The output formats of `-w/--write-out`: `simple`, `json`, `fields`,
//! `protobuf` and `table`, each printing what etcdctl 3.4's printer of the
//! same name prints for each response, byte for byte. A format that
//! etcdctl does not support for a response fails the same way
//! (`Error: <format> not supported as output format`, exit 4), after the
//! request was made, as in etcdctl.

use std::fmt::Write as _;

use ketch_client::proto::{
    AlarmResponse, AuthRoleGetResponse, AuthRoleListResponse, AuthUserGetResponse, AuthUserListResponse,
    DeleteRangeResponse, HashKvResponse, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeResponse, LeaseTimeToLiveResponse, MemberAddResponse, MemberListResponse, MemberPromoteResponse,
    MemberRemoveResponse, MemberUpdateResponse, MoveLeaderResponse, Permission, PutResponse, RangeResponse,
    ResponseHeader, StatusResponse, TxnResponse, response_op,
};
use ketch_client::{Event, KeyValue};
use prost::Message;

use crate::error::{CtlResult, EXIT_BAD_FEATURE, Exit, out};
use crate::gofmt::{self, hex_escaped, humanize_bytes, quote};
use crate::json::{self, Object};
use crate::table;

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Simple,
    Json,
    Fields,
    Protobuf,
    Table,
}

impl Format {
    /// The format named by `-w` (etcdctl's names), if any.
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "simple" => Some(Format::Simple),
            "json" => Some(Format::Json),
            "fields" => Some(Format::Fields),
            "protobuf" => Some(Format::Protobuf),
            "table" => Some(Format::Table),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Simple => "simple",
            Format::Json => "json",
            Format::Fields => "fields",
            Format::Protobuf => "protobuf",
            Format::Table => "table",
        }
    }
}

/// One watch response as etcdctl's printers see it (clientv3's
/// `WatchResponse`).
pub struct WatchView<'a> {
    pub header: &'a ResponseHeader,
    pub events: &'a [Event],
    pub compact_revision: i64,
    pub canceled: bool,
    pub created: bool,
}

/// `endpoint health`'s result for one endpoint.
pub struct EndpointHealth {
    pub endpoint: String,
    pub health: bool,
    pub took: String,
    pub error: String,
}

/// `endpoint status`'s result for one endpoint.
pub struct EndpointStatus {
    pub endpoint: String,
    pub status: StatusResponse,
}

/// `endpoint hashkv`'s result for one endpoint.
pub struct EndpointHash {
    pub endpoint: String,
    pub hash: HashKvResponse,
}

/// The printer of one run: format, `--hex`, and `--print-value-only`.
#[derive(Clone, Debug)]
pub struct Printer {
    pub format: Format,
    pub hex: bool,
    pub value_only: bool,
}

/// Go's `%x` with a zero-padded width, signed as Go prints it (`-00f`).
pub fn hex_padded(value: i64, width: usize) -> String {
    if value < 0 {
        format!("-{:0w$x}", value.unsigned_abs(), w = width.saturating_sub(1))
    } else {
        format!("{value:0width$x}")
    }
}

/// Header fields of the fields printer.
fn fields_header(s: &mut String, h: Option<&ResponseHeader>) -> CtlResult {
    let Some(h) = h else { return Err(Exit::nil_pointer_panic()) };
    let _ = writeln!(s, "\"ClusterID\" : {}", h.cluster_id);
    let _ = writeln!(s, "\"MemberID\" : {}", h.member_id);
    let _ = writeln!(s, "\"Revision\" : {}", h.revision);
    let _ = writeln!(s, "\"RaftTerm\" : {}", h.raft_term);
    Ok(())
}

fn fields_kv(s: &mut String, prefix: &str, kv: &KeyValue) {
    let _ = writeln!(s, "\"{prefix}Key\" : {}", quote(&kv.key));
    let _ = writeln!(s, "\"{prefix}CreateRevision\" : {}", kv.create_revision);
    let _ = writeln!(s, "\"{prefix}ModRevision\" : {}", kv.mod_revision);
    let _ = writeln!(s, "\"{prefix}Version\" : {}", kv.version);
    let _ = writeln!(s, "\"{prefix}Value\" : {}", quote(&kv.value));
    let _ = writeln!(s, "\"{prefix}Lease\" : {}", kv.lease);
}

fn event_type_name(t: i32) -> String {
    match t {
        0 => "PUT".to_string(),
        1 => "DELETE".to_string(),
        other => other.to_string(),
    }
}

fn alarm_type_name(t: i32) -> String {
    match t {
        0 => "NONE".to_string(),
        1 => "NOSPACE".to_string(),
        2 => "CORRUPT".to_string(),
        other => other.to_string(),
    }
}

/// gogoproto's compact text form of a header (`%v` of `*ResponseHeader`).
fn compact_text_header(h: &ResponseHeader) -> String {
    let mut s = String::new();
    if h.cluster_id != 0 {
        let _ = write!(s, "cluster_id:{} ", h.cluster_id);
    }
    if h.member_id != 0 {
        let _ = write!(s, "member_id:{} ", h.member_id);
    }
    if h.revision != 0 {
        let _ = write!(s, "revision:{} ", h.revision);
    }
    if h.raft_term != 0 {
        let _ = write!(s, "raft_term:{} ", h.raft_term);
    }
    s
}

/// A message in `-w protobuf`: its encoding, as it is.
fn protobuf(message: &impl Message) {
    out(message.encode_to_vec());
}

impl Printer {
    fn unsupported(&self) -> Exit {
        Exit::error(EXIT_BAD_FEATURE, format!("{} not supported as output format", self.format.name()))
    }

    /// A key-value pair in the simple format (`printKV`).
    fn simple_kv(&self, o: &mut Vec<u8>, kv: &KeyValue) {
        let (k, v) = if self.hex {
            (hex_escaped(&kv.key).into_bytes(), hex_escaped(&kv.value).into_bytes())
        } else {
            (kv.key.clone(), kv.value.clone())
        };
        if !self.value_only {
            o.extend_from_slice(&k);
            o.push(b'\n');
        }
        o.extend_from_slice(&v);
        o.push(b'\n');
    }

    fn simple_get(&self, o: &mut Vec<u8>, r: &RangeResponse) {
        for kv in &r.kvs {
            self.simple_kv(o, kv);
        }
    }

    fn simple_put(&self, o: &mut Vec<u8>, r: &PutResponse) {
        o.extend_from_slice(b"OK\n");
        if let Some(kv) = &r.prev_kv {
            self.simple_kv(o, kv);
        }
    }

    fn simple_del(&self, o: &mut Vec<u8>, r: &DeleteRangeResponse) {
        o.extend_from_slice(format!("{}\n", r.deleted).as_bytes());
        for kv in &r.prev_kvs {
            self.simple_kv(o, kv);
        }
    }

    fn fields_get(s: &mut String, r: &RangeResponse) -> CtlResult {
        fields_header(s, r.header.as_ref())?;
        for kv in &r.kvs {
            fields_kv(s, "", kv);
        }
        let _ = writeln!(s, "\"More\" : {}", r.more);
        let _ = writeln!(s, "\"Count\" : {}", r.count);
        Ok(())
    }

    fn fields_put(s: &mut String, r: &PutResponse) -> CtlResult {
        fields_header(s, r.header.as_ref())?;
        if let Some(kv) = &r.prev_kv {
            fields_kv(s, "Prev", kv);
        }
        Ok(())
    }

    fn fields_del(s: &mut String, r: &DeleteRangeResponse) -> CtlResult {
        fields_header(s, r.header.as_ref())?;
        let _ = writeln!(s, "\"Deleted\" : {}", r.deleted);
        for kv in &r.prev_kvs {
            fields_kv(s, "Prev", kv);
        }
        Ok(())
    }

    /// The answer of a KV call in any format but table, which etcdctl refuses.
    fn kv_answer<M: Message>(
        &self,
        r: &M,
        simple: impl FnOnce(&mut Vec<u8>),
        json: impl FnOnce() -> String,
        fields: impl FnOnce(&mut String) -> CtlResult,
    ) -> CtlResult {
        match self.format {
            Format::Simple => {
                let mut o = Vec::new();
                simple(&mut o);
                out(o);
            }
            Format::Json => out(json() + "\n"),
            Format::Fields => {
                let mut s = String::new();
                fields(&mut s)?;
                out(s);
            }
            Format::Protobuf => protobuf(r),
            Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `get`'s answer.
    pub fn get(&self, r: &RangeResponse) -> CtlResult {
        self.kv_answer(r, |o| self.simple_get(o, r), || json::range(r), |s| Self::fields_get(s, r))
    }

    /// `put`'s answer.
    pub fn put(&self, r: &PutResponse) -> CtlResult {
        self.kv_answer(r, |o| self.simple_put(o, r), || json::put(r), |s| Self::fields_put(s, r))
    }

    /// `del`'s answer.
    pub fn del(&self, r: &DeleteRangeResponse) -> CtlResult {
        self.kv_answer(r, |o| self.simple_del(o, r), || json::delete(r), |s| Self::fields_del(s, r))
    }

    /// `txn`'s answer.
    pub fn txn(&self, r: &TxnResponse) -> CtlResult {
        match self.format {
            Format::Simple => {
                let mut o = Vec::new();
                o.extend_from_slice(if r.succeeded { b"SUCCESS\n" } else { b"FAILURE\n" });
                for op in &r.responses {
                    o.push(b'\n');
                    match &op.response {
                        Some(response_op::Response::ResponseRange(g)) => self.simple_get(&mut o, g),
                        Some(response_op::Response::ResponsePut(p)) => self.simple_put(&mut o, p),
                        Some(response_op::Response::ResponseDeleteRange(d)) => self.simple_del(&mut o, d),
                        other => o.extend_from_slice(format!("unexpected response {other:?}\n").as_bytes()),
                    }
                }
                out(o);
            }
            Format::Json => out(json::txn(r) + "\n"),
            Format::Fields => {
                let mut s = String::new();
                fields_header(&mut s, r.header.as_ref())?;
                let _ = writeln!(s, "\"Succeeded\" : {}", r.succeeded);
                for op in &r.responses {
                    match &op.response {
                        Some(response_op::Response::ResponseRange(g)) => Self::fields_get(&mut s, g)?,
                        Some(response_op::Response::ResponsePut(p)) => Self::fields_put(&mut s, p)?,
                        Some(response_op::Response::ResponseDeleteRange(d)) => Self::fields_del(&mut s, d)?,
                        other => {
                            let _ = writeln!(s, "\"Unknown\" : {}", quote(format!("{other:?}").as_bytes()));
                        }
                    }
                }
                out(s);
            }
            Format::Protobuf => protobuf(r),
            Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// One watch response.
    pub fn watch(&self, w: &WatchView<'_>) -> CtlResult {
        match self.format {
            Format::Simple => {
                let mut o = Vec::new();
                for e in w.events {
                    o.extend_from_slice(event_type_name(e.r#type).as_bytes());
                    o.push(b'\n');
                    if let Some(prev) = &e.prev_kv {
                        self.simple_kv(&mut o, prev);
                    }
                    self.simple_kv(&mut o, &e.kv.clone().unwrap_or_default());
                }
                out(o);
            }
            Format::Json => {
                // clientv3 always makes the slice: `[]`, never `null`.
                let events = Some(w.events.iter().map(json::event).collect());
                let line = Object::new()
                    .raw("Header", &json::header(w.header))
                    .array("Events", events)
                    .int("CompactRevision", w.compact_revision)
                    .boolean("Canceled", w.canceled)
                    .boolean("Created", w.created)
                    .finish();
                out(line + "\n");
            }
            Format::Fields => {
                let mut s = String::new();
                fields_header(&mut s, Some(w.header))?;
                for e in w.events {
                    let _ = writeln!(s, "\"Type\" : {}", event_type_name(e.r#type));
                    if let Some(prev) = &e.prev_kv {
                        fields_kv(&mut s, "Prev", prev);
                    }
                    fields_kv(&mut s, "", &e.kv.clone().unwrap_or_default());
                }
                out(s);
            }
            Format::Protobuf => protobuf(&ketch_client::proto::WatchResponse {
                header: Some(*w.header),
                events: w.events.to_vec(),
                compact_revision: w.compact_revision,
                canceled: w.canceled,
                created: w.created,
                ..Default::default()
            }),
            Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `lease grant`'s answer.
    pub fn grant(&self, r: &LeaseGrantResponse) -> CtlResult {
        match self.format {
            Format::Simple => out(format!("lease {} granted with TTL({}s)\n", hex_padded(r.id, 16), r.ttl)),
            Format::Json => out(Object::new()
                .header_fields(r.header.as_ref())
                .int("ID", r.id)
                .int("TTL", r.ttl)
                .string("Error", &r.error)
                .finish()
                + "\n"),
            Format::Fields => {
                let mut s = String::new();
                fields_header(&mut s, r.header.as_ref())?;
                let _ = writeln!(s, "\"ID\" : {}", r.id);
                let _ = writeln!(s, "\"TTL\" : {}", r.ttl);
                out(s);
            }
            Format::Protobuf => protobuf(&r.header.unwrap_or_default()),
            Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `lease revoke`'s answer.
    pub fn revoke(&self, id: i64, r: &LeaseRevokeResponse) -> CtlResult {
        match self.format {
            Format::Simple => out(format!("lease {} revoked\n", hex_padded(id, 16))),
            Format::Json => out(json::lease_revoke(r) + "\n"),
            Format::Fields => {
                let mut s = String::new();
                fields_header(&mut s, r.header.as_ref())?;
                out(s);
            }
            // etcdctl hands the response by value, which has no Marshal.
            Format::Protobuf => {
                let header = r.header.as_ref().map_or_else(|| "<nil>".to_string(), compact_text_header);
                return Err(Exit::error(
                    EXIT_BAD_FEATURE,
                    format!("marshal unsupported for type clientv3.LeaseRevokeResponse ({{{header}}})"),
                ));
            }
            Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// One `lease keep-alive` renewal.
    pub fn keep_alive(&self, r: &LeaseKeepAliveResponse) -> CtlResult {
        match self.format {
            Format::Simple => out(format!("lease {} keepalived with TTL({})\n", hex_padded(r.id, 16), r.ttl)),
            Format::Json => {
                out(Object::new().header_fields(r.header.as_ref()).int("ID", r.id).int("TTL", r.ttl).finish() + "\n")
            }
            Format::Fields => {
                let mut s = String::new();
                fields_header(&mut s, r.header.as_ref())?;
                let _ = writeln!(s, "\"ID\" : {}", r.id);
                let _ = writeln!(s, "\"TTL\" : {}", r.ttl);
                out(s);
            }
            Format::Protobuf => protobuf(&r.header.unwrap_or_default()),
            Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `lease timetolive`'s answer.
    pub fn time_to_live(&self, r: &LeaseTimeToLiveResponse, keys: bool) -> CtlResult {
        match self.format {
            Format::Simple => {
                if r.granted_ttl == 0 && r.ttl == -1 {
                    out(format!("lease {} already expired\n", hex_padded(r.id, 16)));
                    return Ok(());
                }
                let mut o = format!(
                    "lease {} granted with TTL({}s), remaining({}s)",
                    hex_padded(r.id, 16),
                    r.granted_ttl,
                    r.ttl
                )
                .into_bytes();
                if keys {
                    o.extend_from_slice(b", attached keys([");
                    for (i, k) in r.keys.iter().enumerate() {
                        if i > 0 {
                            o.push(b' ');
                        }
                        o.extend_from_slice(k);
                    }
                    o.extend_from_slice(b"])");
                }
                o.push(b'\n');
                out(o);
            }
            Format::Json => {
                let keys = (!r.keys.is_empty())
                    .then(|| r.keys.iter().map(|k| gofmt::json_string(&gofmt::base64(k))).collect());
                out(Object::new()
                    .header_fields(r.header.as_ref())
                    .int("id", r.id)
                    .int("ttl", r.ttl)
                    .int("granted-ttl", r.granted_ttl)
                    .array("keys", keys)
                    .finish()
                    + "\n");
            }
            Format::Fields => {
                let mut s = String::new();
                fields_header(&mut s, r.header.as_ref())?;
                let _ = writeln!(s, "\"ID\" : {}", r.id);
                let _ = writeln!(s, "\"TTL\" : {}", r.ttl);
                let _ = writeln!(s, "\"GrantedTTL\" : {}", r.granted_ttl);
                for k in &r.keys {
                    let _ = writeln!(s, "\"Key\" : {}", quote(k));
                }
                out(s);
            }
            Format::Protobuf => protobuf(&r.header.unwrap_or_default()),
            Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `lease list`'s answer.
    pub fn leases(&self, r: &LeaseLeasesResponse) -> CtlResult {
        match self.format {
            Format::Simple => {
                let mut s = format!("found {} leases\n", r.leases.len());
                for l in &r.leases {
                    let _ = writeln!(s, "{}", hex_padded(l.id, 16));
                }
                out(s);
            }
            Format::Json => {
                let leases = r.leases.iter().map(|l| Object::new().int("id", l.id).finish()).collect();
                out(Object::new().header_fields(r.header.as_ref()).array("leases", Some(leases)).finish() + "\n");
            }
            Format::Fields => {
                let mut s = String::new();
                fields_header(&mut s, r.header.as_ref())?;
                for l in &r.leases {
                    let _ = writeln!(s, "\"ID\" : {}", l.id);
                }
                out(s);
            }
            Format::Protobuf => protobuf(&r.header.unwrap_or_default()),
            Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `member add`'s answer (the simple format's extra lines are the
    /// command's).
    pub fn member_add(&self, r: &MemberAddResponse) -> CtlResult {
        match self.format {
            Format::Simple => {
                let id = r.member.as_ref().map_or(0, |m| m.id);
                let cluster = r.header.as_ref().map_or(0, |h| h.cluster_id);
                out(format!("Member {} added to cluster {}\n", gofmt::hex16(id), gofmt::hex16(cluster)));
            }
            Format::Json => out(json::member_add(r) + "\n"),
            Format::Protobuf => protobuf(r),
            Format::Fields | Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    fn member_change(&self, verb: &str, id: u64, header: Option<&ResponseHeader>) {
        let cluster = header.map_or(0, |h| h.cluster_id);
        out(format!("Member {} {verb} cluster {}\n", gofmt::hex16(id), gofmt::hex16(cluster)));
    }

    /// `member remove`'s answer.
    pub fn member_remove(&self, id: u64, r: &MemberRemoveResponse) -> CtlResult {
        match self.format {
            Format::Simple => self.member_change("removed from", id, r.header.as_ref()),
            Format::Json => out(json::member_remove(r) + "\n"),
            Format::Protobuf => protobuf(r),
            Format::Fields | Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `member update`'s answer.
    pub fn member_update(&self, id: u64, r: &MemberUpdateResponse) -> CtlResult {
        match self.format {
            Format::Simple => self.member_change("updated in", id, r.header.as_ref()),
            Format::Json => out(json::member_update(r) + "\n"),
            Format::Protobuf => protobuf(r),
            Format::Fields | Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `member promote`'s answer.
    pub fn member_promote(&self, id: u64, r: &MemberPromoteResponse) -> CtlResult {
        match self.format {
            Format::Simple => self.member_change("promoted in", id, r.header.as_ref()),
            Format::Json => out(json::member_promote(r) + "\n"),
            Format::Protobuf => protobuf(r),
            Format::Fields | Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `member list`'s answer.
    pub fn member_list(&self, r: &MemberListResponse) -> CtlResult {
        let rows: Vec<Vec<String>> = r
            .members
            .iter()
            .map(|m| {
                vec![
                    format!("{:x}", m.id),
                    if m.name.is_empty() { "unstarted" } else { "started" }.to_string(),
                    m.name.clone(),
                    m.peer_ur_ls.join(","),
                    m.client_ur_ls.join(","),
                    m.is_learner.to_string(),
                ]
            })
            .collect();
        match self.format {
            Format::Simple => out(rows.iter().map(|r| r.join(", ") + "\n").collect::<String>()),
            Format::Json => out(json::member_list(r) + "\n"),
            Format::Fields => {
                let mut s = String::new();
                fields_header(&mut s, r.header.as_ref())?;
                for m in &r.members {
                    let _ = writeln!(s, "\"ID\" : {}", m.id);
                    let _ = writeln!(s, "\"Name\" : {}", quote(m.name.as_bytes()));
                    for u in &m.peer_ur_ls {
                        let _ = writeln!(s, "\"PeerURL\" : {}", quote(u.as_bytes()));
                    }
                    for u in &m.client_ur_ls {
                        let _ = writeln!(s, "\"ClientURL\" : {}", quote(u.as_bytes()));
                    }
                    let _ = writeln!(s, "\"IsLearner\" : {}", m.is_learner);
                    s.push('\n');
                }
                out(s);
            }
            Format::Protobuf => protobuf(r),
            Format::Table => {
                out(table::render(&["ID", "Status", "Name", "Peer Addrs", "Client Addrs", "Is Learner"], &rows))
            }
        }
        Ok(())
    }

    /// `endpoint health`'s results.
    pub fn endpoint_health(&self, list: &[EndpointHealth]) -> CtlResult {
        match self.format {
            Format::Simple => {
                for h in list {
                    let line = if h.error.is_empty() {
                        format!("{} is healthy: successfully committed proposal: took = {}\n", h.endpoint, h.took)
                    } else {
                        format!("{} is unhealthy: failed to commit proposal: {}\n", h.endpoint, h.error)
                    };
                    crate::error::err(line);
                }
            }
            Format::Json => {
                let items: Vec<String> = list
                    .iter()
                    .map(|h| {
                        Object::new()
                            .string("endpoint", &h.endpoint)
                            .boolean("health", h.health)
                            .string("took", &h.took)
                            .string_omit("error", &h.error)
                            .finish()
                    })
                    .collect();
                out(format!("[{}]\n", items.join(",")));
            }
            Format::Fields => {
                let mut s = String::new();
                for h in list {
                    let _ = writeln!(s, "\"Endpoint\" : {}", quote(h.endpoint.as_bytes()));
                    let _ = writeln!(s, "\"Health\" : {}", h.health);
                    let _ = writeln!(s, "\"Took\" : {}", h.took);
                    let _ = writeln!(s, "\"Error\" : {}", h.error);
                    s.push('\n');
                }
                out(s);
            }
            Format::Table => {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|h| vec![h.endpoint.clone(), h.health.to_string(), h.took.clone(), h.error.clone()])
                    .collect();
                out(table::render(&["endpoint", "health", "took", "error"], &rows));
            }
            Format::Protobuf => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `endpoint status`'s results.
    pub fn endpoint_status(&self, list: &[EndpointStatus]) -> CtlResult {
        let rows = || -> Vec<Vec<String>> {
            list.iter()
                .map(|e| {
                    let s = &e.status;
                    let member_id = s.header.as_ref().map_or(0, |h| h.member_id);
                    vec![
                        e.endpoint.clone(),
                        format!("{member_id:x}"),
                        s.version.clone(),
                        humanize_bytes(u64::try_from(s.db_size).unwrap_or(0)),
                        (s.leader == member_id).to_string(),
                        s.is_learner.to_string(),
                        s.raft_term.to_string(),
                        s.raft_index.to_string(),
                        s.raft_applied_index.to_string(),
                        s.errors.join(", "),
                    ]
                })
                .collect()
        };
        match self.format {
            Format::Simple => out(rows().iter().map(|r| r.join(", ") + "\n").collect::<String>()),
            Format::Json => {
                let items: Vec<String> = list
                    .iter()
                    .map(|e| {
                        Object::new().string("Endpoint", &e.endpoint).raw("Status", &json::status(&e.status)).finish()
                    })
                    .collect();
                out(format!("[{}]\n", items.join(",")));
            }
            Format::Fields => {
                let mut s = String::new();
                for e in list {
                    let st = &e.status;
                    fields_header(&mut s, st.header.as_ref())?;
                    let _ = writeln!(s, "\"Version\" : {}", quote(st.version.as_bytes()));
                    let _ = writeln!(s, "\"DBSize\" : {}", st.db_size);
                    let _ = writeln!(s, "\"Leader\" : {}", st.leader);
                    let _ = writeln!(s, "\"IsLearner\" : {}", st.is_learner);
                    let _ = writeln!(s, "\"RaftIndex\" : {}", st.raft_index);
                    let _ = writeln!(s, "\"RaftTerm\" : {}", st.raft_term);
                    let _ = writeln!(s, "\"RaftAppliedIndex\" : {}", st.raft_applied_index);
                    let _ = writeln!(s, "\"Errors\" : {}", gofmt::string_slice(&st.errors));
                    let _ = writeln!(s, "\"Endpoint\" : {}", quote(e.endpoint.as_bytes()));
                    s.push('\n');
                }
                out(s);
            }
            Format::Table => out(table::render(
                &[
                    "endpoint",
                    "ID",
                    "version",
                    "db size",
                    "is leader",
                    "is learner",
                    "raft term",
                    "raft index",
                    "raft applied index",
                    "errors",
                ],
                &rows(),
            )),
            Format::Protobuf => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `endpoint hashkv`'s results.
    pub fn endpoint_hash(&self, list: &[EndpointHash]) -> CtlResult {
        let rows =
            || -> Vec<Vec<String>> { list.iter().map(|e| vec![e.endpoint.clone(), e.hash.hash.to_string()]).collect() };
        match self.format {
            Format::Simple => out(rows().iter().map(|r| r.join(", ") + "\n").collect::<String>()),
            Format::Json => {
                let items: Vec<String> = list
                    .iter()
                    .map(|e| {
                        Object::new().string("Endpoint", &e.endpoint).raw("HashKV", &json::hash_kv(&e.hash)).finish()
                    })
                    .collect();
                out(format!("[{}]\n", items.join(",")));
            }
            Format::Fields => {
                let mut s = String::new();
                for e in list {
                    fields_header(&mut s, e.hash.header.as_ref())?;
                    let _ = writeln!(s, "\"Endpoint\" : {}", quote(e.endpoint.as_bytes()));
                    let _ = writeln!(s, "\"Hash\" : {}", e.hash.hash);
                    s.push('\n');
                }
                out(s);
            }
            Format::Table => out(table::render(&["endpoint", "hash"], &rows())),
            Format::Protobuf => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `alarm list` / `alarm disarm`'s answer.
    pub fn alarm(&self, r: &AlarmResponse) -> CtlResult {
        match self.format {
            Format::Simple => {
                let mut s = String::new();
                for a in &r.alarms {
                    // gogoproto's compact text form (`%+v` of the message).
                    if a.member_id != 0 {
                        let _ = write!(s, "memberID:{} ", a.member_id);
                    }
                    if a.alarm != 0 {
                        let _ = write!(s, "alarm:{} ", alarm_type_name(a.alarm));
                    }
                    s.push('\n');
                }
                out(s);
            }
            Format::Json => out(json::alarm(r) + "\n"),
            Format::Fields => {
                let mut s = String::new();
                fields_header(&mut s, r.header.as_ref())?;
                for a in &r.alarms {
                    let _ = writeln!(s, "\"MemberID\" : {}", a.member_id);
                    let _ = writeln!(s, "\"AlarmType\" : {}", alarm_type_name(a.alarm));
                    s.push('\n');
                }
                out(s);
            }
            Format::Protobuf => protobuf(r),
            Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `move-leader`'s answer.
    pub fn move_leader(&self, leader: u64, target: u64, r: &MoveLeaderResponse) -> CtlResult {
        match self.format {
            Format::Simple => out(format!("Leadership transferred from {leader:x} to {target:x}\n")),
            Format::Json => out(json::move_leader(r) + "\n"),
            Format::Protobuf => protobuf(r),
            Format::Fields | Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }
}

/// A permission type's name (`authpb.Permission_Type`'s `String()`).
fn permission_type_name(t: i32) -> String {
    match t {
        0 => "READ".to_string(),
        1 => "WRITE".to_string(),
        2 => "READWRITE".to_string(),
        other => other.to_string(),
    }
}

/// clientv3's `GetPrefixRangeEnd`: the key after every key with this
/// prefix, `"\0"` when there is none.
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The simple printer's permission lines of one kind (`KV Read:` or `KV
/// Write:`), keys as raw bytes.
fn simple_permissions(o: &mut Vec<u8>, perms: &[Permission], wanted: &[i32]) {
    for perm in perms.iter().filter(|p| wanted.contains(&p.perm_type)) {
        o.push(b'\t');
        if perm.range_end.is_empty() {
            o.extend_from_slice(&perm.key);
            o.push(b'\n');
            continue;
        }
        o.push(b'[');
        o.extend_from_slice(&perm.key);
        if perm.range_end != b"\0" {
            o.extend_from_slice(b", ");
            o.extend_from_slice(&perm.range_end);
            o.push(b')');
        } else {
            o.extend_from_slice(b", <open ended>");
        }
        if prefix_end(&perm.key) == perm.range_end {
            o.extend_from_slice(b" (prefix ");
            o.extend_from_slice(&perm.key);
            o.push(b')');
        }
        o.push(b'\n');
    }
}

impl Printer {
    /// The answer of an auth change (user add, role grant-permission, ...):
    /// `simple` in the simple format, the header otherwise.
    pub fn auth_change<M: Message>(&self, simple: &[u8], r: &M, header: Option<&ResponseHeader>) -> CtlResult {
        match self.format {
            Format::Simple => out(simple),
            Format::Json => {
                out(Object::new().message_omit("header", header.map(json::header)).finish() + "\n");
            }
            Format::Fields => {
                let mut s = String::new();
                fields_header(&mut s, header)?;
                out(s);
            }
            Format::Protobuf => protobuf(r),
            Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `user get`'s answer.
    pub fn user_get(&self, name: &str, r: &AuthUserGetResponse) -> CtlResult {
        match self.format {
            Format::Simple => {
                let mut s = format!("User: {name}\nRoles:");
                for role in &r.roles {
                    s.push(' ');
                    s.push_str(role);
                }
                s.push('\n');
                out(s);
            }
            Format::Json => out(Object::new()
                .message_omit("header", r.header.as_ref().map(json::header))
                .strings_omit("roles", &r.roles)
                .finish()
                + "\n"),
            Format::Protobuf => protobuf(r),
            Format::Fields | Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `user list`'s answer.
    pub fn user_list(&self, r: &AuthUserListResponse) -> CtlResult {
        match self.format {
            Format::Simple => out(r.users.iter().map(|u| format!("{u}\n")).collect::<String>()),
            Format::Json => out(Object::new()
                .message_omit("header", r.header.as_ref().map(json::header))
                .strings_omit("users", &r.users)
                .finish()
                + "\n"),
            Format::Protobuf => protobuf(r),
            Format::Fields | Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `role get`'s answer (also each role of `user get --detail`).
    pub fn role_get(&self, name: &str, r: &AuthRoleGetResponse) -> CtlResult {
        match self.format {
            Format::Simple => {
                let mut o = format!("Role {name}\nKV Read:\n").into_bytes();
                simple_permissions(&mut o, &r.perm, &[0, 2]);
                o.extend_from_slice(b"KV Write:\n");
                simple_permissions(&mut o, &r.perm, &[1, 2]);
                out(o);
            }
            Format::Json => {
                let perms = r
                    .perm
                    .iter()
                    .map(|p| {
                        Object::new()
                            .int_omit("permType", i128::from(p.perm_type))
                            .bytes_omit("key", &p.key)
                            .bytes_omit("range_end", &p.range_end)
                            .finish()
                    })
                    .collect();
                out(Object::new()
                    .message_omit("header", r.header.as_ref().map(json::header))
                    .array_omit("perm", perms)
                    .finish()
                    + "\n");
            }
            Format::Fields => {
                let mut s = String::new();
                fields_header(&mut s, r.header.as_ref())?;
                for p in &r.perm {
                    let _ = writeln!(s, "\"PermType\" :  {}", permission_type_name(p.perm_type));
                    let _ = writeln!(s, "\"Key\" : {}", quote(&p.key));
                    let _ = writeln!(s, "\"RangeEnd\" : {}", quote(&p.range_end));
                }
                out(s);
            }
            Format::Protobuf => protobuf(r),
            Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `role list`'s answer.
    pub fn role_list(&self, r: &AuthRoleListResponse) -> CtlResult {
        match self.format {
            Format::Simple => out(r.roles.iter().map(|role| format!("{role}\n")).collect::<String>()),
            Format::Json => out(Object::new()
                .message_omit("header", r.header.as_ref().map(json::header))
                .strings_omit("roles", &r.roles)
                .finish()
                + "\n"),
            Format::Fields => {
                let mut s = String::new();
                fields_header(&mut s, r.header.as_ref())?;
                s.push_str("\"Roles\" :");
                for role in &r.roles {
                    s.push(' ');
                    s.push_str(&quote(role.as_bytes()));
                }
                s.push('\n');
                out(s);
            }
            Format::Protobuf => protobuf(r),
            Format::Table => return Err(self.unsupported()),
        }
        Ok(())
    }
}
