//! History checkers for an etcd-compatible key-value store.
//!
//! A test (a deterministic simulator, or real processes under fault
//! injection) records what its clients asked and saw; this crate decides
//! whether a correct etcd could have produced that. It knows nothing of how
//! the history was made: it is pure computation, with no I/O, no clock, no
//! threads and no async.
//!
//! # The model
//!
//! [`history`] holds the vocabulary: a [`History`] of [`Operation`]s, each a
//! [`Request`] (Range, Put, DeleteRange, Txn with compares and nested
//! operations, Compact, LeaseRevoke) with the instants it was invoked and
//! returned (any `u64` axis; only the order matters) and its [`Outcome`]:
//! `Ok(response)`, `Err` (a definite failure: no effect), or `Unknown` (a
//! timeout or crash: it may take effect at any point after its invocation, or
//! never). [`model::Store`] is the sequential specification: etcd 3.4's KV
//! semantics with the global revision (starting at 1, one more per request
//! that changed something), per-key create/mod revisions and versions,
//! historic reads and compaction. Its documentation lists the rules and where
//! in etcd each comes from.
//!
//! # The checkers
//!
//! * [`check_linearizable`]: is there one real-time-respecting order of the
//!   operations in which the model gives every recorded answer? A
//!   Wing–Gong/Lowe search with porcupine's memoization (described in
//!   [`linearizability`]), bounded by a step budget and a cache size: the
//!   answer is `Ok` with a witness order, `Violation` with the longest
//!   linearizable prefix, the operation it could not place, what the model
//!   would have answered, and a shrunk set of operations whose responses
//!   conflict, or `Inconclusive`. Exact, revisions across keys included;
//!   meant for histories of up to a few hundred operations with moderate
//!   concurrency.
//! * [`check_linearizable_per_key`]: the same search on each key's projection
//!   of the history, against a per-key model with versions and revisions as
//!   far as one key can know them. Sound (a violation is real) but weaker: it
//!   cannot see revision numbering across keys. For long histories.
//! * [`watch::check_watch`] / [`watch::check_watchers`]: etcd's watch
//!   guarantees (ordered, unique, reliable, atomic, resumable, bookmarkable,
//!   `prev_kv`), against a reference [`EventLog`] when there is one and across
//!   watchers in any case.
//! * [`convergence::check_convergence`] and
//!   [`convergence::check_state_convergence`]: members agree after healing.
//! * [`durability::check_durability`] and
//!   [`durability::check_durability_log`]: acknowledged writes survive;
//!   nothing appears that was not written; nothing is applied twice.
//!
//! # Making histories checkable
//!
//! As etcd's robustness tests do: write a unique value with every put (so a
//! read says which write it saw), keep the key space small (tens of keys) so
//! operations interact, record an `Unknown` outcome rather than guessing, and
//! never let a client retry a non-idempotent write behind the recorder's back.
//! Where the test can learn whether an unknown write was persisted (a member's
//! WAL), patching its outcome before checking makes the search much cheaper.
//!
//! # Limits
//!
//! Linearizability checking is NP-complete; the step budget turns a search
//! that would run too long into `Inconclusive`, and the cache limit bounds its
//! memory. Each unknown write may be placed anywhere after its invocation, so
//! many concurrent ones are the main cost of the full check (fourteen
//! concurrent unknown writes followed by an impossible read exhaust the
//! default budget: about 12 s in a debug build, under 300 MiB). Acknowledged
//! writes are cheap: their revisions pin them in the order. Leases are modelled
//! only as an attribute of keys and as LeaseRevoke deleting their keys; lease
//! existence and expiry timing are not. Watches are checked for their own
//! guarantees, not for timing against KV operations (etcd does not promise
//! that). Serializable (stale) reads are not linearizable by design: leave
//! them out of the history or check them separately.

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod convergence;
pub mod durability;
pub mod history;
pub mod linearizability;
pub mod model;
pub mod per_key;
pub mod watch;
mod wgl;

pub use history::{
    Compact, Compare, CompareResult, CompareTarget, DeleteRange, DeleteResult, Event, EventKind, Failure, History,
    HistoryError, KeyRange, KeyValue, LeaseRevoke, OpId, Operation, Outcome, Put, PutResult, Range, RangeResult,
    Request, Response, ResponseBody, Txn, TxnResult,
};
pub use linearizability::{
    CheckConfig, Inconclusive, Linearization, PerKeyLinearization, Verdict, Violation, check_linearizable,
    check_linearizable_per_key,
};
pub use watch::EventLog;
