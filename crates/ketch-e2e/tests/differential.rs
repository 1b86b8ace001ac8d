//! Differential test: a seeded random sequence of KV requests sent over gRPC
//! in lockstep to a reference etcd and to ketch (see `KETCH_E2E_SUBJECT` in
//! the library docs); every answer must be identical.
//!
//! - The seed is printed first; `KETCH_SEED=<n>` replays a run.
//! - `KETCH_DIFF_STEPS=<n>` changes the number of requests (default 4000).
//! - `KETCH_DIFF_KEEP_GOING=1` records mismatches and goes on instead of
//!   stopping at the first one (later ones may be consequences of earlier
//!   ones); the test still fails at the end.
//!
//! For every request we compare either the gRPC status (code and message)
//! or the whole response after zeroing `cluster_id`, `member_id` and
//! `raft_term` in every header (nested txn headers included).
//!
//! The one normalisation beyond headers, because etcd itself is not
//! deterministic there: etcd sorts range results with Go's `sort.Sort`,
//! which is an insertion sort (stable) for at most 12 elements and an
//! unstable pdqsort above that. So for a sorted range (sort target other
//! than KEY) whose key count is above 12 (`count` is an upper bound on the
//! number of kvs sorted), both sides are re-sorted stably by (sort field, key)
//! before comparing, and, if the result was cut by `limit`, the kvs that tie
//! with the last returned one on the sort field are reduced to that field
//! (which of several tied keys made it past the limit is up to the unstable
//! sort). When the sort field is not in the response (`keys_only` with
//! target VALUE), the kvs are compared as a set of keys, or only by number
//! when cut by `limit`. See [`canonical_range`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use ketch_e2e::{ClearHeaders, Member, env_flag, prefix_end, readable, seed, subject_kind};
use ketch_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse, HashKvRequest,
    LeaseGrantRequest, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    lease_client::LeaseClient,
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
};
use ketch_proto::mvccpb::KeyValue;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

/// The key space: ~20 keys with overlapping prefixes and binary bytes.
const KEYS: &[&[u8]] = &[
    b"a",
    b"a/",
    b"a/1",
    b"a/2",
    b"a/2/x",
    b"a/3",
    b"ab",
    b"b",
    b"b/1",
    b"b/2",
    b"c",
    b"foo",
    b"foo/bar",
    b"foo/baz",
    b"foo0",
    b"k\x00",
    b"k\xff",
    b"k\xff\xff",
    b"z",
    b"\xff",
];

/// Prefixes for prefix ranges (`b""` means every key).
const PREFIXES: &[&[u8]] = &[b"", b"a", b"a/", b"a/2", b"b", b"b/", b"foo", b"foo/", b"k", b"k\xff", b"z", b"\xff"];

/// A few values, so that VALUE compares and sorts see ties.
const VALUES: &[&[u8]] = &[b"", b"v0", b"v1", b"v2", b"v3", b"w", b"\x00\xff"];

/// The lease granted on both servers at the start (if both support it).
const LEASE_ID: i64 = 0x4b45_5443;
/// A lease that never exists.
const BOGUS_LEASE: i64 = 0x0bad_1ea5e;

/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

#[derive(Clone, Debug)]
enum Req {
    Put(PutRequest),
    Range(RangeRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
}

#[derive(Clone, Debug, PartialEq)]
enum Resp {
    Put(PutResponse),
    Range(RangeResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
}

/// `Ok(response)` or `Err((gRPC code, message))`.
type Outcome = Result<Resp, (tonic::Code, String)>;

struct Gen {
    rng: StdRng,
    /// Generating ops of a txn: make invalid read revisions rarer, so that
    /// most txns get past etcd's request checks.
    in_txn: bool,
    /// Current revision (from etcd's answers).
    rev: i64,
    /// Last successful compaction revision (0 = none).
    compacted: i64,
    /// Whether [`LEASE_ID`] exists on both servers.
    lease: bool,
}

impl Gen {
    fn key(&mut self) -> Vec<u8> {
        KEYS.choose(&mut self.rng).expect("KEYS is not empty").to_vec()
    }

