//! Convergence: after the faults heal and the cluster settles, every member
//! holds the same store.
//!
//! This is the check etcd's corruption detection makes (`HashKV` compared at
//! one revision across members) and the one that would have caught the v3.5.0
//! data inconsistency, where a member skipped an entry after a crash and
//! silently diverged. Two forms:
//!
//! * [`check_convergence`] compares digests: revision, compaction revision and
//!   a hash of the history (etcd's `HashKV` is a CRC32; any digest widened to
//!   `u64` works). Digests must be taken at the same revision to be comparable,
//!   which after healing means every member's current revision.
//! * [`check_state_convergence`] compares the live key-values themselves and
//!   names the first keys that differ.
//!
//! Both compare every member with the first one. Call them only once the
//! cluster has had time to converge (a simulator's liveness phase, or a
//! real-process test that waited for every member to reach the leader's
//! revision): a lagging member is reported as diverged.

use std::collections::BTreeMap;
use std::fmt;

use crate::history::{Bytes, KeyValue};

/// One member's digest of its store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDigest {
    /// Member name or id, for reports.
    pub member: String,
    /// Its store revision.
    pub revision: i64,
    /// Its compaction revision.
    pub compact_revision: i64,
    /// A hash of its history up to `revision` (etcd `HashKV`).
    pub hash: u64,
}

/// One member's live key-values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberState {
    /// Member name or id, for reports.
    pub member: String,
    /// Its store revision.
    pub revision: i64,
    /// Every live key-value (a full-keyspace range read).
    pub kvs: Vec<KeyValue>,
}

/// A member that differs from the first member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// The member compared against (the first).
    pub reference_member: String,
    /// The member that differs.
    pub member: String,
    /// How.
    pub kind: DivergenceKind,
}

/// How a member differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DivergenceKind {
    /// Different store revisions.
    Revision {
        /// The first member's.
        expected: i64,
        /// This member's.
        found: i64,
    },
    /// Different compaction revisions.
    CompactRevision {
        /// The first member's.
        expected: i64,
        /// This member's.
        found: i64,
    },
    /// Same revision and compaction, different hash.
    Hash {
        /// The revision both are at.
        revision: i64,
        /// The first member's.
        expected: u64,
        /// This member's.
        found: u64,
    },
    /// A key differs (absent on one side, or with different fields).
    Key {
        /// The key.
        key: Vec<u8>,
        /// The first member's pair.
        expected: Option<KeyValue>,
        /// This member's.
        found: Option<KeyValue>,
    },
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "member {} differs from {}: ", self.member, self.reference_member)?;
        match &self.kind {
            DivergenceKind::Revision { expected, found } => write!(f, "revision {found}, expected {expected}"),
            DivergenceKind::CompactRevision { expected, found } => {
                write!(f, "compaction revision {found}, expected {expected}")
            }
            DivergenceKind::Hash { revision, expected, found } => {
                write!(f, "hash {found:#x} at revision {revision}, expected {expected:#x}")
            }
            DivergenceKind::Key { key, expected, found } => {
                let show = |kv: &Option<KeyValue>| kv.as_ref().map_or("absent".to_string(), |kv| kv.to_string());
                write!(f, "key {}: {}, expected {}", Bytes(key), show(found), show(expected))
            }
        }
    }
}

/// Compares every member's digest with the first member's.
#[must_use]
pub fn check_convergence(members: &[MemberDigest]) -> Vec<Divergence> {
    let Some((first, rest)) = members.split_first() else { return Vec::new() };
    let mut out = Vec::new();
    for member in rest {
        let mut differ = |kind| {
            out.push(Divergence { reference_member: first.member.clone(), member: member.member.clone(), kind });
        };
        if member.revision != first.revision {
            differ(DivergenceKind::Revision { expected: first.revision, found: member.revision });
        } else if member.compact_revision != first.compact_revision {
            differ(DivergenceKind::CompactRevision {
                expected: first.compact_revision,
                found: member.compact_revision,
            });
        } else if member.hash != first.hash {
            differ(DivergenceKind::Hash { revision: first.revision, expected: first.hash, found: member.hash });
        }
    }
    out
}

/// At most this many differing keys are reported per member: enough to see
/// the pattern, bounded for a store that diverged completely.
const KEY_DIFFERENCES_MAX: usize = 16;

/// Compares every member's live key-values (and revision) with the first
/// member's, reporting up to 16 differing keys per member.
#[must_use]
pub fn check_state_convergence(members: &[MemberState]) -> Vec<Divergence> {
    let Some((first, rest)) = members.split_first() else { return Vec::new() };
    let reference: BTreeMap<&[u8], &KeyValue> = first.kvs.iter().map(|kv| (kv.key.as_slice(), kv)).collect();
    let mut out = Vec::new();
    for member in rest {
        let mut differ = |kind| {
            out.push(Divergence { reference_member: first.member.clone(), member: member.member.clone(), kind });
        };
        if member.revision != first.revision {
            differ(DivergenceKind::Revision { expected: first.revision, found: member.revision });
        }
        let theirs: BTreeMap<&[u8], &KeyValue> = member.kvs.iter().map(|kv| (kv.key.as_slice(), kv)).collect();
        let mut keys: Vec<&[u8]> = reference.keys().chain(theirs.keys()).copied().collect();
        keys.sort_unstable();
        keys.dedup();
        let differing = keys.into_iter().filter(|key| reference.get(key) != theirs.get(key));
        for key in differing.take(KEY_DIFFERENCES_MAX) {
            differ(DivergenceKind::Key {
                key: key.to_vec(),
                expected: reference.get(key).map(|kv| (*kv).clone()),
                found: theirs.get(key).map(|kv| (*kv).clone()),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(member: &str, revision: i64, hash: u64) -> MemberDigest {
        MemberDigest { member: member.to_string(), revision, compact_revision: 0, hash }
    }

    #[test]
    fn equal_members_converge() {
        let members = [digest("a", 10, 7), digest("b", 10, 7), digest("c", 10, 7)];
        assert!(check_convergence(&members).is_empty());
        assert!(check_convergence(&[]).is_empty());
    }

    #[test]
    fn diverged_members_are_named() {
        let members = [digest("a", 10, 7), digest("b", 10, 8), digest("c", 9, 7)];
        let found = check_convergence(&members);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].member, "b");
        assert!(matches!(found[0].kind, DivergenceKind::Hash { revision: 10, .. }));
        assert!(matches!(found[1].kind, DivergenceKind::Revision { expected: 10, found: 9 }));
        let mut compacted = digest("d", 10, 7);
        compacted.compact_revision = 5;
        let found = check_convergence(&[digest("a", 10, 7), compacted]);
        assert!(matches!(found[0].kind, DivergenceKind::CompactRevision { .. }));
    }

    #[test]
    fn state_divergence_names_the_keys() {
        let kv = |k: &str, v: &str, rev| KeyValue::new(k, v, rev, rev, 1);
        let a = MemberState { member: "a".into(), revision: 4, kvs: vec![kv("x", "1", 2), kv("y", "2", 3)] };
        let b = MemberState { member: "b".into(), revision: 4, kvs: vec![kv("x", "1", 2), kv("y", "3", 3)] };
        let c = MemberState { member: "c".into(), revision: 4, kvs: vec![kv("x", "1", 2)] };
        assert!(check_state_convergence(&[a.clone(), a.clone()]).is_empty());
        let found = check_state_convergence(&[a, b, c]);
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|d| matches!(&d.kind, DivergenceKind::Key { key, .. } if key == b"y")));
        assert!(found[1].to_string().contains("absent"));
    }
}
