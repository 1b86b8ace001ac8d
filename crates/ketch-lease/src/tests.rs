//! Unit tests, one per etcd rule.

use super::*;

const SEC: u64 = 1000;

fn primary(min_ttl: i64) -> Lessor {
    let mut l = Lessor::new(min_ttl);
    l.promote(0, 0);
    l
}

fn keys(ks: &[&str]) -> Vec<Vec<u8>> {
    ks.iter().map(|k| k.as_bytes().to_vec()).collect()
}

#[test]
fn grant_raises_ttl_to_minimum() {
    let mut l = Lessor::new(5);
    assert_eq!(l.grant(1, 2, 0), Ok(Granted { id: 1, ttl: 5 }));
    assert_eq!(l.grant(2, 0, 0), Ok(Granted { id: 2, ttl: 5 }));
    assert_eq!(l.grant(3, -7, 0), Ok(Granted { id: 3, ttl: 5 }));
    assert_eq!(l.grant(4, 60, 0), Ok(Granted { id: 4, ttl: 60 }));
    assert_eq!(l.granted_ttl(1), Some(5));
    assert_eq!(l.leases(), vec![1, 2, 3, 4]);
}

#[test]
fn grant_rejects_too_large_ttl() {
    let mut l = Lessor::new(1);
    assert_eq!(l.grant(1, MAX_LEASE_TTL + 1, 0), Err(LeaseError::TtlTooLarge));
    assert!(!l.exists(1));
    assert_eq!(l.grant(1, MAX_LEASE_TTL, 0), Ok(Granted { id: 1, ttl: MAX_LEASE_TTL }));
    // The TTL check comes before the existence check, as in etcd.
    assert_eq!(l.grant(1, MAX_LEASE_TTL + 1, 0), Err(LeaseError::TtlTooLarge));
}

#[test]
fn grant_rejects_existing_and_zero_id() {
    let mut l = primary(1);
    l.grant(7, 10, 0).unwrap();
    assert_eq!(l.grant(7, 20, 5 * SEC), Err(LeaseError::AlreadyExists));
    // The failed grant changed nothing: still the first TTL and expiry.
    assert_eq!(l.time_to_live(7, 0).unwrap().granted_secs, 10);
    assert_eq!(l.expired(10 * SEC, 10, 3 * SEC), vec![7]);
    assert_eq!(l.grant(0, 10, 0), Err(LeaseError::NotFound));
    assert_eq!(l.len(), 1);
}

#[test]
fn negative_ids_are_ordinary_leases() {
    let mut l = Lessor::new(1);
    l.grant(-5, 10, 0).unwrap();
    l.grant(5, 10, 0).unwrap();
    assert_eq!(l.leases(), vec![-5, 5]);
    l.attach(b"k", -5).unwrap();
    assert_eq!(l.lease_of(b"k"), -5);
}

#[test]
fn revoke_returns_attached_keys_sorted_and_detaches_them() {
    let mut l = Lessor::new(1);
    l.grant(1, 10, 0).unwrap();
    l.grant(2, 10, 0).unwrap();
    for k in ["c", "a", "b"] {
        l.attach(k.as_bytes(), 1).unwrap();
    }
    l.attach(b"z", 2).unwrap();
    assert_eq!(l.revoke(1), Ok(keys(&["a", "b", "c"])));
    assert!(!l.exists(1));
    for k in ["a", "b", "c"] {
        assert_eq!(l.lease_of(k.as_bytes()), 0);
    }
    assert_eq!(l.lease_of(b"z"), 2);
    assert_eq!(l.revoke(1), Err(LeaseError::NotFound));
    assert_eq!(l.record(1), None);
}

#[test]
fn revoke_on_primary_forgets_the_expiry() {
    let mut l = primary(1);
    l.grant(1, 10, 0).unwrap();
    l.grant(2, 10, 0).unwrap();
    l.revoke(1).unwrap();
    assert_eq!(l.expired(100 * SEC, 10, 3 * SEC), vec![2]);
    assert!(l.checkpoints_due(100 * SEC, SEC, 10).is_empty());
}

