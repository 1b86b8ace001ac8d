//! The sequential model: etcd 3.4's KV semantics, revisions and history included.
//!
//! [`Store`] is what one member's MVCC store would answer if requests arrived
//! one at a time. The linearizability checker steps it along candidate orders;
//! the watch and durability checkers replay it to derive the events and final
//! state a correct store must have. It is persistent: cloning is O(1) and two
//! clones share their common history, which is what lets the search keep
//! thousands of states in its cache.
//!
//! # The rules, as read from etcd 3.4
//!
//! * **Revision.** A fresh store is at revision 1. A request that changes
//!   anything advances it by exactly one, and every change made by one request
//!   shares that revision (sub-revisions order them). "Changes anything" is
//!   etcd's `len(txn.changes) != 0` at `storeTxnWrite.End`: every put is a
//!   change (even one writing the same value), a delete is a change only for keys
//!   that existed. So a DeleteRange that deletes nothing, a LeaseRevoke of a lease
//!   without keys, a transaction whose executed branch only reads or only deletes
//!   absent keys, and every read leave the revision alone; a transaction whose
//!   *other* branch has writes does not bump either (`applierV3backend.Txn`:
//!   `rev := txn.Rev(); if len(txn.Changes()) != 0 { rev++ }`). Compaction does not
//!   bump the revision.
//! * **Header revision.** Every response reports the store revision after the
//!   request: the new revision for a request that changed something, the current
//!   one otherwise (`storeTxnWrite.DeleteRange` returns `beginRev` when nothing
//!   was deleted). A read of a past revision still reports the current revision.
//! * **Keys.** A put of an absent key sets `create_revision = mod_revision =` the
//!   new revision and `version = 1`; a put of a live key keeps `create_revision`,
//!   sets `mod_revision` and increments `version`; a delete removes the key, so a
//!   later put starts a new generation (version 1, new create revision). A put's
//!   lease replaces the key's lease (0 detaches). LeaseRevoke deletes the lease's
//!   keys in key order, in one revision (`lessor.Revoke`).
//! * **Transactions.** All compares, including those of nested transactions, are
//!   evaluated against the store *before* the transaction runs
//!   (`compareToPath`). A compare over a range must hold for every key in it; on
//!   an empty range it sees a zero key-value, except that a `Value` compare fails
//!   (`applyCompare`). Reads inside the transaction see its earlier writes
//!   (`storeTxnWrite.Range` reads `beginRev+1` once there are changes). A historic
//!   read in the executed branch (nested ones too) that is compacted or in the
//!   future fails the whole transaction before anything is applied
//!   (`checkRequests(..., a.checkRange)`). etcd rejects transactions that write a
//!   key twice ("duplicate key given in txn request") before they reach the
//!   store; the model does not, it applies the writes in order.
//! * **History and compaction.** Every revision stays readable until compacted.
//!   A read at revision `r > current` fails with `FutureRevision`; at
//!   `0 < r < compacted` with `Compacted` (reading exactly the compaction revision
//!   works, as in `rangeKeys`). `Compact(r)` fails with `Compacted` when
//!   `r <= compacted` and `FutureRevision` when `r > current`.
//! * **Not modelled.** Lease existence and expiry (a put with a missing lease is
//!   a `Rejected` error in the history, an expiry an `Unknown` LeaseRevoke),
//!   auth, sorting, `keys_only`/`count_only`, min/max revision filters,
//!   `ignore_value`/`ignore_lease`, the NOSPACE alarm, request size limits.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::history::{
    Compare, CompareResult, CompareTarget, DeleteResult, Event, Failure, KeyRange, KeyValue, PutResult, RangeResult,
    Request, Response, ResponseBody, Txn, TxnResult,
};

/// The live pairs at one revision. Pairs are shared between revisions: a new
/// revision copies the map's pointers, not the pairs.
type Map = BTreeMap<Vec<u8>, Arc<KeyValue>>;

