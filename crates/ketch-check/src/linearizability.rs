//! Linearizability: is there one order of the operations, consistent with
//! real time, in which the sequential model gives every recorded answer?
//!
//! # The search
//!
//! Wing & Gong's algorithm with Lowe's memoization, as porcupine implements
//! it. The history becomes one list of call and return entries sorted by time
//! (at equal times calls first, so touching operations count as concurrent).
//! The search walks the list: at a call it tries to linearize that operation
//! now, stepping the model (the step fails if the recorded outcome is
//! impossible in the current state); on success it removes the call and its
//! return from the list and starts again from the front. At a return it has
//! found an operation that had to be linearized by now and was not, so it
//! backtracks: undoes the last linearized operation and tries the next
//! candidate after it. A cache of every (set of linearized operations, model
//! state) reached prunes branches that cannot lead anywhere new; it is what
//! makes the search practical. Unknown outcomes get a return after everything
//! else: they may be linearized anywhere after their call, and placed last
//! they are invisible ("never happened"); the search never places one where it
//! would change nothing, since that is equivalent to placing it last. The
//! search counts model steps and gives up at `step_budget`.
//!
//! The cost is exponential in the worst case (the problem is NP-complete). In
//! practice it is governed by how many operations overlap and how many writes
//! have unknown outcomes: the revision in every response pins acknowledged
//! writes to one place in the order, so correct histories and violations alike
//! are usually decided in a few hundred steps per hundred operations, while
//! each unknown write can be placed in many orders.
//!
//! # The two checks
//!
//! * [`check_linearizable`] steps the full [`Store`] model: one global
//!   revision, historic reads, compaction, transactions over any keys. It is
//!   exact, and it is the only one that catches a skipped or reused revision
//!   across keys, but its state is the whole store history, so a violation
//!   search may visit many states: use it for histories of up to a few hundred
//!   operations with moderate concurrency (say up to ten clients).
//! * [`check_linearizable_per_key`] splits the history by key
//!   (P-compositionality, as porcupine and Jepsen's `independent` do) and
//!   checks each key against a register model with versions. Splitting is
//!   sound only for properties of one key: the global revision order is lost,
//!   so it checks values, versions, create/mod revisions as far as they can be
//!   known per key, and that header revisions never go backwards along each
//!   key's order (a write's strictly above everything before it). See
//!   [`crate::per_key`] for what each operation contributes. It scales to long
//!   histories (thousands of operations on tens of keys).
//!
//! Outcomes: `Ok` responses must match the model exactly; `Err(Compacted)` and
//! `Err(FutureRevision)` must be what the model answers at the linearization
//! point (and have no effect); `Err(Rejected)` operations are dropped, as are
//! read-only operations with `Unknown` outcomes; `Unknown` writes may take
//! effect at any point after their invocation, or never.
//!
//! A violation is explained three ways: the longest prefix the search could
//! linearize, the operation it could not get past with what the model would
//! have answered there, and (with `minimize`) a 1-minimal set of operations
//! whose recorded responses cannot all be true. Shrinking *relaxes* one
//! operation at a time and keeps the relaxation if the history is still not
//! linearizable: a relaxed read is removed; a relaxed write keeps its
//! real-time interval but its response is ignored and it may have taken effect
//! in that interval or not at all. What remains are the responses the
//! contradiction needs, e.g. for a stale read: the read and the write it
//! missed. Each trial search gets a share of `minimize_step_budget`; a trial
//! that runs out keeps its operation, so the set can be larger than minimal
//! when the budget is tight.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::history::{Failure, History, HistoryError, KeyValue, OpId, Outcome, Request, Response, ResponseBody};
use crate::model::Store;
pub use crate::per_key::check_linearizable_per_key;
use crate::watch::EventLog;
use crate::wgl::{self, Entry, Found, Limits, Model};

