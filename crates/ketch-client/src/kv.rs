//! The key-value API: get, put, delete, txn, compact.
//!
//! Requests are built from a key and an option struct (builder style);
//! answers are etcd's own response messages ([`RangeResponse`] and so on),
//! as in etcd's Go client. Reads (get, read-only txn) fail over to other
//! members; writes follow the at-most-once rule of `retry.rs`.

use std::sync::Arc;

use ketch_proto::etcdserverpb::{
    self as pb, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse, compare, kv_client::KvClient,
    request_op,
};

use crate::client::Inner;
use crate::error::Result;
use crate::retry::Idempotence;

pub use ketch_proto::etcdserverpb::range_request::{SortOrder, SortTarget};

/// The first key after every key that starts with `prefix`: the
/// `range_end` of a prefix range (etcd's `GetPrefixRangeEnd`). For an empty
/// prefix, or one of only `0xff` bytes, `"\0"` (meaning "to the end").
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Which keys a request covers, given its key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Span {
    /// The key alone.
    #[default]
    Key,
    /// `[key, end)`.
    End(Vec<u8>),
    /// Every key starting with the key (all keys if it is empty).
    Prefix,
    /// Every key `>= key` (all keys if it is empty).
    FromKey,
}

impl Span {
    /// The request's `(key, range_end)`, with etcd's conventions for an
    /// empty key (`clientv3.WithPrefix` / `WithFromKey`).
    fn resolve(&self, key: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        match self {
            Span::Key => (key, Vec::new()),
            Span::End(end) => (key, end.clone()),
            Span::Prefix if key.is_empty() => (vec![0], vec![0]),
            Span::Prefix => {
                let end = prefix_range_end(&key);
                (key, end)
            }
            Span::FromKey if key.is_empty() => (vec![0], vec![0]),
            Span::FromKey => (key, vec![0]),
        }
    }
}

/// Options of [`Kv::get`] (etcd's `RangeRequest`).
///
/// ```
/// use ketch_client::{GetOptions, SortOrder, SortTarget};
/// let newest_ten = GetOptions::new().prefix().sort(SortTarget::Mod, SortOrder::Descend).limit(10);
/// ```
#[derive(Clone, Debug, Default)]
pub struct GetOptions {
    span: Span,
    limit: i64,
    revision: i64,
    sort_order: SortOrder,
    sort_target: SortTarget,
    serializable: bool,
    keys_only: bool,
    count_only: bool,
    min_mod_revision: i64,
    max_mod_revision: i64,
    min_create_revision: i64,
    max_create_revision: i64,
}

impl GetOptions {
    /// The key alone, latest revision, linearizable.
    pub fn new() -> GetOptions {
        GetOptions::default()
    }

    /// The keys in `[key, end)`.
    pub fn range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.span = Span::End(end.into());
        self
    }

    /// Every key that starts with the key (every key, if it is empty).
    pub fn prefix(mut self) -> Self {
        self.span = Span::Prefix;
        self
    }

    /// Every key `>=` the key.
    pub fn from_key(mut self) -> Self {
        self.span = Span::FromKey;
        self
    }

    /// At most `limit` keys (0: no limit); `more` in the answer says
    /// whether there were more.
    pub fn limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }

    /// Read at this store revision (≤ 0: the latest).
    pub fn revision(mut self, revision: i64) -> Self {
        self.revision = revision;
        self
    }

    /// Sort by `target` in `order` (a target other than the key with
    /// [`SortOrder::None`] sorts ascending, as etcd does).
    pub fn sort(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.sort_target = target;
        self.sort_order = order;
        self
    }

    /// Serve from the member's local state without a quorum round; may be
    /// stale.
    pub fn serializable(mut self) -> Self {
        self.serializable = true;
        self
    }

    /// Keys without values.
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }

    /// Only the number of keys.
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    /// Only keys last modified at or after this revision.
    pub fn min_mod_revision(mut self, revision: i64) -> Self {
        self.min_mod_revision = revision;
        self
    }

    /// Only keys last modified at or before this revision.
    pub fn max_mod_revision(mut self, revision: i64) -> Self {
        self.max_mod_revision = revision;
        self
    }

    /// Only keys created at or after this revision.
    pub fn min_create_revision(mut self, revision: i64) -> Self {
        self.min_create_revision = revision;
        self
    }

    /// Only keys created at or before this revision.
    pub fn max_create_revision(mut self, revision: i64) -> Self {
        self.max_create_revision = revision;
        self
    }

    /// etcd's request for `key` with these options.
    pub fn to_request(&self, key: impl Into<Vec<u8>>) -> RangeRequest {
        let (key, range_end) = self.span.resolve(key.into());
        RangeRequest {
            key,
            range_end,
            limit: self.limit,
            revision: self.revision,
            sort_order: self.sort_order as i32,
            sort_target: self.sort_target as i32,
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            min_mod_revision: self.min_mod_revision,
            max_mod_revision: self.max_mod_revision,
            min_create_revision: self.min_create_revision,
            max_create_revision: self.max_create_revision,
        }
    }
}

