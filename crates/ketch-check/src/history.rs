//! The history model: what each client asked, when, and what it saw.
//!
//! A [`History`] is a list of [`Operation`]s. Each one has the two instants a
//! client can observe, its invocation and its return, on one shared `u64` axis
//! (a logical step of a simulator or a monotonic timestamp of a real test; only
//! their order matters), the [`Request`] and the [`Outcome`]. The request and
//! response types mirror etcd's `etcdserverpb`/`mvccpb` messages, reduced to what
//! the checkers need: no sorting, no `keys_only`/`count_only`, no min/max revision
//! filters, no `ignore_value`. Revisions, versions and leases are `i64`, as on
//! the wire.
//!
//! Outcomes are the heart of it. `Ok` carries the response; `Err` is a
//! *definite* failure (the operation certainly had no effect: a validation
//! error, `mvcc: required revision has been compacted`, …); `Unknown` is a
//! timeout, a lost connection or a crash: the operation may take effect at any
//! point after its invocation (even long after the client gave up), or never.
//! Never mark an operation `Err` unless the error proves it had no effect: a
//! retried non-idempotent write that comes back `Unavailable` is `Unknown`
//! (the lesson of etcd-io/etcd#14890).

use std::fmt;
use std::ops::Bound;

/// A key and the metadata etcd keeps for it (`mvccpb.KeyValue`).
///
/// `create_revision` is the revision that created the key (since its last
/// deletion), `mod_revision` the revision of its last change, `version` the
/// number of puts since creation (1 after the creating put). `lease` is 0 when
/// the key has no lease.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the put that created the key (since its last deletion).
    pub create_revision: i64,
    /// Revision of the key's last modification.
    pub mod_revision: i64,
    /// Number of puts since creation; 1 after the creating put.
    pub version: i64,
    /// Lease the key is attached to; 0 for none.
    pub lease: i64,
}

impl KeyValue {
    /// A key-value pair with the given metadata and no lease.
    pub fn new(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        create_revision: i64,
        mod_revision: i64,
        version: i64,
    ) -> KeyValue {
        KeyValue { key: key.into(), value: value.into(), create_revision, mod_revision, version, lease: 0 }
    }

    /// The same pair attached to `lease`.
    pub fn with_lease(mut self, lease: i64) -> KeyValue {
        self.lease = lease;
        self
    }
}

/// A key range in etcd's convention, shared by Range, DeleteRange, Compare and
/// Watch: an empty `range_end` means the single key `key`; `range_end == "\0"`
/// means every key `>= key`; otherwise the half-open interval `[key, range_end)`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyRange {
    /// First key of the range (the only one when `range_end` is empty).
    pub key: Vec<u8>,
    /// End of the range, etcd-encoded (see the type's documentation).
    pub range_end: Vec<u8>,
}

impl KeyRange {
    /// The range etcd would use for `key` and `range_end`.
    pub fn new(key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange { key: key.into(), range_end: range_end.into() }
    }

    /// Exactly one key.
    pub fn single(key: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange { key: key.into(), range_end: Vec::new() }
    }

    /// Every key starting with `prefix` (clientv3's `WithPrefix`: the last byte
    /// below 0xff is incremented and the rest dropped; an all-0xff prefix
    /// becomes "every key `>= prefix`").
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> KeyRange {
        let key = prefix.into();
        let mut end = key.clone();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return KeyRange { key, range_end: end };
            }
        }
        KeyRange { key, range_end: vec![0] }
    }

    /// Every key `>= key` (clientv3's `WithFromKey`).
    pub fn from_key(key: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange { key: key.into(), range_end: vec![0] }
    }

    /// The whole keyspace.
    pub fn all() -> KeyRange {
        KeyRange { key: vec![0], range_end: vec![0] }
    }

    /// Whether the range names exactly one key.
    pub fn is_single(&self) -> bool {
        self.range_end.is_empty()
    }

    /// Whether `key` falls in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return key == self.key.as_slice();
        }
        if key < self.key.as_slice() {
            return false;
        }
        self.range_end == [0] || key < self.range_end.as_slice()
    }

    /// The range as `BTreeMap::range` bounds.
    pub(crate) fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        if self.range_end.is_empty() {
            return (Bound::Included(&self.key), Bound::Included(&self.key));
        }
        if self.range_end == [0] {
            return (Bound::Included(&self.key), Bound::Unbounded);
        }
        if self.range_end.as_slice() <= self.key.as_slice() {
            // An empty interval; etcd returns nothing. Express it as an empty range
            // that BTreeMap accepts.
            return (Bound::Included(&self.key), Bound::Excluded(&self.key));
        }
        (Bound::Included(&self.key), Bound::Excluded(&self.range_end))
    }
}