/// Settings of the linearizability checks.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// Model steps one search may take before answering `Inconclusive`. The
    /// per-key check gives each key its own budget.
    pub step_budget: u64,
    /// Whether to shrink a violation to a 1-minimal set of operations whose
    /// responses conflict (one search per checked operation, within
    /// `minimize_step_budget`).
    pub minimize: bool,
    /// Model steps the shrinking may spend in total.
    pub minimize_step_budget: u64,
    /// States a search remembers (its memoization cache). Each costs about
    /// 1 KiB in the full check with ten keys (the store revision it keeps
    /// alive), far less per key; the default bounds a search to roughly
    /// 250 MiB. Past the limit the search continues without remembering more:
    /// still exact, only slower.
    pub cache_entries_max: usize,
    /// The revision the store was at before the history began (1 for a fresh
    /// store).
    pub initial_revision: i64,
    /// The keys the store held before the history began.
    pub initial_kvs: Vec<KeyValue>,
}

impl Default for CheckConfig {
    fn default() -> CheckConfig {
        CheckConfig {
            step_budget: 2_000_000,
            minimize: true,
            minimize_step_budget: 1_000_000,
            cache_entries_max: 250_000,
            initial_revision: 1,
            initial_kvs: Vec::new(),
        }
    }
}

impl CheckConfig {
    /// The model's starting store.
    pub fn initial_store(&self) -> Store {
        Store::with_state(self.initial_revision, self.initial_kvs.clone())
    }
}

/// The answer of a linearizability check. `W` is the witness of success.
#[derive(Clone, Debug)]
pub enum Verdict<W> {
    /// Linearizable; the witness is one valid order.
    Ok(W),
    /// Not linearizable.
    Violation(Violation),
    /// The step budget ran out before an answer.
    Inconclusive(Inconclusive),
}

impl<W> Verdict<W> {
    /// Whether the history was found linearizable.
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Ok(_))
    }

    /// The violation, if one was found.
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            Verdict::Violation(v) => Some(v),
            _ => None,
        }
    }

    /// Whether the budget ran out.
    pub fn is_inconclusive(&self) -> bool {
        matches!(self, Verdict::Inconclusive(_))
    }
}

/// A witness of the full check: every operation that took part, in a valid
/// order. `Unknown` writes at the end of it may in truth never have happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linearization {
    /// Operations in linearization order (dropped ones are absent).
    pub order: Vec<OpId>,
}

/// A witness of the per-key check: one valid order per key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PerKeyLinearization {
    /// For each key, the operations touching it in a valid order.
    pub orders: BTreeMap<Vec<u8>, Vec<OpId>>,
}

/// Why a history is not linearizable.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The key whose projection failed (per-key check only).
    pub key: Option<Vec<u8>>,
    /// The operations whose recorded responses conflict. After shrinking
    /// (`CheckConfig::minimize`), every other read removed and every other
    /// write's response ignored (it may have had its effect within its
    /// interval, or none) still leave the history not linearizable, and each of
    /// these not in `undecided` is needed: relaxing it too makes the rest
    /// linearizable. Without shrinking: every checked operation of the
    /// (partition of the) history.
    pub ops: Vec<OpId>,
    /// The operations of `ops` whose shrinking trial ran out of budget: they
    /// may not be needed.
    pub undecided: Vec<OpId>,
    /// Whether shrinking tried every operation (if its total budget ran out,
    /// `ops` also holds operations it never tried).
    pub minimized: bool,
    /// The longest prefix the search linearized.
    pub longest_prefix: Vec<OpId>,
    /// The operation whose return the longest prefix could not get past.
    pub blocked: Option<OpId>,
    /// What the model answers for `blocked` after `longest_prefix`.
    pub expected: Option<String>,
    /// Model steps the search took (without the shrinking).
    pub steps: u64,
}