/// One revision of the store: the changes that made it, and the resulting keys.
struct Node {
    revision: i64,
    /// The changes of this revision in sub-revision order; empty for the base.
    changes: Vec<Change>,
    /// Every live key at this revision.
    kvs: Arc<Map>,
    parent: Option<Arc<Node>>,
    /// Hash of the whole chain up to here, so equal histories hash equally.
    hash: u64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Change {
    Put(Arc<KeyValue>),
    Delete(Vec<u8>),
}

impl Drop for Node {
    // Dropping a long chain recursively would overflow the stack: unlink it
    // iteratively while this is the last owner of each parent.
    fn drop(&mut self) {
        let mut parent = self.parent.take();
        while let Some(node) = parent {
            match Arc::try_unwrap(node) {
                Ok(mut inner) => parent = inner.parent.take(),
                Err(_) => break,
            }
        }
    }
}

/// The sequential etcd KV store (see the module documentation for its rules).
#[derive(Clone)]
pub struct Store {
    head: Arc<Node>,
    compacted: i64,
    /// The first revision the model knows; history before it is unknown.
    first: i64,
}

impl Default for Store {
    fn default() -> Store {
        Store::new()
    }
}

impl Store {
    /// A fresh store: revision 1, no keys.
    pub fn new() -> Store {
        Store::with_state(1, Vec::new())
    }

    /// A store that starts at `revision` holding `kvs` (for histories recorded
    /// against a store that already had data). Its history before `revision` is
    /// unknown; reads of it answer `Compacted`.
    pub fn with_state(revision: i64, kvs: Vec<KeyValue>) -> Store {
        let kvs: Map = kvs.into_iter().map(|kv| (kv.key.clone(), Arc::new(kv))).collect();
        let mut hasher = DefaultHasher::new();
        (revision, &kvs).hash(&mut hasher);
        let head = Node { revision, changes: Vec::new(), kvs: Arc::new(kvs), parent: None, hash: hasher.finish() };
        Store { head: Arc::new(head), compacted: 0, first: revision }
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.head.revision
    }

    /// The revision of the last compaction (0 if none).
    pub fn compacted_revision(&self) -> i64 {
        self.compacted
    }

    /// The first revision whose state the model knows (1 for a fresh store).
    pub fn first_revision(&self) -> i64 {
        self.first
    }

    /// The current pair of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.head.kvs.get(key).map(|kv| &**kv)
    }

    /// Every live pair, ascending by key.
    pub fn kvs(&self) -> impl Iterator<Item = &KeyValue> {
        self.head.kvs.values().map(|kv| &**kv)
    }

    /// The pairs live at `revision`, ascending by key; `None` outside
    /// `[first_revision, revision]`. Compaction is not applied here: the model
    /// remembers everything.
    pub fn kvs_at(&self, revision: i64) -> Option<impl Iterator<Item = &KeyValue>> {
        self.map_at(revision).map(|map| map.values().map(|kv| &**kv))
    }

    /// Every event after revision `after`, in revision and sub-revision order,
    /// each with its `prev_kv` (the pair at the previous revision).
    pub fn events_after(&self, after: i64) -> Vec<Event> {
        let mut nodes = Vec::new();
        let mut node = &self.head;
        while node.revision > after {
            let Some(parent) = &node.parent else { break };
            nodes.push(node);
            node = parent;
        }
        let mut events = Vec::new();
        for node in nodes.into_iter().rev() {
            let before = &node.parent.as_ref().expect("only the base has no parent").kvs;
            for change in &node.changes {
                events.push(match change {
                    Change::Put(kv) => Event::put((**kv).clone(), before.get(&kv.key).map(|kv| (**kv).clone())),
                    Change::Delete(key) => {
                        Event::delete(key.clone(), node.revision, before.get(key).map(|kv| (**kv).clone()))
                    }
                });
            }
        }
        events
    }

