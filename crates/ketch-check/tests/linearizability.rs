//! Hand-written histories for both linearizability checks: valid ones that
//! must be accepted (concurrency, unknown outcomes, transactions, historic
//! reads, compaction) and planted bugs that must be caught.

mod common;

use common::{get, kv, op, put, put_unknown};
use ketch_check::{
    CheckConfig, Compact, Compare, CompareResult, CompareTarget, DeleteRange, DeleteResult, Failure, History,
    HistoryError, KeyRange, OpId, Outcome, Put, PutResult, Request, Response, ResponseBody, TxnResult, Verdict,
    check_linearizable, check_linearizable_per_key,
};

fn config() -> CheckConfig {
    CheckConfig::default()
}

/// Both checks accept the history.
#[track_caller]
fn assert_linearizable(history: &History) {
    match check_linearizable(history, &config()).expect("well-formed history") {
        Verdict::Ok(_) => {}
        Verdict::Violation(v) => panic!("full check rejected a valid history:\n{}\n{history:?}", v.explain(history)),
        Verdict::Inconclusive(i) => panic!("full check inconclusive after {} steps", i.steps),
    }
    match check_linearizable_per_key(history, &config()).expect("well-formed history") {
        Verdict::Ok(_) => {}
        Verdict::Violation(v) => panic!("per-key check rejected a valid history:\n{}\n{history:?}", v.explain(history)),
        Verdict::Inconclusive(i) => panic!("per-key check inconclusive after {} steps", i.steps),
    }
}

/// The full check rejects the history; returns the conflicting operations.
#[track_caller]
fn assert_violation(history: &History) -> Vec<OpId> {
    match check_linearizable(history, &config()).expect("well-formed history") {
        Verdict::Violation(v) => {
            let explanation = v.explain(history);
            assert!(explanation.contains("not linearizable"));
            v.ops
        }
        Verdict::Ok(witness) => panic!("full check accepted a planted bug; order {:?}\n{history:?}", witness.order),
        Verdict::Inconclusive(_) => panic!("full check inconclusive on a planted bug"),
    }
}

/// The per-key check rejects the history.
#[track_caller]
fn assert_per_key_violation(history: &History) -> Vec<OpId> {
    match check_linearizable_per_key(history, &config()).expect("well-formed history") {
        Verdict::Violation(v) => v.ops,
        Verdict::Ok(_) => panic!("per-key check accepted a planted bug\n{history:?}"),
        Verdict::Inconclusive(_) => panic!("per-key check inconclusive on a planted bug"),
    }
}

// ---- valid histories ----

#[test]
fn sequential_puts_and_reads() {
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "1", 2);
    get(&mut h, 2, (2, 3), "a", Some(kv("a", "1", 2, 2, 1)), 2);
    put(&mut h, 1, (4, 5), "a", "2", 3);
    put(&mut h, 2, (6, 7), "b", "1", 4);
    get(&mut h, 1, (8, 9), "a", Some(kv("a", "2", 2, 3, 2)), 4);
    op(&mut h, 2, (10, 11), Request::delete("a"), Outcome::Ok(Response::delete(5, 1)));
    op(&mut h, 2, (12, 13), Request::delete("a"), Outcome::Ok(Response::delete(5, 0)));
    get(&mut h, 1, (14, 15), "a", None, 5);
    put(&mut h, 1, (16, 17), "a", "3", 6);
    get(&mut h, 1, (18, 19), "a", Some(kv("a", "3", 6, 6, 1)), 6);
    assert_linearizable(&h);
}

#[test]
fn concurrent_read_may_see_old_or_new_value() {
    for seen_new in [false, true] {
        let mut h = History::new();
        put(&mut h, 1, (0, 1), "a", "1", 2);
        put(&mut h, 1, (2, 10), "a", "2", 3);
        let found = if seen_new { kv("a", "2", 2, 3, 2) } else { kv("a", "1", 2, 2, 1) };
        get(&mut h, 2, (3, 4), "a", Some(found), if seen_new { 3 } else { 2 });
        assert_linearizable(&h);
    }
}

#[test]
fn concurrent_writes_in_either_order() {
    // Both writes overlap; the responses fix their order (b first).
    let mut h = History::new();
    put(&mut h, 1, (0, 10), "a", "1", 3);
    put(&mut h, 2, (1, 9), "b", "1", 2);
    get(&mut h, 3, (11, 12), "a", Some(kv("a", "1", 3, 3, 1)), 3);
    assert_linearizable(&h);
}