impl Violation {
    /// A readable account of the violation, quoting the operations.
    pub fn explain(&self, history: &History) -> String {
        let mut out = String::new();
        match &self.key {
            Some(key) => _ = writeln!(out, "not linearizable on key {}", crate::history::Bytes(key)),
            None => _ = writeln!(out, "not linearizable"),
        }
        let decided: Vec<&OpId> = self.ops.iter().filter(|id| !self.undecided.contains(id)).collect();
        let _ = writeln!(
            out,
            "{} operation(s) with conflicting responses{}:",
            decided.len(),
            if self.minimized { " (every other response ignored; each of these needed)" } else { "" }
        );
        list(&mut out, history, decided.into_iter());
        if !self.undecided.is_empty() {
            let _ = writeln!(out, "{} more may be involved (shrinking ran out of budget):", self.undecided.len());
            list(&mut out, history, self.undecided.iter());
        }
        if let Some(blocked) = self.blocked {
            let _ = writeln!(
                out,
                "after linearizing {} operations, {blocked} could not be placed: {}",
                self.longest_prefix.len(),
                history.get(blocked)
            );
            if let Some(expected) = &self.expected {
                let _ = writeln!(out, "  the model would answer: {expected}");
            }
        }
        let tail = self.longest_prefix.len().saturating_sub(10);
        let _ = writeln!(out, "longest linearizable prefix (last {} shown):", self.longest_prefix.len() - tail);
        for id in &self.longest_prefix[tail..] {
            let _ = writeln!(out, "  {id} {}", history.get(*id));
        }
        out
    }
}

/// At most this many operations are quoted per list in an explanation.
const EXPLAIN_OPS_MAX: usize = 40;

fn list<'a>(out: &mut String, history: &History, ids: impl ExactSizeIterator<Item = &'a OpId>) {
    let more = ids.len().saturating_sub(EXPLAIN_OPS_MAX);
    for id in ids.take(EXPLAIN_OPS_MAX) {
        let _ = writeln!(out, "  {id} {}", history.get(*id));
    }
    if more > 0 {
        let _ = writeln!(out, "  … and {more} more");
    }
}

/// The budget ran out.
#[derive(Clone, Debug)]
pub struct Inconclusive {
    /// The key whose search ran out (per-key check only).
    pub key: Option<Vec<u8>>,
    /// Model steps taken.
    pub steps: u64,
    /// The longest prefix linearized before giving up.
    pub longest_prefix: Vec<OpId>,
}

/// Checks the whole history against the full model. See the module
/// documentation.
pub fn check_linearizable(history: &History, config: &CheckConfig) -> Result<Verdict<Linearization>, HistoryError> {
    history.validate()?;
    check_initial_reads(history, config.initial_revision)?;
    let mut infos = Vec::new();
    let mut ops = Vec::new();
    for (id, op) in history.iter() {
        let observed = match &op.outcome {
            Outcome::Ok(response) => Observed::Response(response),
            Outcome::Err(Failure::Rejected(_)) => continue,
            Outcome::Err(failure) => Observed::Failure(failure),
            Outcome::Unknown if !op.request.may_write() => continue,
            Outcome::Unknown => Observed::Unknown,
        };
        let returned_at = (!matches!(observed, Observed::Unknown)).then_some(op.returned_at);
        let read_only = !op.request.may_write() || matches!(observed, Observed::Failure(_));
        infos.push(OpInfo { id, invoked_at: op.invoked_at, returned_at, checked: returned_at.is_some(), read_only });
        ops.push((&op.request, observed));
    }
    let model = FullModel { ops };
    let verdict = drive(&model, config.initial_store(), &infos, config, None, |state, op| model.describe(state, op));
    Ok(match verdict {
        Verdict::Ok(order) => Verdict::Ok(Linearization { order }),
        Verdict::Violation(v) => Verdict::Violation(v),
        Verdict::Inconclusive(i) => Verdict::Inconclusive(i),
    })
}

impl Linearization {
    /// The watch events a store that executed this order would emit, as a
    /// reference for [`crate::watch::check_watch`]. Only the part of the order
    /// before its first `Unknown` write that changed anything is certain (after
    /// it, another valid order could place different writes), so the log stops
    /// there: its `last_revision` tells how far it is complete.
    pub fn event_log(&self, history: &History, config: &CheckConfig) -> EventLog {
        let mut store = config.initial_store();
        for id in &self.order {
            let op = history.get(*id);
            let mut next = store.clone();
            let changed = next.apply(&op.request).is_ok()
                && (next.revision() != store.revision() || next.compacted_revision() != store.compacted_revision());
            if matches!(op.outcome, Outcome::Unknown) && changed {
                break;
            }
            store = next;
        }
        EventLog::from_store(&store, config.initial_revision)
    }
}

