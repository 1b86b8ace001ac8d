//! The watch checker: valid streams (batched, fragmented, resumed, filtered,
//! progress notifications, compaction) must pass; planted gaps, duplicates,
//! reorderings, wrong `prev_kv`s, split revisions and disagreements must be
//! caught, with a reference log and, where possible, without one.

mod common;

use ketch_check::model::Store;
use ketch_check::watch::{
    EventLog, WatchResponse, WatchSpec, WatchStream, WatchViolation, WatchViolationKind, Watcher, check_watch,
    check_watchers,
};
use ketch_check::{Event, KeyRange, Request};

/// A store history: revisions 2..=9, with a two-key revision (4) and a
/// two-key delete (8).
fn reference() -> EventLog {
    let mut store = Store::new();
    let requests = [
        Request::put("a", "1"),                                                             // 2
        Request::put("b", "1"),                                                             // 3
        Request::txn(vec![], vec![Request::put("a", "2"), Request::put("c", "1")], vec![]), // 4
        Request::delete("a"),                                                               // 5
        Request::put("a", "3"),                                                             // 6
        Request::put("b", "2"),                                                             // 7
        Request::delete_range(KeyRange::new("b", "d")),                                     // 8
        Request::put("d", "1"),                                                             // 9
    ];
    for request in &requests {
        store.apply(request).expect("valid request");
    }
    let log = EventLog::from_store(&store, 1);
    assert_eq!((log.first_revision, log.last_revision, log.events.len()), (2, 9, 10));
    log.validate().expect("a store's own log is well formed");
    log
}

fn spec(prev_kv: bool) -> WatchSpec {
    WatchSpec { prev_kv, ..WatchSpec::new(KeyRange::all()) }
}

/// What a correct member would send: the log's events the spec accepts, from
/// `start`, `per_response` revisions per response.
fn deliver(log: &EventLog, spec: &WatchSpec, start: i64, per_response: usize) -> WatchStream {
    let mut revisions: Vec<Vec<Event>> = Vec::new();
    for event in log.events.iter().filter(|e| e.revision() >= start && spec.accepts(e)) {
        let mut event = event.clone();
        if !spec.prev_kv {
            event.prev_kv = None;
        }
        match revisions.last_mut() {
            Some(last) if last[0].revision() == event.revision() => last.push(event),
            _ => revisions.push(vec![event]),
        }
    }
    let responses =
        revisions.chunks(per_response).map(|chunk| WatchResponse::events(log.last_revision, chunk.concat())).collect();
    WatchStream { start_revision: start, responses }
}

fn watcher(spec: WatchSpec, streams: Vec<WatchStream>) -> Watcher {
    Watcher { spec, streams }
}

fn kinds(violations: &[WatchViolation]) -> Vec<&WatchViolationKind> {
    violations.iter().map(|v| &v.kind).collect()
}