#[test]
fn unknown_write_may_apply_late_or_never() {
    // Applied long after the client gave up: a later read sees it.
    let mut h = History::new();
    put_unknown(&mut h, 1, 0, "a", "lost?");
    get(&mut h, 2, (5, 6), "a", None, 1);
    get(&mut h, 2, (7, 8), "a", Some(kv("a", "lost?", 2, 2, 1)), 2);
    assert_linearizable(&h);

    // Never applied.
    let mut h = History::new();
    put_unknown(&mut h, 1, 0, "a", "lost?");
    put(&mut h, 2, (5, 6), "b", "1", 2);
    get(&mut h, 2, (7, 8), "a", None, 2);
    assert_linearizable(&h);
}

#[test]
fn unknown_write_revealed_by_a_revision_gap() {
    // Nobody reads "a", but b's revision shows something was applied before it.
    let mut h = History::new();
    put_unknown(&mut h, 1, 0, "a", "x");
    put(&mut h, 2, (5, 6), "b", "1", 3);
    get(&mut h, 2, (7, 8), "b", Some(kv("b", "1", 3, 3, 1)), 3);
    assert_linearizable(&h);
}

#[test]
fn rejected_and_unknown_reads_are_ignored() {
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "1", 2);
    op(&mut h, 2, (2, 3), Request::put("a", "nope"), Outcome::Err(Failure::Rejected("lease not found".into())));
    op(&mut h, 2, (4, 5), Request::get("a"), Outcome::Unknown);
    get(&mut h, 1, (6, 7), "a", Some(kv("a", "1", 2, 2, 1)), 2);
    assert_linearizable(&h);
}

#[test]
fn compare_and_set_race() {
    // Two clients CAS on mod_revision 2 concurrently; exactly one wins.
    let cas = |value: &str| {
        Request::txn(
            vec![Compare::new("a", CompareTarget::ModRevision(2), CompareResult::Equal)],
            vec![Request::put("a", value)],
            vec![Request::get("a")],
        )
    };
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "0", 2);
    let won = Response::txn(3, true, vec![ResponseBody::Put(PutResult::default())]);
    let lost_read =
        ResponseBody::Range(ketch_check::RangeResult { kvs: vec![kv("a", "x", 2, 3, 2)], count: 1, more: false });
    op(&mut h, 1, (2, 10), cas("x"), Outcome::Ok(won));
    op(&mut h, 2, (3, 9), cas("y"), Outcome::Ok(Response::txn(3, false, vec![lost_read])));
    assert_linearizable(&h);
}

#[test]
fn txn_with_unknown_outcome_takes_the_branch_the_state_decides() {
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "0", 2);
    let txn = Request::txn(
        vec![Compare::new("a", CompareTarget::Value(b"0".to_vec()), CompareResult::Equal)],
        vec![Request::put("b", "won")],
        vec![Request::put("c", "lost")],
    );
    op(&mut h, 2, (2, 3), txn, Outcome::Unknown);
    get(&mut h, 1, (4, 5), "b", Some(kv("b", "won", 3, 3, 1)), 3);
    assert_linearizable(&h);
}

#[test]
fn historic_reads_compaction_and_its_errors() {
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "1", 2);
    put(&mut h, 1, (2, 3), "a", "2", 3);
    let old = Request::get_at("a", 2);
    op(&mut h, 2, (4, 5), old.clone(), Outcome::Ok(Response::range(3, vec![kv("a", "1", 2, 2, 1)])));
    op(
        &mut h,
        2,
        (6, 7),
        Request::Compact(Compact { revision: 3 }),
        Outcome::Ok(Response { revision: 3, body: ResponseBody::Compact }),
    );
    op(&mut h, 2, (8, 9), old, Outcome::Err(Failure::Compacted));
    op(&mut h, 2, (10, 11), Request::get_at("a", 9), Outcome::Err(Failure::FutureRevision));
    assert_linearizable(&h);
}