/// A request, as a client sent it. Only `Range`, `Put`, `DeleteRange` and `Txn`
/// may appear inside a transaction.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Request {
    /// `KV.Range`.
    Range(Range),
    /// `KV.Put`.
    Put(Put),
    /// `KV.DeleteRange`.
    DeleteRange(DeleteRange),
    /// `KV.Txn`.
    Txn(Txn),
    /// `KV.Compact`.
    Compact(Compact),
    /// `Lease.LeaseRevoke`: deletes every key attached to the lease, in one
    /// revision. A lease's expiry is the same operation, proposed by the leader;
    /// record it as an `Unknown` revoke if the test cannot observe it.
    LeaseRevoke(LeaseRevoke),
}

/// `RangeRequest`, reduced: keys ascending (etcd's default), an optional limit,
/// an optional historic revision.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Range {
    /// Keys to read.
    pub range: KeyRange,
    /// Revision to read at; 0 (or negative) reads the current revision.
    pub revision: i64,
    /// Maximum number of keys returned; 0 means no limit.
    pub limit: i64,
}

/// `PutRequest`, reduced.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Put {
    /// Key to write.
    pub key: Vec<u8>,
    /// Value to write. Tests should make every written value unique: it is what
    /// lets a read say which write it saw.
    pub value: Vec<u8>,
    /// Lease to attach the key to; 0 for none. The lease's existence is not
    /// modelled: a put refused with "lease not found" is an `Err` outcome.
    pub lease: i64,
    /// Whether the response carries the previous key-value pair.
    pub prev_kv: bool,
}

/// `DeleteRangeRequest`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DeleteRange {
    /// Keys to delete.
    pub range: KeyRange,
    /// Whether the response carries the deleted pairs.
    pub prev_kv: bool,
}

/// `TxnRequest`: if every compare holds, run `success`, else `failure`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Txn {
    /// Conditions, all of which must hold for the success branch.
    pub compares: Vec<Compare>,
    /// Operations run when every compare holds.
    pub success: Vec<Request>,
    /// Operations run otherwise.
    pub failure: Vec<Request>,
}

/// One `Compare` of a transaction. With a multi-key range the predicate must
/// hold for every key in it; on an empty range it is evaluated against a zero
/// key-value, except that a `Value` compare then always fails (etcd 3.4
/// `applyCompare`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Compare {
    /// Key or keys compared.
    pub range: KeyRange,
    /// What is compared, and against which operand.
    pub target: CompareTarget,
    /// The relation that must hold: `target_of(key) <result> operand`.
    pub result: CompareResult,
}

impl Compare {
    /// A single-key compare.
    pub fn new(key: impl Into<Vec<u8>>, target: CompareTarget, result: CompareResult) -> Compare {
        Compare { range: KeyRange::single(key), target, result }
    }
}

/// The field a compare reads, with the operand it is compared to.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum CompareTarget {
    /// The value, compared bytewise.
    Value(Vec<u8>),
    /// The version (0 when the key does not exist).
    Version(i64),
    /// The create revision (0 when the key does not exist).
    CreateRevision(i64),
    /// The mod revision (0 when the key does not exist).
    ModRevision(i64),
    /// The lease (0 when none or when the key does not exist).
    Lease(i64),
}

