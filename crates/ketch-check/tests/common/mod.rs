//! Shared test helpers: terse history builders for hand-written cases, and a
//! generator of random concurrent histories from a correct sequential
//! execution (optionally with one injected store bug).

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;

use ketch_check::model::Store;
use ketch_check::{
    Compact, Compare, CompareResult, CompareTarget, DeleteRange, Failure, History, KeyRange, KeyValue, LeaseRevoke,
    OpId, Operation, Outcome, Put, Range, Request, Response,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Seeds for a randomized test: `KETCH_SEED` alone, or `count` fresh ones.
pub fn seeds(count: u64) -> Vec<u64> {
    match std::env::var("KETCH_SEED") {
        Ok(s) => vec![s.trim().parse().expect("KETCH_SEED is a u64")],
        Err(_) => {
            let base: u64 = rand::random();
            (0..count).map(|i| base.wrapping_add(i)).collect()
        }
    }
}

pub fn kv(key: &str, value: &str, create: i64, modified: i64, version: i64) -> KeyValue {
    KeyValue::new(key, value, create, modified, version)
}

/// Appends an operation.
pub fn op(history: &mut History, client: u64, at: (u64, u64), request: Request, outcome: Outcome) -> OpId {
    history.push(Operation { client, invoked_at: at.0, returned_at: at.1, request, outcome })
}

/// An acknowledged put at `revision`.
pub fn put(history: &mut History, client: u64, at: (u64, u64), key: &str, value: &str, revision: i64) -> OpId {
    op(history, client, at, Request::put(key, value), Outcome::Ok(Response::put(revision)))
}

/// A put whose outcome is unknown.
pub fn put_unknown(history: &mut History, client: u64, invoked_at: u64, key: &str, value: &str) -> OpId {
    op(history, client, (invoked_at, invoked_at + 1), Request::put(key, value), Outcome::Unknown)
}

/// A single-key get that saw `found` at header `revision`.
pub fn get(
    history: &mut History,
    client: u64,
    at: (u64, u64),
    key: &str,
    found: Option<KeyValue>,
    revision: i64,
) -> OpId {
    op(history, client, at, Request::get(key), Outcome::Ok(Response::range(revision, found.into_iter().collect())))
}

/// A bug the simulated store commits once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// A read of a key answered from before a write that completed before the
    /// read was invoked (a consistent old snapshot, header included).
    StaleRead,
    /// A put acknowledged with the next revision but never applied.
    LostWrite,
    /// A put applied twice, acknowledged once.
    DuplicateWrite,
    /// A put acknowledged with a revision one too high.
    SkippedRevision,
    /// A put acknowledged with the previous request's revision.
    ReusedRevision,
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct Gen {
    pub clients: usize,
    pub ops: usize,
    pub keys: usize,
    /// Percent of applied operations whose client never hears back, and of
    /// invoked ones that time out before being applied.
    pub unknown_percent: u32,
    pub txns: bool,
    pub multi_key: bool,
    pub historic: bool,
    pub leases: bool,
    pub fault: Fault,
}

impl Gen {
    pub fn small(fault: Fault) -> Gen {
        Gen {
            clients: 4,
            ops: 120,
            keys: 4,
            unknown_percent: 4,
            txns: true,
            multi_key: true,
            historic: true,
            leases: true,
            fault,
        }
    }
}

pub struct Generated {
    pub history: History,
    /// The store's true final state.
    pub store: Store,
    /// Whether the fault was injected (some seeds give it no chance).
    pub faulted: bool,
}

enum Phase {
    Idle,
    Invoked,
    Applied(Result<Response, Failure>),
}

struct Client {
    phase: Phase,
    op: OpId,
    request: Request,
    /// For a single-key read: the revision of the last write of that key that
    /// completed before the read was invoked.
    floor: i64,
}

struct Sim<'a> {
    rng: &'a mut StdRng,
    spec: &'a Gen,
    store: Store,
    history: History,
    time: u64,
    values: u64,
    /// Per key, the revision of the latest acknowledged write of it.
    completed: BTreeMap<Vec<u8>, i64>,
    fault_pending: bool,
    /// The operation the fault was committed on.
    fault_op: Option<OpId>,
}

