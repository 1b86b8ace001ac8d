//! The per-key check: the history split into one sub-history per key, each
//! checked against a model of that key alone.
//!
//! # Why it is sound
//!
//! If the whole history is linearizable, so is its projection onto any one key:
//! take the global order and keep the operations that touch the key. So a
//! violation on one key is a violation of the history. The converse does not
//! hold (each key may be fine while no single global order exists), which is
//! what the full check is for.
//!
//! # What an operation contributes to key `k`
//!
//! The *universe* is every key the history can have created (keys of puts, of
//! the initial state, of single-key requests and of anything a response
//! returned). An operation touches `k` if it puts `k`, deletes a range holding
//! `k`, reads a range holding `k` at the current revision, compares `k` alone,
//! or revokes a lease `k` was ever put with. Its projection is a little program
//! run on `k`'s state:
//!
//! * a read observes `k`'s pair (or its absence: a range read that did not
//!   return `k` says `k` was absent, unless a limit may have cut it off);
//! * `prev_kv` of a put or a delete observes the pair before; a single-key
//!   delete's `deleted` count observes existence;
//! * a put, a delete, a lease revoke change `k`;
//! * a transaction becomes a branch on its compares of `k`, taking the branch
//!   its response says it took. Compares on other keys or on ranges cannot be
//!   evaluated here, so they only make both branches possible when the outcome
//!   is unknown. As in etcd, every compare is evaluated before any of the
//!   transaction's writes.
//!
//! # Revisions without the global order
//!
//! A key's state holds `create_revision` and `mod_revision` as *known* (from a
//! response) or *unknown* (written by an operation with an unknown outcome, so
//! its revision was never seen; the first read that returns the pair fixes it).
//! It also holds a floor: the highest header revision linearized so far on this
//! key. Header revisions grow along any linearization, and a request that
//! changes the store gets a fresh revision, so a read's header must be `>=` the
//! floor and the header of an operation that changed `k` must be `>` it. This
//! catches reads that travel back in time and a reused revision on one key; it
//! cannot catch a revision skipped or reused by writes to different keys.
//!
//! Because unknown outcomes and foreign compares make a transaction's effect on
//! `k` nondeterministic, the model's state is the *set* of states `k` may be in
//! (etcd's robustness `NonDeterministicModel` does the same).
//!
//! # Not checked per key
//!
//! Historic reads (`revision > 0`), compaction, `Compacted`/`FutureRevision`
//! errors, counts of multi-key ranges and deletes, the revision numbering
//! across keys.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::history::{Bytes, Compare, CompareTarget, History, HistoryError, KeyValue, Outcome, Request, ResponseBody};
use crate::linearizability::{CheckConfig, OpInfo, PerKeyLinearization, Verdict, drive};
use crate::model::relation_holds;
use crate::wgl::Model;