    /// Applies `request` as etcd 3.4 would and returns its response. On an error
    /// the store is unchanged.
    pub fn apply(&mut self, request: &Request) -> Result<Response, Failure> {
        let body = match request {
            Request::Compact(compact) => {
                if compact.revision <= self.compacted {
                    return Err(Failure::Compacted);
                }
                if compact.revision > self.revision() {
                    return Err(Failure::FutureRevision);
                }
                self.compacted = compact.revision;
                ResponseBody::Compact
            }
            Request::LeaseRevoke(revoke) => {
                let keys: Vec<Vec<u8>> =
                    self.head.kvs.values().filter(|kv| kv.lease == revoke.lease).map(|kv| kv.key.clone()).collect();
                let mut work = Work::new(self);
                for key in keys {
                    work.delete(&KeyRange::single(key));
                }
                let changes = work.finish();
                self.commit(changes);
                ResponseBody::LeaseRevoke
            }
            Request::Range(range) => {
                self.check_read(range.revision, self.revision())?;
                let map = self.read_map(range.revision);
                ResponseBody::Range(range_result(map, &range.range, range.limit))
            }
            Request::Put(_) | Request::DeleteRange(_) | Request::Txn(_) => {
                let path = match request {
                    Request::Txn(txn) => {
                        let path = choose_path(&self.head.kvs, txn);
                        self.check_txn_reads(txn, &path)?;
                        Some(path)
                    }
                    _ => None,
                };
                let mut work = Work::new(self);
                let body = work.exec(request, path.as_ref());
                let changes = work.finish();
                self.commit(changes);
                body
            }
        };
        Ok(Response { revision: self.revision(), body })
    }

    fn commit(&mut self, changes: Option<(Vec<Change>, Map)>) {
        let Some((changes, kvs)) = changes else { return };
        let revision = self.head.revision + 1;
        let mut hasher = DefaultHasher::new();
        (self.head.hash, revision, &changes).hash(&mut hasher);
        let node =
            Node { revision, changes, kvs: Arc::new(kvs), parent: Some(self.head.clone()), hash: hasher.finish() };
        self.head = Arc::new(node);
    }

    /// etcd's `checkRange` / `rangeKeys` revision rules for a read at `revision`
    /// against a store at `current`.
    fn check_read(&self, revision: i64, current: i64) -> Result<(), Failure> {
        if revision <= 0 {
            return Ok(());
        }
        if revision > current {
            return Err(Failure::FutureRevision);
        }
        if revision < self.compacted || revision < self.first {
            return Err(Failure::Compacted);
        }
        Ok(())
    }