/// Options of [`Kv::put`] (etcd's `PutRequest`).
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    lease: i64,
    prev_kv: bool,
    ignore_value: bool,
    ignore_lease: bool,
}

impl PutOptions {
    /// No lease, no previous value.
    pub fn new() -> PutOptions {
        PutOptions::default()
    }

    /// Attach the key to lease `id` (deleted when the lease ends).
    pub fn lease(mut self, id: i64) -> Self {
        self.lease = id;
        self
    }

    /// Return the key-value pair before the put.
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// Keep the current value (only the lease changes); the key must exist.
    pub fn ignore_value(mut self) -> Self {
        self.ignore_value = true;
        self
    }

    /// Keep the current lease; the key must exist.
    pub fn ignore_lease(mut self) -> Self {
        self.ignore_lease = true;
        self
    }

    /// etcd's request for `key` = `value` with these options.
    pub fn to_request(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            lease: self.lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        }
    }
}

/// Options of [`Kv::delete`] (etcd's `DeleteRangeRequest`).
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    span: Span,
    prev_kv: bool,
}

impl DeleteOptions {
    /// The key alone.
    pub fn new() -> DeleteOptions {
        DeleteOptions::default()
    }

    /// The keys in `[key, end)`.
    pub fn range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.span = Span::End(end.into());
        self
    }

    /// Every key that starts with the key (every key, if it is empty).
    pub fn prefix(mut self) -> Self {
        self.span = Span::Prefix;
        self
    }

    /// Every key `>=` the key.
    pub fn from_key(mut self) -> Self {
        self.span = Span::FromKey;
        self
    }

    /// Return the deleted key-value pairs.
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// etcd's request for `key` with these options.
    pub fn to_request(&self, key: impl Into<Vec<u8>>) -> DeleteRangeRequest {
        let (key, range_end) = self.span.resolve(key.into());
        DeleteRangeRequest { key, range_end, prev_kv: self.prev_kv }
    }
}

/// A comparison operator of a [`Compare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// `=`
    Equal,
    /// `>`
    Greater,
    /// `<`
    Less,
    /// `!=`
    NotEqual,
}

impl CompareOp {
    fn result(self) -> compare::CompareResult {
        match self {
            CompareOp::Equal => compare::CompareResult::Equal,
            CompareOp::Greater => compare::CompareResult::Greater,
            CompareOp::Less => compare::CompareResult::Less,
            CompareOp::NotEqual => compare::CompareResult::NotEqual,
        }
    }
}

/// One condition of a [`Txn`]: a key's (or every key's in a range) version,
/// create or mod revision, value or lease compared with a constant. A
/// missing key compares as version 0, revisions 0, lease 0; a value
/// comparison on a missing key is false.
#[derive(Clone, Debug, PartialEq)]
pub struct Compare(pb::Compare);

impl Compare {
    fn new(key: Vec<u8>, op: CompareOp, target: compare::CompareTarget, union: compare::TargetUnion) -> Compare {
        Compare(pb::Compare {
            result: op.result() as i32,
            target: target as i32,
            key,
            range_end: Vec::new(),
            target_union: Some(union),
        })
    }

    /// The key's version (0: absent).
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: i64) -> Compare {
        Compare::new(key.into(), op, compare::CompareTarget::Version, compare::TargetUnion::Version(version))
    }

    /// The key's create revision (0: absent; `= 0` is "create if absent").
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Compare {
        Compare::new(key.into(), op, compare::CompareTarget::Create, compare::TargetUnion::CreateRevision(revision))
    }

    /// The key's mod revision (`=` is the optimistic compare-and-swap).
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: i64) -> Compare {
        Compare::new(key.into(), op, compare::CompareTarget::Mod, compare::TargetUnion::ModRevision(revision))
    }

    /// The key's value (bytewise).
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Compare {
        Compare::new(key.into(), op, compare::CompareTarget::Value, compare::TargetUnion::Value(value.into()))
    }

    /// The key's lease ID (0: none).
    pub fn lease(key: impl Into<Vec<u8>>, op: CompareOp, id: i64) -> Compare {
        Compare::new(key.into(), op, compare::CompareTarget::Lease, compare::TargetUnion::Lease(id))
    }

    /// Compare every key in `[key, end)` instead (true if it holds for all).
    pub fn with_range_end(mut self, end: impl Into<Vec<u8>>) -> Self {
        self.0.range_end = end.into();
        self
    }

    /// Compare every key that starts with the key instead.
    pub fn with_prefix(mut self) -> Self {
        let (key, end) = Span::Prefix.resolve(std::mem::take(&mut self.0.key));
        self.0.key = key;
        self.0.range_end = end;
        self
    }

    /// etcd's message.
    pub fn into_proto(self) -> pb::Compare {
        self.0
    }
}