#[test]
fn attach_moves_a_key_between_leases() {
    let mut l = Lessor::new(1);
    l.grant(1, 10, 0).unwrap();
    l.grant(2, 10, 0).unwrap();
    l.attach(b"k", 1).unwrap();
    assert_eq!(l.lease_of(b"k"), 1);
    l.attach(b"k", 2).unwrap();
    assert_eq!(l.lease_of(b"k"), 2);
    assert_eq!(l.revoke(1), Ok(vec![]));
    assert_eq!(l.revoke(2), Ok(keys(&["k"])));
}

#[test]
fn attach_to_missing_lease_changes_nothing() {
    let mut l = Lessor::new(1);
    l.grant(1, 10, 0).unwrap();
    l.attach(b"k", 1).unwrap();
    assert_eq!(l.attach(b"k", 9), Err(LeaseError::NotFound));
    assert_eq!(l.lease_of(b"k"), 1);
}

#[test]
fn attach_zero_and_detach_remove_the_key() {
    let mut l = Lessor::new(1);
    l.grant(1, 10, 0).unwrap();
    l.attach(b"a", 1).unwrap();
    l.attach(b"b", 1).unwrap();
    l.attach(b"a", 0).unwrap();
    l.detach(b"b");
    l.detach(b"never-attached");
    assert_eq!(l.lease_of(b"a"), 0);
    assert_eq!(l.lease_of(b"b"), 0);
    assert_eq!(l.revoke(1), Ok(vec![]));
}

#[test]
fn renew_resets_expiry_to_now_plus_ttl() {
    let mut l = primary(1);
    l.grant(1, 10, 0).unwrap();
    assert_eq!(l.renew(1, 8 * SEC), Ok(Renewed { ttl: 10, clear_checkpoint: false }));
    assert!(l.expired(10 * SEC, 10, 3 * SEC).is_empty());
    assert_eq!(l.time_to_live(1, 8 * SEC).unwrap().remaining_secs, 10);
    assert!(l.expired(18 * SEC - 1, 10, 3 * SEC).is_empty());
    assert_eq!(l.expired(18 * SEC, 10, 3 * SEC), vec![1]);
}

#[test]
fn renew_errors() {
    let mut l = Lessor::new(1);
    l.grant(1, 10, 0).unwrap();
    assert_eq!(l.renew(1, 0), Err(LeaseError::NotPrimary));
    assert_eq!(l.renew(2, 0), Err(LeaseError::NotPrimary));
    l.promote(0, 0);
    assert_eq!(l.renew(2, 0), Err(LeaseError::NotFound));
    // Past its expiry a lease is not brought back; its revoke is pending.
    assert_eq!(l.renew(1, 10 * SEC), Err(LeaseError::Expired));
    assert_eq!(l.expired(10 * SEC, 10, 3 * SEC), vec![1]);
    l.demote();
    assert_eq!(l.renew(1, 10 * SEC), Err(LeaseError::NotPrimary));
}

#[test]
fn renew_asks_to_clear_a_checkpoint_and_ignores_it() {
    let mut l = primary(1);
    l.grant(1, 100, 0).unwrap();
    assert!(l.checkpoint(1, 30));
    // The full TTL counts again from now, even before the clear is applied.
    assert_eq!(l.renew(1, 50 * SEC), Ok(Renewed { ttl: 100, clear_checkpoint: true }));
    assert_eq!(l.time_to_live(1, 50 * SEC).unwrap().remaining_secs, 100);
    assert!(l.checkpoint(1, 0));
    assert_eq!(l.renew(1, 60 * SEC), Ok(Renewed { ttl: 100, clear_checkpoint: false }));
}

