//! Model-based test: the lessor against a naive model that keeps every lease in a
//! plain map and answers every question by scanning and sorting, so the lessor's
//! indexes (key map, expiry queue, checkpoint queue with exact removal) are checked
//! against the obvious definition. Seeded; the seed is printed, and
//! `KETCH_SEED=<n>` replays one. Lease counts stay below the revoke rate, so
//! promotion's pile-up spreading (covered by unit tests) is not involved.

use std::collections::{BTreeMap, BTreeSet};

use ketch_lease::{Granted, LeaseError, LeaseRecord, Lessor, MAX_LEASE_TTL, Renewed, TimeToLive};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
struct MLease {
    ttl: i64,
    remaining: i64,
    keys: BTreeSet<Vec<u8>>,
    expiry: Option<u64>,
    queued: Option<u64>,
    anchor: Option<u64>,
}

struct Model {
    min_ttl: i64,
    leases: BTreeMap<i64, MLease>,
    primary: bool,
}

fn ms(secs: i64) -> u64 {
    secs.max(0) as u64 * 1000
}

impl Model {
    fn effective(l: &MLease) -> i64 {
        if l.remaining > 0 { l.remaining } else { l.ttl }
    }

    fn grant(&mut self, id: i64, ttl: i64, now: u64) -> Result<Granted, LeaseError> {
        if id == 0 {
            return Err(LeaseError::NotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(LeaseError::TtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(LeaseError::AlreadyExists);
        }
        let ttl = ttl.max(self.min_ttl);
        let (expiry, anchor) = if self.primary { (Some(now + ms(ttl)), Some(now)) } else { (None, None) };
        self.leases.insert(id, MLease { ttl, remaining: 0, keys: BTreeSet::new(), expiry, queued: expiry, anchor });
        Ok(Granted { id, ttl })
    }

    fn lease_of(&self, key: &[u8]) -> i64 {
        self.leases.iter().find(|(_, l)| l.keys.contains(key)).map(|(&id, _)| id).unwrap_or(0)
    }

    fn attach(&mut self, key: &[u8], id: i64) -> Result<(), LeaseError> {
        if id != 0 && !self.leases.contains_key(&id) {
            return Err(LeaseError::NotFound);
        }
        for l in self.leases.values_mut() {
            l.keys.remove(key);
        }
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.insert(key.to_vec());
        }
        Ok(())
    }

    fn promote(&mut self, now: u64, extend: u64) {
        self.primary = true;
        for l in self.leases.values_mut() {
            let e = now + extend + ms(Self::effective(l));
            l.expiry = Some(e);
            l.queued = Some(e);
            l.anchor = Some(now);
        }
    }

    fn demote(&mut self) {
        self.primary = false;
        for l in self.leases.values_mut() {
            l.expiry = None;
            l.queued = None;
            l.anchor = None;
        }
    }

    fn renew(&mut self, id: i64, now: u64) -> Result<Renewed, LeaseError> {
        if !self.primary {
            return Err(LeaseError::NotPrimary);
        }
        let l = self.leases.get_mut(&id).ok_or(LeaseError::NotFound)?;
        if now >= l.expiry.unwrap() {
            return Err(LeaseError::Expired);
        }
        l.expiry = Some(now + ms(l.ttl));
        l.queued = l.expiry;
        Ok(Renewed { ttl: l.ttl, clear_checkpoint: l.remaining > 0 })
    }

    fn time_to_live(&self, id: i64, now: u64) -> Result<TimeToLive, LeaseError> {
        if !self.primary {
            return Err(LeaseError::NotPrimary);
        }
        let l = self.leases.get(&id).ok_or(LeaseError::NotFound)?;
        let rem = l.expiry.unwrap() as i64 - now as i64;
        let remaining_secs = (rem as f64 / 1000.0).trunc() as i64;
        Ok(TimeToLive { remaining_secs, granted_secs: l.ttl, keys: l.keys.iter().cloned().collect() })
    }

    fn expired(&mut self, now: u64, limit: usize, retry: u64) -> Vec<i64> {
        if !self.primary {
            return Vec::new();
        }
        let mut due: Vec<(u64, i64)> =
            self.leases.iter().filter_map(|(&id, l)| l.queued.filter(|&q| q <= now).map(|q| (q, id))).collect();
        due.sort();
        due.truncate(limit);
        let mut out = Vec::new();
        for (_, id) in due {
            let l = self.leases.get_mut(&id).unwrap();
            assert!(now >= l.expiry.unwrap(), "model: queued before expiry");
            out.push(id);
            l.queued = Some(now + retry);
        }
        out
    }

    fn checkpoints_due(&mut self, now: u64, interval: u64, limit: usize) -> Vec<(i64, i64)> {
        if !self.primary || now < interval {
            return Vec::new();
        }
        let isecs = (interval / 1000) as i64;
        let mut due: Vec<(u64, i64)> = self
            .leases
            .iter()
            .filter_map(|(&id, l)| l.anchor.filter(|&a| a + interval <= now).map(|a| (a, id)))
            .collect();
        due.sort();
        let mut out = Vec::new();
        for (_, id) in due {
            if out.len() == limit {
                break;
            }
            let l = self.leases.get_mut(&id).unwrap();
            let expiry = l.expiry.unwrap();
            if now >= expiry || (l.ttl <= isecs && l.remaining <= isecs) {
                l.anchor = None;
                continue;
            }
            l.anchor = Some(now);
            let remaining = (expiry - now).div_ceil(1000) as i64;
            if Self::effective(l) > isecs && remaining < l.ttl {
                out.push((id, remaining));
            }
        }
        out
    }

    /// The earliest future time at which an expiry or a checkpoint falls due.
    fn next_event(&self, now: u64, interval: u64) -> Option<u64> {
        self.leases
            .values()
            .flat_map(|l| [l.queued, l.expiry, l.anchor.map(|a| a + interval)])
            .flatten()
            .filter(|&t| t > now)
            .min()
    }

    fn record(&self, id: i64) -> Option<LeaseRecord> {
        self.leases.get(&id).map(|l| LeaseRecord { id, ttl_secs: l.ttl, remaining_ttl_secs: l.remaining })
    }
}

const KEYS: &[&[u8]] = &[b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h"];

fn pick_id(rng: &mut StdRng) -> i64 {
    // Mostly a small set so operations collide; sometimes 0 or a negative ID.
    match rng.random_range(0..20) {
        0 => 0,
        1 => -rng.random_range(1..4),
        _ => rng.random_range(1..13),
    }
}

fn check_state(lessor: &Lessor, model: &Model, now: u64, ctx: &str) {
    assert_eq!(lessor.leases(), model.leases.keys().copied().collect::<Vec<_>>(), "{ctx}: leases");
    assert_eq!(lessor.is_primary(), model.primary, "{ctx}: primary");
    if let Err(e) = lessor.check_invariants() {
        panic!("{ctx}: {e}");
    }
    for &id in model.leases.keys() {
        let got = lessor.record(id).map(|b| LeaseRecord::from_bytes(&b).unwrap());
        assert_eq!(got, model.record(id), "{ctx}: record {id}");
        assert_eq!(lessor.time_to_live(id, now), model.time_to_live(id, now), "{ctx}: ttl {id}");
    }
    for key in KEYS {
        assert_eq!(lessor.lease_of(key), model.lease_of(key), "{ctx}: lease_of {key:?}");
    }
}

fn run(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let min_ttl = rng.random_range(1..5);
    let interval = rng.random_range(2..9) * 1000 + rng.random_range(0..2) * 500;
    let retry = rng.random_range(0..4) * 1000;
    let mut lessor = Lessor::new(min_ttl);
    let mut model = Model { min_ttl, leases: BTreeMap::new(), primary: false };
    let mut now: u64 = rng.random_range(0..1_000_000);
    for step in 0..steps {
        let ctx = format!("seed {seed} step {step} now {now}");
        now += match rng.random_range(0..5) {
            0 => 0,
            1 => rng.random_range(0..200),
            2 => {
                // Land exactly on (or just before) the next deadline, where
                // off-by-one errors live.
                let back = rng.random_range(0..2);
                model.next_event(now, interval).map_or(0, |t| (t - now).saturating_sub(back))
            }
            _ => rng.random_range(0..3000),
        };
        match rng.random_range(0..100) {
            0..15 => {
                let id = pick_id(&mut rng);
                let ttl = match rng.random_range(0..30) {
                    0 => MAX_LEASE_TTL + 1,
                    1 => -1,
                    _ => rng.random_range(0..25),
                };
                assert_eq!(lessor.grant(id, ttl, now), model.grant(id, ttl, now), "{ctx}: grant {id} {ttl}");
            }
            15..22 => {
                let id = pick_id(&mut rng);
                let want = model.leases.remove(&id).map(|l| l.keys.into_iter().collect()).ok_or(LeaseError::NotFound);
                assert_eq!(lessor.revoke(id), want, "{ctx}: revoke {id}");
            }
            22..40 => {
                let key = KEYS[rng.random_range(0..KEYS.len())];
                let id = if rng.random_range(0..5) == 0 { 0 } else { pick_id(&mut rng) };
                assert_eq!(lessor.attach(key, id), model.attach(key, id), "{ctx}: attach {key:?} {id}");
            }
            40..45 => {
                let key = KEYS[rng.random_range(0..KEYS.len())];
                lessor.detach(key);
                model.attach(key, 0).unwrap();
            }
            45..52 => {
                let id = pick_id(&mut rng);
                let rem = rng.random_range(-1..25);
                let want = match model.leases.get_mut(&id) {
                    Some(l) => {
                        l.remaining = rem.max(0);
                        true
                    }
                    None => false,
                };
                assert_eq!(lessor.checkpoint(id, rem), want, "{ctx}: checkpoint {id} {rem}");
            }
            52..55 => {
                let extend = rng.random_range(0..3000);
                lessor.promote(now, extend);
                model.promote(now, extend);
            }
            55..57 => {
                lessor.demote();
                model.demote();
            }
            57..72 => {
                let id = pick_id(&mut rng);
                assert_eq!(lessor.renew(id, now), model.renew(id, now), "{ctx}: renew {id}");
            }
            72..80 => {
                let id = pick_id(&mut rng);
                assert_eq!(lessor.time_to_live(id, now), model.time_to_live(id, now), "{ctx}: time_to_live {id}");
            }
            80..90 => {
                let limit = rng.random_range(0..5);
                assert_eq!(lessor.expired(now, limit, retry), model.expired(now, limit, retry), "{ctx}: expired");
            }
            90..97 => {
                let limit = rng.random_range(0..5);
                assert_eq!(
                    lessor.checkpoints_due(now, interval, limit),
                    model.checkpoints_due(now, interval, limit),
                    "{ctx}: checkpoints_due"
                );
            }
            _ => {
                // Restart: rebuild from records, re-attach keys, come back as a follower.
                let records: Vec<Vec<u8>> = lessor.leases().into_iter().filter_map(|id| lessor.record(id)).collect();
                let mut restored = Lessor::restore(records, min_ttl).expect("own records restore");
                for key in KEYS {
                    let id = lessor.lease_of(key);
                    if id != 0 {
                        restored.attach(key, id).expect("attached lease exists");
                    }
                }
                lessor = restored;
                model.demote();
            }
        }
        check_state(&lessor, &model, now, &ctx);
    }
}

#[test]
fn lessor_matches_model() {
    let seeds: Vec<u64> = match std::env::var("KETCH_SEED") {
        Ok(s) => vec![s.trim().parse().unwrap_or_else(|e| panic!("KETCH_SEED={s:?} is not a u64: {e}"))],
        Err(_) => {
            let base: u64 = rand::random();
            (0..16).map(|i| base.wrapping_add(i)).collect()
        }
    };
    for seed in seeds {
        println!("lease model seed {seed} (replay: KETCH_SEED={seed} cargo test -p ketch-lease --test model)");
        run(seed, 2000);
    }
}
