//! Durability: every acknowledged write is still there at the end, unless
//! something that ran later replaced or deleted it, and nothing is there that
//! no operation wrote.
//!
//! Two forms, by what the test can read back at the end:
//!
//! * [`check_durability`] takes a final read of the whole keyspace
//!   ([`FinalState`]: its revision and live pairs). For each acknowledged put
//!   of `k = v` at revision `R`: the store's revision is at least `R`; if `k`'s
//!   final `mod_revision` is `R` its value is `v`; if it is below `R`, or `k`
//!   is gone or newer without any operation that could have changed `k` after
//!   `R`, the write was lost. An acknowledged delete must not be undone by an
//!   older pair. Every live pair must come from some put of the history (or the
//!   initial state), at its acknowledged revision when known. A key's
//!   `version` counts the puts of its current generation, so it must lie
//!   between the acknowledged puts to it within `[create_revision,
//!   mod_revision]` and those plus every unknown put to it: a higher version
//!   means a write was applied twice.
//! * [`check_durability_log`] takes a member's event history ([`EventLog`],
//!   e.g. every revision read back after the run, or a watch from the first
//!   revision). Stronger: every revision in it must be present (none skipped),
//!   claimed by at most one acknowledged write, hold exactly that write's
//!   changes, and revisions no acknowledged write claims must be explainable by
//!   an operation with an unknown outcome. A `(key, value)` appearing in more
//!   revisions than operations wrote it was applied twice (tests should write
//!   unique values for this).
//!
//! "Could have changed `k`": an acknowledged operation at a higher revision
//! that put or deleted `k` (or deleted a range with unknown keys around `k`, or
//! revoked a lease `k` was put with), or any operation with an unknown outcome
//! that might do so in either branch. Unknown outcomes therefore weaken the
//! check for the keys they touch; that is inherent.
//!
//! Compaction does not matter to the final state (the latest pairs survive
//! it); revisions below an [`EventLog`]'s first revision are not checked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::history::{Bytes, Event, EventKind, History, KeyRange, KeyValue, OpId, Outcome, Request, ResponseBody};
use crate::linearizability::CheckConfig;
use crate::watch::EventLog;

/// A final read of the whole keyspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalState {
    /// The header revision of the read.
    pub revision: i64,
    /// Every live pair.
    pub kvs: Vec<KeyValue>,
}

/// A durability problem, tied to the operation it concerns when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurabilityViolation {
    /// The acknowledged operation concerned.
    pub op: Option<OpId>,
    /// What is wrong.
    pub kind: DurabilityViolationKind,
}

/// The kinds of [`DurabilityViolation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DurabilityViolationKind {
    /// The store's revision is below an acknowledged write's.
    RevisionBehind {
        /// The write's revision.
        revision: i64,
        /// The store's.
        store_revision: i64,
    },
    /// An acknowledged put is gone and nothing that ran later explains it.
    LostWrite {
        /// The key.
        key: Vec<u8>,
        /// The value written.
        value: Vec<u8>,
        /// The write's revision.
        revision: i64,
        /// What the store holds for the key instead.
        found: Option<KeyValue>,
    },
    /// The store holds something else at the acknowledged revision.
    WrongValue {
        /// The key.
        key: Vec<u8>,
        /// The value written.
        expected: Vec<u8>,
        /// What the store holds.
        found: KeyValue,
    },
    /// An acknowledged delete undone: the key is back with an older pair.
    Resurrected {
        /// The key.
        key: Vec<u8>,
        /// The delete's revision.
        revision: i64,
        /// The pair that came back.
        found: KeyValue,
    },
    /// A pair (or a change in the log) that no operation can have written.
    Phantom {
        /// The change: a put event of the pair, or a delete event.
        event: Event,
    },
    /// A key's version counts more puts than the history has: some put was
    /// applied twice.
    VersionTooHigh {
        /// The pair.
        kv: KeyValue,
        /// Puts that may have written this generation.
        puts_max: i64,
    },
    /// A key's version counts fewer puts than were acknowledged for this
    /// generation.
    VersionTooLow {
        /// The pair.
        kv: KeyValue,
        /// Acknowledged puts in the generation.
        acknowledged: i64,
    },
    /// The event log is malformed (a skipped revision, events out of order).
    BrokenLog {
        /// What is wrong.
        reason: String,
    },
    /// Two acknowledged writes reported the same revision.
    RevisionReused {
        /// The revision.
        revision: i64,
        /// The other operation.
        other: OpId,
    },
    /// A `(key, value)` put was applied more times than operations wrote it.
    Duplicated {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// Revisions where it appears.
        revisions: Vec<i64>,
    },
    /// A revision of the log that no operation of the history explains.
    UnexplainedRevision {
        /// The revision.
        revision: i64,
    },
}