/// One operation of a [`Txn`] branch.
#[derive(Clone, Debug, PartialEq)]
pub struct TxnOp(RequestOp);

impl TxnOp {
    /// A get with options.
    pub fn get(key: impl Into<Vec<u8>>, options: GetOptions) -> TxnOp {
        TxnOp(RequestOp { request: Some(request_op::Request::RequestRange(options.to_request(key))) })
    }

    /// A put with options.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, options: PutOptions) -> TxnOp {
        TxnOp(RequestOp { request: Some(request_op::Request::RequestPut(options.to_request(key, value))) })
    }

    /// A delete with options.
    pub fn delete(key: impl Into<Vec<u8>>, options: DeleteOptions) -> TxnOp {
        TxnOp(RequestOp { request: Some(request_op::Request::RequestDeleteRange(options.to_request(key))) })
    }

    /// A nested transaction.
    pub fn txn(txn: Txn) -> TxnOp {
        TxnOp(RequestOp { request: Some(request_op::Request::RequestTxn(txn.into_request())) })
    }

    /// etcd's message.
    pub fn into_proto(self) -> RequestOp {
        self.0
    }
}

/// A transaction: if every [`Compare`] holds, the `and_then` operations run,
/// else the `or_else` ones, atomically at one revision.
///
/// ```
/// use ketch_client::{Compare, CompareOp, PutOptions, GetOptions, Txn, TxnOp};
/// // Create "k" only if it does not exist; otherwise read it.
/// let txn = Txn::new()
///     .when([Compare::create_revision("k", CompareOp::Equal, 0)])
///     .and_then([TxnOp::put("k", "v", PutOptions::new())])
///     .or_else([TxnOp::get("k", GetOptions::new())]);
/// assert!(!txn.is_read_only());
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Txn {
    compare: Vec<pb::Compare>,
    success: Vec<RequestOp>,
    failure: Vec<RequestOp>,
}

impl Txn {
    /// An empty transaction (succeeds, does nothing).
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds conditions (all must hold).
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(compares.into_iter().map(Compare::into_proto));
        self
    }

    /// Adds operations run when the conditions hold.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops.into_iter().map(TxnOp::into_proto));
        self
    }

    /// Adds operations run when a condition fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops.into_iter().map(TxnOp::into_proto));
        self
    }

    /// Whether no branch (nested ones included) writes: such a transaction
    /// is retried like a read.
    pub fn is_read_only(&self) -> bool {
        read_only(&self.success) && read_only(&self.failure)
    }

    /// etcd's request.
    pub fn into_request(self) -> TxnRequest {
        TxnRequest { compare: self.compare, success: self.success, failure: self.failure }
    }
}

fn read_only(ops: &[RequestOp]) -> bool {
    ops.iter().all(|op| match &op.request {
        None | Some(request_op::Request::RequestRange(_)) => true,
        Some(request_op::Request::RequestPut(_)) | Some(request_op::Request::RequestDeleteRange(_)) => false,
        Some(request_op::Request::RequestTxn(t)) => read_only(&t.success) && read_only(&t.failure),
    })
}

/// The key-value API of a [`crate::Client`].
#[derive(Clone)]
pub struct Kv {
    inner: Arc<Inner>,
}

impl Kv {
    pub(crate) fn new(inner: Arc<Inner>) -> Kv {
        Kv { inner }
    }

    /// Reads `key` (or the range the options give). Fails over to other
    /// members.
    pub async fn get(&self, key: impl Into<Vec<u8>>, options: GetOptions) -> Result<RangeResponse> {
        self.range(options.to_request(key)).await
    }