    fn value(&mut self) -> Vec<u8> {
        if self.rng.random_bool(0.85) {
            VALUES.choose(&mut self.rng).expect("VALUES is not empty").to_vec()
        } else {
            let len = self.rng.random_range(0..24);
            (0..len).map(|_| self.rng.random::<u8>()).collect()
        }
    }

    fn lease(&mut self) -> i64 {
        match self.rng.random_range(0..100) {
            0..80 => 0,
            80..97 if self.lease => LEASE_ID,
            80..97 => 0,
            _ => BOGUS_LEASE,
        }
    }

    /// A revision for reads or compare operands: mostly valid, sometimes
    /// compacted, future, zero or negative.
    fn revision(&mut self) -> i64 {
        let roll = if self.in_txn && self.rng.random_bool(0.8) {
            self.rng.random_range(0..80)
        } else {
            self.rng.random_range(0..100)
        };
        match roll {
            0..50 => 0,
            50..80 => self.rng.random_range(self.compacted.max(1)..=self.rev),
            80..88 if self.compacted > 1 => self.rng.random_range(1..self.compacted),
            80..88 => self.rng.random_range(1..=self.rev),
            88..96 => self.rev + self.rng.random_range(1..4),
            _ => -self.rng.random_range(1..3),
        }
    }

    /// `(key, range_end)` of a single key, a prefix, a from-key range or an
    /// explicit (possibly empty or inverted) interval.
    fn range(&mut self) -> (Vec<u8>, Vec<u8>) {
        match self.rng.random_range(0..100) {
            0..35 => (self.key(), Vec::new()),
            35..60 => {
                let p = PREFIXES.choose(&mut self.rng).expect("prefixes").to_vec();
                if p.is_empty() {
                    (vec![0], vec![0])
                } else {
                    let end = prefix_end(&p);
                    (p, end)
                }
            }
            60..75 => (self.key(), vec![0]),
            75..95 => {
                let start = self.key();
                let end = if self.rng.random_bool(0.5) {
                    self.key()
                } else {
                    PREFIXES.choose(&mut self.rng).expect("prefixes").to_vec()
                };
                (start, end)
            }
            _ => {
                let k = self.key();
                (k.clone(), k)
            }
        }
    }

    fn put(&mut self, key: Vec<u8>) -> PutRequest {
        let ignore_value = self.rng.random_bool(0.1);
        let ignore_lease = self.rng.random_bool(0.1);
        PutRequest {
            key,
            // ignore_value with a value is an error: make it rare.
            value: if ignore_value && self.rng.random_bool(0.9) { Vec::new() } else { self.value() },
            lease: if ignore_lease && self.rng.random_bool(0.9) { 0 } else { self.lease() },
            prev_kv: self.rng.random_bool(0.4),
            ignore_value,
            ignore_lease,
        }
    }

    fn range_req(&mut self) -> RangeRequest {
        let (key, range_end) = self.range();
        let bound = |g: &mut Gen| {
            if g.rng.random_bool(0.12) { g.rng.random_range(1..=g.rev + 1) } else { 0 }
        };
        RangeRequest {
            key,
            range_end,
            limit: match self.rng.random_range(0..100) {
                0..60 => 0,
                60..97 => self.rng.random_range(1..6),
                _ => -1,
            },
            revision: self.revision(),
            sort_order: self.rng.random_range(0..3),
            sort_target: self.rng.random_range(0..5),
            serializable: self.rng.random_bool(0.3),
            keys_only: self.rng.random_bool(0.2),
            count_only: self.rng.random_bool(0.1),
            min_mod_revision: bound(self),
            max_mod_revision: bound(self),
            min_create_revision: bound(self),
            max_create_revision: bound(self),
        }
    }

    fn delete(&mut self) -> DeleteRangeRequest {
        let (key, range_end) = if self.rng.random_bool(0.5) { (self.key(), Vec::new()) } else { self.range() };
        DeleteRangeRequest { key, range_end, prev_kv: self.rng.random_bool(0.5) }
    }