/// A compare's relation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum CompareResult {
    /// `==`.
    Equal,
    /// `!=`.
    NotEqual,
    /// `<`.
    Less,
    /// `>`.
    Greater,
}

/// `CompactionRequest`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Compact {
    /// Revision to compact up to; reads below it fail afterwards.
    pub revision: i64,
}

/// `LeaseRevokeRequest`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LeaseRevoke {
    /// Lease whose keys are deleted.
    pub lease: i64,
}

impl Request {
    /// Read one key at the current revision.
    pub fn get(key: impl Into<Vec<u8>>) -> Request {
        Request::Range(Range { range: KeyRange::single(key), revision: 0, limit: 0 })
    }

    /// Read one key at a past revision.
    pub fn get_at(key: impl Into<Vec<u8>>, revision: i64) -> Request {
        Request::Range(Range { range: KeyRange::single(key), revision, limit: 0 })
    }

    /// Read a range at the current revision.
    pub fn range(range: KeyRange) -> Request {
        Request::Range(Range { range, revision: 0, limit: 0 })
    }

    /// Write `key = value` without a lease or `prev_kv`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Request {
        Request::Put(Put { key: key.into(), value: value.into(), lease: 0, prev_kv: false })
    }

    /// Delete one key.
    pub fn delete(key: impl Into<Vec<u8>>) -> Request {
        Request::DeleteRange(DeleteRange { range: KeyRange::single(key), prev_kv: false })
    }

    /// Delete a range.
    pub fn delete_range(range: KeyRange) -> Request {
        Request::DeleteRange(DeleteRange { range, prev_kv: false })
    }

    /// A transaction.
    pub fn txn(compares: Vec<Compare>, success: Vec<Request>, failure: Vec<Request>) -> Request {
        Request::Txn(Txn { compares, success, failure })
    }

    /// Whether the request can change the store (its revision, its keys or its
    /// compaction point) in some state.
    pub fn may_write(&self) -> bool {
        match self {
            Request::Range(_) => false,
            Request::Put(_) | Request::DeleteRange(_) | Request::Compact(_) | Request::LeaseRevoke(_) => true,
            Request::Txn(txn) => txn.success.iter().chain(&txn.failure).any(Request::may_write),
        }
    }
}

/// A successful response: the header revision and the body.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Response {
    /// `header.revision`: the store revision after the request (for a read, the
    /// revision it was served at, even when it read an older revision).
    pub revision: i64,
    /// What the response says beyond the header.
    pub body: ResponseBody,
}

impl Response {
    /// A range response holding `kvs` (count = their number, no limit).
    pub fn range(revision: i64, kvs: Vec<KeyValue>) -> Response {
        let count = kvs.len() as i64;
        Response { revision, body: ResponseBody::Range(RangeResult { kvs, count, more: false }) }
    }

    /// A put response without `prev_kv`.
    pub fn put(revision: i64) -> Response {
        Response { revision, body: ResponseBody::Put(PutResult::default()) }
    }

    /// A delete response without `prev_kvs`.
    pub fn delete(revision: i64, deleted: i64) -> Response {
        Response { revision, body: ResponseBody::DeleteRange(DeleteResult { deleted, prev_kvs: Vec::new() }) }
    }

    /// A transaction response.
    pub fn txn(revision: i64, succeeded: bool, responses: Vec<ResponseBody>) -> Response {
        Response { revision, body: ResponseBody::Txn(TxnResult { succeeded, responses }) }
    }
}

/// The body of a response. Inside a transaction the per-operation responses
/// carry no header here: etcd fills nested headers inconsistently (a nested
/// `TxnResponse` has revision 0) and clients do not use them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ResponseBody {
    /// Answer to a `Range`.
    Range(RangeResult),
    /// Answer to a `Put`.
    Put(PutResult),
    /// Answer to a `DeleteRange`.
    DeleteRange(DeleteResult),
    /// Answer to a `Txn`.
    Txn(TxnResult),
    /// Answer to a `Compact` (header only).
    Compact,
    /// Answer to a `LeaseRevoke` (header only).
    LeaseRevoke,
}

