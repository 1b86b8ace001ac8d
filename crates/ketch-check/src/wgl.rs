//! The linearizability search: Wing & Gong's algorithm with Lowe's
//! memoization, as porcupine implements it (`checkSingle` in
//! anishathalye/porcupine).
//!
//! The history becomes one list of call and return entries sorted by time
//! (calls before returns at equal times, so touching operations count as
//! concurrent). The search walks the list: at a call entry it tries to
//! linearize that operation now (step the model; the step fails when the
//! operation's recorded outcome is impossible in the current state), and on
//! success removes the call and its return from the list ("lift") and restarts
//! from the front; at a return entry it has found an operation that had to be
//! linearized by now but could not be, so it backtracks: undo the last
//! linearized operation ("unlift") and try the next candidate after it. The
//! cache holds every (set of linearized operations, model state) pair reached;
//! reaching one again cannot lead anywhere new, so that branch is pruned. That
//! cache is what makes the search practical.
//!
//! Operations with no return (`returned_at == None`, i.e. unknown outcomes)
//! get a return entry after every other entry: they can be linearized at any
//! point after their call, and the search can always place them last, where
//! their effect is invisible, which is exactly "may never take effect". For
//! the same reason the search never places one where it would change nothing
//! (a compare-and-set that would fail, a delete of an absent key): that order
//! is equivalent to placing it last, and trying it anyway would double the
//! states to explore for every such operation. And the search succeeds as soon
//! as only unknown operations are left.
//!
//! A *relaxed* operation (used to shrink a violation) has its response
//! ignored: it may take effect anywhere in its interval, or not at all. The
//! search tries both, applying it and skipping it, at each candidate point.
//! Keeping its interval keeps the search as cheap as the original one, where
//! treating it as unknown (pending forever) would not.
//!
//! The search is bounded by a budget of model steps. Its cost is exponential in
//! the worst case (linearizability checking is NP-complete), in practice
//! governed by how many operations overlap and how many of them have unknown
//! outcomes.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

/// A sequential specification the search steps through.
pub(crate) trait Model {
    /// The model's state; equal states must hash equally.
    type State: Clone + Eq + Hash;

    /// Linearizes operation `op` in `state`: the state after it, or `None` if its
    /// recorded outcome is impossible there. For a `relaxed` operation the
    /// recorded outcome is ignored: apply it, whatever it answers.
    fn step(&self, state: &Self::State, op: usize, relaxed: bool) -> Option<Self::State>;
}

/// One operation as the search sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    /// The model's index of the operation.
    pub op: usize,
    pub invoked_at: u64,
    /// `None`: never returned (unknown outcome).
    pub returned_at: Option<u64>,
    /// Response ignored; may be applied or skipped (see the module docs).
    pub relaxed: bool,
}

/// How a search ended.
pub(crate) enum Found {
    Linearizable,
    Violation,
    BudgetExhausted,
}

/// What a search found.
pub(crate) struct SearchResult<S> {
    pub found: Found,
    /// For `Linearizable`, the order; otherwise the longest prefix linearized.
    pub order: Vec<usize>,
    /// The model state after `order`.
    pub state: S,
    /// The operation whose return the longest prefix could not get past.
    pub blocked: Option<usize>,
    /// Model steps taken.
    pub steps: u64,
}

const NIL: usize = usize::MAX;

struct Node {
    /// Index into the entries.
    entry: usize,
    /// For a call node, the index of its return node; `NIL` for a return node.
    matching: usize,
    prev: usize,
    next: usize,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: usize) -> Bits {
        Bits(vec![0; len.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// A cache key: the linearized set with the state reached.
struct Visited<S>(Bits, S, u64);

impl<S: Eq> PartialEq for Visited<S> {
    fn eq(&self, other: &Self) -> bool {
        self.2 == other.2 && self.0 == other.0 && self.1 == other.1
    }
}
impl<S: Eq> Eq for Visited<S> {}
impl<S> Hash for Visited<S> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.2.hash(state);
    }
}

fn visited_hash<S: Hash>(bits: &Bits, state: &S) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bits.hash(&mut hasher);
    state.hash(&mut hasher);
    hasher.finish()
}

/// The limits of one search.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Model steps before giving up.
    pub steps: u64,
    /// States remembered; past this the search goes on without remembering
    /// more (still exact, only slower), so memory stays bounded.
    pub cache_entries: usize,
}