    fn compare(&mut self) -> Compare {
        let target = self.rng.random_range(0..5);
        let key = self.key();
        let range_end = match self.rng.random_range(0..100) {
            0..80 => Vec::new(),
            80..90 => prefix_end(&key),
            _ => vec![0],
        };
        let union = match target {
            0 => TargetUnion::Version(self.rng.random_range(0..4)),
            1 => TargetUnion::CreateRevision(self.rng.random_range(0..=self.rev + 1)),
            2 => TargetUnion::ModRevision(self.rng.random_range(0..=self.rev + 1)),
            3 => TargetUnion::Value(self.value()),
            _ => TargetUnion::Lease(if self.lease && self.rng.random_bool(0.5) {
                LEASE_ID
            } else {
                self.rng.random_range(0..2)
            }),
        };
        Compare {
            result: self.rng.random_range(0..4),
            target,
            key,
            // Rarely: no operand, or an operand of another type than the
            // target (etcd then compares against the zero value).
            target_union: match self.rng.random_range(0..100) {
                0..96 => Some(union),
                96..98 => None,
                _ => Some(TargetUnion::Version(1)),
            },
            range_end,
        }
    }

    /// Ops for one txn branch. With `used` (a "valid" txn), puts and deletes
    /// touch single keys not used anywhere else in the txn, so etcd's
    /// duplicate-key check passes; without it anything goes.
    fn ops(&mut self, depth: u32, used: &mut Option<HashSet<Vec<u8>>>) -> Vec<RequestOp> {
        let n = self.rng.random_range(0..5);
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = self.rng.random_range(0..100);
            let request = match kind {
                0..35 => match self.fresh_key(used) {
                    Some(key) => Request::RequestPut(self.put(key)),
                    None => Request::RequestRange(self.range_req()),
                },
                35..70 => Request::RequestRange(self.range_req()),
                70..90 => {
                    if used.is_some() {
                        match self.fresh_key(used) {
                            Some(key) => Request::RequestDeleteRange(DeleteRangeRequest {
                                key,
                                range_end: Vec::new(),
                                prev_kv: self.rng.random_bool(0.5),
                            }),
                            None => Request::RequestRange(self.range_req()),
                        }
                    } else {
                        Request::RequestDeleteRange(self.delete())
                    }
                }
                _ if depth < 2 => Request::RequestTxn(self.txn_body(depth + 1, used)),
                _ => Request::RequestRange(self.range_req()),
            };
            ops.push(RequestOp { request: Some(request) });
        }
        ops
    }

    fn fresh_key(&mut self, used: &mut Option<HashSet<Vec<u8>>>) -> Option<Vec<u8>> {
        match used {
            None => Some(self.key()),
            Some(used) => {
                for _ in 0..10 {
                    let k = self.key();
                    if used.insert(k.clone()) {
                        return Some(k);
                    }
                }
                None
            }
        }
    }

    fn txn_body(&mut self, depth: u32, used: &mut Option<HashSet<Vec<u8>>>) -> TxnRequest {
        let n = self.rng.random_range(0..4);
        TxnRequest {
            compare: (0..n).map(|_| self.compare()).collect(),
            success: self.ops(depth, used),
            failure: self.ops(depth, used),
        }
    }

    fn txn(&mut self) -> TxnRequest {
        let mut used = self.rng.random_bool(0.75).then(HashSet::new);
        self.in_txn = true;
        let mut txn = self.txn_body(0, &mut used);
        self.in_txn = false;
        avoid_etcd_from_key_delete_panic(&mut txn);
        txn
    }