/// Checks each key's projection of the history. See the module documentation
/// for what is and is not checked; the step budget applies per key.
pub fn check_linearizable_per_key(
    history: &History,
    config: &CheckConfig,
) -> Result<Verdict<PerKeyLinearization>, HistoryError> {
    history.validate()?;
    let universe = universe(history, config);
    let leases = lease_keys(history, config);
    let mut partitions: BTreeMap<Vec<u8>, (Vec<OpInfo>, Vec<KeyOp>)> = BTreeMap::new();
    for (id, op) in history.iter() {
        let response = match &op.outcome {
            Outcome::Ok(response) => Some(response),
            Outcome::Err(_) => continue,
            Outcome::Unknown if !op.request.may_write() => continue,
            Outcome::Unknown => None,
        };
        let mut keys = BTreeSet::new();
        touched_keys(&op.request, &universe, &leases, &mut keys);
        for key in keys {
            let mut steps = Vec::new();
            project(&op.request, response.map(|r| &r.body), &key, &mut steps);
            let key_op = KeyOp { steps, header: response.map(|r| r.revision) };
            let writes = key_op.steps.iter().any(Step::may_write);
            if response.is_none() && !writes {
                continue;
            }
            let info = OpInfo {
                id,
                invoked_at: op.invoked_at,
                returned_at: response.is_some().then_some(op.returned_at),
                checked: response.is_some(),
                read_only: !writes,
            };
            let partition = partitions.entry(key).or_default();
            partition.0.push(info);
            partition.1.push(key_op);
        }
    }

    let initial: BTreeMap<&[u8], &KeyValue> = config.initial_kvs.iter().map(|kv| (kv.key.as_slice(), kv)).collect();
    let mut orders = BTreeMap::new();
    let mut inconclusive = None;
    for (key, (infos, key_ops)) in partitions {
        let model = KeyModel { ops: key_ops };
        let start = KeyState {
            live: initial.get(key.as_slice()).map(|kv| Live {
                value: kv.value.clone(),
                version: kv.version,
                lease: kv.lease,
                create: Rev::Known(kv.create_revision),
                modified: Rev::Known(kv.mod_revision),
            }),
            floor: config.initial_revision,
        };
        let init = States(vec![start]);
        match drive(&model, init, &infos, config, Some(key.clone()), |states, op| model.describe(states, op)) {
            Verdict::Ok(order) => {
                orders.insert(key, order);
            }
            Verdict::Violation(violation) => return Ok(Verdict::Violation(violation)),
            Verdict::Inconclusive(i) => {
                inconclusive.get_or_insert(i);
            }
        }
    }
    Ok(match inconclusive {
        Some(i) => Verdict::Inconclusive(i),
        None => Verdict::Ok(PerKeyLinearization { orders }),
    })
}

/// A revision a key's state holds: seen in a response, or not (yet).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Rev {
    Known(i64),
    Unknown,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
struct Live {
    value: Vec<u8>,
    version: i64,
    lease: i64,
    create: Rev,
    modified: Rev,
}

/// One possible state of a key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
struct KeyState {
    live: Option<Live>,
    /// The highest header revision linearized on this key so far.
    floor: i64,
}

/// The states a key may be in: sorted, deduplicated, never empty.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct States(Vec<KeyState>);

/// An operation projected onto one key.
struct KeyOp {
    steps: Vec<Step>,
    /// The response's header revision; `None` when the outcome is unknown.
    header: Option<i64>,
}

enum Step {
    /// The key's pair must be this (or absent) now.
    Observe(Option<KeyValue>),
    /// The key must exist (or not) now.
    ObserveLive(bool),
    Put {
        value: Vec<u8>,
        lease: i64,
    },
    Delete,
    DeleteIfLease(i64),
    Branch(Branch),
}

struct Branch {
    /// The transaction's compares of this key alone.
    compares: Vec<Compare>,
    /// Whether those are all its compares, so the branch is decided here.
    complete: bool,
    /// The branch the response says ran; `None` when unknown.
    taken: Option<bool>,
    success: Vec<Step>,
    failure: Vec<Step>,
}

impl Step {
    fn may_write(&self) -> bool {
        match self {
            Step::Observe(_) | Step::ObserveLive(_) => false,
            Step::Put { .. } | Step::Delete | Step::DeleteIfLease(_) => true,
            Step::Branch(branch) => branch.success.iter().chain(&branch.failure).any(Step::may_write),
        }
    }
}

impl Branch {
    /// Which branches may run from `pre`, given what was observed.
    fn outcomes(&self, pre: &KeyState, relaxed: bool) -> Vec<bool> {
        let results: Vec<Option<bool>> = self.compares.iter().map(|c| evaluate(c, &pre.live)).collect();
        let may_succeed = results.iter().all(|r| *r != Some(false));
        let may_fail = !self.complete || results.iter().any(|r| *r != Some(true));
        match if relaxed { None } else { self.taken } {
            Some(true) => [true].into_iter().filter(|_| may_succeed).collect(),
            Some(false) => [false].into_iter().filter(|_| may_fail).collect(),
            None => [(true, may_succeed), (false, may_fail)].into_iter().filter(|x| x.1).map(|x| x.0).collect(),
        }
    }
}