impl fmt::Display for DurabilityViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(op) = self.op {
            write!(f, "{op}: ")?;
        }
        let show = |kv: &Option<KeyValue>| kv.as_ref().map_or("absent".to_string(), |kv| kv.to_string());
        match &self.kind {
            DurabilityViolationKind::RevisionBehind { revision, store_revision } => {
                write!(f, "acknowledged at revision {revision} but the store is at {store_revision}")
            }
            DurabilityViolationKind::LostWrite { key, value, revision, found } => write!(
                f,
                "lost write {}={} at revision {revision}; the store holds {}",
                Bytes(key),
                Bytes(value),
                show(found)
            ),
            DurabilityViolationKind::WrongValue { key, expected, found } => {
                write!(f, "{} at its write's revision holds {found}, expected value {}", Bytes(key), Bytes(expected))
            }
            DurabilityViolationKind::Resurrected { key, revision, found } => {
                write!(f, "{} deleted at revision {revision} is back as {found}", Bytes(key))
            }
            DurabilityViolationKind::Phantom { event } => write!(f, "no operation explains {event}"),
            DurabilityViolationKind::VersionTooHigh { kv, puts_max } => {
                write!(f, "{kv}: version above the {puts_max} puts that may have written it (a duplicated write)")
            }
            DurabilityViolationKind::VersionTooLow { kv, acknowledged } => {
                write!(f, "{kv}: version below the {acknowledged} acknowledged puts of this generation")
            }
            DurabilityViolationKind::BrokenLog { reason } => write!(f, "broken event log: {reason}"),
            DurabilityViolationKind::RevisionReused { revision, other } => {
                write!(f, "revision {revision} also reported by {other}")
            }
            DurabilityViolationKind::Duplicated { key, value, revisions } => {
                write!(f, "{}={} applied at revisions {revisions:?}, more often than written", Bytes(key), Bytes(value))
            }
            DurabilityViolationKind::UnexplainedRevision { revision } => {
                write!(f, "no operation explains revision {revision}")
            }
        }
    }
}

/// What an acknowledged operation did, as far as its response tells.
#[derive(Default)]
struct Effects {
    puts: Vec<(Vec<u8>, Vec<u8>, i64)>,
    /// Keys whose last change in this operation is a delete (a transaction may
    /// put a key and then delete it: the put does not survive its own request).
    deleted_last: Vec<Vec<u8>>,
    /// Keys known deleted.
    deletes: Vec<Vec<u8>>,
    /// Ranges that deleted something, keys unknown.
    delete_ranges: Vec<KeyRange>,
    /// Leases revoked (keys unknown).
    revoked: Vec<i64>,
}

impl Effects {
    /// Whether the response proves the operation created a revision.
    fn bumped(&self) -> bool {
        !self.puts.is_empty() || !self.deletes.is_empty() || !self.delete_ranges.is_empty()
    }