/// `RangeResponse` without its header.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct RangeResult {
    /// The pairs, ascending by key, at most `limit` of them.
    pub kvs: Vec<KeyValue>,
    /// How many keys the range holds (ignoring the limit).
    pub count: i64,
    /// Whether the limit cut the answer short.
    pub more: bool,
}

/// `PutResponse` without its header.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct PutResult {
    /// The pair before the put, when asked for and when the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// `DeleteRangeResponse` without its header.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct DeleteResult {
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted pairs, ascending by key, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// `TxnResponse` without its header.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct TxnResult {
    /// Whether the success branch ran.
    pub succeeded: bool,
    /// One response per operation of the branch that ran, in order.
    pub responses: Vec<ResponseBody>,
}

/// How an operation ended, as far as its client knows.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The response; it took effect exactly once, between invocation and return.
    Ok(Response),
    /// A definite failure: it took no effect.
    Err(Failure),
    /// No answer (timeout, crash, broken connection): it took effect at some
    /// point after its invocation, or never.
    Unknown,
}

/// A definite failure.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Failure {
    /// `mvcc: required revision has been compacted`. Checked: the model must
    /// predict it at some point of the operation's interval.
    Compacted,
    /// `mvcc: required revision is a future revision`. Checked like `Compacted`.
    FutureRevision,
    /// Any other error that proves the request had no effect (validation,
    /// permission, "lease not found", NOSPACE, …). Not checked: the operation is
    /// dropped from the history.
    Rejected(String),
}

/// One request and what its client saw.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Operation {
    /// Who issued it. Informational only (explanations); the checkers do not rely
    /// on clients being sequential.
    pub client: u64,
    /// When the client sent it.
    pub invoked_at: u64,
    /// When the client got the outcome. For `Unknown`, when it gave up waiting;
    /// the checkers then treat the operation as pending forever.
    pub returned_at: u64,
    /// What was asked.
    pub request: Request,
    /// What came back.
    pub outcome: Outcome,
}

/// The index of an operation in its [`History`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct OpId(pub usize);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A recorded history of operations, in any order.
#[derive(Clone, Default)]
pub struct History {
    ops: Vec<Operation>,
}

/// A history the checkers refuse to read: a recorder bug, not a store bug.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HistoryError {
    /// An operation returned before it was invoked.
    #[error("operation {op} returned before it was invoked")]
    ReturnBeforeInvoke {
        /// The operation.
        op: OpId,
    },
    /// A response that cannot answer its request (a Put response to a Range, a
    /// transaction response with the wrong number of entries, …).
    #[error("operation {op}: response does not fit the request: {reason}")]
    ResponseShape {
        /// The operation.
        op: OpId,
        /// What does not fit.
        reason: String,
    },
    /// `Compact` or `LeaseRevoke` inside a transaction.
    #[error("operation {op}: only range, put, delete and txn may appear inside a txn")]
    NestedRequest {
        /// The operation.
        op: OpId,
    },
    /// A successful historic read below the initial revision, whose answer the
    /// model cannot know.
    #[error("operation {op} reads revision {revision}, before the initial revision {initial}")]
    ReadBeforeInitialRevision {
        /// The operation.
        op: OpId,
        /// The revision it read.
        revision: i64,
        /// The first revision the model knows.
        initial: i64,
    },
    /// The per-key check was given an operation it cannot split by key.
    #[error("operation {op} cannot be split by key: {reason}")]
    NotPartitionable {
        /// The operation.
        op: OpId,
        /// Why.
        reason: String,
    },
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Appends a completed (or unknown) operation.
    pub fn push(&mut self, op: Operation) -> OpId {
        self.ops.push(op);
        OpId(self.ops.len() - 1)
    }

    /// Records an invocation; the operation stays `Unknown` until
    /// [`History::complete`] records its outcome.
    pub fn invoke(&mut self, client: u64, at: u64, request: Request) -> OpId {
        self.push(Operation { client, invoked_at: at, returned_at: at, request, outcome: Outcome::Unknown })
    }

    /// Records the outcome of an invoked operation.
    pub fn complete(&mut self, op: OpId, at: u64, outcome: Outcome) {
        let entry = &mut self.ops[op.0];
        entry.returned_at = at;
        entry.outcome = outcome;
    }

    /// The operation `id`.
    pub fn get(&self, id: OpId) -> &Operation {
        &self.ops[id.0]
    }

    /// All operations with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (OpId, &Operation)> {
        self.ops.iter().enumerate().map(|(i, op)| (OpId(i), op))
    }

    /// The operations, indexed by `OpId.0`.
    pub fn ops(&self) -> &[Operation] {
        &self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks that the history is well formed: returns after invocations,
    /// response shapes that fit their requests, no `Compact`/`LeaseRevoke` in a
    /// transaction. The checkers call this first.
    pub fn validate(&self) -> Result<(), HistoryError> {
        for (id, op) in self.iter() {
            if matches!(op.outcome, Outcome::Ok(_) | Outcome::Err(_)) && op.returned_at < op.invoked_at {
                return Err(HistoryError::ReturnBeforeInvoke { op: id });
            }
            if let Request::Txn(txn) = &op.request {
                check_nested(id, txn)?;
            }
            if let Outcome::Ok(response) = &op.outcome {
                check_shape(&op.request, &response.body)
                    .map_err(|reason| HistoryError::ResponseShape { op: id, reason })?;
            }
        }
        Ok(())
    }
}