/// What the full model holds about one operation's outcome.
enum Observed<'a> {
    Response(&'a Response),
    Failure(&'a Failure),
    Unknown,
}

struct FullModel<'a> {
    ops: Vec<(&'a Request, Observed<'a>)>,
}

impl Model for FullModel<'_> {
    type State = Store;

    fn step(&self, state: &Store, op: usize, relaxed: bool) -> Option<Store> {
        let (request, observed) = &self.ops[op];
        let mut next = state.clone();
        let answer = next.apply(request);
        if relaxed {
            // Applied whatever it answered (an error leaves `next` unchanged).
            return Some(next);
        }
        match (observed, answer) {
            // `apply` leaves the store unchanged on an error, so `next` is right either way.
            (Observed::Unknown, _) => Some(next),
            (Observed::Response(expected), Ok(got)) => (**expected == got).then_some(next),
            (Observed::Failure(expected), Err(got)) => (**expected == got).then_some(next),
            _ => None,
        }
    }
}

impl FullModel<'_> {
    fn describe(&self, state: &Store, op: usize) -> String {
        let mut next = state.clone();
        match next.apply(self.ops[op].0) {
            Ok(response) => response.to_string(),
            Err(failure) => format!("error: {failure}"),
        }
    }
}

fn check_initial_reads(history: &History, initial: i64) -> Result<(), HistoryError> {
    /// The lowest historic revision an answered request read (in the branch a
    /// transaction took).
    fn lowest_read(request: &Request, body: &ResponseBody) -> Option<i64> {
        match (request, body) {
            (Request::Range(range), _) if range.revision > 0 => Some(range.revision),
            (Request::Txn(txn), ResponseBody::Txn(result)) => {
                let branch = if result.succeeded { &txn.success } else { &txn.failure };
                branch.iter().zip(&result.responses).filter_map(|(r, b)| lowest_read(r, b)).min()
            }
            _ => None,
        }
    }
    for (id, op) in history.iter() {
        if let Outcome::Ok(response) = &op.outcome
            && let Some(revision) = lowest_read(&op.request, &response.body)
            && revision < initial
        {
            return Err(HistoryError::ReadBeforeInitialRevision { op: id, revision, initial });
        }
    }
    Ok(())
}

/// One operation as the driver sees it.
pub(crate) struct OpInfo {
    pub id: OpId,
    pub invoked_at: u64,
    /// `None` for unknown outcomes.
    pub returned_at: Option<u64>,
    /// Whether it has an outcome the model checks (and shrinking may relax).
    pub checked: bool,
    /// Whether relaxing it means dropping it (it cannot change the state).
    pub read_only: bool,
}

/// How a shrinking trial treats an operation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Treatment {
    Keep,
    /// Response ignored (a read is then dropped).
    Relax,
    Drop,
}

fn entries(ops: &[OpInfo], treatment: &[Treatment]) -> Vec<Entry> {
    ops.iter()
        .enumerate()
        .filter(|&(i, op)| match treatment[i] {
            Treatment::Keep => true,
            Treatment::Relax => !op.read_only,
            Treatment::Drop => false,
        })
        .map(|(i, op)| Entry {
            op: i,
            invoked_at: op.invoked_at,
            returned_at: op.returned_at,
            relaxed: treatment[i] == Treatment::Relax,
        })
        .collect()
}

/// A shrinking trial may take this many times the steps of the search that
/// found the violation...
const TRIAL_STEPS_FACTOR: u64 = 10;
/// ...and at least this many.
const TRIAL_STEPS_MIN: u64 = 5_000;