    fn collect(&mut self, request: &Request, body: &ResponseBody) {
        match (request, body) {
            (Request::Put(put), ResponseBody::Put(_)) => {
                self.deleted_last.retain(|key| *key != put.key);
                self.puts.push((put.key.clone(), put.value.clone(), put.lease));
            }
            (Request::DeleteRange(delete), ResponseBody::DeleteRange(result)) if result.deleted > 0 => {
                let earlier: Vec<Vec<u8>> =
                    self.puts.iter().map(|p| p.0.clone()).filter(|key| delete.range.contains(key)).collect();
                self.deleted_last.extend(earlier);
                if delete.prev_kv {
                    self.deletes.extend(result.prev_kvs.iter().map(|kv| kv.key.clone()));
                } else if delete.range.is_single() {
                    self.deletes.push(delete.range.key.clone());
                } else {
                    self.delete_ranges.push(delete.range.clone());
                }
            }
            (Request::Txn(txn), ResponseBody::Txn(result)) => {
                let branch = if result.succeeded { &txn.success } else { &txn.failure };
                for (inner, inner_body) in branch.iter().zip(&result.responses) {
                    self.collect(inner, inner_body);
                }
            }
            (Request::LeaseRevoke(revoke), ResponseBody::LeaseRevoke) => self.revoked.push(revoke.lease),
            _ => {}
        }
    }
}

struct Acked {
    op: OpId,
    revision: i64,
    effects: Effects,
}

/// The history, digested for the durability checks.
struct Digest<'a> {
    history: &'a History,
    acked: Vec<Acked>,
    unknown: Vec<OpId>,
    /// For each key, the leases it was ever put with.
    leases: HashMap<Vec<u8>, BTreeSet<i64>>,
}