impl FromIterator<Operation> for History {
    fn from_iter<T: IntoIterator<Item = Operation>>(iter: T) -> History {
        History { ops: iter.into_iter().collect() }
    }
}

fn check_nested(id: OpId, txn: &Txn) -> Result<(), HistoryError> {
    for request in txn.success.iter().chain(&txn.failure) {
        match request {
            Request::Compact(_) | Request::LeaseRevoke(_) => return Err(HistoryError::NestedRequest { op: id }),
            Request::Txn(nested) => check_nested(id, nested)?,
            Request::Range(_) | Request::Put(_) | Request::DeleteRange(_) => {}
        }
    }
    Ok(())
}

fn check_shape(request: &Request, body: &ResponseBody) -> Result<(), String> {
    match (request, body) {
        (Request::Range(_), ResponseBody::Range(_))
        | (Request::Put(_), ResponseBody::Put(_))
        | (Request::DeleteRange(_), ResponseBody::DeleteRange(_))
        | (Request::Compact(_), ResponseBody::Compact)
        | (Request::LeaseRevoke(_), ResponseBody::LeaseRevoke) => Ok(()),
        (Request::Txn(txn), ResponseBody::Txn(result)) => {
            let branch = if result.succeeded { &txn.success } else { &txn.failure };
            if branch.len() != result.responses.len() {
                return Err(format!(
                    "the {} branch has {} operations but the response has {}",
                    if result.succeeded { "success" } else { "failure" },
                    branch.len(),
                    result.responses.len()
                ));
            }
            branch.iter().zip(&result.responses).try_for_each(|(request, body)| check_shape(request, body))
        }
        (request, body) => Err(format!("{} answered by {}", request_kind(request), body_kind(body))),
    }
}

fn request_kind(request: &Request) -> &'static str {
    match request {
        Request::Range(_) => "range",
        Request::Put(_) => "put",
        Request::DeleteRange(_) => "delete",
        Request::Txn(_) => "txn",
        Request::Compact(_) => "compact",
        Request::LeaseRevoke(_) => "lease revoke",
    }
}

fn body_kind(body: &ResponseBody) -> &'static str {
    match body {
        ResponseBody::Range(_) => "a range response",
        ResponseBody::Put(_) => "a put response",
        ResponseBody::DeleteRange(_) => "a delete response",
        ResponseBody::Txn(_) => "a txn response",
        ResponseBody::Compact => "a compact response",
        ResponseBody::LeaseRevoke => "a lease revoke response",
    }
}

/// Whether a watch event is a put or a delete (`mvccpb.Event.EventType`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum EventKind {
    /// The key was written.
    Put,
    /// The key was deleted.
    Delete,
}