    fn check_txn_reads(&self, txn: &Txn, path: &Path) -> Result<(), Failure> {
        let branch = if path.succeeded { &txn.success } else { &txn.failure };
        let mut nested = path.nested.iter();
        for request in branch {
            match request {
                Request::Range(range) => self.check_read(range.revision, self.revision())?,
                Request::Txn(inner) => {
                    let inner_path = nested.next().expect("one path per nested txn");
                    self.check_txn_reads(inner, inner_path)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn map_at(&self, revision: i64) -> Option<&Map> {
        if revision < self.first || revision > self.revision() {
            return None;
        }
        let mut node = &self.head;
        while node.revision > revision {
            node = node.parent.as_ref()?;
        }
        Some(&node.kvs)
    }

    /// The map a (checked) read at `revision` sees: the current one for 0.
    fn read_map(&self, revision: i64) -> &Map {
        if revision <= 0 {
            return &self.head.kvs;
        }
        self.map_at(revision).expect("read revision checked against the store")
    }
}

impl PartialEq for Store {
    fn eq(&self, other: &Store) -> bool {
        if self.compacted != other.compacted || self.first != other.first {
            return false;
        }
        let (mut a, mut b) = (&self.head, &other.head);
        loop {
            if Arc::ptr_eq(a, b) {
                return true;
            }
            if a.hash != b.hash || a.revision != b.revision || a.changes != b.changes {
                return false;
            }
            match (&a.parent, &b.parent) {
                (Some(pa), Some(pb)) => (a, b) = (pa, pb),
                (None, None) => return a.kvs == b.kvs,
                _ => return false,
            }
        }
    }
}

impl Eq for Store {}

impl Hash for Store {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.head.hash, self.compacted, self.first).hash(state);
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "store at revision {}", self.revision())?;
        if self.compacted > 0 {
            write!(f, " (compacted at {})", self.compacted)?;
        }
        write!(f, ": ")?;
        f.debug_list().entries(self.kvs()).finish()
    }
}

/// Which branch each transaction (and each nested one in its executed branch,
/// in order) takes.
struct Path {
    succeeded: bool,
    nested: Vec<Path>,
}

fn choose_path(kvs: &Map, txn: &Txn) -> Path {
    let succeeded = txn.compares.iter().all(|compare| compare_holds(kvs, compare));
    let branch = if succeeded { &txn.success } else { &txn.failure };
    let nested = branch
        .iter()
        .filter_map(|request| match request {
            Request::Txn(inner) => Some(choose_path(kvs, inner)),
            _ => None,
        })
        .collect();
    Path { succeeded, nested }
}

/// etcd 3.4 `applyCompare`.
pub(crate) fn compare_holds(kvs: &Map, compare: &Compare) -> bool {
    let mut matched = kvs.range::<[u8], _>(compare.range.bounds()).map(|(_, kv)| &**kv).peekable();
    if matched.peek().is_none() {
        if matches!(compare.target, CompareTarget::Value(_)) {
            return false;
        }
        return compare_kv(compare, &KeyValue::default());
    }
    matched.all(|kv| compare_kv(compare, kv))
}

/// etcd 3.4 `compareKV`: one key against the compare's operand.
pub(crate) fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    let ordering = match &compare.target {
        CompareTarget::Value(value) => kv.value.as_slice().cmp(value.as_slice()),
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::CreateRevision(v) => kv.create_revision.cmp(v),
        CompareTarget::ModRevision(v) => kv.mod_revision.cmp(v),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    relation_holds(compare.result, ordering)
}

pub(crate) fn relation_holds(result: CompareResult, ordering: std::cmp::Ordering) -> bool {
    match result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Less => ordering.is_lt(),
        CompareResult::Greater => ordering.is_gt(),
    }
}

fn range_result(map: &Map, range: &KeyRange, limit: i64) -> RangeResult {
    let all: Vec<&KeyValue> = map.range::<[u8], _>(range.bounds()).map(|(_, kv)| &**kv).collect();
    let count = all.len() as i64;
    let take = if limit > 0 { all.len().min(limit as usize) } else { all.len() };
    RangeResult { kvs: all[..take].iter().map(|kv| (*kv).clone()).collect(), count, more: (take as i64) < count }
}

/// One write request in progress: a copy-on-write view of the keys and the
/// changes made so far.
struct Work<'a> {
    base: &'a Store,
    kvs: Option<Map>,
    changes: Vec<Change>,
}

impl<'a> Work<'a> {
    fn new(base: &'a Store) -> Work<'a> {
        Work { base, kvs: None, changes: Vec::new() }
    }

    fn current(&self) -> &Map {
        self.kvs.as_ref().unwrap_or(&self.base.head.kvs)
    }

    fn current_mut(&mut self) -> &mut Map {
        self.kvs.get_or_insert_with(|| (*self.base.head.kvs).clone())
    }

    fn next_revision(&self) -> i64 {
        self.base.revision() + 1
    }

    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Option<KeyValue> {
        let revision = self.next_revision();
        let prev = self.current().get(key).map(|kv| (**kv).clone());
        let kv = Arc::new(KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
        });
        self.current_mut().insert(key.to_vec(), kv.clone());
        self.changes.push(Change::Put(kv));
        prev
    }

    fn delete(&mut self, range: &KeyRange) -> Vec<KeyValue> {
        let deleted: Vec<KeyValue> =
            self.current().range::<[u8], _>(range.bounds()).map(|(_, kv)| (**kv).clone()).collect();
        if deleted.is_empty() {
            return deleted;
        }
        let map = self.current_mut();
        for kv in &deleted {
            map.remove(&kv.key);
        }
        self.changes.extend(deleted.iter().map(|kv| Change::Delete(kv.key.clone())));
        deleted
    }