/// A single-key compare on a possible state: `None` when it depends on a
/// revision that was never observed.
fn evaluate(compare: &Compare, live: &Option<Live>) -> Option<bool> {
    let Some(live) = live else {
        return match &compare.target {
            CompareTarget::Value(_) => Some(false),
            CompareTarget::Version(v)
            | CompareTarget::CreateRevision(v)
            | CompareTarget::ModRevision(v)
            | CompareTarget::Lease(v) => Some(relation_holds(compare.result, 0.cmp(v))),
        };
    };
    let ordering = match &compare.target {
        CompareTarget::Value(v) => live.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Version(v) => live.version.cmp(v),
        CompareTarget::Lease(v) => live.lease.cmp(v),
        CompareTarget::CreateRevision(v) => match live.create {
            Rev::Known(r) => r.cmp(v),
            Rev::Unknown => return None,
        },
        CompareTarget::ModRevision(v) => match live.modified {
            Rev::Known(r) => r.cmp(v),
            Rev::Unknown => return None,
        },
    };
    Some(relation_holds(compare.result, ordering))
}

struct KeyModel {
    ops: Vec<KeyOp>,
}

impl Model for KeyModel {
    type State = States;

    fn step(&self, states: &States, op: usize, relaxed: bool) -> Option<States> {
        let op = &self.ops[op];
        let mut next = Vec::new();
        for state in &states.0 {
            for path in paths(&op.steps, state, relaxed) {
                next.extend(run(&path, state, if relaxed { None } else { op.header }, relaxed));
            }
        }
        next.sort();
        next.dedup();
        (!next.is_empty()).then_some(States(next))
    }
}

impl KeyModel {
    fn describe(&self, states: &States, _op: usize) -> String {
        let mut out = String::from("the key may be: ");
        for (i, state) in states.0.iter().enumerate() {
            if i > 0 {
                out.push_str(" | ");
            }
            match &state.live {
                None => out.push_str("absent"),
                Some(live) => {
                    let _ = write!(out, "{} (version {}", Bytes(&live.value), live.version);
                    for (name, rev) in [("create", live.create), ("mod", live.modified)] {
                        match rev {
                            Rev::Known(r) => _ = write!(out, ", {name} {r}"),
                            Rev::Unknown => _ = write!(out, ", {name} ?"),
                        }
                    }
                    out.push(')');
                }
            }
            let _ = write!(out, " at revision >= {}", state.floor);
        }
        out
    }
}

/// Every sequence of primitive steps the operation may run from `pre`.
fn paths<'a>(steps: &'a [Step], pre: &KeyState, relaxed: bool) -> Vec<Vec<&'a Step>> {
    let mut found: Vec<Vec<&Step>> = vec![Vec::new()];
    for step in steps {
        match step {
            Step::Branch(branch) => {
                let mut next = Vec::new();
                for outcome in branch.outcomes(pre, relaxed) {
                    let steps = if outcome { &branch.success } else { &branch.failure };
                    for tail in paths(steps, pre, relaxed) {
                        for head in &found {
                            next.push(head.iter().copied().chain(tail.iter().copied()).collect());
                        }
                    }
                }
                found = next;
            }
            primitive => found.iter_mut().for_each(|path| path.push(primitive)),
        }
    }
    found
}

/// Runs one path from `pre`; `None` if an observation fails.
fn run(path: &[&Step], pre: &KeyState, header: Option<i64>, relaxed: bool) -> Option<KeyState> {
    let mut live = pre.live.clone();
    let mut wrote = false;
    let revision = header.map_or(Rev::Unknown, Rev::Known);
    for step in path {
        match step {
            Step::Observe(expected) => {
                if !relaxed && !observe(&mut live, expected.as_ref(), header) {
                    return None;
                }
            }
            Step::ObserveLive(exists) => {
                if !relaxed && live.is_some() != *exists {
                    return None;
                }
            }
            Step::Put { value, lease } => {
                let prev = live.take();
                live = Some(Live {
                    value: value.clone(),
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                    lease: *lease,
                    create: prev.as_ref().map_or(revision, |p| p.create),
                    modified: revision,
                });
                wrote = true;
            }
            Step::Delete => wrote |= live.take().is_some(),
            Step::DeleteIfLease(lease) => {
                if live.as_ref().is_some_and(|l| l.lease == *lease) {
                    live = None;
                    wrote = true;
                }
            }
            Step::Branch(_) => unreachable!("paths() flattens branches"),
        }
    }
    let mut floor = pre.floor;
    if let Some(revision) = header {
        let fits = if wrote { revision > floor } else { revision >= floor };
        if !fits {
            return None;
        }
        floor = revision;
    }
    Some(KeyState { live, floor })
}