/// A change to one key (`mvccpb.Event`). For a delete, `kv` holds only the key
/// and the deleting revision as `mod_revision` (other fields zero), as etcd
/// sends it. `prev_kv` is the pair at the previous revision, when the watcher
/// asked for it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The pair after the change (see the type's documentation for deletes).
    pub kv: KeyValue,
    /// The pair before the change, when requested and known.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The revision of the change.
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }

    /// A put event.
    pub fn put(kv: KeyValue, prev_kv: Option<KeyValue>) -> Event {
        Event { kind: EventKind::Put, kv, prev_kv }
    }

    /// A delete event of `key` at `revision`.
    pub fn delete(key: impl Into<Vec<u8>>, revision: i64, prev_kv: Option<KeyValue>) -> Event {
        Event {
            kind: EventKind::Delete,
            kv: KeyValue { key: key.into(), mod_revision: revision, ..KeyValue::default() },
            prev_kv,
        }
    }
}

// ---- Display: short, readable forms used in every explanation. ----

/// Writes bytes as text when printable, else as escaped bytes.
pub(crate) struct Bytes<'a>(pub &'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if b.is_ascii_graphic() && b != b'\\' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={} (create {}, mod {}, version {}",
            Bytes(&self.key),
            Bytes(&self.value),
            self.create_revision,
            self.mod_revision,
            self.version
        )?;
        if self.lease != 0 {
            write!(f, ", lease {}", self.lease)?;
        }
        write!(f, ")")
    }
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.range_end.is_empty() {
            write!(f, "{}", Bytes(&self.key))
        } else if self.range_end == [0] {
            write!(f, "[{}, ∞)", Bytes(&self.key))
        } else {
            write!(f, "[{}, {})", Bytes(&self.key), Bytes(&self.range_end))
        }
    }
}

impl fmt::Debug for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Compare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.result {
            CompareResult::Equal => "==",
            CompareResult::NotEqual => "!=",
            CompareResult::Less => "<",
            CompareResult::Greater => ">",
        };
        match &self.target {
            CompareTarget::Value(v) => write!(f, "value({}) {op} {}", self.range, Bytes(v)),
            CompareTarget::Version(v) => write!(f, "version({}) {op} {v}", self.range),
            CompareTarget::CreateRevision(v) => write!(f, "create({}) {op} {v}", self.range),
            CompareTarget::ModRevision(v) => write!(f, "mod({}) {op} {v}", self.range),
            CompareTarget::Lease(v) => write!(f, "lease({}) {op} {v}", self.range),
        }
    }
}