/// Generates a history: clients invoke random requests, a single sequential
/// store applies them one at a time at random moments between invocation and
/// return, some clients time out (their requests may still be applied later,
/// or never), some requests are rejected. A final read of every key, after
/// everything else, makes the effect of every injected fault observable.
pub fn generate(seed: u64, spec: &Gen) -> Generated {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sim = Sim {
        rng: &mut rng,
        spec,
        store: Store::new(),
        history: History::new(),
        time: 0,
        values: 0,
        completed: BTreeMap::new(),
        fault_pending: spec.fault != Fault::None,
        fault_op: None,
    };
    let mut clients: Vec<Client> = (0..spec.clients)
        .map(|_| Client { phase: Phase::Idle, op: OpId(0), request: Request::get("k0"), floor: 0 })
        .collect();
    let mut limbo: Vec<(OpId, Request)> = Vec::new();
    let mut issued = 0;
    loop {
        let idle: Vec<usize> = (0..clients.len()).filter(|&c| matches!(clients[c].phase, Phase::Idle)).collect();
        if issued >= spec.ops && idle.len() == clients.len() {
            break;
        }
        sim.time += 1;
        let c = sim.rng.random_range(0..clients.len());
        match clients[c].phase {
            Phase::Idle => {
                if issued >= spec.ops {
                    continue;
                }
                issued += 1;
                let request = sim.request();
                let floor = match &request {
                    Request::Range(range) if range.range.is_single() && range.revision == 0 => {
                        sim.completed.get(&range.range.key).copied().unwrap_or(0)
                    }
                    _ => 0,
                };
                let op = sim.history.invoke(c as u64, sim.time, request.clone());
                clients[c] = Client { phase: Phase::Invoked, op, request, floor };
            }
            Phase::Invoked => {
                let roll = sim.rng.random_range(0..100);
                if roll < spec.unknown_percent {
                    // Timeout before the store saw it: it may be applied later, or never.
                    sim.history.complete(clients[c].op, sim.time, Outcome::Unknown);
                    limbo.push((clients[c].op, clients[c].request.clone()));
                    clients[c].phase = Phase::Idle;
                } else if roll < spec.unknown_percent + 2 {
                    let failure = Failure::Rejected("etcdserver: too many requests".into());
                    sim.history.complete(clients[c].op, sim.time, Outcome::Err(failure));
                    clients[c].phase = Phase::Idle;
                } else {
                    let answer = sim.apply(clients[c].op, &clients[c].request, clients[c].floor);
                    clients[c].phase = Phase::Applied(answer);
                }
            }
            Phase::Applied(_) => {
                let Phase::Applied(answer) = std::mem::replace(&mut clients[c].phase, Phase::Idle) else {
                    unreachable!()
                };
                let outcome = if sim.rng.random_range(0..100) < spec.unknown_percent {
                    Outcome::Unknown
                } else {
                    match answer {
                        Ok(response) => {
                            sim.note_completed(&clients[c].request, &response);
                            Outcome::Ok(response)
                        }
                        Err(failure) => Outcome::Err(failure),
                    }
                };
                sim.history.complete(clients[c].op, sim.time, outcome);
            }
        }
        if !limbo.is_empty() && sim.rng.random_range(0..100) < 3 {
            let (_, request) = limbo.swap_remove(sim.rng.random_range(0..limbo.len()));
            let _ = sim.store.apply(&request);
        }
    }
    for (_, request) in limbo {
        if sim.rng.random_bool(0.5) {
            let _ = sim.store.apply(&request);
        }
    }
    // The final audit read of everything.
    sim.time += 1;
    let audit = sim.history.invoke(0, sim.time, Request::range(KeyRange::all()));
    let response = sim.store.apply(&Request::range(KeyRange::all())).expect("a current read succeeds");
    sim.history.complete(audit, sim.time + 1, Outcome::Ok(response));
    // A fault whose client never heard back may have left no trace.
    let answered = sim.fault_op.is_some_and(|op| !matches!(sim.history.get(op).outcome, Outcome::Unknown));
    let faulted = spec.fault != Fault::None && !sim.fault_pending && answered;
    Generated { history: sim.history, store: sim.store, faulted }
}