#[test]
fn expired_only_after_the_deadline_with_retry_spacing() {
    let mut l = primary(1);
    l.grant(1, 10, 0).unwrap();
    assert!(l.expired(10 * SEC - 1, 10, 3 * SEC).is_empty());
    assert_eq!(l.expired(10 * SEC, 10, 3 * SEC), vec![1]);
    // Returned once; not again until the retry interval has passed.
    assert!(l.expired(10 * SEC, 10, 3 * SEC).is_empty());
    assert!(l.expired(13 * SEC - 1, 10, 3 * SEC).is_empty());
    assert_eq!(l.expired(13 * SEC, 10, 3 * SEC), vec![1]);
    // Once the revoke is applied it is gone.
    l.revoke(1).unwrap();
    assert!(l.expired(60 * SEC, 10, 3 * SEC).is_empty());
}

#[test]
fn expired_is_earliest_first_and_limited() {
    let mut l = primary(1);
    l.grant(3, 5, 0).unwrap();
    l.grant(1, 7, 0).unwrap();
    l.grant(2, 6, 0).unwrap();
    l.grant(4, 60, 0).unwrap();
    assert_eq!(l.expired(30 * SEC, 2, 3 * SEC), vec![3, 2]);
    assert_eq!(l.expired(30 * SEC, 2, 3 * SEC), vec![1]);
    assert!(l.expired(30 * SEC, 0, 3 * SEC).is_empty());
    // All three were re-queued for 33 s; equal times go by ID. With a zero retry
    // interval a lease still comes back only once per call.
    assert_eq!(l.expired(33 * SEC, 10, 0), vec![1, 2, 3]);
    assert_eq!(l.expired(33 * SEC, 10, 0), vec![1, 2, 3]);
}

#[test]
fn nothing_expires_on_a_non_primary() {
    let mut l = Lessor::new(1);
    l.grant(1, 1, 0).unwrap();
    assert!(l.expired(u64::MAX, 10, 0).is_empty());
    assert!(l.checkpoints_due(u64::MAX, 1, 10).is_empty());
    assert_eq!(l.time_to_live(1, 0), Err(LeaseError::NotPrimary));
}

#[test]
fn promote_uses_the_checkpointed_remaining_ttl_plus_extend() {
    let mut l = Lessor::new(1);
    l.grant(1, 100, 0).unwrap();
    l.grant(2, 100, 0).unwrap();
    assert!(l.checkpoint(1, 40));
    l.promote(1_000 * SEC, 500);
    let ttl1 = l.time_to_live(1, 1_000 * SEC).unwrap();
    assert_eq!((ttl1.remaining_secs, ttl1.granted_secs), (40, 100));
    assert_eq!(l.time_to_live(2, 1_000 * SEC).unwrap().remaining_secs, 100);
    assert!(l.expired(1_040 * SEC + 499, 10, 3 * SEC).is_empty());
    assert_eq!(l.expired(1_040 * SEC + 500, 10, 3 * SEC), vec![1]);
    l.revoke(1).unwrap();
    assert!(l.expired(1_100 * SEC + 499, 10, 3 * SEC).is_empty());
    assert_eq!(l.expired(1_100 * SEC + 500, 10, 3 * SEC), vec![2]);
}

#[test]
fn demote_forgets_expiries_and_promote_restarts_them() {
    let mut l = primary(1);
    l.grant(1, 10, 0).unwrap();
    l.demote();
    assert!(!l.is_primary());
    assert!(l.expired(100 * SEC, 10, 3 * SEC).is_empty());
    // A grant applied on a follower starts no clock.
    l.grant(2, 10, 100 * SEC).unwrap();
    l.promote(200 * SEC, 0);
    assert!(l.is_primary());
    assert!(l.expired(210 * SEC - 1, 10, 3 * SEC).is_empty());
    assert_eq!(l.expired(210 * SEC, 10, 3 * SEC), vec![1, 2]);
}

