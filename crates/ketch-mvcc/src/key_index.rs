//! The in-memory key index: for each key, the revisions at which it changed.
//!
//! A key's history is a list of *generations*. A generation starts when the key is
//! created and ends with a tombstone when it is deleted; the next put starts a new
//! generation. Example (etcd's own): key `foo` put at 1.0, 2.0, deleted at 3.0, put
//! at 4.0 and 5.0 has
//!
//! ```text
//! generations:
//!     {empty}                      <- the live, not-yet-created generation after a tombstone
//!     {4.0, 5.0(t)}                <- (only if deleted again)
//!     {1.0, 2.0, 3.0(t)}
//! ```
//!
//! Compacting at revision `r` keeps, per key, the largest revision `<= r` (so reads
//! at any revision `>= r` still see the key) unless that revision is a tombstone, in
//! which case the whole generation goes. Every rule here mirrors etcd's `keyIndex`
//! so that versions and create revisions come out identical.

use std::collections::{BTreeMap, HashSet};

use crate::store::Revision;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generation {
    /// Number of puts in this generation, including compacted ones.
    pub ver: i64,
    /// Revision at which this generation was created.
    pub created: Revision,
    /// Revisions still present; the last one is a tombstone when the generation is closed.
    pub revs: Vec<Revision>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// Index of the last revision whose main is `<= at`, if any.
    fn last_at_or_before(&self, at: i64) -> Option<usize> {
        self.revs.iter().rposition(|r| r.main <= at)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyIndex {
    pub modified: Revision,
    pub generations: Vec<Generation>,
}

/// What a point lookup found: the revision holding the key's value, its creation
/// revision and its version at the asked revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub modified: Revision,
    pub created: Revision,
    pub version: i64,
}

impl KeyIndex {
    fn put(&mut self, rev: Revision) {
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let g = self.generations.last_mut().expect("pushed above");
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
        self.modified = rev;
    }

    /// Restores a key first seen (after compaction) at `modified`, with the
    /// creation revision and version recorded in its value.
    fn restore(&mut self, created: Revision, modified: Revision, ver: i64) {
        self.modified = modified;
        self.generations = vec![Generation { ver, created, revs: vec![modified] }];
    }

    fn tombstone(&mut self, rev: Revision) {
        self.put(rev);
        self.generations.push(Generation::default());
    }

    fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    fn find_generation(&self, at: i64) -> Option<&Generation> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            if g.is_empty() {
                continue;
            }
            if i != last {
                let tomb = g.revs[g.revs.len() - 1].main;
                if tomb <= at {
                    return None;
                }
            }
            if g.revs[0].main <= at {
                return Some(g);
            }
        }
        None
    }

    pub fn get(&self, at: i64) -> Option<Found> {
        let g = self.find_generation(at)?;
        let n = g.last_at_or_before(at)?;
        let after = i64::try_from(g.revs.len() - n - 1).unwrap_or(i64::MAX);
        Some(Found { modified: g.revs[n], created: g.created, version: g.ver - after })
    }

    /// etcd's `keyIndex.keep`: the revision a compaction at `at` would keep for
    /// this key, without compacting (nothing for a tombstone).
    fn keep(&self, at: i64, keep: &mut HashSet<Revision>) {
        if self.generations.is_empty() || self.is_empty() {
            return;
        }
        let mut gen_idx = 0;
        while gen_idx < self.generations.len() - 1 {
            let g = &self.generations[gen_idx];
            if g.revs[g.revs.len() - 1].main > at {
                break;
            }
            gen_idx += 1;
        }
        let g = &self.generations[gen_idx];
        if let Some(i) = g.last_at_or_before(at) {
            let tombstone = i == g.revs.len() - 1 && gen_idx != self.generations.len() - 1;
            if !tombstone {
                keep.insert(g.revs[i]);
            }
        }
    }

    /// etcd's `keyIndex.compact`: keeps what reads at `at` and later need, records
    /// the revisions to keep in `keep`.
    fn compact(&mut self, at: i64, keep: &mut HashSet<Revision>) {
        if self.generations.is_empty() {
            return;
        }
        let mut gen_idx = 0;
        while gen_idx < self.generations.len() - 1 {
            let g = &self.generations[gen_idx];
            let tomb = g.revs[g.revs.len() - 1].main;
            if tomb > at {
                break;
            }
            gen_idx += 1;
        }
        let last = self.generations.len() - 1;
        let g = &mut self.generations[gen_idx];
        if !g.is_empty() {
            if let Some(i) = g.last_at_or_before(at) {
                keep.insert(g.revs[i]);
                g.revs.drain(..i);
            }
            // A lone tombstone left at the head of a closed generation goes too.
            if g.revs.len() == 1 && gen_idx != last {
                keep.remove(&g.revs[0]);
                gen_idx += 1;
            }
        }
        self.generations.drain(..gen_idx);
    }
}