    /// Runs a `RangeRequest` as given.
    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        self.inner
            .unary("KV.Range", Idempotence::Immutable, request, |ch, r| async move { KvClient::new(ch).range(r).await })
            .await
    }

    /// Writes `key` = `value`. At most once: see [`crate::Error::OutcomeUnknown`].
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: PutOptions,
    ) -> Result<PutResponse> {
        let request = options.to_request(key, value);
        self.inner
            .unary("KV.Put", Idempotence::Mutable, request, |ch, r| async move { KvClient::new(ch).put(r).await })
            .await
    }

    /// Deletes `key` (or the range the options give). At most once.
    pub async fn delete(&self, key: impl Into<Vec<u8>>, options: DeleteOptions) -> Result<DeleteRangeResponse> {
        let request = options.to_request(key);
        self.inner
            .unary("KV.DeleteRange", Idempotence::Mutable, request, |ch, r| async move {
                KvClient::new(ch).delete_range(r).await
            })
            .await
    }

    /// Runs a transaction: at most once if it writes, with failover if it
    /// only reads.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let idempotence = if txn.is_read_only() { Idempotence::Immutable } else { Idempotence::Mutable };
        self.inner
            .unary("KV.Txn", idempotence, txn.into_request(), |ch, r| async move { KvClient::new(ch).txn(r).await })
            .await
    }

    /// Compacts the history before `revision`; with `physical`, answers
    /// only once the space is reclaimed. At most once.
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<CompactionResponse> {
        let request = CompactionRequest { revision, physical };
        self.inner
            .unary(
                "KV.Compact",
                Idempotence::Mutable,
                request,
                |ch, r| async move { KvClient::new(ch).compact(r).await },
            )
            .await
    }
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_follow_etcd() {
        assert_eq!(prefix_range_end(b"a"), b"b");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_range_end(b""), b"\0");
    }

    #[test]
    fn spans_resolve_like_clientv3() {
        let r = GetOptions::new().prefix().to_request("foo");
        assert_eq!((r.key, r.range_end), (b"foo".to_vec(), b"fop".to_vec()));
        let r = GetOptions::new().prefix().to_request("");
        assert_eq!((r.key, r.range_end), (vec![0], vec![0]));
        let r = GetOptions::new().from_key().to_request("m");
        assert_eq!((r.key, r.range_end), (b"m".to_vec(), vec![0]));
        let r = GetOptions::new().range_end("z").to_request("a");
        assert_eq!((r.key, r.range_end), (b"a".to_vec(), b"z".to_vec()));
        let d = DeleteOptions::new().prefix().prev_kv().to_request("p/");
        assert_eq!((d.key, d.range_end, d.prev_kv), (b"p/".to_vec(), b"p0".to_vec(), true));
    }

    #[test]
    fn get_options_fill_every_field() {
        let r = GetOptions::new()
            .limit(3)
            .revision(7)
            .sort(SortTarget::Create, SortOrder::Descend)
            .serializable()
            .keys_only()
            .count_only()
            .min_mod_revision(1)
            .max_mod_revision(2)
            .min_create_revision(3)
            .max_create_revision(4)
            .to_request("k");
        assert_eq!((r.limit, r.revision, r.sort_order, r.sort_target), (3, 7, 2, 2));
        assert!(r.serializable && r.keys_only && r.count_only);
        assert_eq!(
            (r.min_mod_revision, r.max_mod_revision, r.min_create_revision, r.max_create_revision),
            (1, 2, 3, 4)
        );
    }

    #[test]
    fn read_only_transactions_are_recognised_through_nesting() {
        let read = Txn::new()
            .and_then([TxnOp::get("a", GetOptions::new())])
            .or_else([TxnOp::txn(Txn::new().and_then([TxnOp::get("b", GetOptions::new().prefix())]))]);
        assert!(read.is_read_only());
        assert!(Txn::new().is_read_only());
        let nested_write = Txn::new()
            .and_then([TxnOp::get("a", GetOptions::new())])
            .or_else([TxnOp::txn(Txn::new().or_else([TxnOp::delete("b", DeleteOptions::new())]))]);
        assert!(!nested_write.is_read_only());
        assert!(!Txn::new().or_else([TxnOp::put("k", "v", PutOptions::new())]).is_read_only());
    }

    #[test]
    fn compares_carry_target_and_union() {
        let c = Compare::mod_revision("k", CompareOp::Less, 9).into_proto();
        assert_eq!((c.result, c.target), (compare::CompareResult::Less as i32, compare::CompareTarget::Mod as i32));
        assert_eq!(c.target_union, Some(compare::TargetUnion::ModRevision(9)));
        let c = Compare::value("p", CompareOp::NotEqual, "x").with_prefix().into_proto();
        assert_eq!((c.key, c.range_end), (b"p".to_vec(), b"q".to_vec()));
    }
}