#[test]
fn time_to_live_truncates_like_etcd_and_sorts_keys() {
    let mut l = primary(1);
    l.grant(1, 10, 0).unwrap();
    l.attach(b"b", 1).unwrap();
    l.attach(b"a", 1).unwrap();
    let t = l.time_to_live(1, 8_500).unwrap();
    assert_eq!(t, TimeToLive { remaining_secs: 1, granted_secs: 10, keys: keys(&["a", "b"]) });
    assert_eq!(l.time_to_live(1, 9_999).unwrap().remaining_secs, 0);
    assert_eq!(l.time_to_live(1, 10_500).unwrap().remaining_secs, 0);
    assert_eq!(l.time_to_live(1, 11_500).unwrap().remaining_secs, -1);
    assert_eq!(l.time_to_live(2, 0), Err(LeaseError::NotFound));
}

#[test]
fn checkpoints_follow_etcds_schedule() {
    let interval = 300 * SEC;
    let mut l = primary(1);
    l.grant(1, 1000, 0).unwrap();
    l.grant(2, 300, 0).unwrap(); // never longer than the interval: never checkpointed
    assert!(l.checkpoints_due(interval - 1, interval, 10).is_empty());
    assert_eq!(l.checkpoints_due(interval, interval, 10), vec![(1, 700)]);
    assert!(l.checkpoint(1, 700));
    assert!(l.checkpoints_due(2 * interval - 1, interval, 10).is_empty());
    // Remaining is rounded up, as etcd's math.Ceil.
    assert_eq!(l.checkpoints_due(2 * interval + 500, interval, 10), vec![(1, 400)]);
    assert!(l.checkpoint(1, 400));
    assert_eq!(l.checkpoints_due(3 * interval + 500, interval, 10), vec![(1, 100)]);
    assert!(l.checkpoint(1, 100));
    // Its checkpointed TTL is now below the interval: no more checkpoints.
    assert!(l.checkpoints_due(4 * interval, interval, 10).is_empty());
}

#[test]
fn checkpoints_skip_renewed_leases_but_keep_them_scheduled() {
    let interval = 10 * SEC;
    let mut l = primary(1);
    l.grant(1, 60, 0).unwrap();
    l.renew(1, interval).unwrap();
    // Just renewed: remaining == TTL, nothing to record, but it stays scheduled.
    assert!(l.checkpoints_due(interval, interval, 10).is_empty());
    assert_eq!(l.checkpoints_due(2 * interval, interval, 10), vec![(1, 50)]);
}

#[test]
fn checkpoints_respect_the_limit_and_skip_expired_leases() {
    let interval = 10 * SEC;
    let mut l = primary(1);
    for id in 1..=5 {
        l.grant(id, 100, 0).unwrap();
    }
    l.grant(6, 11, 0).unwrap();
    assert_eq!(l.checkpoints_due(interval, interval, 2), vec![(1, 90), (2, 90)]);
    assert_eq!(l.checkpoints_due(interval, interval, 10), vec![(3, 90), (4, 90), (5, 90), (6, 1)]);
    // Lease 6 expires at 11 s and is dropped from the schedule.
    assert_eq!(l.checkpoints_due(3 * interval, interval, 10), vec![(1, 70), (2, 70), (3, 70), (4, 70), (5, 70)]);
}

#[test]
fn checkpoint_of_missing_lease_is_ignored_and_negative_means_none() {
    let mut l = Lessor::new(1);
    assert!(!l.checkpoint(1, 10));
    l.grant(1, 100, 0).unwrap();
    assert!(l.checkpoint(1, -5));
    let r = LeaseRecord::from_bytes(&l.record(1).unwrap()).unwrap();
    assert_eq!(r, LeaseRecord { id: 1, ttl_secs: 100, remaining_ttl_secs: 0 });
}

