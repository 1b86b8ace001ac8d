//! etcd's KV semantics on top of the MVCC store: request validation (etcd's
//! `v3rpc` checks), ranges, puts, deletes, transactions and compaction (etcd's
//! `applierV3backend`). Everything here is deterministic: given the same store
//! and the same request, every member computes the same response and the same
//! writes. Reads and writes share the code through [`KvView`].

use std::cmp::Ordering;
use std::collections::HashSet;

use ketch_mvcc::{Batch, KeyValue, MvccError, RangeEnd, RangeOptions, RangeResult, ReadTxn, TxnWrite};
use ketch_proto::etcdserverpb::{
    self as pb, compare::CompareResult, compare::CompareTarget, compare::TargetUnion, range_request::SortOrder,
    range_request::SortTarget, request_op::Request, response_op::Response,
};
use ketch_proto::mvccpb;

use crate::error::ServerError;

/// What the apply layer needs of the lessor: whether a lease exists, and to
/// keep its record of which keys belong to which lease in step with the store.
pub trait Leases {
    fn exists(&self, id: i64) -> bool;
    /// `key` was written with `lease` (0 = none).
    fn attach(&mut self, key: &[u8], lease: i64);
    /// `key` was deleted.
    fn detach(&mut self, key: &[u8]);
}

/// For read-only paths, which never attach or detach.
pub struct NoLeases;

impl Leases for NoLeases {
    fn exists(&self, _id: i64) -> bool {
        false
    }
    fn attach(&mut self, _key: &[u8], _lease: i64) {}
    fn detach(&mut self, _key: &[u8]) {}
}

/// A view ranges can be served from: a read transaction, or a write transaction
/// (which sees its own earlier writes).
pub trait KvView {
    fn range(&self, key: &[u8], end: &RangeEnd, opts: RangeOptions) -> Result<RangeResult, MvccError>;
    /// Current revision of the view.
    fn rev(&self) -> i64;
    /// etcd's `FirstRev`: the compaction point (-1 before any compaction).
    fn compact_rev(&self) -> i64;
}

impl KvView for ReadTxn<'_> {
    fn range(&self, key: &[u8], end: &RangeEnd, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        ReadTxn::range(self, key, end, opts)
    }
    fn rev(&self) -> i64 {
        ReadTxn::rev(self)
    }
    fn compact_rev(&self) -> i64 {
        ReadTxn::compact_rev(self)
    }
}

impl KvView for TxnWrite<'_, '_> {
    fn range(&self, key: &[u8], end: &RangeEnd, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        TxnWrite::range(self, key, end, opts)
    }
    fn rev(&self) -> i64 {
        self.read_rev()
    }
    fn compact_rev(&self) -> i64 {
        TxnWrite::compact_rev(self)
    }
}

pub fn to_pb_kv(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

fn header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader { revision, ..Default::default() })
}

// ---------------------------------------------------------------------------
// Validation at the edge (etcd's v3rpc/key.go)
// ---------------------------------------------------------------------------