fn observe(live: &mut Option<Live>, expected: Option<&KeyValue>, header: Option<i64>) -> bool {
    fn refine(rev: &mut Rev, seen: i64, header: Option<i64>) -> bool {
        match *rev {
            Rev::Known(r) => r == seen,
            Rev::Unknown => {
                *rev = Rev::Known(seen);
                header.is_none_or(|h| seen <= h)
            }
        }
    }
    match (live, expected) {
        (None, None) => true,
        (Some(live), Some(kv)) => {
            live.value == kv.value
                && live.version == kv.version
                && live.lease == kv.lease
                && refine(&mut live.create, kv.create_revision, header)
                && refine(&mut live.modified, kv.mod_revision, header)
        }
        _ => false,
    }
}

/// Projects `request` (with its response body, if known) onto `key`.
fn project(request: &Request, body: Option<&ResponseBody>, key: &[u8], out: &mut Vec<Step>) {
    match request {
        Request::Range(range) => {
            if range.revision > 0 || !range.range.contains(key) {
                return;
            }
            let Some(ResponseBody::Range(result)) = body else { return };
            if let Some(kv) = result.kvs.iter().find(|kv| kv.key == key) {
                out.push(Step::Observe(Some(kv.clone())));
                return;
            }
            let cut = result.more || (range.limit > 0 && result.kvs.len() as i64 >= range.limit);
            let beyond = result.kvs.last().is_some_and(|last| key > last.key.as_slice());
            if !(cut && beyond) {
                out.push(Step::Observe(None));
            }
        }
        Request::Put(put) => {
            if put.key != key {
                return;
            }
            if let (true, Some(ResponseBody::Put(result))) = (put.prev_kv, body) {
                out.push(Step::Observe(result.prev_kv.clone()));
            }
            out.push(Step::Put { value: put.value.clone(), lease: put.lease });
        }
        Request::DeleteRange(delete) => {
            if !delete.range.contains(key) {
                return;
            }
            if let Some(ResponseBody::DeleteRange(result)) = body {
                if delete.prev_kv {
                    out.push(Step::Observe(result.prev_kvs.iter().find(|kv| kv.key == key).cloned()));
                } else if delete.range.is_single() || result.deleted == 0 {
                    out.push(Step::ObserveLive(result.deleted > 0));
                }
            }
            out.push(Step::Delete);
        }
        Request::Txn(txn) => {
            let result = match body {
                Some(ResponseBody::Txn(result)) => Some(result),
                _ => None,
            };
            let on_key = |c: &&Compare| c.range.is_single() && c.range.key == key;
            let compares: Vec<Compare> = txn.compares.iter().filter(on_key).cloned().collect();
            let complete = txn.compares.iter().all(|c| on_key(&c));
            let (mut success, mut failure) = (Vec::new(), Vec::new());
            match result {
                Some(result) => {
                    let (branch, steps) =
                        if result.succeeded { (&txn.success, &mut success) } else { (&txn.failure, &mut failure) };
                    for (inner, inner_body) in branch.iter().zip(&result.responses) {
                        project(inner, Some(inner_body), key, steps);
                    }
                }
                None => {
                    txn.success.iter().for_each(|inner| project(inner, None, key, &mut success));
                    txn.failure.iter().for_each(|inner| project(inner, None, key, &mut failure));
                }
            }
            if compares.is_empty() && success.is_empty() && failure.is_empty() {
                return;
            }
            out.push(Step::Branch(Branch { compares, complete, taken: result.map(|r| r.succeeded), success, failure }));
        }
        Request::LeaseRevoke(revoke) => out.push(Step::DeleteIfLease(revoke.lease)),
        Request::Compact(_) => {}
    }
}

