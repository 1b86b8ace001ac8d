//! The durability and convergence checkers against histories executed on the
//! model store: valid ones pass; lost, wrong, resurrected, phantom, duplicated
//! writes and skipped or reused revisions are caught.

mod common;

use common::{kv, op, put, put_unknown};
use ketch_check::durability::{
    DurabilityViolation, DurabilityViolationKind, FinalState, check_durability, check_durability_log,
};
use ketch_check::model::Store;
use ketch_check::{CheckConfig, EventLog, History, Outcome, Request, Response};

/// Runs `requests` sequentially on a store, recording each as acknowledged.
fn run(requests: &[Request]) -> (History, Store) {
    let mut store = Store::new();
    let mut history = History::new();
    for (i, request) in requests.iter().enumerate() {
        let response = store.apply(request).expect("valid request");
        let at = 2 * i as u64;
        op(&mut history, 1, (at, at + 1), request.clone(), Outcome::Ok(response));
    }
    (history, store)
}

fn final_state(store: &Store) -> FinalState {
    FinalState { revision: store.revision(), kvs: store.kvs().cloned().collect() }
}

fn kinds(found: &[DurabilityViolation]) -> Vec<&DurabilityViolationKind> {
    found.iter().map(|v| &v.kind).collect()
}

fn workload() -> Vec<Request> {
    vec![
        Request::put("a", "1"),
        Request::put("b", "1"),
        Request::put("a", "2"),
        Request::delete("b"),
        Request::txn(vec![], vec![Request::put("c", "1"), Request::put("d", "1")], vec![]),
        Request::put("a", "3"),
    ]
}

#[test]
fn faithful_store_passes() {
    let (history, store) = run(&workload());
    assert!(check_durability(&history, &final_state(&store), &CheckConfig::default()).is_empty());
    assert!(check_durability_log(&history, &EventLog::from_store(&store, 1)).is_empty());
}

#[test]
fn unknown_writes_may_or_may_not_survive() {
    let (mut history, mut store) = run(&workload());
    put_unknown(&mut history, 2, 100, "e", "maybe");
    put_unknown(&mut history, 2, 101, "f", "maybe-not");
    store.apply(&Request::put("e", "maybe")).unwrap();
    assert!(check_durability(&history, &final_state(&store), &CheckConfig::default()).is_empty());
    assert!(check_durability_log(&history, &EventLog::from_store(&store, 1)).is_empty());
}

#[test]
fn lost_write_is_caught() {
    let (history, _) = run(&workload());
    // The store forgot the last put of "a" (revision 7) and is back at 6.
    let (_, truncated) = run(&workload()[..5]);
    let found = check_durability(&history, &final_state(&truncated), &CheckConfig::default());
    let k = kinds(&found);
    assert!(k.iter().any(|k| matches!(k, DurabilityViolationKind::RevisionBehind { revision: 7, store_revision: 6 })));
    assert!(k.iter().any(|k| matches!(k, DurabilityViolationKind::LostWrite { revision: 7, .. })), "{found:?}");
    let found = check_durability_log(&history, &EventLog::from_store(&truncated, 1));
    assert!(kinds(&found).iter().any(|k| matches!(k, DurabilityViolationKind::RevisionBehind { .. })));
}

#[test]
fn lost_write_hidden_behind_a_later_revision_is_caught() {
    // The store lost "a=2" but later revisions exist: the final "a" is older than the ack.
    let (history, store) = run(&workload()[..3]);
    let mut state = final_state(&store);
    state.kvs.retain(|kv| kv.key != b"a");
    state.kvs.push(kv("a", "1", 2, 2, 1));
    let found = check_durability(&history, &state, &CheckConfig::default());
    assert!(matches!(kinds(&found)[..], [DurabilityViolationKind::LostWrite { revision: 4, .. }]), "{found:?}");
}