/// Searches for a linearization of `entries` from `init` within `limits`.
pub(crate) fn search<M: Model>(model: &M, init: M::State, entries: &[Entry], limits: Limits) -> SearchResult<M::State> {
    let budget = limits.steps;
    let mut nodes = build_list(entries);
    let head = 0;
    let mut linearized = Bits::new(entries.len());
    let mut cache: HashSet<Visited<M::State>> = HashSet::new();
    let mut calls: Vec<(usize, M::State, u8)> = Vec::new();
    let mut state = init;
    let mut steps = 0u64;

    let mut best_len = 0usize;
    let mut best_order: Vec<usize> = Vec::new();
    let mut best_state = state.clone();
    let mut blocked = None;
    let mut at_best = true;

    // Operations with a return that are not linearized yet.
    let mut returns_left = entries.iter().filter(|e| e.returned_at.is_some()).count();
    let mut node = nodes[head].next;
    // 0: apply the operation; 1 (relaxed operations only): skip it.
    let mut variant = 0u8;
    loop {
        if returns_left == 0 {
            // Only unknown operations remain: they all go last, in any order.
            let mut order: Vec<usize> = calls.iter().map(|&(n, _, _)| entries[nodes[n].entry].op).collect();
            let mut rest = nodes[head].next;
            while rest != NIL {
                if nodes[rest].matching != NIL {
                    order.push(entries[nodes[rest].entry].op);
                }
                rest = nodes[rest].next;
            }
            return SearchResult { found: Found::Linearizable, order, state, blocked: None, steps };
        }
        if steps >= budget {
            return SearchResult {
                found: Found::BudgetExhausted,
                order: best_order,
                state: best_state,
                blocked,
                steps,
            };
        }
        let current = &nodes[node];
        if current.matching != NIL {
            let entry = entries[current.entry];
            steps += 1;
            let next_state = if variant == 0 {
                // An unknown operation that would change nothing here is as well
                // placed at the very end, which is always possible: don't branch.
                model.step(&state, entry.op, entry.relaxed).filter(|next| entry.returned_at.is_some() || *next != state)
            } else {
                Some(state.clone())
            };
            let mut pushed = false;
            if let Some(next_state) = next_state {
                linearized.set(current.entry);
                let hash = visited_hash(&linearized, &next_state);
                let visited = Visited(linearized.clone(), next_state.clone(), hash);
                let new =
                    if cache.len() < limits.cache_entries { cache.insert(visited) } else { !cache.contains(&visited) };
                if new {
                    calls.push((node, std::mem::replace(&mut state, next_state), variant));
                    lift(&mut nodes, node);
                    returns_left -= usize::from(entry.returned_at.is_some());
                    pushed = true;
                    at_best = false;
                    if calls.len() > best_len {
                        best_len = calls.len();
                        best_order = calls.iter().map(|&(n, _, _)| entries[nodes[n].entry].op).collect();
                        best_state = state.clone();
                        blocked = None;
                        at_best = true;
                    }
                    node = nodes[head].next;
                    variant = 0;
                } else {
                    linearized.clear(current.entry);
                }
            }
            if !pushed {
                if entry.relaxed && variant == 0 {
                    variant = 1;
                } else {
                    node = nodes[node].next;
                    variant = 0;
                }
            }
        } else {
            // A return entry: its operation had to be linearized by now.
            if at_best && blocked.is_none() {
                blocked = Some(entries[current.entry].op);
            }
            let Some((call, previous, tried)) = calls.pop() else {
                return SearchResult { found: Found::Violation, order: best_order, state: best_state, blocked, steps };
            };
            at_best = false;
            state = previous;
            linearized.clear(nodes[call].entry);
            returns_left += usize::from(entries[nodes[call].entry].returned_at.is_some());
            unlift(&mut nodes, call);
            if entries[nodes[call].entry].relaxed && tried == 0 {
                node = call;
                variant = 1;
            } else {
                node = nodes[call].next;
                variant = 0;
            }
        }
    }
}