    /// Runs one request (top-level or inside a transaction). `path` is the
    /// pre-computed branch choice when `request` is a transaction.
    fn exec(&mut self, request: &Request, path: Option<&Path>) -> ResponseBody {
        match request {
            Request::Range(range) => {
                let map = if range.revision > 0 { self.base.read_map(range.revision) } else { self.current() };
                ResponseBody::Range(range_result(map, &range.range, range.limit))
            }
            Request::Put(put) => {
                let prev = self.put(&put.key, &put.value, put.lease);
                ResponseBody::Put(PutResult { prev_kv: if put.prev_kv { prev } else { None } })
            }
            Request::DeleteRange(delete) => {
                let deleted = self.delete(&delete.range);
                let count = deleted.len() as i64;
                let prev_kvs = if delete.prev_kv { deleted } else { Vec::new() };
                ResponseBody::DeleteRange(DeleteResult { deleted: count, prev_kvs })
            }
            Request::Txn(txn) => {
                let path = path.expect("a transaction runs along a chosen path");
                let branch = if path.succeeded { &txn.success } else { &txn.failure };
                let mut nested = path.nested.iter();
                let responses = branch
                    .iter()
                    .map(|inner| {
                        let inner_path = if matches!(inner, Request::Txn(_)) { nested.next() } else { None };
                        self.exec(inner, inner_path)
                    })
                    .collect();
                ResponseBody::Txn(TxnResult { succeeded: path.succeeded, responses })
            }
            Request::Compact(_) | Request::LeaseRevoke(_) => {
                unreachable!("validated: compact and lease revoke never appear inside a txn")
            }
        }
    }

    fn finish(self) -> Option<(Vec<Change>, Map)> {
        if self.changes.is_empty() {
            return None;
        }
        let kvs = self.kvs.expect("changes imply a private copy");
        Some((self.changes, kvs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Compact, DeleteRange, Put};

    fn ok(store: &mut Store, request: Request) -> Response {
        store.apply(&request).expect("request succeeds")
    }

    #[test]
    fn revisions_bump_once_per_changing_request() {
        let mut store = Store::new();
        assert_eq!(store.revision(), 1);
        assert_eq!(ok(&mut store, Request::put("a", "1")).revision, 2);
        assert_eq!(ok(&mut store, Request::put("a", "1")).revision, 3, "same value still bumps");
        assert_eq!(ok(&mut store, Request::delete("zz")).revision, 3, "deleting nothing does not bump");
        assert_eq!(ok(&mut store, Request::get("a")).revision, 3);
        let kv = store.get(b"a").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        assert_eq!(ok(&mut store, Request::delete("a")).revision, 4);
        ok(&mut store, Request::put("a", "2"));
        let kv = store.get(b"a").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1), "a new generation");
    }

    #[test]
    fn txn_revision_follows_the_executed_branch() {
        let mut store = Store::new();
        let cmp = Compare::new("a", CompareTarget::Version(0), CompareResult::Greater);
        // Compare fails, failure branch only reads: no bump though success writes.
        let response =
            ok(&mut store, Request::txn(vec![cmp.clone()], vec![Request::put("a", "1")], vec![Request::get("a")]));
        assert_eq!(response.revision, 1);
        // Failure branch deletes an absent key: no bump.
        let response = ok(&mut store, Request::txn(vec![cmp.clone()], vec![], vec![Request::delete("a")]));
        assert_eq!(response.revision, 1);
        // Two puts in one txn share one revision, and a later read sees them.
        let response = ok(
            &mut store,
            Request::txn(vec![], vec![Request::put("a", "1"), Request::put("b", "2"), Request::get("a")], vec![]),
        );
        assert_eq!(response.revision, 2);
        let ResponseBody::Txn(result) = response.body else { panic!("txn response") };
        let ResponseBody::Range(read) = &result.responses[2] else { panic!("range response") };
        assert_eq!(read.kvs[0].mod_revision, 2);
        assert_eq!(store.events_after(1).len(), 2);
    }