#[test]
fn wrong_value_and_phantom_are_caught() {
    let (history, store) = run(&workload());
    let mut state = final_state(&store);
    state.kvs.iter_mut().find(|kv| kv.key == b"c").unwrap().value = b"garbage".to_vec();
    state.kvs.push(kv("zz", "nobody", 3, 3, 1));
    let found = check_durability(&history, &state, &CheckConfig::default());
    let k = kinds(&found);
    assert!(k.iter().any(|k| matches!(k, DurabilityViolationKind::WrongValue { key, .. } if key == b"c")), "{found:?}");
    assert!(k.iter().filter(|k| matches!(k, DurabilityViolationKind::Phantom { .. })).count() == 2, "{found:?}");
}

#[test]
fn resurrected_delete_is_caught() {
    let (history, store) = run(&workload());
    let mut state = final_state(&store);
    state.kvs.push(kv("b", "1", 3, 3, 1)); // deleted at revision 5
    let found = check_durability(&history, &state, &CheckConfig::default());
    assert!(matches!(kinds(&found)[..], [DurabilityViolationKind::Resurrected { revision: 5, .. }]), "{found:?}");
}

#[test]
fn duplicated_write_is_caught() {
    // The store applied "a=3" twice: revisions 7 and 8, version one too high.
    let requests = workload();
    let (history, _) = run(&requests);
    let mut store = Store::new();
    for request in &requests {
        store.apply(request).unwrap();
    }
    store.apply(requests.last().unwrap()).unwrap();
    let found = check_durability(&history, &final_state(&store), &CheckConfig::default());
    assert!(kinds(&found).iter().any(|k| matches!(k, DurabilityViolationKind::VersionTooHigh { .. })), "{found:?}");
    let found = check_durability_log(&history, &EventLog::from_store(&store, 1));
    let k = kinds(&found);
    assert!(
        k.iter().any(|k| matches!(k, DurabilityViolationKind::Duplicated { revisions, .. } if *revisions == [7, 8]))
    );
    assert!(k.iter().any(|k| matches!(k, DurabilityViolationKind::UnexplainedRevision { revision: 8 })), "{found:?}");
}

#[test]
fn skipped_and_reused_revisions_are_caught() {
    let (history, store) = run(&workload());
    // A member whose log lacks revision 4.
    let mut log = EventLog::from_store(&store, 1);
    log.events.retain(|e| e.revision() != 4);
    let found = check_durability_log(&history, &log);
    let k = kinds(&found);
    assert!(k.iter().any(|k| matches!(k, DurabilityViolationKind::BrokenLog { .. })));
    assert!(k.iter().any(|k| matches!(k, DurabilityViolationKind::LostWrite { revision: 4, .. })), "{found:?}");
    // Two acknowledged writes that report the same revision.
    let mut history = History::new();
    put(&mut history, 1, (0, 1), "a", "1", 2);
    put(&mut history, 1, (2, 3), "b", "1", 2);
    let mut store = Store::new();
    store.apply(&Request::put("a", "1")).unwrap();
    store.apply(&Request::put("b", "1")).unwrap();
    let found = check_durability_log(&history, &EventLog::from_store(&store, 1));
    assert!(kinds(&found).iter().any(|k| matches!(k, DurabilityViolationKind::RevisionReused { revision: 2, .. })));
}

#[test]
fn rejected_writes_must_not_appear() {
    let (mut history, mut store) = run(&workload());
    let rejected = Request::put("x", "refused");
    op(&mut history, 2, (50, 51), rejected.clone(), Outcome::Err(ketch_check::Failure::Rejected("nospace".into())));
    assert!(check_durability(&history, &final_state(&store), &CheckConfig::default()).is_empty());
    // A store that applied it anyway.
    let response: Response = store.apply(&rejected).unwrap();
    assert_eq!(response.revision, 8);
    let found = check_durability(&history, &final_state(&store), &CheckConfig::default());
    assert!(matches!(kinds(&found)[..], [DurabilityViolationKind::Phantom { .. }]), "{found:?}");
    let found = check_durability_log(&history, &EventLog::from_store(&store, 1));
    assert!(matches!(kinds(&found)[..], [DurabilityViolationKind::UnexplainedRevision { revision: 8 }]), "{found:?}");
}