impl Sim<'_> {
    fn key(&mut self) -> Vec<u8> {
        format!("k{}", self.rng.random_range(0..self.spec.keys)).into_bytes()
    }

    fn value(&mut self) -> Vec<u8> {
        self.values += 1;
        format!("v{}", self.values).into_bytes()
    }

    fn request(&mut self) -> Request {
        loop {
            let roll = self.rng.random_range(0..100);
            let request = match roll {
                0..30 => {
                    let (key, value) = (self.key(), self.value());
                    let lease =
                        if self.spec.leases && self.rng.random_bool(0.1) { self.rng.random_range(1..3) } else { 0 };
                    Request::Put(Put { key, value, lease, prev_kv: self.rng.random_bool(0.2) })
                }
                30..55 => Request::get(self.key()),
                55..62 => Request::DeleteRange(DeleteRange {
                    range: KeyRange::single(self.key()),
                    prev_kv: self.rng.random_bool(0.3),
                }),
                62..70 if self.spec.multi_key => {
                    let range = if self.rng.random_bool(0.5) { KeyRange::all() } else { KeyRange::new("k1", "k3") };
                    let limit = if self.rng.random_bool(0.2) { 2 } else { 0 };
                    Request::Range(Range { range, revision: 0, limit })
                }
                70..85 if self.spec.txns => self.cas(),
                85..90 if self.spec.txns && self.spec.multi_key => {
                    let (a, b) = (self.key(), self.key());
                    if a == b {
                        continue; // etcd refuses a txn that writes a key twice
                    }
                    let value = self.value();
                    let cmp = Compare::new(self.key(), CompareTarget::Version(0), CompareResult::Greater);
                    Request::txn(
                        vec![cmp],
                        vec![Request::Put(Put { key: a, value, lease: 0, prev_kv: false }), Request::delete(b.clone())],
                        vec![Request::get(b)],
                    )
                }
                90..95 if self.spec.historic => {
                    let current = self.store.revision();
                    let revision = self.rng.random_range(1..=current + 1);
                    Request::get_at(self.key(), revision)
                }
                95..97 if self.spec.historic => {
                    let current = self.store.revision();
                    let revision = self.rng.random_range(1..=current);
                    Request::Compact(Compact { revision })
                }
                97..100 if self.spec.leases => Request::LeaseRevoke(LeaseRevoke { lease: self.rng.random_range(1..3) }),
                _ => continue,
            };
            return request;
        }
    }

    /// A compare-and-set on a key, on a guess from the current state that may
    /// be stale by the time it is applied.
    fn cas(&mut self) -> Request {
        let key = self.key();
        let current = self.store.get(&key).cloned();
        let target = match (self.rng.random_range(0..4), &current) {
            (0, Some(kv)) => CompareTarget::ModRevision(kv.mod_revision),
            (1, Some(kv)) => CompareTarget::Version(kv.version),
            (2, Some(kv)) => CompareTarget::Value(kv.value.clone()),
            (3, Some(kv)) => CompareTarget::CreateRevision(kv.create_revision),
            _ => CompareTarget::CreateRevision(0),
        };
        let value = self.value();
        let put = Request::Put(Put { key: key.clone(), value, lease: 0, prev_kv: false });
        Request::txn(vec![Compare::new(key.clone(), target, CompareResult::Equal)], vec![put], vec![Request::get(key)])
    }

    fn note_completed(&mut self, request: &Request, response: &Response) {
        fn keys(request: &Request, out: &mut Vec<Vec<u8>>) {
            match request {
                Request::Put(put) => out.push(put.key.clone()),
                Request::DeleteRange(delete) if delete.range.is_single() => out.push(delete.range.key.clone()),
                Request::Txn(txn) => txn.success.iter().chain(&txn.failure).for_each(|r| keys(r, out)),
                _ => {}
            }
        }
        if !request.may_write() {
            return;
        }
        let mut written = Vec::new();
        keys(request, &mut written);
        for key in written {
            // Whether it wrote this key or not, everything at or below this
            // revision is applied; only puts and deletes of the key matter for
            // staleness, and the read's answer at `revision - 1` differs from the
            // key's state at `revision` only if this request wrote the key. Keep
            // it exact: record only what certainly changed the key.
            if let Some(kv) = self.store.get(&key)
                && kv.mod_revision == response.revision
            {
                let entry = self.completed.entry(key).or_default();
                *entry = (*entry).max(response.revision);
            }
        }
    }

    /// Applies a request, committing the fault if it is due and fits.
    fn apply(&mut self, op: OpId, request: &Request, floor: i64) -> Result<Response, Failure> {
        let due = self.fault_pending && self.history.len() > self.spec.ops / 4;
        if due {
            self.fault_op = Some(op);
            match (self.spec.fault, request) {
                (Fault::StaleRead, Request::Range(range))
                    if range.range.is_single()
                        && range.revision == 0
                        && floor > 1
                        && floor > self.store.compacted_revision() =>
                {
                    self.fault_pending = false;
                    let mut response = self.store.apply(&Request::get_at(range.range.key.clone(), floor - 1))?;
                    response.revision = floor - 1;
                    return Ok(response);
                }
                (Fault::LostWrite, Request::Put(_)) => {
                    self.fault_pending = false;
                    return Ok(Response::put(self.store.revision() + 1));
                }
                (Fault::DuplicateWrite, Request::Put(put)) if !put.prev_kv => {
                    self.fault_pending = false;
                    let response = self.store.apply(request);
                    let _ = self.store.apply(request);
                    return response;
                }
                (Fault::SkippedRevision, Request::Put(_)) => {
                    self.fault_pending = false;
                    let mut response = self.store.apply(request)?;
                    response.revision += 1;
                    return Ok(response);
                }
                (Fault::ReusedRevision, Request::Put(_)) => {
                    self.fault_pending = false;
                    let mut response = self.store.apply(request)?;
                    response.revision -= 1;
                    return Ok(response);
                }
                _ => {}
            }
        }
        self.store.apply(request)
    }
}
