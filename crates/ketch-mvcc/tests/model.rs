//! Model-based test: the store against a naive in-memory model that keeps a full
//! copy of the keyspace at every revision. Seeded; the seed is printed, and
//! `KETCH_SEED=<n>` replays one.

use std::collections::BTreeMap;

use ketch_mvcc::{EventKind, KeyValue, MvccError, RangeEnd, RangeOptions, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Default)]
struct Model {
    /// `history[r]` is the keyspace at revision `r` (index 0 unused).
    history: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compact_rev: i64,
}

impl Model {
    fn new() -> Model {
        Model { history: vec![BTreeMap::new(), BTreeMap::new()], compact_rev: -1 }
    }
    fn rev(&self) -> i64 {
        (self.history.len() - 1) as i64
    }
    fn in_range(key: &[u8], start: &[u8], end: &RangeEnd) -> bool {
        match end {
            RangeEnd::Single => key == start,
            RangeEnd::Unbounded => key >= start,
            RangeEnd::Before(e) => key >= start && key < e.as_slice(),
        }
    }
    fn range(&self, start: &[u8], end: &RangeEnd, opts: RangeOptions) -> Result<(Vec<KeyValue>, i64), MvccError> {
        let cur = self.rev();
        if opts.rev > cur {
            return Err(MvccError::FutureRev);
        }
        let at = if opts.rev <= 0 { cur } else { opts.rev };
        if at < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        let all: Vec<KeyValue> =
            self.history[at as usize].values().filter(|kv| Self::in_range(&kv.key, start, end)).cloned().collect();
        let count = all.len() as i64;
        let mut kvs = if opts.count_only { Vec::new() } else { all };
        if opts.limit > 0 {
            kvs.truncate(opts.limit);
        }
        Ok((kvs, count))
    }
    /// Applies puts and deletes as one request.
    fn write(&mut self, ops: &[(Vec<u8>, Option<Vec<u8>>)]) {
        let mut next = self.history.last().cloned().unwrap_or_default();
        let rev = self.rev() + 1;
        let mut changed = false;
        for (key, value) in ops {
            match value {
                Some(v) => {
                    let (create, version) = match next.get(key) {
                        Some(kv) => (kv.create_revision, kv.version + 1),
                        None => (rev, 1),
                    };
                    next.insert(
                        key.clone(),
                        KeyValue {
                            key: key.clone(),
                            value: v.clone(),
                            create_revision: create,
                            mod_revision: rev,
                            version,
                            lease: 0,
                        },
                    );
                    changed = true;
                }
                None => changed |= next.remove(key).is_some(),
            }
        }
        if changed {
            self.history.push(next);
        }
    }
}

fn key(rng: &mut StdRng) -> Vec<u8> {
    format!("k{}", rng.random_range(0..12)).into_bytes()
}

fn end(rng: &mut StdRng) -> RangeEnd {
    match rng.random_range(0..4) {
        0 => RangeEnd::Single,
        1 => RangeEnd::Unbounded,
        _ => RangeEnd::Before(key(rng)),
    }
}