    fn invalid(&mut self) -> Req {
        match self.rng.random_range(0..11) {
            // Over --max-request-bytes (1.5 MiB) but under gRPC's own limit: etcd's
            // "request is too large", for a put and for a txn.
            10 => {
                let put = PutRequest { key: self.key(), value: vec![b'x'; 1_600_000], ..Default::default() };
                if self.rng.random_bool(0.5) {
                    Req::Put(put)
                } else {
                    Req::Txn(TxnRequest {
                        success: vec![RequestOp { request: Some(Request::RequestPut(put)) }],
                        ..Default::default()
                    })
                }
            }
            0 => Req::Put(PutRequest { key: Vec::new(), value: b"v".to_vec(), ..Default::default() }),
            1 => Req::Range(RangeRequest {
                key: Vec::new(),
                range_end: if self.rng.random_bool(0.5) { b"z".to_vec() } else { Vec::new() },
                ..Default::default()
            }),
            2 => Req::Delete(DeleteRangeRequest { key: Vec::new(), ..Default::default() }),
            3 => {
                // Duplicate put in one branch (or put + covering delete).
                let key = self.key();
                let second = if self.rng.random_bool(0.5) {
                    Request::RequestPut(PutRequest { key: key.clone(), value: b"2".to_vec(), ..Default::default() })
                } else {
                    Request::RequestDeleteRange(DeleteRangeRequest {
                        key: key.clone(),
                        range_end: prefix_end(&key),
                        ..Default::default()
                    })
                };
                let ops = vec![
                    RequestOp {
                        request: Some(Request::RequestPut(PutRequest {
                            key,
                            value: b"1".to_vec(),
                            ..Default::default()
                        })),
                    },
                    RequestOp { request: Some(second) },
                ];
                let succeed = self.rng.random_bool(0.5);
                Req::Txn(TxnRequest {
                    compare: Vec::new(),
                    success: if succeed { ops.clone() } else { Vec::new() },
                    failure: if succeed { Vec::new() } else { ops },
                })
            }
            4 => {
                // Too many (or exactly the maximum number of) ops.
                let n = MAX_TXN_OPS + self.rng.random_range(0..2);
                let op = RequestOp {
                    request: Some(Request::RequestRange(RangeRequest { key: b"a".to_vec(), ..Default::default() })),
                };
                let cmp = Compare {
                    key: b"a".to_vec(),
                    target: CompareTarget::Version as i32,
                    result: CompareResult::Greater as i32,
                    target_union: Some(TargetUnion::Version(-1)),
                    range_end: Vec::new(),
                };
                Req::Txn(match self.rng.random_range(0..3) {
                    0 => TxnRequest { compare: vec![cmp; n], ..Default::default() },
                    1 => TxnRequest { success: vec![op; n], ..Default::default() },
                    _ => TxnRequest { failure: vec![op; n], ..Default::default() },
                })
            }
            5 => Req::Put(PutRequest {
                key: self.key(),
                value: b"set".to_vec(),
                ignore_value: true,
                ..Default::default()
            }),
            6 => Req::Put(PutRequest {
                key: self.key(),
                value: self.value(),
                lease: if self.lease { LEASE_ID } else { BOGUS_LEASE },
                ignore_lease: true,
                ..Default::default()
            }),
            7 => {
                // An invalid op inside a (nested) txn.
                let bad = RequestOp {
                    request: Some(Request::RequestPut(PutRequest { key: Vec::new(), ..Default::default() })),
                };
                let inner = TxnRequest { success: vec![bad], ..Default::default() };
                Req::Txn(TxnRequest {
                    failure: vec![RequestOp { request: Some(Request::RequestTxn(inner)) }],
                    ..Default::default()
                })
            }
            8 => Req::Txn(TxnRequest {
                compare: vec![Compare {
                    key: Vec::new(),
                    target_union: Some(TargetUnion::Version(0)),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            _ => {
                Req::Put(PutRequest { key: self.key(), value: self.value(), lease: BOGUS_LEASE, ..Default::default() })
            }
        }
    }

    fn compaction(&mut self) -> CompactionRequest {
        let revision = match self.rng.random_range(0..100) {
            0..70 if self.compacted < self.rev => {
                let lo = (self.compacted + 1).max(self.rev - 30).max(1);
                self.rng.random_range(lo..=self.rev)
            }
            0..85 => self.rng.random_range(0..=self.compacted.max(1)),
            _ => self.rev + self.rng.random_range(1..5),
        };
        CompactionRequest { revision, physical: self.rng.random_bool(0.5) }
    }

    fn next(&mut self) -> Req {
        match self.rng.random_range(0..1000) {
            0..330 => {
                let key = self.key();
                Req::Put(self.put(key))
            }
            330..580 => Req::Range(self.range_req()),
            580..680 => Req::Delete(self.delete()),
            680..930 => Req::Txn(self.txn()),
            930..950 => Req::Compact(self.compaction()),
            _ => self.invalid(),
        }
    }

    /// Tracks revision and compaction from etcd's answer.
    fn observe(&mut self, req: &Req, outcome: &Outcome) {
        let header = match outcome {
            Ok(Resp::Put(r)) => r.header.as_ref(),
            Ok(Resp::Range(r)) => r.header.as_ref(),
            Ok(Resp::Delete(r)) => r.header.as_ref(),
            Ok(Resp::Txn(r)) => r.header.as_ref(),
            Ok(Resp::Compact(r)) => r.header.as_ref(),
            Err(_) => None,
        };
        if let Some(h) = header {
            self.rev = self.rev.max(h.revision);
        }
        if let (Req::Compact(c), Ok(_)) = (req, outcome) {
            self.compacted = c.revision;
        }
    }
}

/// etcd 3.4.23 crashes (`panic: unexpected error during txn: etcdserver: key
/// not found`) on a txn that deletes a from-key range (`range_end = "\0"`)
/// and then puts, with `ignore_value` or `ignore_lease`, a key inside that
/// range: its duplicate-key check treats `"\0"` as a plain (empty) interval
/// end, the pre-apply check sees the key still present, and the apply then
/// fails half-way. Nothing can be compared there, so such txns are not sent:
/// if any delete in the txn tree is from-key, no put in it ignores
/// value or lease.
fn avoid_etcd_from_key_delete_panic(txn: &mut TxnRequest) {
    fn has_from_key_delete(txn: &TxnRequest) -> bool {
        txn.success.iter().chain(&txn.failure).any(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => d.range_end == [0],
            Some(Request::RequestTxn(t)) => has_from_key_delete(t),
            _ => false,
        })
    }
    fn clear_ignores(txn: &mut TxnRequest) {
        for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
            match &mut op.request {
                Some(Request::RequestPut(p)) => {
                    p.ignore_value = false;
                    p.ignore_lease = false;
                }
                Some(Request::RequestTxn(t)) => clear_ignores(t),
                _ => {}
            }
        }
    }
    if has_from_key_delete(txn) {
        clear_ignores(txn);
    }
}

async fn exec(kv: &mut KvClient<Channel>, req: &Req) -> Outcome {
    let result = match req {
        Req::Put(r) => kv.put(r.clone()).await.map(|r| Resp::Put(r.into_inner())),
        Req::Range(r) => kv.range(r.clone()).await.map(|r| Resp::Range(r.into_inner())),
        Req::Delete(r) => kv.delete_range(r.clone()).await.map(|r| Resp::Delete(r.into_inner())),
        Req::Txn(r) => kv.txn(r.clone()).await.map(|r| Resp::Txn(r.into_inner())),
        Req::Compact(r) => kv.compact(*r).await.map(|r| Resp::Compact(r.into_inner())),
    };
    result.map_err(|s| (s.code(), s.message().to_string()))
}

/// The sort field of `kv` for `target` (as a byte string, so values and
/// numbers share one comparison; numbers are non-negative here).
fn sort_field(kv: &KeyValue, target: SortTarget) -> Vec<u8> {
    let num = |n: i64| n.to_be_bytes().to_vec();
    match target {
        SortTarget::Key => kv.key.clone(),
        SortTarget::Version => num(kv.version),
        SortTarget::Create => num(kv.create_revision),
        SortTarget::Mod => num(kv.mod_revision),
        SortTarget::Value => kv.value.clone(),
    }
}

/// Canonicalises a range response whose order etcd does not determine; see
/// the module docs. Applied identically to both sides.
fn canonical_range(req: &RangeRequest, resp: &mut RangeResponse) {
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    if target == SortTarget::Key || resp.count <= 12 || resp.kvs.is_empty() {
        return;
    }
    CANON.fetch_add(1, Ordering::Relaxed);
    if resp.more {
        CANON_CUT.fetch_add(1, Ordering::Relaxed);
    }
    let descend = req.sort_order == SortOrder::Descend as i32;
    let cut = resp.more;
    // With keys_only the values are gone, so ties on VALUE cannot be told
    // apart: compare the keys as a set (only their number if cut by limit).
    if req.keys_only && target == SortTarget::Value {
        if cut {
            let n = resp.kvs.len();
            resp.kvs = vec![KeyValue::default(); n];
        } else {
            resp.kvs.sort_by(|a, b| a.key.cmp(&b.key));
        }
        return;
    }
    let by_field = |a: &KeyValue, b: &KeyValue| {
        let (fa, fb) = (sort_field(a, target), sort_field(b, target));
        if descend { fb.cmp(&fa) } else { fa.cmp(&fb) }
    };
    // Only the order among ties is free: a response that is not sorted by
    // the field is left as it is (and so fails to compare).
    if resp.kvs.windows(2).any(|w| by_field(&w[0], &w[1]).is_gt()) {
        return;
    }
    let boundary = resp.kvs.last().map(|kv| sort_field(kv, target));
    resp.kvs.sort_by(|a, b| by_field(a, b).then_with(|| a.key.cmp(&b.key)));
    if cut && let Some(boundary) = boundary {
        for kv in &mut resp.kvs {
            if sort_field(kv, target) == boundary {
                let mut only = KeyValue::default();
                match target {
                    SortTarget::Version => only.version = kv.version,
                    SortTarget::Create => only.create_revision = kv.create_revision,
                    SortTarget::Mod => only.mod_revision = kv.mod_revision,
                    SortTarget::Value => only.value = kv.value.clone(),
                    SortTarget::Key => unreachable!("KEY sorts are deterministic"),
                }
                *kv = only;
            }
        }
    }
}

/// How many range responses (both sides counted) were canonicalised, and
/// how many of those were cut by `limit`; printed at the end of the run.
static CANON: AtomicUsize = AtomicUsize::new(0);
static CANON_CUT: AtomicUsize = AtomicUsize::new(0);

fn canonical_txn(req: &TxnRequest, resp: &mut TxnResponse) {
    let ops = if resp.succeeded { &req.success } else { &req.failure };
    for (op, r) in ops.iter().zip(resp.responses.iter_mut()) {
        match (&op.request, &mut r.response) {
            (Some(Request::RequestRange(q)), Some(Response::ResponseRange(a))) => canonical_range(q, a),
            (Some(Request::RequestTxn(q)), Some(Response::ResponseTxn(a))) => canonical_txn(q, a),
            _ => {}
        }
    }
}

fn normalize(req: &Req, mut outcome: Outcome) -> Outcome {
    if let Ok(resp) = &mut outcome {
        match (req, resp) {
            (_, Resp::Put(r)) => r.clear_headers(),
            (Req::Range(q), Resp::Range(r)) => {
                r.clear_headers();
                canonical_range(q, r);
            }
            (_, Resp::Range(r)) => r.clear_headers(),
            (_, Resp::Delete(r)) => r.clear_headers(),
            (Req::Txn(q), Resp::Txn(r)) => {
                r.clear_headers();
                canonical_txn(q, r);
            }
            (_, Resp::Txn(r)) => r.clear_headers(),
            (_, Resp::Compact(r)) => r.clear_headers(),
        }
    }
    outcome
}

/// Grants [`LEASE_ID`] on both servers; `false` if either refuses (the
/// test then runs without live leases and says so).
async fn grant_lease(etcd: &Member, subject: &Member) -> bool {
    let req = LeaseGrantRequest { ttl: 3600, id: LEASE_ID };
    let mut ok = true;
    for m in [etcd, subject] {
        let mut client = LeaseClient::new(m.channel().await);
        if let Err(status) = client.lease_grant(req).await {
            println!("LeaseGrant on {} failed ({status}); running without live leases", m.kind().as_str());
            ok = false;
        }
    }
    ok
}

/// `HashKV` at `rev`: (hash, compact revision, header revision), or the error.
async fn hash_kv(member: &Member, rev: i64) -> Result<(u32, i64, i64), (tonic::Code, String)> {
    let mut client = member.maintenance().await;
    match client.hash_kv(HashKvRequest { revision: rev }).await {
        Ok(r) => {
            let r = r.into_inner();
            Ok((r.hash, r.compact_revision, r.header.map_or(0, |h| h.revision)))
        }
        Err(status) => Err((status.code(), status.message().to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_kv() {
    let seed = seed();
    println!("differential seed: {seed} (replay with KETCH_SEED={seed})");
    let steps: usize = std::env::var("KETCH_DIFF_STEPS")
        .ok()
        .map(|s| s.parse().expect("KETCH_DIFF_STEPS must be a number"))
        .unwrap_or(4000);
    let keep_going = env_flag("KETCH_DIFF_KEEP_GOING");

    let (mut etcd, mut subject) = tokio::join!(Member::etcd(), Member::subject());
    let lease = grant_lease(&etcd, &subject).await;
    let (mut ekv, mut skv) = (etcd.kv().await, subject.kv().await);
    let mut generator = Gen { rng: StdRng::seed_from_u64(seed), in_txn: false, rev: 1, compacted: 0, lease };
    let name = subject_kind().as_str();
    let mut mismatches = Vec::new();
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    let mut hash_checks = 0;
    for step in 0..steps {
        let req = generator.next();
        let (e, s) = tokio::join!(exec(&mut ekv, &req), exec(&mut skv, &req));
        let (e, s) = (normalize(&req, e), normalize(&req, s));
        for (member, outcome) in [(&mut etcd, &e), (&mut subject, &s)] {
            if !member.is_running() {
                panic!(
                    "{} DIED at seed={seed} step={step} (replay with KETCH_SEED={seed})\n\
                     request: {}\nanswer: {}\nlast lines of its log:\n{}",
                    member.kind().as_str(),
                    readable(&req),
                    readable(outcome),
                    member.log_tail(60)
                );
            }
        }
        if e != s {
            let report = format!(
                "MISMATCH seed={seed} step={step} (replay with KETCH_SEED={seed})\n\
                 request:          {}\n\
                 reference etcd:   {}\n\
                 subject ({name}): {}",
                readable(&req),
                readable(&e),
                readable(&s)
            );
            if !keep_going {
                panic!("{report}");
            }
            println!("{report}\n");
            mismatches.push(report);
        }
        if let Err((code, msg)) = &e {
            *errors.entry(format!("{code:?}: {msg}")).or_default() += 1;
        }
        let kind = match (&req, &e) {
            (Req::Put(_), _) => "put",
            (Req::Range(_), _) => "range",
            (Req::Delete(_), _) => "delete",
            (Req::Txn(_), Ok(Resp::Txn(t))) if t.succeeded => "txn (success branch)",
            (Req::Txn(_), Ok(_)) => "txn (failure branch)",
            (Req::Txn(_), Err(_)) => "txn (error)",
            (Req::Compact(_), _) => "compaction",
        };
        *kinds.entry(kind).or_default() += 1;
        generator.observe(&req, &e);
        // The whole history, compared at once: HashKV hashes etcd's own byte
        // layout, so equal histories give equal hashes on both servers.
        if step % 250 == 249 || step + 1 == steps {
            let past = generator.rng.random_range(generator.compacted.max(0)..=generator.rev + 1);
            for rev in [0, past] {
                let (mut e, mut s) = tokio::join!(hash_kv(&etcd, rev), hash_kv(&subject, rev));
                // etcd 3.4 compacts the backend in the background after it
                // answers, and its HashKV counts the revisions still waiting
                // to be deleted when no key survives the compaction point
                // (`len(keep) > 0` in `HashByRev`): its hash settles once the
                // compaction is done. Ketch compacts before it answers.
                for _ in 0..20 {
                    if e == s {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    (e, s) = tokio::join!(hash_kv(&etcd, rev), hash_kv(&subject, rev));
                }
                hash_checks += 1;
                if e != s {
                    let report = format!(
                        "HASHKV MISMATCH seed={seed} step={step} revision={rev} (replay with KETCH_SEED={seed})\n\
                         reference etcd:   {e:?}\n\
                         subject ({name}): {s:?}"
                    );
                    if !keep_going {
                        panic!("{report}");
                    }
                    mismatches.push(report);
                }
            }
        }
    }
    let error_count: usize = errors.values().sum();
    println!(
        "{steps} requests, {error_count} answered with an error by etcd, final revision {}, \
         compacted at {}\nrequests: {kinds:?}\n\
         sorted ranges of > 12 keys canonicalised (both sides): {} ({} cut by limit)\n\
         HashKV comparisons: {hash_checks}\n\
         etcd errors: {errors:#?}",
        generator.rev,
        generator.compacted,
        CANON.load(Ordering::Relaxed),
        CANON_CUT.load(Ordering::Relaxed),
    );
    assert!(mismatches.is_empty(), "{} mismatch(es), seed {seed}; first:\n{}", mismatches.len(), mismatches[0]);
    // The sequence must have done real work on etcd.
    assert!(generator.rev > steps as i64 / 4, "too few writes");
    assert!(error_count < steps / 3, "too many errors: {errors:?}");
}

#[cfg(test)]
mod canonical_tests {
    use super::*;

    fn kv(key: &str, version: i64) -> KeyValue {
        KeyValue { key: key.as_bytes().to_vec(), version, value: b"x".to_vec(), ..Default::default() }
    }

    fn resp(kvs: Vec<KeyValue>, more: bool) -> RangeResponse {
        RangeResponse { header: None, kvs, more, count: 13 }
    }

    fn by_version(order: SortOrder, limit: i64) -> RangeRequest {
        RangeRequest {
            key: b"a".to_vec(),
            range_end: vec![0],
            sort_order: order as i32,
            sort_target: SortTarget::Version as i32,
            limit,
            ..Default::default()
        }
    }

    #[test]
    fn ties_in_any_order_compare_equal() {
        let req = by_version(SortOrder::Descend, 0);
        let mut a = resp(vec![kv("b", 2), kv("a", 2), kv("c", 1)], false);
        let mut b = resp(vec![kv("a", 2), kv("b", 2), kv("c", 1)], false);
        canonical_range(&req, &mut a);
        canonical_range(&req, &mut b);
        assert_eq!(a, b);
        // The order of different sort values still matters.
        let mut c = resp(vec![kv("c", 1), kv("b", 2), kv("a", 2)], false);
        canonical_range(&req, &mut c);
        assert_ne!(a, c);
    }

    #[test]
    fn ties_cut_by_limit_keep_only_the_sort_field() {
        let req = by_version(SortOrder::Ascend, 3);
        let mut a = resp(vec![kv("z", 1), kv("b", 2), kv("c", 2)], true);
        let mut b = resp(vec![kv("z", 1), kv("d", 2), kv("b", 2)], true);
        canonical_range(&req, &mut a);
        canonical_range(&req, &mut b);
        assert_eq!(a, b);
        // A difference before the boundary is still caught.
        let mut c = resp(vec![kv("y", 1), kv("d", 2), kv("b", 2)], true);
        canonical_range(&req, &mut c);
        assert_ne!(a, c);
    }

    #[test]
    fn small_or_key_sorted_ranges_are_untouched() {
        let req = by_version(SortOrder::Ascend, 0);
        let original = RangeResponse { count: 12, ..resp(vec![kv("b", 1), kv("a", 1)], false) };
        let mut r = original.clone();
        canonical_range(&req, &mut r);
        assert_eq!(r, original);
        let key_req = RangeRequest { sort_target: SortTarget::Key as i32, ..req };
        let original = resp(vec![kv("b", 1), kv("a", 1)], false);
        let mut r = original.clone();
        canonical_range(&key_req, &mut r);
        assert_eq!(r, original);
    }
}