/// The doubly linked list of call and return entries, with a sentinel head at
/// index 0.
fn build_list(entries: &[Entry]) -> Vec<Node> {
    // (time, 0 = call / 1 = return, entry)
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(entries.len() * 2);
    for (i, entry) in entries.iter().enumerate() {
        events.push((entry.invoked_at, 0, i));
        events.push((entry.returned_at.unwrap_or(u64::MAX), 1, i));
    }
    events.sort_unstable();
    let count = events.len();
    let mut nodes = Vec::with_capacity(count + 1);
    nodes.push(Node { entry: NIL, matching: NIL, prev: NIL, next: if count > 0 { 1 } else { NIL } });
    let mut return_node = vec![NIL; entries.len()];
    for (k, &(_, kind, entry)) in events.iter().enumerate() {
        let index = k + 1;
        if kind == 1 {
            return_node[entry] = index;
        }
        nodes.push(Node { entry, matching: NIL, prev: index - 1, next: if index < count { index + 1 } else { NIL } });
    }
    for (k, &(_, kind, entry)) in events.iter().enumerate() {
        if kind == 0 {
            nodes[k + 1].matching = return_node[entry];
        }
    }
    nodes
}

fn lift(nodes: &mut [Node], call: usize) {
    let (prev, next) = (nodes[call].prev, nodes[call].next);
    nodes[prev].next = next;
    nodes[next].prev = prev;
    let ret = nodes[call].matching;
    let (prev, next) = (nodes[ret].prev, nodes[ret].next);
    nodes[prev].next = next;
    if next != NIL {
        nodes[next].prev = prev;
    }
}

fn unlift(nodes: &mut [Node], call: usize) {
    let ret = nodes[call].matching;
    let (prev, next) = (nodes[ret].prev, nodes[ret].next);
    nodes[prev].next = ret;
    if next != NIL {
        nodes[next].prev = ret;
    }
    let (prev, next) = (nodes[call].prev, nodes[call].next);
    nodes[prev].next = call;
    nodes[next].prev = call;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register of integers: op i is either a write of `v` or a read that saw `v`.
    struct Register(Vec<(bool, i64)>);

    impl Model for Register {
        type State = i64;
        fn step(&self, state: &i64, op: usize, relaxed: bool) -> Option<i64> {
            let (write, value) = self.0[op];
            if write {
                Some(value)
            } else if relaxed || *state == value {
                Some(*state)
            } else {
                None
            }
        }
    }

    const LIMITS: Limits = Limits { steps: 1_000, cache_entries: 1_000 };

    fn entry(op: usize, invoked_at: u64, returned_at: Option<u64>) -> Entry {
        Entry { op, invoked_at, returned_at, relaxed: false }
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let model = Register(vec![(true, 1), (false, 0), (false, 1)]);
        let entries = [entry(0, 0, Some(10)), entry(1, 1, Some(2)), entry(2, 3, Some(4))];
        let result = search(&model, 0, &entries, LIMITS);
        assert!(matches!(result.found, Found::Linearizable));
        assert_eq!(result.order, vec![1, 0, 2]);
    }

    #[test]
    fn stale_read_is_a_violation_with_a_blocked_operation() {
        let model = Register(vec![(true, 1), (false, 0)]);
        let entries = [entry(0, 0, Some(1)), entry(1, 2, Some(3))];
        let result = search(&model, 0, &entries, LIMITS);
        assert!(matches!(result.found, Found::Violation));
        assert_eq!(result.order, vec![0]);
        assert_eq!(result.blocked, Some(1));
    }

    #[test]
    fn pending_write_may_take_effect_late_or_never() {
        // A write that never returned, then a read of the old value, then of the new one.
        let model = Register(vec![(true, 1), (false, 0), (false, 1)]);
        let late = [entry(0, 0, None), entry(1, 5, Some(6)), entry(2, 7, Some(8))];
        assert!(matches!(search(&model, 0, &late, LIMITS).found, Found::Linearizable));
        let never = [entry(0, 0, None), entry(1, 5, Some(6))];
        assert!(matches!(search(&model, 0, &never, LIMITS).found, Found::Linearizable));
        // But not before it was invoked.
        let early = [entry(2, 0, Some(1)), entry(0, 2, None)];
        assert!(matches!(search(&model, 0, &early, LIMITS).found, Found::Violation));
    }

    #[test]
    fn budget_is_respected() {
        let mut ops = Vec::new();
        let mut entries = Vec::new();
        for i in 0..40 {
            ops.push((true, i));
            entries.push(entry(i as usize, 0, Some(100)));
        }
        ops.push((false, -1));
        entries.push(entry(40, 0, Some(100)));
        let result = search(&Register(ops), 0, &entries, Limits { steps: 500, cache_entries: 100 });
        assert!(matches!(result.found, Found::BudgetExhausted));
        assert!(result.steps <= 500);
    }
}