fn write_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            write!(f, "; ")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Range(r) => {
                write!(f, "get {}", r.range)?;
                if r.revision > 0 {
                    write!(f, " @{}", r.revision)?;
                }
                if r.limit > 0 {
                    write!(f, " limit {}", r.limit)?;
                }
                Ok(())
            }
            Request::Put(p) => {
                write!(f, "put {}={}", Bytes(&p.key), Bytes(&p.value))?;
                if p.lease != 0 {
                    write!(f, " lease {}", p.lease)?;
                }
                if p.prev_kv {
                    write!(f, " prev_kv")?;
                }
                Ok(())
            }
            Request::DeleteRange(d) => write!(f, "delete {}{}", d.range, if d.prev_kv { " prev_kv" } else { "" }),
            Request::Txn(t) => {
                write!(f, "txn if (")?;
                write_list(f, &t.compares)?;
                write!(f, ") then {{")?;
                write_list(f, &t.success)?;
                write!(f, "}} else {{")?;
                write_list(f, &t.failure)?;
                write!(f, "}}")
            }
            Request::Compact(c) => write!(f, "compact {}", c.revision),
            Request::LeaseRevoke(l) => write!(f, "revoke lease {}", l.lease),
        }
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseBody::Range(r) => {
                write!(f, "kvs [")?;
                write_list(f, &r.kvs)?;
                write!(f, "] count {}{}", r.count, if r.more { " more" } else { "" })
            }
            ResponseBody::Put(p) => match &p.prev_kv {
                Some(kv) => write!(f, "put, prev {kv}"),
                None => write!(f, "put"),
            },
            ResponseBody::DeleteRange(d) => {
                write!(f, "deleted {}", d.deleted)?;
                if !d.prev_kvs.is_empty() {
                    write!(f, ", prev [")?;
                    write_list(f, &d.prev_kvs)?;
                    write!(f, "]")?;
                }
                Ok(())
            }
            ResponseBody::Txn(t) => {
                write!(f, "{} {{", if t.succeeded { "succeeded" } else { "failed" })?;
                write_list(f, &t.responses)?;
                write!(f, "}}")
            }
            ResponseBody::Compact => write!(f, "compacted"),
            ResponseBody::LeaseRevoke => write!(f, "revoked"),
        }
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rev {}: {}", self.revision, self.body)
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Compacted => write!(f, "mvcc: required revision has been compacted"),
            Failure::FutureRevision => write!(f, "mvcc: required revision is a future revision"),
            Failure::Rejected(reason) => write!(f, "rejected: {reason}"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(response) => write!(f, "{response}"),
            Outcome::Err(failure) => write!(f, "error: {failure}"),
            Outcome::Unknown => write!(f, "unknown"),
        }
    }
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let returned = match self.outcome {
            Outcome::Unknown => "?".to_string(),
            _ => self.returned_at.to_string(),
        };
        write!(f, "client {} [{}, {}] {} -> {}", self.client, self.invoked_at, returned, self.request, self.outcome)
    }
}

impl fmt::Debug for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            EventKind::Put => write!(f, "PUT {}", self.kv)?,
            EventKind::Delete => write!(f, "DELETE {} @{}", Bytes(&self.kv.key), self.kv.mod_revision)?,
        }
        if let Some(prev) = &self.prev_kv {
            write!(f, " prev {prev}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (id, op) in self.iter() {
            writeln!(f, "{id} {op}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ranges_follow_etcd_conventions() {
        let single = KeyRange::single("a");
        assert!(single.contains(b"a") && !single.contains(b"ab"));
        let prefix = KeyRange::prefix("a");
        assert_eq!(prefix.range_end, b"b");
        assert!(prefix.contains(b"a") && prefix.contains(b"a\xff\xff") && !prefix.contains(b"b"));
        assert_eq!(KeyRange::prefix(vec![b'a', 0xff]).range_end, b"b");
        assert_eq!(KeyRange::prefix(vec![0xff]).range_end, vec![0]);
        let from = KeyRange::from_key("m");
        assert!(from.contains(b"m") && from.contains(b"zzz") && !from.contains(b"l"));
        assert!(KeyRange::all().contains(b"anything"));
        let empty = KeyRange::new("b", "a");
        assert!(!empty.contains(b"b"));
    }

    #[test]
    fn validate_catches_recorder_bugs() {
        let mut history = History::new();
        let id = history.invoke(1, 10, Request::get("a"));
        history.complete(
            id,
            5,
            Outcome::Ok(Response { revision: 1, body: ResponseBody::Range(RangeResult::default()) }),
        );
        assert_eq!(history.validate(), Err(HistoryError::ReturnBeforeInvoke { op: id }));

        let mut history = History::new();
        let id = history.invoke(1, 1, Request::get("a"));
        history.complete(id, 2, Outcome::Ok(Response { revision: 1, body: ResponseBody::Put(PutResult::default()) }));
        assert!(matches!(history.validate(), Err(HistoryError::ResponseShape { .. })));

        let mut history = History::new();
        let txn = Request::txn(vec![], vec![Request::put("a", "1")], vec![]);
        let id = history.invoke(1, 1, txn);
        let body = ResponseBody::Txn(TxnResult { succeeded: true, responses: vec![] });
        history.complete(id, 2, Outcome::Ok(Response { revision: 2, body }));
        assert!(matches!(history.validate(), Err(HistoryError::ResponseShape { .. })));
    }
}
