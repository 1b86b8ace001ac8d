//! Seeded randomized tests: random concurrent histories generated from a
//! correct sequential execution must pass every checker; the same histories
//! with one injected store bug (or one read answer swapped for a stale one)
//! must be caught. Each seed is printed; `KETCH_SEED=<n>` replays one.

mod common;

use common::{Fault, Gen, Generated, generate, seeds};
use ketch_check::durability::{FinalState, check_durability, check_durability_log};
use ketch_check::watch::{WatchResponse, WatchSpec, WatchStream, Watcher, check_watch};
use ketch_check::{
    CheckConfig, Event, EventLog, History, KeyRange, Operation, Outcome, Request, Response, ResponseBody, Verdict,
    check_linearizable, check_linearizable_per_key,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A generous search budget; a small shrinking budget, since these tests only
/// need detection (the hand-written tests check the explanations).
fn config() -> CheckConfig {
    CheckConfig { step_budget: 20_000_000, minimize_step_budget: 200_000, ..CheckConfig::default() }
}

fn final_state(generated: &Generated) -> FinalState {
    FinalState { revision: generated.store.revision(), kvs: generated.store.kvs().cloned().collect() }
}

#[track_caller]
fn expect_ok<W>(what: &str, seed: u64, history: &History, verdict: Verdict<W>) {
    match verdict {
        Verdict::Ok(_) => {}
        Verdict::Violation(v) => {
            panic!(
                "seed {seed} (KETCH_SEED={seed}): {what} rejected a valid history:\n{}\n{history:?}",
                v.explain(history)
            )
        }
        Verdict::Inconclusive(i) => {
            panic!("seed {seed} (KETCH_SEED={seed}): {what} inconclusive after {} steps", i.steps)
        }
    }
}

#[test]
fn correct_histories_pass_every_checker() {
    for seed in seeds(12) {
        println!("correct_histories_pass_every_checker: seed {seed} (KETCH_SEED={seed} replays)");
        let generated = generate(seed, &Gen::small(Fault::None));
        let history = &generated.history;
        expect_ok("the full check", seed, history, check_linearizable(history, &config()).unwrap());
        expect_ok("the per-key check", seed, history, check_linearizable_per_key(history, &config()).unwrap());
        let found = check_durability(history, &final_state(&generated), &config());
        assert!(found.is_empty(), "seed {seed}: durability: {}\n{history:?}", found[0]);
        let found = check_durability_log(history, &EventLog::from_store(&generated.store, 1));
        assert!(found.is_empty(), "seed {seed}: durability log: {}\n{history:?}", found[0]);
    }
}

#[test]
fn long_single_key_histories_pass_the_per_key_check() {
    for seed in seeds(4) {
        println!("long_single_key_histories_pass_the_per_key_check: seed {seed} (KETCH_SEED={seed} replays)");
        let spec = Gen {
            clients: 6,
            ops: 3_000,
            keys: 10,
            unknown_percent: 2,
            txns: true,
            multi_key: false,
            historic: false,
            leases: false,
            fault: Fault::None,
        };
        let generated = generate(seed, &spec);
        let history = &generated.history;
        expect_ok("the per-key check", seed, history, check_linearizable_per_key(history, &config()).unwrap());
    }
}

/// Injects each store bug; the full check must catch every one that was
/// injected, the per-key check every stale read, the durability log check
/// every lost or duplicated write.
///
/// Without unknown outcomes: an unknown write may legitimately mask some of
/// these bugs (a write applied twice looks like an unknown write to the same
/// key that nobody read before it was overwritten). A stale read is never
/// masked, so it is also injected with unknown outcomes around.
#[test]
fn injected_store_bugs_are_caught() {
    let faults = [
        (Fault::StaleRead, 4),
        (Fault::StaleRead, 0),
        (Fault::LostWrite, 0),
        (Fault::DuplicateWrite, 0),
        (Fault::SkippedRevision, 0),
        (Fault::ReusedRevision, 0),
    ];
    for seed in seeds(6) {
        for (fault, unknown_percent) in faults {
            println!(
                "injected_store_bugs_are_caught: seed {seed} fault {fault:?} unknown {unknown_percent}% \
                 (KETCH_SEED={seed} replays)"
            );
            let generated = generate(seed, &Gen { unknown_percent, ..Gen::small(fault) });
            if !generated.faulted {
                continue;
            }
            let history = &generated.history;
            let verdict = check_linearizable(history, &config()).unwrap();
            assert!(
                verdict.violation().is_some(),
                "seed {seed} (KETCH_SEED={seed}): the full check missed {fault:?}\n{history:?}"
            );
            let core = &verdict.violation().unwrap().ops;
            assert!(!core.is_empty() && core.len() < history.len());
            if fault == Fault::StaleRead {
                let verdict = check_linearizable_per_key(history, &config()).unwrap();
                assert!(verdict.violation().is_some(), "seed {seed}: the per-key check missed a stale read");
            }
            if matches!(fault, Fault::LostWrite | Fault::DuplicateWrite) {
                let found = check_durability_log(history, &EventLog::from_store(&generated.store, 1));
                assert!(!found.is_empty(), "seed {seed}: the durability log check missed {fault:?}");
            }
        }
    }
}

/// Replaces one read's answer with the answer it would have had just before a
/// write of its key that completed before the read was invoked.
fn plant_stale_read(generated: &Generated, rng: &mut StdRng) -> Option<History> {
    let ops = generated.history.ops();
    let mut candidates = Vec::new();
    for (r, read) in ops.iter().enumerate() {
        let (Request::Range(range), Outcome::Ok(_)) = (&read.request, &read.outcome) else { continue };
        if !range.range.is_single() || range.revision != 0 {
            continue;
        }
        for write in ops {
            let (Request::Put(put), Outcome::Ok(response)) = (&write.request, &write.outcome) else { continue };
            if put.key == range.range.key && write.returned_at < read.invoked_at && response.revision > 1 {
                candidates.push((r, response.revision - 1));
            }
        }
    }
    if candidates.is_empty() {
        return None;
    }
    let (r, stale_revision) = candidates[rng.random_range(0..candidates.len())];
    let read = &ops[r];
    let Request::Range(range) = &read.request else { unreachable!() };
    let kvs: Vec<_> = generated.store.kvs_at(stale_revision)?.filter(|kv| kv.key == range.range.key).cloned().collect();
    let mut planted: History = ops.iter().cloned().collect();
    let stale = Operation { outcome: Outcome::Ok(Response::range(stale_revision, kvs)), ..read.clone() };
    let mut all: Vec<Operation> = planted.ops().to_vec();
    all[r] = stale;
    planted = all.into_iter().collect();
    Some(planted)
}

#[test]
fn swapped_stale_read_results_are_caught() {
    for seed in seeds(10) {
        println!("swapped_stale_read_results_are_caught: seed {seed} (KETCH_SEED={seed} replays)");
        let generated = generate(seed, &Gen::small(Fault::None));
        let mut rng = StdRng::seed_from_u64(seed ^ 0x57a1e);
        let Some(planted) = plant_stale_read(&generated, &mut rng) else { continue };
        let verdict = check_linearizable(&planted, &config()).unwrap();
        assert!(verdict.violation().is_some(), "seed {seed}: the full check missed a swapped stale read");
        let verdict = check_linearizable_per_key(&planted, &config()).unwrap();
        assert!(verdict.violation().is_some(), "seed {seed}: the per-key check missed a swapped stale read");
    }
}

/// Moves an acknowledged put's response revision one up or down: a history no
/// store can produce (without unknown outcomes, which could mask it).
#[test]
fn tampered_write_responses_are_caught() {
    for seed in seeds(6) {
        println!("tampered_write_responses_are_caught: seed {seed} (KETCH_SEED={seed} replays)");
        let generated = generate(seed, &Gen { unknown_percent: 0, ..Gen::small(Fault::None) });
        let mut rng = StdRng::seed_from_u64(seed ^ 0x7a3e);
        let mut ops: Vec<Operation> = generated.history.ops().to_vec();
        let puts: Vec<usize> = (0..ops.len())
            .filter(|&i| matches!((&ops[i].request, &ops[i].outcome), (Request::Put(_), Outcome::Ok(_))))
            .collect();
        if puts.is_empty() {
            continue;
        }
        let i = puts[rng.random_range(0..puts.len())];
        let Outcome::Ok(Response { revision, body: ResponseBody::Put(_) }) = &mut ops[i].outcome else {
            unreachable!()
        };
        *revision += if rng.random_bool(0.5) { 1 } else { -1 };
        let tampered: History = ops.into_iter().collect();
        let verdict = check_linearizable(&tampered, &config()).unwrap();
        assert!(verdict.violation().is_some(), "seed {seed}: the full check missed a tampered put revision");
    }
}

/// Without unknown outcomes the witness order determines every revision, so
/// replaying it must give exactly the store's events.
#[test]
fn witness_replays_to_the_store_events() {
    for seed in seeds(6) {
        println!("witness_replays_to_the_store_events: seed {seed} (KETCH_SEED={seed} replays)");
        let generated = generate(seed, &Gen { unknown_percent: 0, ..Gen::small(Fault::None) });
        let Verdict::Ok(witness) = check_linearizable(&generated.history, &config()).unwrap() else {
            panic!("seed {seed}: a correct history must be linearizable");
        };
        let replayed = witness.event_log(&generated.history, &config());
        assert_eq!(replayed, EventLog::from_store(&generated.store, 1), "seed {seed}");
    }
}

/// A random, correct delivery of `log` to a watcher of `spec` from `start`:
/// random batches of whole revisions, a revision sometimes split into
/// fragments, a progress notification at the end.
fn deliver(log: &EventLog, spec: &WatchSpec, start: i64, rng: &mut StdRng) -> WatchStream {
    let mut revisions: Vec<Vec<Event>> = Vec::new();
    for event in log.events.iter().filter(|e| e.revision() >= start && spec.accepts(e)) {
        let event = Event { prev_kv: if spec.prev_kv { event.prev_kv.clone() } else { None }, ..event.clone() };
        match revisions.last_mut() {
            Some(last) if last[0].revision() == event.revision() => last.push(event),
            _ => revisions.push(vec![event]),
        }
    }
    let mut responses = Vec::new();
    let mut rest = &revisions[..];
    while !rest.is_empty() {
        let take = rng.random_range(1..=rest.len().min(3));
        let events: Vec<Event> = rest[..take].concat();
        rest = &rest[take..];
        if events.len() > 1 && rng.random_bool(0.2) {
            let cut = rng.random_range(1..events.len());
            let mut head = WatchResponse::events(log.last_revision, events[..cut].to_vec());
            head.fragment = true;
            responses.push(head);
            responses.push(WatchResponse::events(log.last_revision, events[cut..].to_vec()));
        } else {
            responses.push(WatchResponse::events(log.last_revision, events));
        }
    }
    responses.push(WatchResponse { revision: log.last_revision, ..WatchResponse::default() });
    WatchStream { start_revision: start, responses }
}

fn random_spec(rng: &mut StdRng) -> WatchSpec {
    let range = match rng.random_range(0..3) {
        0 => KeyRange::all(),
        1 => KeyRange::single(format!("k{}", rng.random_range(0..4))),
        _ => KeyRange::new("k1", "k3"),
    };
    WatchSpec { range, prev_kv: rng.random_bool(0.5), filter_put: false, filter_delete: rng.random_bool(0.2) }
}

/// Plants one watch bug; returns its name, or `None` if the stream offers no
/// place for it.
fn plant_watch_bug(stream: &mut WatchStream, rng: &mut StdRng) -> Option<&'static str> {
    let with_events: Vec<usize> =
        (0..stream.responses.len()).filter(|&i| !stream.responses[i].events.is_empty()).collect();
    if with_events.is_empty() {
        return None;
    }
    let r = with_events[rng.random_range(0..with_events.len())];
    match rng.random_range(0..5) {
        0 => {
            let e = rng.random_range(0..stream.responses[r].events.len());
            stream.responses[r].events.remove(e);
            Some("gap")
        }
        1 => {
            let copy = stream.responses[r].clone();
            let at = rng.random_range(r + 1..=stream.responses.len() - 1);
            stream.responses.insert(at, WatchResponse { fragment: false, ..copy });
            Some("duplicate")
        }
        2 => {
            let later: Vec<usize> = with_events.iter().copied().filter(|&i| i > r + 1).collect();
            let &other = later.first()?;
            stream.responses.swap(r, other);
            Some("out of order")
        }
        3 => {
            let event = stream.responses[r].events.iter_mut().find(|e| e.prev_kv.is_some())?;
            event.prev_kv.as_mut().unwrap().value.push(b'!');
            Some("wrong prev_kv")
        }
        _ => {
            // A response holding two events of one revision, cut between them.
            let r = (0..stream.responses.len()).find(|&i| {
                let response = &stream.responses[i];
                !response.fragment
                    && response.events.len() > 1
                    && response.events[0].revision() == response.events[1].revision()
            })?;
            let mut head = stream.responses[r].clone();
            let tail = WatchResponse { events: head.events.split_off(1), ..head.clone() };
            stream.responses[r] = head;
            stream.responses.insert(r + 1, tail);
            Some("split revision")
        }
    }
}