impl<'a> Digest<'a> {
    fn new(history: &'a History) -> Digest<'a> {
        let mut acked = Vec::new();
        let mut unknown = Vec::new();
        let mut leases: HashMap<Vec<u8>, BTreeSet<i64>> = HashMap::new();
        for (id, op) in history.iter() {
            for_each_put(&op.request, &mut |key, _, lease| {
                if lease != 0 {
                    leases.entry(key.to_vec()).or_default().insert(lease);
                }
            });
            match &op.outcome {
                Outcome::Ok(response) => {
                    let mut effects = Effects::default();
                    effects.collect(&op.request, &response.body);
                    acked.push(Acked { op: id, revision: response.revision, effects });
                }
                Outcome::Unknown if op.request.may_write() => unknown.push(id),
                _ => {}
            }
        }
        Digest { history, acked, unknown, leases }
    }

    fn had_lease(&self, key: &[u8], lease: i64) -> bool {
        self.leases.get(key).is_some_and(|leases| leases.contains(&lease))
    }

    /// Whether an acknowledged effect set changes `key`.
    fn effects_change(&self, effects: &Effects, key: &[u8]) -> bool {
        effects.puts.iter().any(|(k, _, _)| k == key)
            || effects.deletes.iter().any(|k| k == key)
            || effects.delete_ranges.iter().any(|range| range.contains(key))
            || effects.revoked.iter().any(|&lease| self.had_lease(key, lease))
    }

    /// Whether a request might change `key` in some branch.
    fn may_change(&self, request: &Request, key: &[u8]) -> bool {
        match request {
            Request::Put(put) => put.key == key,
            Request::DeleteRange(delete) => delete.range.contains(key),
            Request::Txn(txn) => txn.success.iter().chain(&txn.failure).any(|inner| self.may_change(inner, key)),
            Request::LeaseRevoke(revoke) => self.had_lease(key, revoke.lease),
            Request::Range(_) | Request::Compact(_) => false,
        }
    }

    /// Whether anything may have changed `key` after revision `after`.
    fn changed_after(&self, key: &[u8], after: i64) -> bool {
        self.acked.iter().any(|a| a.revision > after && self.effects_change(&a.effects, key))
            || self.unknown.iter().any(|&id| self.may_change(&self.history.get(id).request, key))
    }

    /// Unknown operations that may put `key = value`.
    fn unknown_puts(&self, key: &[u8], value: Option<&[u8]>) -> i64 {
        let mut count = 0;
        for &id in &self.unknown {
            for_each_put(&self.history.get(id).request, &mut |k, v, _| {
                if k == key && value.is_none_or(|value| value == v) {
                    count += 1;
                }
            });
        }
        count
    }
}

fn for_each_put(request: &Request, f: &mut impl FnMut(&[u8], &[u8], i64)) {
    match request {
        Request::Put(put) => f(&put.key, &put.value, put.lease),
        Request::Txn(txn) => txn.success.iter().chain(&txn.failure).for_each(|inner| for_each_put(inner, f)),
        _ => {}
    }
}

/// Checks acknowledged writes against a final read of the keyspace; see the
/// module documentation. `config` supplies the initial state.
#[must_use]
pub fn check_durability(history: &History, state: &FinalState, config: &CheckConfig) -> Vec<DurabilityViolation> {
    let digest = Digest::new(history);
    let live: BTreeMap<&[u8], &KeyValue> = state.kvs.iter().map(|kv| (kv.key.as_slice(), kv)).collect();
    let mut out = Vec::new();
    let mut violation = |op: Option<OpId>, kind| out.push(DurabilityViolation { op, kind });

    for acked in &digest.acked {
        let revision = acked.revision;
        if acked.effects.bumped() && revision > state.revision {
            violation(
                Some(acked.op),
                DurabilityViolationKind::RevisionBehind { revision, store_revision: state.revision },
            );
        }
        for (key, value, lease) in &acked.effects.puts {
            if acked.effects.deleted_last.contains(key) {
                continue;
            }
            let found = live.get(key.as_slice()).copied();
            let lost = match found {
                Some(kv) if kv.mod_revision == revision => {
                    if kv.value != *value || kv.lease != *lease {
                        let kind = DurabilityViolationKind::WrongValue {
                            key: key.clone(),
                            expected: value.clone(),
                            found: kv.clone(),
                        };
                        violation(Some(acked.op), kind);
                    }
                    false
                }
                Some(kv) if kv.mod_revision < revision => true,
                // The same value at a later revision: not lost, though something
                // must explain that revision (checked with the live pairs below).
                Some(kv) if kv.value == *value => false,
                _ => !digest.changed_after(key, revision),
            };
            if lost {
                violation(
                    Some(acked.op),
                    DurabilityViolationKind::LostWrite {
                        key: key.clone(),
                        value: value.clone(),
                        revision,
                        found: found.cloned(),
                    },
                );
            }
        }
        for key in &acked.effects.deletes {
            if let Some(kv) = live.get(key.as_slice())
                && kv.mod_revision < revision
            {
                let kind = DurabilityViolationKind::Resurrected { key: key.clone(), revision, found: (*kv).clone() };
                violation(Some(acked.op), kind);
            }
        }
    }

    let initial: BTreeMap<&[u8], &KeyValue> = config.initial_kvs.iter().map(|kv| (kv.key.as_slice(), kv)).collect();
    for kv in &state.kvs {
        let explained = initial.get(kv.key.as_slice()) == Some(&kv)
            || digest.acked.iter().any(|a| {
                a.revision == kv.mod_revision && a.effects.puts.iter().any(|(k, v, _)| *k == kv.key && *v == kv.value)
            })
            || digest.unknown_puts(&kv.key, Some(&kv.value)) > 0;
        if !explained {
            violation(None, DurabilityViolationKind::Phantom { event: Event::put(kv.clone(), None) });
        }
        if kv.create_revision <= config.initial_revision {
            continue;
        }
        let acknowledged = digest
            .acked
            .iter()
            .filter(|a| (kv.create_revision..=kv.mod_revision).contains(&a.revision))
            .map(|a| a.effects.puts.iter().filter(|(k, _, _)| *k == kv.key).count() as i64)
            .sum::<i64>();
        let puts_max = acknowledged + digest.unknown_puts(&kv.key, None);
        if kv.version > puts_max && puts_max > 0 {
            violation(None, DurabilityViolationKind::VersionTooHigh { kv: kv.clone(), puts_max });
        } else if kv.version < acknowledged {
            violation(None, DurabilityViolationKind::VersionTooLow { kv: kv.clone(), acknowledged });
        }
    }
    out
}

/// Checks acknowledged writes against a member's event history; see the
/// module documentation.
#[must_use]
pub fn check_durability_log(history: &History, log: &EventLog) -> Vec<DurabilityViolation> {
    let digest = Digest::new(history);
    let mut out = Vec::new();
    let mut violation = |op: Option<OpId>, kind| out.push(DurabilityViolation { op, kind });
    if let Err(reason) = log.validate() {
        violation(None, DurabilityViolationKind::BrokenLog { reason });
    }
    let mut by_revision: BTreeMap<i64, Vec<&Event>> = BTreeMap::new();
    for event in &log.events {
        by_revision.entry(event.revision()).or_default().push(event);
    }

    let mut claimed: BTreeMap<i64, OpId> = BTreeMap::new();
    for acked in digest.acked.iter().filter(|a| a.effects.bumped()) {
        let revision = acked.revision;
        if let Some(&other) = claimed.get(&revision) {
            violation(Some(acked.op), DurabilityViolationKind::RevisionReused { revision, other });
            continue;
        }
        claimed.insert(revision, acked.op);
        if revision > log.last_revision {
            let kind = DurabilityViolationKind::RevisionBehind { revision, store_revision: log.last_revision };
            violation(Some(acked.op), kind);
            continue;
        }
        if revision < log.first_revision {
            continue;
        }
        let events = by_revision.get(&revision).map(Vec::as_slice).unwrap_or_default();
        for (key, value, lease) in &acked.effects.puts {
            let found = events.iter().find(|e| e.kind == EventKind::Put && e.kv.key == *key);
            match found {
                Some(event) if event.kv.value == *value && event.kv.lease == *lease => {}
                Some(event) => {
                    let kind = DurabilityViolationKind::WrongValue {
                        key: key.clone(),
                        expected: value.clone(),
                        found: event.kv.clone(),
                    };
                    violation(Some(acked.op), kind);
                }
                None => {
                    let kind = DurabilityViolationKind::LostWrite {
                        key: key.clone(),
                        value: value.clone(),
                        revision,
                        found: None,
                    };
                    violation(Some(acked.op), kind);
                }
            }
        }
        for event in events.iter() {
            if !digest.effects_change(&acked.effects, &event.kv.key) {
                violation(Some(acked.op), DurabilityViolationKind::Phantom { event: (*event).clone() });
            }
        }
    }

    // Revisions no acknowledged write claims must come from an unknown write, or
    // an acknowledged one whose response cannot tell whether it wrote.
    for (&revision, events) in &by_revision {
        if claimed.contains_key(&revision) {
            continue;
        }
        let explains = |request: &Request| {
            events.iter().all(|event| match event.kind {
                EventKind::Put => {
                    let mut puts = false;
                    for_each_put(request, &mut |k, v, _| puts |= k == event.kv.key && v == event.kv.value);
                    puts
                }
                EventKind::Delete => digest.may_change(request, &event.kv.key),
            })
        };
        let unclaimed_acked = digest.acked.iter().filter(|a| a.revision == revision && !a.effects.bumped());
        let explained = digest.unknown.iter().any(|&id| explains(&history.get(id).request))
            || unclaimed_acked.into_iter().any(|a| explains(&history.get(a.op).request));
        if !explained {
            violation(None, DurabilityViolationKind::UnexplainedRevision { revision });
        }
    }

    // A unique put applied more often than it was written.
    let mut applied: BTreeMap<(&[u8], &[u8]), Vec<i64>> = BTreeMap::new();
    for event in log.events.iter().filter(|e| e.kind == EventKind::Put) {
        applied.entry((&event.kv.key, &event.kv.value)).or_default().push(event.revision());
    }
    let mut written: HashMap<(Vec<u8>, Vec<u8>), i64> = HashMap::new();
    for (_, op) in history.iter() {
        for_each_put(&op.request, &mut |k, v, _| *written.entry((k.to_vec(), v.to_vec())).or_default() += 1);
    }
    for ((key, value), revisions) in applied {
        let times = written.get(&(key.to_vec(), value.to_vec())).copied().unwrap_or(0);
        if times > 0 && revisions.len() as i64 > times {
            let kind = DurabilityViolationKind::Duplicated { key: key.to_vec(), value: value.to_vec(), revisions };
            violation(None, kind);
        }
    }
    out
}