#[test]
fn prev_kv_and_ranges() {
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "1", 2);
    put(&mut h, 1, (2, 3), "b", "1", 3);
    let request = Request::Put(Put { key: b"a".to_vec(), value: b"2".to_vec(), lease: 0, prev_kv: true });
    let body = ResponseBody::Put(PutResult { prev_kv: Some(kv("a", "1", 2, 2, 1)) });
    op(&mut h, 1, (4, 5), request, Outcome::Ok(Response { revision: 4, body }));
    let all = vec![kv("a", "2", 2, 4, 2), kv("b", "1", 3, 3, 1)];
    op(&mut h, 2, (6, 7), Request::range(KeyRange::prefix("")), Outcome::Ok(Response::range(4, all.clone())));
    let request = Request::DeleteRange(DeleteRange { range: KeyRange::from_key("a"), prev_kv: true });
    let body = ResponseBody::DeleteRange(DeleteResult { deleted: 2, prev_kvs: all });
    op(&mut h, 2, (8, 9), request, Outcome::Ok(Response { revision: 5, body }));
    op(&mut h, 1, (10, 11), Request::range(KeyRange::all()), Outcome::Ok(Response::range(5, vec![])));
    assert_linearizable(&h);
}

#[test]
fn initial_state_is_respected() {
    let mut h = History::new();
    get(&mut h, 1, (0, 1), "a", Some(kv("a", "old", 5, 9, 3)), 10);
    put(&mut h, 1, (2, 3), "a", "new", 11);
    get(&mut h, 1, (4, 5), "a", Some(kv("a", "new", 5, 11, 4)), 11);
    let config =
        CheckConfig { initial_revision: 10, initial_kvs: vec![kv("a", "old", 5, 9, 3)], ..CheckConfig::default() };
    assert!(check_linearizable(&h, &config).unwrap().is_ok());
    assert!(check_linearizable_per_key(&h, &config).unwrap().is_ok());
    assert!(check_linearizable(&h, &CheckConfig::default()).unwrap().violation().is_some());
    // A read of history the model never saw is refused, not guessed.
    let mut h = History::new();
    op(&mut h, 1, (0, 1), Request::get_at("a", 5), Outcome::Ok(Response::range(10, vec![])));
    let refused = check_linearizable(&h, &config);
    assert!(matches!(refused, Err(HistoryError::ReadBeforeInitialRevision { revision: 5, initial: 10, .. })));
}

// ---- planted bugs ----

#[test]
fn stale_read_is_caught() {
    // "a" was overwritten by a put that completed before the read was invoked.
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "1", 2);
    let overwrite = put(&mut h, 1, (2, 3), "a", "2", 3);
    let stale = get(&mut h, 2, (4, 5), "a", Some(kv("a", "1", 2, 2, 1)), 2);
    let core = assert_violation(&h);
    assert_eq!(core, vec![overwrite, stale], "the minimal explanation is the overwrite and the stale read");
    assert_per_key_violation(&h);
}

#[test]
fn read_your_writes_violation_is_caught() {
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "mine", 2);
    get(&mut h, 1, (2, 3), "a", None, 1);
    assert_violation(&h);
    assert_per_key_violation(&h);
}

#[test]
fn lost_acknowledged_write_is_caught() {
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "1", 2);
    put(&mut h, 1, (2, 3), "b", "1", 3);
    // The store lost a=1 but kept counting revisions.
    get(&mut h, 2, (4, 5), "a", None, 3);
    assert_violation(&h);
    assert_per_key_violation(&h);
}

#[test]
fn duplicated_write_is_caught() {
    // One put of a unique value, applied twice: version 2 and a revision no one wrote.
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "once", 2);
    get(&mut h, 2, (2, 3), "a", Some(kv("a", "once", 2, 3, 2)), 3);
    assert_violation(&h);
    assert_per_key_violation(&h);
}

#[test]
fn skipped_revision_is_caught() {
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "1", 2);
    put(&mut h, 1, (2, 3), "b", "1", 4);
    assert_violation(&h);
    // One key at a time cannot see a gap between keys: only the full check finds it.
    assert!(check_linearizable_per_key(&h, &config()).unwrap().is_ok());
    // The same gap is fine if an unknown write may fill it.
    put_unknown(&mut h, 2, 0, "c", "maybe");
    assert_linearizable(&h);
}

#[test]
fn reused_revision_is_caught() {
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "1", 2);
    put(&mut h, 1, (2, 3), "b", "1", 2);
    assert_violation(&h);
    // On one key the reuse is visible to the per-key check too.
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "1", 2);
    put(&mut h, 1, (2, 3), "a", "2", 2);
    assert_violation(&h);
    assert_per_key_violation(&h);
}