fn run(seed: u64, steps: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut store = Store::open(&path).unwrap();
    let mut model = Model::new();
    let mut rng = StdRng::seed_from_u64(seed);
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step}");
        match rng.random_range(0..100) {
            0..35 => {
                let (k, v) = (key(&mut rng), format!("v{step}").into_bytes());
                let mut b = store.batch().unwrap();
                let mut t = b.txn();
                t.put(&k, &v, 0).unwrap();
                t.end();
                b.commit(&[], false).unwrap();
                model.write(&[(k, Some(v))]);
            }
            35..50 => {
                let (k, e) = (key(&mut rng), end(&mut rng));
                let mut b = store.batch().unwrap();
                let mut t = b.txn();
                let (deleted, _) = t.delete_range(&k, &e).unwrap();
                t.end();
                b.commit(&[], false).unwrap();
                let victims: Vec<_> =
                    model.history.last().unwrap().keys().filter(|x| Model::in_range(x, &k, &e)).cloned().collect();
                assert_eq!(deleted, victims, "{ctx}");
                model.write(&victims.into_iter().map(|k| (k, None)).collect::<Vec<_>>());
            }
            50..60 => {
                // A multi-write request: two puts and a delete share one revision.
                let ops = vec![
                    (key(&mut rng), Some(b"a".to_vec())),
                    (b"z1".to_vec(), Some(b"b".to_vec())),
                    (b"z2".to_vec(), None),
                ];
                let mut b = store.batch().unwrap();
                let mut t = b.txn();
                for (k, v) in &ops {
                    match v {
                        Some(v) => {
                            t.put(k, v, 0).unwrap();
                        }
                        None => {
                            t.delete_range(k, &RangeEnd::Single).unwrap();
                        }
                    }
                }
                t.end();
                b.commit(&[], false).unwrap();
                model.write(&ops);
            }
            60..63 => {
                let at = rng.random_range(-1..=model.rev() + 1);
                let mut b = store.batch().unwrap();
                let got = b.compact(at).map(|_| ());
                b.commit(&[], false).unwrap();
                let want = if at <= model.compact_rev {
                    Err(MvccError::Compacted)
                } else if at > model.rev() {
                    Err(MvccError::FutureRev)
                } else {
                    model.compact_rev = at;
                    Ok(())
                };
                assert_eq!(format!("{got:?}"), format!("{want:?}"), "{ctx}");
            }
            63..65 => {
                drop(store);
                store = Store::open(&path).unwrap();
            }
            65..70 if model.rev() > model.compact_rev.max(1) => {
                // History replays as events: each revision's changes, in key order.
                let r = rng.random_range(model.compact_rev.max(1) + 1..=model.rev());
                let (events, last) = store.read().unwrap().events(r, r, usize::MAX).unwrap();
                assert_eq!(last, r, "{ctx}");
                let (before, after) = (&model.history[r as usize - 1], &model.history[r as usize]);
                let mut want: Vec<(EventKind, KeyValue)> = Vec::new();
                let keys: std::collections::BTreeSet<&Vec<u8>> = before.keys().chain(after.keys()).collect();
                for k in keys {
                    match (before.get(k), after.get(k)) {
                        (_, Some(kv)) if kv.mod_revision == r => want.push((EventKind::Put, kv.clone())),
                        (Some(_), None) => want.push((
                            EventKind::Delete,
                            KeyValue { key: k.clone(), mod_revision: r, ..Default::default() },
                        )),
                        _ => {}
                    }
                }
                let mut got: Vec<(EventKind, KeyValue)> = events.into_iter().map(|e| (e.kind, e.kv)).collect();
                got.sort_by(|a, b| a.1.key.cmp(&b.1.key));
                assert_eq!(got, want, "{ctx}: events at revision {r}");
            }
            _ => {
                let (k, e) = (key(&mut rng), end(&mut rng));
                let opts = RangeOptions {
                    limit: rng.random_range(0..4),
                    rev: rng.random_range(-1..=model.rev() + 1),
                    count_only: rng.random_bool(0.1),
                };
                let got = store.read().unwrap().range(&k, &e, opts).map(|r| {
                    assert_eq!(r.rev, model.rev(), "{ctx}");
                    (r.kvs, r.count)
                });
                let want = model.range(&k, &e, opts);
                assert_eq!(format!("{got:?}"), format!("{want:?}"), "{ctx}: range {k:?} {e:?} {opts:?}");
            }
        }
        assert_eq!(store.current_revision(), model.rev(), "{ctx}");
    }
}

#[test]
fn store_matches_model() {
    let seeds: Vec<u64> = match std::env::var("KETCH_SEED") {
        Ok(s) => vec![s.parse().expect("KETCH_SEED is a number")],
        Err(_) => {
            let base: u64 = rand::random();
            (0..8).map(|i| base.wrapping_add(i)).collect()
        }
    };
    for seed in seeds {
        println!("mvcc model seed {seed} (replay: KETCH_SEED={seed} cargo test -p ketch-mvcc --test model)");
        run(seed, 600);
    }
}