#[test]
fn random_watch_streams_pass_and_planted_bugs_are_caught() {
    for seed in seeds(10) {
        println!("random_watch_streams: seed {seed} (KETCH_SEED={seed} replays)");
        let generated = generate(seed, &Gen::small(Fault::None));
        let log = EventLog::from_store(&generated.store, 1);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x3a7c);
        for _ in 0..8 {
            let spec = random_spec(&mut rng);
            let start = rng.random_range(2..=log.last_revision);
            let mut first = deliver(&log, &spec, start, &mut rng);
            // Sometimes the stream breaks and the watcher resumes at last + 1.
            let mut streams = Vec::new();
            let events: Vec<i64> = first.responses.iter().flat_map(|r| r.events.iter().map(Event::revision)).collect();
            if events.len() > 2 && rng.random_bool(0.3) {
                let last = events[events.len() / 2];
                let keep = first.responses.iter().position(|r| r.events.iter().any(|e| e.revision() > last));
                if let Some(keep) = keep.filter(|&k| k > 0 && !first.responses[k - 1].fragment) {
                    let reached = first.responses[..keep]
                        .iter()
                        .flat_map(|r| r.events.iter().map(Event::revision))
                        .max()
                        .unwrap();
                    first.responses.truncate(keep);
                    streams.push(first.clone());
                    first = deliver(&log, &spec, reached + 1, &mut rng);
                }
            }
            streams.push(first);
            let watcher = Watcher { spec: spec.clone(), streams };
            let found = check_watch(&watcher, Some(&log));
            assert!(found.is_empty(), "seed {seed}: a correct stream was flagged: {}", found[0]);
            let found = check_watch(&watcher, None);
            assert!(found.is_empty(), "seed {seed}: a correct stream was flagged without reference: {}", found[0]);

            let mut planted = watcher.clone();
            let last = planted.streams.len() - 1;
            let Some(bug) = plant_watch_bug(&mut planted.streams[last], &mut rng) else { continue };
            let found = check_watch(&planted, Some(&log));
            assert!(!found.is_empty(), "seed {seed}: a planted {bug} went unnoticed in {planted:?}");
        }
    }
}