pub fn check_range(r: &pb::RangeRequest) -> Result<(), ServerError> {
    if r.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(ServerError::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(r: &pb::PutRequest) -> Result<(), ServerError> {
    if r.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(ServerError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(ServerError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &pb::DeleteRangeRequest) -> Result<(), ServerError> {
    if r.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest` followed by `checkIntervals` on both branches.
pub fn check_txn(r: &pb::TxnRequest, max_txn_ops: usize) -> Result<(), ServerError> {
    check_txn_ops(r, max_txn_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &pb::TxnRequest, max_txn_ops: usize) -> Result<(), ServerError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_txn_ops {
        return Err(ServerError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ServerError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Request::RequestRange(q)) => check_range(q)?,
            Some(Request::RequestPut(q)) => check_put(q)?,
            Some(Request::RequestDeleteRange(q)) => check_delete(q)?,
            // etcd passes the remaining budget down but compares it the same way.
            Some(Request::RequestTxn(q)) => check_txn_ops(q, max_txn_ops)?,
            None => return Err(ServerError::KeyNotFound),
        }
    }
    Ok(())
}

/// A key interval as etcd's `adt` package sees it: an empty end means +infinity.
#[derive(Clone)]
struct Interval {
    begin: Vec<u8>,
    end: Vec<u8>,
}

/// Compares interval endpoints; the empty string sorts after everything.
fn cmp_point(a: &[u8], b: &[u8]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.cmp(b),
    }
}

impl Interval {
    fn of_delete(d: &pb::DeleteRangeRequest) -> Interval {
        if d.range_end.is_empty() {
            Interval::point(&d.key)
        } else {
            Interval { begin: d.key.clone(), end: d.range_end.clone() }
        }
    }

    fn point(key: &[u8]) -> Interval {
        let mut end = key.to_vec();
        end.push(0);
        Interval { begin: key.to_vec(), end }
    }

    /// etcd's `Interval.Compare(other) == 0`, in that direction: for the empty
    /// or inverted intervals a delete can name (`range_end <= key`, or `"\0"`),
    /// etcd's check finds no overlap, and neither may we.
    fn overlaps(&self, other: &Interval) -> bool {
        let left = cmp_point(&self.begin, &other.begin) == Ordering::Less
            && cmp_point(&self.end, &other.begin) != Ordering::Greater;
        let right = cmp_point(&self.begin, &other.end) != Ordering::Less;
        !left && !right
    }
}

fn intersects(dels: &[Interval], key: &[u8]) -> bool {
    let p = Interval::point(key);
    dels.iter().any(|d| p.overlaps(d))
}

/// etcd's `checkIntervals`: a branch may not write one key twice (two puts, or a
/// put inside a deleted range), looking into nested transactions.
fn check_intervals(reqs: &[pb::RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Interval>), ServerError> {
    let mut dels: Vec<Interval> = reqs
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Interval::of_delete(d)),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in reqs {
        let Some(Request::RequestTxn(t)) = &op.request else { continue };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || intersects(&dels, k) {
                return Err(ServerError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            // Then and else are exclusive: the same key in both is fine.
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(ServerError::DuplicateKey);
            }
            if intersects(&dels, k) {
                return Err(ServerError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in reqs {
        let Some(Request::RequestPut(p)) = &op.request else { continue };
        if puts.contains(&p.key) || intersects(&dels, &p.key) {
            return Err(ServerError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

// ---------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------

/// etcd's `applierV3backend.Range`.
pub fn range(view: &impl KvView, r: &pb::RangeRequest) -> Result<pb::RangeResponse, ServerError> {
    let filtered =
        r.min_mod_revision != 0 || r.max_mod_revision != 0 || r.min_create_revision != 0 || r.max_create_revision != 0;
    let sort_order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    let sort_target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    // Sorting or filtering needs every key in range; otherwise fetch one extra
    // to learn whether there are `more`.
    let limit = if sort_order != SortOrder::None || filtered || r.limit <= 0 {
        0
    } else {
        usize::try_from(r.limit).unwrap_or(usize::MAX).saturating_add(1)
    };
    let opts = RangeOptions { limit, rev: r.revision, count_only: r.count_only };
    let rr = view.range(&r.key, &RangeEnd::from_etcd(&r.range_end), opts)?;
    let mut kvs = rr.kvs;
    if r.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
    }
    if r.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
    }
    if r.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= r.max_create_revision);
    }
    if r.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= r.min_create_revision);
    }
    let order = if sort_target != SortTarget::Key && sort_order == SortOrder::None {
        // Results come key-ascending; any other target sorts ascending by default.
        SortOrder::Ascend
    } else {
        sort_order
    };
    if order != SortOrder::None {
        let by = |a: &KeyValue, b: &KeyValue| match sort_target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        // Stable, so ties stay in key order (as etcd's sort does for small results).
        match order {
            SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
            _ => kvs.sort_by(by),
        }
    }
    let mut more = false;
    if let Ok(limit) = usize::try_from(r.limit)
        && limit > 0
        && kvs.len() > limit
    {
        kvs.truncate(limit);
        more = true;
    }
    let kvs = kvs
        .into_iter()
        .map(|mut kv| {
            if r.keys_only {
                kv.value.clear();
            }
            to_pb_kv(kv)
        })
        .collect();
    Ok(pb::RangeResponse { header: header(rr.rev), kvs, more, count: rr.count })
}

/// etcd's `isTxnReadonly`: only ranges in both branches (nested txns count as writes).
pub fn is_txn_read_only(r: &pb::TxnRequest) -> bool {
    r.success.iter().chain(&r.failure).all(|op| matches!(op.request, Some(Request::RequestRange(_))))
}

/// A read-only transaction, served from a read view.
pub fn read_only_txn(view: &impl KvView, r: &pb::TxnRequest) -> Result<pb::TxnResponse, ServerError> {
    let path = compare_to_path(view, r);
    check_requests(r, &path, &mut |op| check_range_rev(view, op))?;
    let mut resp = new_txn_response(r, &path);
    let mut ops: TxnOps<'_, '_, '_, '_, _, NoLeases> = TxnOps::Read(view);
    apply_txn_ops(&mut ops, r, &path, &mut resp)?;
    resp.header = header(view.rev());
    Ok(resp)
}

// ---------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------

/// etcd's `applierV3backend.Put` inside a write transaction.
fn put_in(
    tw: &mut TxnWrite<'_, '_>,
    p: &pb::PutRequest,
    leases: &mut impl Leases,
) -> Result<pb::PutResponse, ServerError> {
    let mut value = p.value.clone();
    let mut lease = p.lease;
    let mut prev_kv = None;
    if p.ignore_value || p.ignore_lease || p.prev_kv {
        let rr = tw.range(&p.key, &RangeEnd::Single, RangeOptions::default())?;
        let prev = rr.kvs.into_iter().next();
        if p.ignore_value || p.ignore_lease {
            let Some(prev) = &prev else { return Err(ServerError::KeyNotFound) };
            if p.ignore_value {
                value = prev.value.clone();
            }
            if p.ignore_lease {
                lease = prev.lease;
            }
        }
        if p.prev_kv {
            prev_kv = prev.map(to_pb_kv);
        }
    }
    let rev = tw.put(&p.key, &value, lease)?;
    leases.attach(&p.key, lease);
    Ok(pb::PutResponse { header: header(rev), prev_kv })
}

fn delete_in(
    tw: &mut TxnWrite<'_, '_>,
    d: &pb::DeleteRangeRequest,
    leases: &mut impl Leases,
) -> Result<pb::DeleteRangeResponse, ServerError> {
    let end = RangeEnd::from_etcd(&d.range_end);
    let prev_kvs = if d.prev_kv {
        tw.range(&d.key, &end, RangeOptions::default())?.kvs.into_iter().map(to_pb_kv).collect()
    } else {
        Vec::new()
    };
    let (deleted, rev) = tw.delete_range(&d.key, &end)?;
    for key in &deleted {
        leases.detach(key);
    }
    let deleted = i64::try_from(deleted.len()).unwrap_or(i64::MAX);
    Ok(pb::DeleteRangeResponse { header: header(rev), deleted, prev_kvs })
}

/// A standalone Put request.
pub fn put(
    batch: &mut Batch<'_>,
    p: &pb::PutRequest,
    leases: &mut impl Leases,
) -> Result<pb::PutResponse, ServerError> {
    if p.lease != 0 && !leases.exists(p.lease) {
        return Err(ServerError::LeaseNotFound);
    }
    let mut tw = batch.txn();
    let resp = put_in(&mut tw, p, leases);
    tw.end();
    resp
}

/// A standalone DeleteRange request.
pub fn delete_range(
    batch: &mut Batch<'_>,
    d: &pb::DeleteRangeRequest,
    leases: &mut impl Leases,
) -> Result<pb::DeleteRangeResponse, ServerError> {
    let mut tw = batch.txn();
    let resp = delete_in(&mut tw, d, leases);
    tw.end();
    resp
}

/// A transaction that may write (etcd's `applierV3backend.Txn`). Compares and
/// checks run against the state before the transaction, then the chosen
/// branch's ops run in order, each seeing the writes before it.
pub fn txn(
    batch: &mut Batch<'_>,
    r: &pb::TxnRequest,
    leases: &mut impl Leases,
) -> Result<pb::TxnResponse, ServerError> {
    let mut tw = batch.txn();
    let path = compare_to_path(&tw, r);
    let write = !is_txn_read_only(r);
    if write {
        check_requests(r, &path, &mut |op| check_txn_put(&tw, op, &*leases))?;
    }
    check_requests(r, &path, &mut |op| check_range_rev(&tw, op))?;
    let mut resp = new_txn_response(r, &path);
    let mut ops: TxnOps<'_, '_, '_, '_, ReadTxn<'_>, _> = TxnOps::Write(&mut tw, leases);
    apply_txn_ops(&mut ops, r, &path, &mut resp)?;
    let rev = tw.end();
    resp.header = header(rev);
    Ok(resp)
}

/// Deletes a revoked lease's keys, all in one revision (etcd's `Revoke`);
/// returns the store's revision afterwards.
pub fn delete_keys(batch: &mut Batch<'_>, keys: &[Vec<u8>]) -> Result<i64, ServerError> {
    let mut tw = batch.txn();
    for key in keys {
        tw.delete_range(key, &RangeEnd::Single)?;
    }
    Ok(tw.end())
}

/// etcd's `Compaction` apply: compacts, then reports the current revision.
pub fn compact(batch: &mut Batch<'_>, c: &pb::CompactionRequest) -> Result<pb::CompactionResponse, ServerError> {
    let result = batch.compact(c.revision)?;
    tracing::info!(revision = c.revision, removed = result.removed, "compacted");
    Ok(pb::CompactionResponse { header: header(batch.rev()) })
}

// ---------------------------------------------------------------------------
// Transaction internals
// ---------------------------------------------------------------------------

/// The outcome of every compare in the transaction tree, in the order etcd's
/// `compareToPath` visits them: this txn first, then nested txns of the branch taken.
fn compare_to_path(view: &impl KvView, r: &pb::TxnRequest) -> Vec<bool> {
    let ok = r.compare.iter().all(|c| apply_compare(view, c));
    let mut path = vec![ok];
    let ops = if ok { &r.success } else { &r.failure };
    for op in ops {
        if let Some(Request::RequestTxn(t)) = &op.request {
            path.extend(compare_to_path(view, t));
        }
    }
    path
}

fn apply_compare(view: &impl KvView, c: &pb::Compare) -> bool {
    let Ok(rr) = view.range(&c.key, &RangeEnd::from_etcd(&c.range_end), RangeOptions::default()) else {
        return false;
    };
    if rr.kvs.is_empty() {
        if c.target == CompareTarget::Value as i32 {
            // A missing key has no value to compare: always false.
            return false;
        }
        return compare_kv(c, &KeyValue::default());
    }
    rr.kvs.iter().all(|kv| compare_kv(c, kv))
}

fn compare_kv(c: &pb::Compare, kv: &KeyValue) -> bool {
    // A target union of another kind than the target compares as zero (etcd's rule).
    let want = |target: CompareTarget| -> i64 {
        match (target, &c.target_union) {
            (CompareTarget::Version, Some(TargetUnion::Version(v)))
            | (CompareTarget::Create, Some(TargetUnion::CreateRevision(v)))
            | (CompareTarget::Mod, Some(TargetUnion::ModRevision(v)))
            | (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => *v,
            _ => 0,
        }
    };
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(want)
        }
        Ok(t @ CompareTarget::Create) => kv.create_revision.cmp(&want(t)),
        Ok(t @ CompareTarget::Mod) => kv.mod_revision.cmp(&want(t)),
        Ok(t @ CompareTarget::Version) => kv.version.cmp(&want(t)),
        Ok(t @ CompareTarget::Lease) => kv.lease.cmp(&want(t)),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

/// Runs `f` over the non-txn ops of every branch taken (etcd's `checkRequests`);
/// returns how many nested txns were walked.
fn check_requests(
    r: &pb::TxnRequest,
    path: &[bool],
    f: &mut dyn FnMut(&pb::RequestOp) -> Result<(), ServerError>,
) -> Result<usize, ServerError> {
    let ops = if path[0] { &r.success } else { &r.failure };
    let mut rest = &path[1..];
    let mut txns = 0;
    for op in ops {
        if let Some(Request::RequestTxn(t)) = &op.request {
            let n = check_requests(t, rest, f)?;
            txns += n + 1;
            rest = &rest[n + 1..];
            continue;
        }
        f(op)?;
    }
    Ok(txns)
}

fn check_txn_put(view: &impl KvView, op: &pb::RequestOp, leases: &impl Leases) -> Result<(), ServerError> {
    let Some(Request::RequestPut(p)) = &op.request else { return Ok(()) };
    if p.ignore_value || p.ignore_lease {
        let rr = view.range(&p.key, &RangeEnd::Single, RangeOptions::default())?;
        if rr.kvs.is_empty() {
            return Err(ServerError::KeyNotFound);
        }
    }
    if p.lease != 0 && !leases.exists(p.lease) {
        return Err(ServerError::LeaseNotFound);
    }
    Ok(())
}

fn check_range_rev(view: &impl KvView, op: &pb::RequestOp) -> Result<(), ServerError> {
    let Some(Request::RequestRange(q)) = &op.request else { return Ok(()) };
    match q.revision {
        0 => Ok(()),
        r if r > view.rev() => Err(ServerError::FutureRev),
        r if r < view.compact_rev() => Err(ServerError::Compacted),
        _ => Ok(()),
    }
}

/// etcd's `newTxnResp`: the response skeleton of the branches taken. Nested txn
/// responses carry an empty header, as etcd's do.
fn new_txn_response(r: &pb::TxnRequest, path: &[bool]) -> pb::TxnResponse {
    fn build(r: &pb::TxnRequest, path: &[bool]) -> (pb::TxnResponse, usize) {
        let ops = if path[0] { &r.success } else { &r.failure };
        let mut rest = &path[1..];
        let mut count = 0;
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(Request::RequestRange(_)) => Some(Response::ResponseRange(Default::default())),
                Some(Request::RequestPut(_)) => Some(Response::ResponsePut(Default::default())),
                Some(Request::RequestDeleteRange(_)) => Some(Response::ResponseDeleteRange(Default::default())),
                Some(Request::RequestTxn(t)) => {
                    let (resp, n) = build(t, rest);
                    rest = &rest[n + 1..];
                    count += n + 1;
                    Some(Response::ResponseTxn(resp))
                }
                None => None,
            };
            responses.push(pb::ResponseOp { response });
        }
        (pb::TxnResponse { header: Some(pb::ResponseHeader::default()), succeeded: path[0], responses }, count)
    }
    build(r, path).0
}

enum TxnOps<'v, 'w, 'b, 'a, V: KvView, L: Leases> {
    Read(&'v V),
    Write(&'w mut TxnWrite<'b, 'a>, &'w mut L),
}

/// etcd's `applyTxn`: runs the ops of the branch taken; returns the nested txns walked.
fn apply_txn_ops<V: KvView, L: Leases>(
    ops: &mut TxnOps<'_, '_, '_, '_, V, L>,
    r: &pb::TxnRequest,
    path: &[bool],
    resp: &mut pb::TxnResponse,
) -> Result<usize, ServerError> {
    let reqs = if path[0] { &r.success } else { &r.failure };
    let mut rest = &path[1..];
    let mut txns = 0;
    for (req, slot) in reqs.iter().zip(resp.responses.iter_mut()) {
        match (&req.request, &mut slot.response) {
            (Some(Request::RequestRange(q)), Some(Response::ResponseRange(out))) => {
                *out = match ops {
                    TxnOps::Read(v) => range(*v, q)?,
                    TxnOps::Write(tw, _) => range(&**tw, q)?,
                };
            }
            (Some(Request::RequestPut(p)), Some(Response::ResponsePut(out))) => {
                if let TxnOps::Write(tw, leases) = ops {
                    *out = put_in(tw, p, *leases)?;
                }
            }
            (Some(Request::RequestDeleteRange(d)), Some(Response::ResponseDeleteRange(out))) => {
                if let TxnOps::Write(tw, leases) = ops {
                    *out = delete_in(tw, d, *leases)?;
                }
            }
            (Some(Request::RequestTxn(t)), Some(Response::ResponseTxn(out))) => {
                let n = apply_txn_ops(ops, t, rest, out)?;
                txns += n + 1;
                rest = &rest[n + 1..];
            }
            _ => {}
        }
    }
    Ok(txns)
}