/// Keys of `universe` that `request` touches (see the module documentation).
fn touched_keys(
    request: &Request,
    universe: &BTreeSet<Vec<u8>>,
    leases: &BTreeMap<i64, BTreeSet<Vec<u8>>>,
    out: &mut BTreeSet<Vec<u8>>,
) {
    let in_range = |range: &crate::history::KeyRange, out: &mut BTreeSet<Vec<u8>>| {
        out.extend(universe.range::<[u8], _>(range.bounds()).cloned());
    };
    match request {
        Request::Range(range) if range.revision <= 0 => in_range(&range.range, out),
        Request::Range(_) | Request::Compact(_) => {}
        Request::Put(put) => {
            out.insert(put.key.clone());
        }
        Request::DeleteRange(delete) => in_range(&delete.range, out),
        Request::Txn(txn) => {
            out.extend(txn.compares.iter().filter(|c| c.range.is_single()).map(|c| c.range.key.clone()));
            for inner in txn.success.iter().chain(&txn.failure) {
                touched_keys(inner, universe, leases, out);
            }
        }
        Request::LeaseRevoke(revoke) => out.extend(leases.get(&revoke.lease).into_iter().flatten().cloned()),
    }
}

/// Every key the history can have created or observed.
fn universe(history: &History, config: &CheckConfig) -> BTreeSet<Vec<u8>> {
    fn from_request(request: &Request, out: &mut BTreeSet<Vec<u8>>) {
        match request {
            Request::Put(put) => {
                out.insert(put.key.clone());
            }
            Request::Range(range) if range.range.is_single() => {
                out.insert(range.range.key.clone());
            }
            Request::DeleteRange(delete) if delete.range.is_single() => {
                out.insert(delete.range.key.clone());
            }
            Request::Txn(txn) => {
                out.extend(txn.compares.iter().filter(|c| c.range.is_single()).map(|c| c.range.key.clone()));
                txn.success.iter().chain(&txn.failure).for_each(|inner| from_request(inner, out));
            }
            _ => {}
        }
    }
    fn from_body(body: &ResponseBody, out: &mut BTreeSet<Vec<u8>>) {
        match body {
            ResponseBody::Range(result) => out.extend(result.kvs.iter().map(|kv| kv.key.clone())),
            ResponseBody::Put(result) => out.extend(result.prev_kv.iter().map(|kv| kv.key.clone())),
            ResponseBody::DeleteRange(result) => out.extend(result.prev_kvs.iter().map(|kv| kv.key.clone())),
            ResponseBody::Txn(result) => result.responses.iter().for_each(|inner| from_body(inner, out)),
            ResponseBody::Compact | ResponseBody::LeaseRevoke => {}
        }
    }
    let mut keys: BTreeSet<Vec<u8>> = config.initial_kvs.iter().map(|kv| kv.key.clone()).collect();
    for (_, op) in history.iter() {
        from_request(&op.request, &mut keys);
        if let Outcome::Ok(response) = &op.outcome {
            from_body(&response.body, &mut keys);
        }
    }
    keys
}

/// For each lease, every key some put attached to it.
fn lease_keys(history: &History, config: &CheckConfig) -> BTreeMap<i64, BTreeSet<Vec<u8>>> {
    fn from_request(request: &Request, out: &mut BTreeMap<i64, BTreeSet<Vec<u8>>>) {
        match request {
            Request::Put(put) if put.lease != 0 => {
                out.entry(put.lease).or_default().insert(put.key.clone());
            }
            Request::Txn(txn) => txn.success.iter().chain(&txn.failure).for_each(|inner| from_request(inner, out)),
            _ => {}
        }
    }
    let mut leases: BTreeMap<i64, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for kv in config.initial_kvs.iter().filter(|kv| kv.lease != 0) {
        leases.entry(kv.lease).or_default().insert(kv.key.clone());
    }
    for (_, op) in history.iter() {
        from_request(&op.request, &mut leases);
    }
    leases
}