#[test]
fn revision_going_backwards_is_caught() {
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "1", 2);
    put(&mut h, 1, (2, 3), "a", "2", 3);
    // A later read with the right value but an old header revision.
    get(&mut h, 2, (4, 5), "a", Some(kv("a", "2", 2, 3, 2)), 2);
    assert_violation(&h);
    assert_per_key_violation(&h);
}

#[test]
fn delete_of_nothing_must_not_bump() {
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "1", 2);
    op(&mut h, 1, (2, 3), Request::delete("zz"), Outcome::Ok(Response::delete(3, 0)));
    assert_violation(&h);
}

#[test]
fn txn_that_claims_the_wrong_branch_is_caught() {
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "1", 2);
    let txn = Request::txn(
        vec![Compare::new("a", CompareTarget::Version(0), CompareResult::Equal)],
        vec![Request::put("a", "created")],
        vec![],
    );
    let body = TxnResult { succeeded: true, responses: vec![ResponseBody::Put(PutResult::default())] };
    op(&mut h, 2, (2, 3), txn, Outcome::Ok(Response { revision: 3, body: ResponseBody::Txn(body) }));
    assert_violation(&h);
    assert_per_key_violation(&h);
}

#[test]
fn unwarranted_compacted_error_is_caught() {
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "1", 2);
    op(&mut h, 2, (2, 3), Request::get_at("a", 2), Outcome::Err(Failure::Compacted));
    assert_violation(&h);
}

#[test]
fn read_of_a_value_before_its_write_was_invoked_is_caught() {
    let mut h = History::new();
    get(&mut h, 2, (0, 1), "a", Some(kv("a", "future", 2, 2, 1)), 2);
    put_unknown(&mut h, 1, 5, "a", "future");
    assert_violation(&h);
    assert_per_key_violation(&h);
}

#[test]
fn explanation_names_the_blocked_operation_and_the_model_answer() {
    let mut h = History::new();
    put(&mut h, 1, (0, 1), "a", "1", 2);
    put(&mut h, 1, (2, 3), "a", "2", 3);
    let stale = get(&mut h, 2, (4, 5), "a", Some(kv("a", "1", 2, 2, 1)), 2);
    let Verdict::Violation(v) = check_linearizable(&h, &config()).unwrap() else { panic!("violation expected") };
    assert_eq!(v.blocked, Some(stale));
    assert_eq!(v.longest_prefix.len(), 2);
    let expected = v.expected.clone().expect("the model's answer");
    assert!(expected.contains("a=2"), "{expected}");
    let text = v.explain(&h);
    assert!(text.contains("#2") && text.contains("the model would answer"), "{text}");
}

#[test]
fn tiny_budget_is_inconclusive_not_wrong() {
    let mut h = History::new();
    for i in 0..12 {
        put_unknown(&mut h, i, 0, "a", &format!("v{i}"));
    }
    get(&mut h, 99, (100, 101), "a", Some(kv("a", "nobody", 2, 2, 1)), 2);
    let config = CheckConfig { step_budget: 50, ..CheckConfig::default() };
    assert!(check_linearizable(&h, &config).unwrap().is_inconclusive());
    assert!(check_linearizable_per_key(&h, &config).unwrap().is_inconclusive());
}

#[test]
fn per_key_check_handles_lease_revoke_and_multi_key_ranges() {
    let mut h = History::new();
    let leased = |key: &str| Request::Put(Put { key: key.into(), value: b"v".to_vec(), lease: 7, prev_kv: false });
    op(&mut h, 1, (0, 1), leased("a"), Outcome::Ok(Response::put(2)));
    op(&mut h, 1, (2, 3), leased("b"), Outcome::Ok(Response::put(3)));
    let revoke = Request::LeaseRevoke(ketch_check::LeaseRevoke { lease: 7 });
    op(&mut h, 2, (4, 5), revoke, Outcome::Ok(Response { revision: 4, body: ResponseBody::LeaseRevoke }));
    op(&mut h, 1, (6, 7), Request::range(KeyRange::all()), Outcome::Ok(Response::range(4, vec![])));
    assert_linearizable(&h);
    // A range read after the revoke that still sees "b": caught on key b.
    op(
        &mut h,
        1,
        (8, 9),
        Request::range(KeyRange::all()),
        Outcome::Ok(Response::range(4, vec![kv("b", "v", 3, 3, 1).with_lease(7)])),
    );
    assert_violation(&h);
    assert_per_key_violation(&h);
}