/// The index over all keys, ordered by key bytes.
#[derive(Debug, Default, Clone)]
pub struct TreeIndex {
    keys: BTreeMap<Vec<u8>, KeyIndex>,
}

impl TreeIndex {
    pub fn put(&mut self, key: &[u8], rev: Revision) {
        match self.keys.get_mut(key) {
            Some(ki) => ki.put(rev),
            None => {
                let mut ki = KeyIndex::default();
                ki.put(rev);
                self.keys.insert(key.to_vec(), ki);
            }
        }
    }

    /// Records a delete; the caller has checked the key is live.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) {
        if let Some(ki) = self.keys.get_mut(key) {
            ki.tombstone(rev);
        }
    }

    /// Used while rebuilding from the backend: a put of a key not yet indexed.
    pub fn restore(&mut self, key: &[u8], created: Revision, modified: Revision, ver: i64) {
        let mut ki = KeyIndex::default();
        ki.restore(created, modified, ver);
        self.keys.insert(key.to_vec(), ki);
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.keys.contains_key(key)
    }

    pub fn get(&self, key: &[u8], at: i64) -> Option<Found> {
        self.keys.get(key)?.get(at)
    }

    /// Visits the keys in `[start, end)` (`end = None` means no upper bound) that
    /// are live at revision `at`, in key order, until `f` returns false.
    pub fn visit_range<'a>(
        &'a self,
        start: &[u8],
        end: Option<&[u8]>,
        at: i64,
        mut f: impl FnMut(&'a [u8], Found) -> bool,
    ) {
        if let Some(end) = end
            && end <= start
        {
            return;
        }
        for (key, ki) in self.keys.range(start.to_vec()..) {
            if let Some(end) = end
                && key.as_slice() >= end
            {
                break;
            }
            if let Some(found) = ki.get(at)
                && !f(key, found)
            {
                break;
            }
        }
    }

    /// Compacts every key at `at`; returns the revisions `<= at` that must be kept.
    pub fn compact(&mut self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        self.keys.retain(|_, ki| {
            ki.compact(at, &mut keep);
            !ki.is_empty() && !ki.generations.is_empty()
        });
        keep
    }

    /// The revisions a compaction at `at` would keep (etcd's `treeIndex.Keep`).
    pub fn keep(&self, at: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        for ki in self.keys.values() {
            ki.keep(at, &mut keep);
        }
        keep
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision { main, sub: 0 }
    }

    #[test]
    fn versions_and_generations_follow_etcd() {
        let mut ti = TreeIndex::default();
        ti.put(b"foo", r(2));
        ti.put(b"foo", r(3));
        ti.tombstone(b"foo", r(4));
        ti.put(b"foo", r(5));
        assert_eq!(ti.get(b"foo", 1), None);
        assert_eq!(ti.get(b"foo", 3).map(|f| (f.version, f.created.main)), Some((2, 2)));
        assert_eq!(ti.get(b"foo", 4), None);
        assert_eq!(ti.get(b"foo", 5).map(|f| (f.version, f.created.main)), Some((1, 5)));
    }

    #[test]
    fn compaction_keeps_what_later_reads_need() {
        let mut ti = TreeIndex::default();
        ti.put(b"a", r(2));
        ti.put(b"a", r(3));
        ti.put(b"b", r(4));
        ti.tombstone(b"b", r(5));
        let keep = ti.compact(4);
        assert!(keep.contains(&r(3)) && keep.contains(&r(4)) && !keep.contains(&r(2)));
        assert_eq!(ti.get(b"a", 4).map(|f| f.version), Some(2));
        let keep = ti.compact(5);
        assert!(!keep.contains(&r(5)));
        assert!(!ti.contains(b"b"));
    }
}