    #[test]
    fn nested_compares_see_the_state_before_the_txn() {
        let mut store = Store::new();
        // The outer txn puts a; the nested txn checks "a absent": true before the txn.
        let nested = Request::txn(
            vec![Compare::new("a", CompareTarget::Version(0), CompareResult::Equal)],
            vec![Request::put("b", "x")],
            vec![],
        );
        let response = ok(&mut store, Request::txn(vec![], vec![Request::put("a", "1"), nested], vec![]));
        assert_eq!(response.revision, 2);
        assert!(store.get(b"b").is_some());
    }

    #[test]
    fn value_compare_on_missing_key_fails_even_for_not_equal() {
        let store = Store::new();
        let cmp = Compare::new("a", CompareTarget::Value(b"x".to_vec()), CompareResult::NotEqual);
        assert!(!compare_holds(&store.head.kvs, &cmp));
        let cmp = Compare::new("a", CompareTarget::ModRevision(0), CompareResult::Equal);
        assert!(compare_holds(&store.head.kvs, &cmp));
    }

    #[test]
    fn historic_reads_and_compaction() {
        let mut store = Store::new();
        ok(&mut store, Request::put("a", "1"));
        ok(&mut store, Request::put("a", "2"));
        let response = ok(&mut store, Request::get_at("a", 2));
        assert_eq!(response.revision, 3);
        let ResponseBody::Range(read) = response.body else { panic!() };
        assert_eq!(read.kvs[0].value, b"1");
        assert_eq!(store.apply(&Request::get_at("a", 4)), Err(Failure::FutureRevision));
        ok(&mut store, Request::Compact(Compact { revision: 3 }));
        assert_eq!(store.apply(&Request::get_at("a", 2)), Err(Failure::Compacted));
        assert!(store.apply(&Request::get_at("a", 3)).is_ok(), "the compaction revision itself stays readable");
        assert_eq!(store.apply(&Request::Compact(Compact { revision: 3 })), Err(Failure::Compacted));
        // A txn reading a compacted revision fails as a whole, without effect.
        let txn = Request::txn(vec![], vec![Request::put("b", "1"), Request::get_at("a", 2)], vec![]);
        assert_eq!(store.apply(&txn), Err(Failure::Compacted));
        assert!(store.get(b"b").is_none());
    }

    #[test]
    fn lease_revoke_deletes_attached_keys_in_one_revision() {
        let mut store = Store::new();
        for key in ["a", "b"] {
            let put = Put { key: key.into(), value: b"v".to_vec(), lease: 7, prev_kv: false };
            ok(&mut store, Request::Put(put));
        }
        ok(&mut store, Request::put("c", "v"));
        let response = ok(&mut store, Request::LeaseRevoke(crate::history::LeaseRevoke { lease: 7 }));
        assert_eq!(response.revision, 5);
        assert_eq!(store.kvs().count(), 1);
        let events = store.events_after(4);
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| e.revision() == 5 && e.prev_kv.is_some()));
        let response = ok(&mut store, Request::LeaseRevoke(crate::history::LeaseRevoke { lease: 7 }));
        assert_eq!(response.revision, 5, "revoking a lease without keys does not bump");
    }

    #[test]
    fn equal_histories_are_equal_states() {
        let mut a = Store::new();
        let mut b = Store::new();
        ok(&mut a, Request::put("k", "1"));
        ok(&mut b, Request::put("k", "1"));
        assert!(a == b);
        ok(&mut a, Request::delete_range(KeyRange::prefix("zz")));
        assert!(a == b, "a delete of nothing changes nothing");
        ok(&mut a, Request::put("k", "2"));
        ok(&mut b, Request::put("k", "3"));
        assert!(a != b);
        let delete = DeleteRange { range: KeyRange::single("k"), prev_kv: true };
        let response = ok(&mut a, Request::DeleteRange(delete));
        let ResponseBody::DeleteRange(result) = response.body else { panic!() };
        assert_eq!(result.prev_kvs[0].value, b"2");
    }

    #[test]
    fn long_chains_drop_without_overflow() {
        let mut store = Store::new();
        for i in 0..200_000 {
            ok(&mut store, Request::put("k", i.to_string()));
        }
        drop(store);
    }
}