/// Runs the search, and on a violation the shrinking. Witness orders are in
/// `OpId`s.
pub(crate) fn drive<M: Model>(
    model: &M,
    init: M::State,
    ops: &[OpInfo],
    config: &CheckConfig,
    key: Option<Vec<u8>>,
    describe: impl Fn(&M::State, usize) -> String,
) -> Verdict<Vec<OpId>> {
    let ids = |order: &[usize]| order.iter().map(|&i| ops[i].id).collect::<Vec<_>>();
    let keep_all = vec![Treatment::Keep; ops.len()];
    let limits = Limits { steps: config.step_budget, cache_entries: config.cache_entries_max };
    let result = wgl::search(model, init.clone(), &entries(ops, &keep_all), limits);
    match result.found {
        Found::Linearizable => return Verdict::Ok(ids(&result.order)),
        Found::BudgetExhausted => {
            return Verdict::Inconclusive(Inconclusive {
                key,
                steps: result.steps,
                longest_prefix: ids(&result.order),
            });
        }
        Found::Violation => {}
    }
    let expected = result.blocked.map(|op| describe(&result.state, op));
    let shrunk = if config.minimize {
        shrink(model, &init, ops, config, result.steps, result.blocked)
    } else {
        Shrunk { treatment: keep_all, undecided: Vec::new(), minimized: false }
    };
    let core = (0..ops.len())
        .filter(|&i| ops[i].checked && shrunk.treatment[i] == Treatment::Keep)
        .map(|i| ops[i].id)
        .collect();
    Verdict::Violation(Violation {
        key,
        ops: core,
        undecided: shrunk.undecided,
        minimized: shrunk.minimized,
        longest_prefix: ids(&result.order),
        blocked: result.blocked.map(|i| ops[i].id),
        expected,
        steps: result.steps,
    })
}

struct Shrunk {
    treatment: Vec<Treatment>,
    undecided: Vec<OpId>,
    minimized: bool,
}

/// Shrinks a violating history: first cut it after the blocked operation's
/// return, then relax one operation at a time, latest first.
///
/// The cut is sound: take any linearization of the whole history. Every
/// operation that returned by time `t` is placed before `t`, so before every
/// operation invoked after `t`. Dropping those, and relaxing the operations
/// still open at `t`, leaves a valid linearization of the rest. So if the cut
/// history is not linearizable, neither is the whole.
///
/// Latest first, because relaxing an early write frees the revisions of
/// everything after it, which every later trial would then have to explore.
fn shrink<M: Model>(
    model: &M,
    init: &M::State,
    ops: &[OpInfo],
    config: &CheckConfig,
    first_steps: u64,
    blocked: Option<usize>,
) -> Shrunk {
    let trial_budget = first_steps.saturating_mul(TRIAL_STEPS_FACTOR).max(TRIAL_STEPS_MIN);
    let mut spent = 0u64;
    let trial = |treatment: &[Treatment], spent: &mut u64| {
        let budget = config.minimize_step_budget.saturating_sub(*spent).min(trial_budget).min(config.step_budget);
        let limits = Limits { steps: budget, cache_entries: config.cache_entries_max };
        let result = wgl::search(model, init.clone(), &entries(ops, treatment), limits);
        *spent += result.steps;
        result.found
    };

    let mut treatment = vec![Treatment::Keep; ops.len()];
    if let Some(cut) = blocked.and_then(|b| ops[b].returned_at) {
        let cut_treatment: Vec<Treatment> = ops
            .iter()
            .map(|op| match op.returned_at {
                _ if op.invoked_at > cut => Treatment::Drop,
                Some(returned_at) if returned_at > cut => Treatment::Relax,
                _ => Treatment::Keep,
            })
            .collect();
        if matches!(trial(&cut_treatment, &mut spent), Found::Violation) {
            treatment = cut_treatment;
        }
    }

    let mut candidates: Vec<usize> =
        (0..ops.len()).filter(|&i| ops[i].checked && treatment[i] == Treatment::Keep).collect();
    candidates.sort_by_key(|&i| std::cmp::Reverse((ops[i].invoked_at, i)));
    let mut undecided = Vec::new();
    let mut minimized = true;
    for i in candidates {
        if spent >= config.minimize_step_budget {
            minimized = false;
            break;
        }
        treatment[i] = Treatment::Relax;
        match trial(&treatment, &mut spent) {
            Found::Violation => {}
            Found::Linearizable => treatment[i] = Treatment::Keep,
            Found::BudgetExhausted => {
                treatment[i] = Treatment::Keep;
                undecided.push(ops[i].id);
            }
        }
    }
    undecided.sort();
    Shrunk { treatment, undecided, minimized }
}