#[test]
fn record_restore_round_trip() {
    let mut l = primary(2);
    l.grant(1, 100, 0).unwrap();
    l.grant(-3, 1, 0).unwrap();
    l.grant(9, 50, 0).unwrap();
    l.checkpoint(9, 20);
    l.attach(b"x", 1).unwrap();
    l.attach(b"y", 9).unwrap();
    let records: Vec<Vec<u8>> = l.leases().into_iter().filter_map(|id| l.record(id)).collect();
    assert!(records.iter().all(|r| r.len() == RECORD_LEN));
    let mut r = Lessor::restore(records.clone(), 2).unwrap();
    assert!(!r.is_primary());
    assert_eq!(r.leases(), vec![-3, 1, 9]);
    for id in r.leases() {
        assert_eq!(r.record(id), l.record(id));
    }
    for (k, id) in [(&b"x"[..], 1), (&b"y"[..], 9)] {
        r.attach(k, id).unwrap();
    }
    r.promote(0, 0);
    assert_eq!(r.time_to_live(9, 0).unwrap(), TimeToLive { remaining_secs: 20, granted_secs: 50, keys: keys(&["y"]) });
    // A larger minimum TTL at restore raises old grants, as etcd's recovery does.
    let raised = Lessor::restore(records, 60).unwrap();
    assert_eq!(raised.granted_ttl(1), Some(100));
    assert_eq!(raised.granted_ttl(-3), Some(60));
    assert_eq!(raised.granted_ttl(9), Some(60));
}

#[test]
fn corrupt_record_is_an_error() {
    let mut l = Lessor::new(1);
    l.grant(1, 10, 0).unwrap();
    let good = l.record(1).unwrap();
    let truncated = good[..RECORD_LEN - 1].to_vec();
    assert!(matches!(Lessor::restore(vec![truncated], 1), Err(LeaseError::Corrupt(_))));
    let mut wrong_version = good.clone();
    wrong_version[0] = 0xff;
    assert!(matches!(Lessor::restore(vec![wrong_version], 1), Err(LeaseError::Corrupt(_))));
    assert!(matches!(Lessor::restore(vec![good.clone(), good], 1), Err(LeaseError::Corrupt(_))));
    assert!(Lessor::restore(Vec::new(), 1).unwrap().is_empty());
}

#[test]
fn promote_spreads_expiry_pileups() {
    let n = 2000usize;
    let mut l = Lessor::new(1);
    for id in 1..=n as i64 {
        l.grant(id, 10, 0).unwrap();
    }
    l.promote(0, 0);
    let mut expiries: Vec<u64> = (1..=n as i64)
        .map(|id| {
            let t = l.time_to_live(id, 0).unwrap();
            assert!(t.remaining_secs >= 10);
            t.remaining_secs as u64
        })
        .collect();
    expiries.sort();
    // Without spreading all 2000 would expire at 10 s. etcd's rule keeps the
    // first 750 there and pushes the rest out over the next seconds.
    let mut queue_order = Vec::new();
    let mut now = 10 * SEC;
    while queue_order.len() < n {
        let batch = l.expired(now, usize::MAX, 60 * SEC);
        assert!(batch.len() <= 750, "{} expiries in the second before {now} ms", batch.len());
        queue_order.extend(batch);
        now += SEC;
    }
    assert!(now > 12 * SEC, "spread over more than two seconds");
    assert!(now < 15 * SEC, "but not much further: {now}");
    assert_eq!(expiries.iter().filter(|&&s| s == 10).count(), 750);
}

#[test]
fn promote_does_not_spread_below_the_revoke_rate() {
    let mut l = Lessor::new(1);
    for id in 1..(LEASE_REVOKE_RATE as i64) {
        l.grant(id, 10, 0).unwrap();
    }
    l.promote(0, 0);
    assert_eq!(l.expired(10 * SEC, usize::MAX, 60 * SEC).len(), LEASE_REVOKE_RATE - 1);
}

#[test]
fn leases_by_expiry_lists_the_soonest_first() {
    let mut l = Lessor::new(1);
    l.promote(0, 0);
    l.grant(1, 100, 0).unwrap();
    l.grant(2, 10, 0).unwrap();
    l.grant(3, 50, 0).unwrap();
    assert_eq!(l.leases_by_expiry(), vec![2, 3, 1]);
    assert_eq!(l.leases(), vec![1, 2, 3]);
}