#[track_caller]
fn assert_clean(violations: Vec<WatchViolation>) {
    assert!(
        violations.is_empty(),
        "unexpected violations: {:#?}",
        violations.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
}

// ---- valid ----

#[test]
fn full_stream_with_prev_kv_passes() {
    let log = reference();
    for per_response in [1, 3, 100] {
        let w = watcher(spec(true), vec![deliver(&log, &spec(true), 2, per_response)]);
        assert_clean(check_watch(&w, Some(&log)));
        assert_clean(check_watch(&w, None));
    }
}

#[test]
fn fragments_created_and_progress_pass() {
    let log = reference();
    let mut stream = deliver(&log, &spec(false), 2, 1);
    // Revision 4 (two events) arrives in two fragments.
    let fourth = stream.responses.remove(2);
    let (first, second) = fourth.events.split_at(1);
    let mut head = WatchResponse::events(9, first.to_vec());
    head.fragment = true;
    stream.responses.insert(2, WatchResponse::events(9, second.to_vec()));
    stream.responses.insert(2, head);
    stream.responses.insert(0, WatchResponse { revision: 1, created: true, ..WatchResponse::default() });
    stream.responses.push(WatchResponse { revision: 12, ..WatchResponse::default() });
    assert!(stream.responses.last().unwrap().is_progress_notify());
    assert_clean(check_watch(&watcher(spec(false), vec![stream]), Some(&log)));
}

#[test]
fn watch_from_now_starts_after_the_created_revision() {
    let log = reference();
    let mut stream = deliver(&log, &spec(false), 6, 2);
    stream.start_revision = 0;
    stream.responses.insert(0, WatchResponse { revision: 5, created: true, ..WatchResponse::default() });
    assert_clean(check_watch(&watcher(spec(false), vec![stream]), Some(&log)));
}

#[test]
fn filters_and_ranges_pass() {
    let log = reference();
    let no_delete = WatchSpec { filter_delete: true, prev_kv: true, ..WatchSpec::new(KeyRange::prefix("a")) };
    let w = watcher(no_delete.clone(), vec![deliver(&log, &no_delete, 2, 2)]);
    assert_eq!(w.streams[0].responses.iter().map(|r| r.events.len()).sum::<usize>(), 3);
    assert_clean(check_watch(&w, Some(&log)));
    assert_clean(check_watch(&w, None));
}

#[test]
fn resumed_watch_passes() {
    let log = reference();
    let first = deliver(&log, &spec(true), 2, 1);
    let (head, _) = first.responses.split_at(3); // revisions 2, 3, 4
    let broken = WatchStream { start_revision: 2, responses: head.to_vec() };
    let resumed = deliver(&log, &spec(true), 5, 2);
    assert_clean(check_watch(&watcher(spec(true), vec![broken.clone(), resumed]), Some(&log)));
    // Resuming earlier than necessary re-delivers identical events: allowed.
    let early = deliver(&log, &spec(true), 3, 2);
    assert_clean(check_watch(&watcher(spec(true), vec![broken, early]), Some(&log)));
}

#[test]
fn compaction_cancel_passes_when_the_revision_is_compacted() {
    let mut log = reference();
    log.compacted_revision = 6;
    let canceled = WatchResponse { revision: 9, canceled: true, compact_revision: 6, ..WatchResponse::default() };
    let stream = WatchStream { start_revision: 3, responses: vec![canceled] };
    assert_clean(check_watch(&watcher(spec(false), vec![stream]), Some(&log)));
}

#[test]
fn agreeing_watchers_pass() {
    let log = reference();
    let all = watcher(spec(true), vec![deliver(&log, &spec(true), 2, 2)]);
    let narrow_spec = WatchSpec::new(KeyRange::new("b", "d"));
    let narrow = watcher(narrow_spec.clone(), vec![deliver(&log, &narrow_spec, 4, 1)]);
    assert_clean(check_watchers(&[all.clone(), narrow.clone()], Some(&log)));
    assert_clean(check_watchers(&[all, narrow], None));
}

// ---- planted bugs ----

#[test]
fn gap_is_caught() {
    let log = reference();
    let mut stream = deliver(&log, &spec(false), 2, 1);
    let dropped = stream.responses.remove(5); // revision 7
    let w = watcher(spec(false), vec![stream]);
    let found = check_watch(&w, Some(&log));
    assert!(
        matches!(kinds(&found)[..], [WatchViolationKind::Missing { event }] if event.kv == dropped.events[0].kv),
        "{found:?}"
    );
    // Without a reference, another watcher that saw revision 7 exposes the gap.
    let witness = watcher(spec(false), vec![deliver(&log, &spec(false), 2, 3)]);
    let found = check_watchers(&[w, witness], None);
    assert!(found.iter().any(|v| v.watcher == 0 && matches!(&v.kind, WatchViolationKind::Missing { .. })), "{found:?}");
}

#[test]
fn duplicate_event_is_caught() {
    let log = reference();
    let mut stream = deliver(&log, &spec(false), 2, 1);
    let again = stream.responses[1].clone(); // revision 3
    stream.responses.insert(2, again);
    let w = watcher(spec(false), vec![stream]);
    for reference in [Some(&log), None] {
        let found = check_watch(&w, reference);
        assert!(found.iter().any(|v| matches!(v.kind, WatchViolationKind::Duplicate { revision: 3, .. })), "{found:?}");
    }
}

#[test]
fn out_of_order_events_are_caught() {
    let log = reference();
    let mut stream = deliver(&log, &spec(false), 2, 1);
    stream.responses.swap(3, 4); // revisions 5 and 6
    let w = watcher(spec(false), vec![stream]);
    for reference in [Some(&log), None] {
        let found = check_watch(&w, reference);
        assert!(
            found.iter().any(|v| matches!(v.kind, WatchViolationKind::OutOfOrder { revision: 5, after: 6 })),
            "{found:?}"
        );
    }
    // Within one revision, against the store's sub-revision order.
    let mut stream = deliver(&log, &spec(false), 2, 1);
    stream.responses[2].events.reverse(); // revision 4: c before a
    let found = check_watch(&watcher(spec(false), vec![stream]), Some(&log));
    assert!(matches!(kinds(&found)[..], [WatchViolationKind::SubRevisionOrder { revision: 4, .. }]), "{found:?}");
}

#[test]
fn wrong_prev_kv_is_caught() {
    let log = reference();
    // The delete of "a" at revision 5 claims the pair of revision 2 (a=1) instead of 4 (a=2).
    let mut stream = deliver(&log, &spec(true), 2, 1);
    let stale = log.events[0].kv.clone();
    stream.responses[3].events[0].prev_kv = Some(stale);
    let w = watcher(spec(true), vec![stream]);
    for reference in [Some(&log), None] {
        let found = check_watch(&w, reference);
        assert!(
            matches!(kinds(&found)[..], [WatchViolationKind::WrongPrevKv { revision: 5, .. }]),
            "{reference:?}: {found:?}"
        );
    }
    // A creation that claims a previous pair cannot be right at all.
    let mut stream = deliver(&log, &spec(true), 2, 1);
    stream.responses[4].events[0].prev_kv = Some(log.events[0].kv.clone()); // revision 6: a=3, version 1
    let found = check_watch(&watcher(spec(true), vec![stream]), None);
    assert!(matches!(kinds(&found)[..], [WatchViolationKind::Malformed { .. }]), "{found:?}");
    // A missing prev_kv where the previous revision is not compacted.
    let mut stream = deliver(&log, &spec(true), 2, 1);
    stream.responses[5].events[0].prev_kv = None; // revision 7: b=2
    let found = check_watch(&watcher(spec(true), vec![stream]), Some(&log));
    assert!(matches!(kinds(&found)[..], [WatchViolationKind::WrongPrevKv { revision: 7, .. }]), "{found:?}");
}

#[test]
fn split_revision_is_caught() {
    let log = reference();
    let mut stream = deliver(&log, &spec(false), 2, 1);
    let fourth = stream.responses.remove(2);
    let (first, second) = fourth.events.split_at(1);
    // Two responses, but not marked as fragments.
    stream.responses.insert(2, WatchResponse::events(9, second.to_vec()));
    stream.responses.insert(2, WatchResponse::events(9, first.to_vec()));
    let w = watcher(spec(false), vec![stream]);
    for reference in [Some(&log), None] {
        let found = check_watch(&w, reference);
        assert!(matches!(kinds(&found)[..], [WatchViolationKind::Split { revision: 4, .. }]), "{found:?}");
    }
}

#[test]
fn phantom_mismatched_and_foreign_events_are_caught() {
    let log = reference();
    let narrow = WatchSpec::new(KeyRange::single("b"));
    let mut stream = deliver(&log, &narrow, 2, 1);
    // A value the store never had at that revision.
    stream.responses[0].events[0].kv.value = b"forged".to_vec();
    // An event of a key outside the range.
    stream.responses[1].events.push(log.events[2].clone());
    let found = check_watch(&watcher(narrow, vec![stream]), Some(&log));
    assert!(found.iter().any(|v| matches!(v.kind, WatchViolationKind::Mismatch { .. })), "{found:?}");
    assert!(
        found
            .iter()
            .any(|v| matches!(&v.kind, WatchViolationKind::Unexpected { reason, .. } if reason.contains("range")))
    );
    // An event at a revision where the store changed something else.
    let mut stream = deliver(&log, &spec(false), 2, 100);
    stream.responses[0].events.insert(1, Event::put(common::kv("zz", "x", 2, 2, 1), None));
    let found = check_watch(&watcher(spec(false), vec![stream]), Some(&log));
    assert!(found.iter().any(
        |v| matches!(&v.kind, WatchViolationKind::Unexpected { reason, .. } if reason.contains("no such change"))
    ));
}

#[test]
fn event_after_progress_notification_is_caught() {
    let log = reference();
    let mut stream = deliver(&log, &spec(false), 2, 1);
    // "Everything up to 6 delivered", then revision 5 and 6 arrive.
    stream.responses.insert(3, WatchResponse { revision: 6, ..WatchResponse::default() });
    let found = check_watch(&watcher(spec(false), vec![stream]), Some(&log));
    assert!(found.iter().any(|v| matches!(v.kind, WatchViolationKind::AfterProgress { revision: 5, progress: 6 })));
}

#[test]
fn resume_gap_is_caught() {
    let log = reference();
    let first = deliver(&log, &spec(false), 2, 1);
    let broken = WatchStream { start_revision: 2, responses: first.responses[..3].to_vec() }; // up to 4
    let late = deliver(&log, &spec(false), 7, 1);
    let found = check_watch(&watcher(spec(false), vec![broken, late]), Some(&log));
    assert!(
        matches!(kinds(&found)[..], [WatchViolationKind::ResumeGap { expected_start: 5, start_revision: 7 }]),
        "{found:?}"
    );
}

#[test]
fn wrong_compaction_cancel_is_caught() {
    let mut log = reference();
    log.compacted_revision = 3;
    let cancel =
        |compact_revision| WatchResponse { revision: 9, canceled: true, compact_revision, ..WatchResponse::default() };
    // Revision 3 is still readable at compaction 3: canceling a watch from 3 is wrong.
    let stream = WatchStream { start_revision: 3, responses: vec![cancel(3)] };
    let found = check_watch(&watcher(spec(false), vec![stream]), Some(&log));
    assert!(matches!(kinds(&found)[..], [WatchViolationKind::BadCompaction { .. }]), "{found:?}");
    // A compaction the store never did.
    let stream = WatchStream { start_revision: 2, responses: vec![cancel(6)] };
    let found = check_watch(&watcher(spec(false), vec![stream]), Some(&log));
    assert!(matches!(kinds(&found)[..], [WatchViolationKind::BadCompaction { .. }]), "{found:?}");
}

#[test]
fn diverged_watchers_are_caught() {
    let log = reference();
    let honest = watcher(spec(false), vec![deliver(&log, &spec(false), 2, 1)]);
    let mut stream = deliver(&log, &spec(false), 2, 1);
    stream.responses[1].events[0].kv.value = b"other".to_vec();
    let liar = watcher(spec(false), vec![stream]);
    let found = check_watchers(&[honest, liar], None);
    assert!(
        found.iter().any(|v| v.watcher == 1 && matches!(v.kind, WatchViolationKind::Disagreement { .. })),
        "{found:?}"
    );
}

#[test]
fn broken_reference_logs_are_refused() {
    let mut log = reference();
    log.events.retain(|e| e.revision() != 7);
    assert!(log.validate().unwrap_err().contains("revision 7"));
    let mut log = reference();
    log.events.swap(0, 1);
    assert!(log.validate().is_err());
}

#[test]
fn event_above_its_header_revision_is_caught() {
    let log = reference();
    let mut stream = deliver(&log, &spec(false), 2, 1);
    stream.responses[3].revision = 4; // carries revision 5
    let found = check_watch(&watcher(spec(false), vec![stream]), Some(&log));
    assert!(matches!(kinds(&found)[..], [WatchViolationKind::Malformed { reason, .. }] if reason.contains("header")));
}
