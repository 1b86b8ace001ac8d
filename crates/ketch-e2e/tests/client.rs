//! `ketch-client` against one member of the implementation under test (see
//! `KETCH_E2E_SUBJECT` in the library docs; every test passes against etcd
//! 3.4 too):
//!
//! - `kv_round_trip`: put/get/delete with every option, exact revisions,
//!   compaction, and etcd's errors surfaced with code and message;
//! - `txn_branches_and_nesting`: compares of every target, both branches,
//!   nested transactions, prefix compares, etcd's txn errors;
//! - `lease_keep_alive_holds_and_expiry_follows`: a kept-alive lease outlives
//!   its TTL, its key goes when the keep-alive stops; revoke, time-to-live,
//!   lease list, errors;
//! - `watch_events_filters_progress_and_compaction`: events in order with
//!   prev_kv and filters, history replay, progress requests, cancel, and a
//!   compacted start revision as `Error::Compacted`;
//! - `mutex_excludes`: tasks with their own sessions increment a counter
//!   under one lock: no lost update, never two holders;
//! - `election_campaign_proclaim_observe_resign`;
//! - `cluster_and_maintenance`: member list, endpoint sync, status, hash,
//!   alarms; member add (learner), promote, update, remove; snapshot and
//!   defragment (membership changes, snapshot and defragment may be
//!   unimplemented on ketch).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ketch_client::concurrency::{Election, Mutex, Session, SessionOptions};
use ketch_client::proto::response_op::Response as OpResponse;
use ketch_client::{
    Client, ClientOptions, Code, Compare, CompareOp, DeleteOptions, Error, ErrorKind, EventType, GetOptions,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions, WatchResponse, Watcher,
};
use ketch_e2e::{Member, subject_kind};

async fn connect(member: &Member) -> Client {
    Client::connect([member.client_url()], ClientOptions::new()).await.expect("connect")
}

fn rev(header: &Option<ketch_client::proto::ResponseHeader>) -> i64 {
    header.as_ref().expect("response header").revision
}

fn keys(kvs: &[ketch_client::KeyValue]) -> Vec<String> {
    kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
}

#[tokio::test]
async fn kv_round_trip() {
    let member = Member::subject().await;
    let client = connect(&member).await;
    let kv = client.kv();

    let put = kv.put("foo", "bar", PutOptions::new()).await.expect("put foo");
    assert_eq!(rev(&put.header), 2);
    assert!(put.prev_kv.is_none());
    let put = kv.put("foo", "baz", PutOptions::new().prev_kv()).await.expect("put with prev_kv");
    assert_eq!(rev(&put.header), 3);
    let prev = put.prev_kv.expect("prev kv");
    assert_eq!((prev.value.as_slice(), prev.version), (&b"bar"[..], 1));

    let got = kv.get("foo", GetOptions::new()).await.expect("get foo");
    assert_eq!(got.count, 1);
    let foo = &got.kvs[0];
    assert_eq!((foo.value.as_slice(), foo.create_revision, foo.mod_revision, foo.version), (&b"baz"[..], 2, 3, 2));
    let old = kv.get("foo", GetOptions::new().revision(2)).await.expect("get at revision 2");
    assert_eq!(old.kvs[0].value, b"bar");
    assert!(kv.get("missing", GetOptions::new()).await.expect("get missing").kvs.is_empty());

    for (i, k) in ["a/1", "a/2", "a/3", "b"].iter().enumerate() {
        let put = kv.put(*k, format!("v{i}"), PutOptions::new()).await.expect("put");
        assert_eq!(rev(&put.header), 4 + i as i64);
    }
    let prefix = kv.get("a/", GetOptions::new().prefix()).await.expect("prefix");
    assert_eq!(
        (keys(&prefix.kvs), prefix.count, prefix.more),
        (vec!["a/1".into(), "a/2".into(), "a/3".into()], 3, false)
    );
    let limited = kv.get("a/", GetOptions::new().prefix().limit(2)).await.expect("limit");
    assert_eq!((limited.kvs.len(), limited.count, limited.more), (2, 3, true));
    let sorted =
        kv.get("a/", GetOptions::new().prefix().sort(SortTarget::Key, SortOrder::Descend)).await.expect("sort");
    assert_eq!(keys(&sorted.kvs), vec!["a/3", "a/2", "a/1"]);
    let by_mod = kv.get("a/", GetOptions::new().prefix().sort(SortTarget::Mod, SortOrder::None)).await.expect("sort");
    assert_eq!(keys(&by_mod.kvs), vec!["a/1", "a/2", "a/3"], "a target without order sorts ascending");
    let keys_only = kv.get("a/", GetOptions::new().prefix().keys_only()).await.expect("keys only");
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()) && keys_only.kvs.len() == 3);
    let count_only = kv.get("a/", GetOptions::new().prefix().count_only()).await.expect("count only");
    assert_eq!((count_only.kvs.len(), count_only.count), (0, 3));
    let from_key = kv.get("a/3", GetOptions::new().from_key()).await.expect("from key");
    assert_eq!(keys(&from_key.kvs), vec!["a/3", "b", "foo"]);
    let range = kv.get("a/2", GetOptions::new().range_end("b")).await.expect("range");
    assert_eq!(keys(&range.kvs), vec!["a/2", "a/3"]);
    let all = kv.get("", GetOptions::new().prefix()).await.expect("everything");
    assert_eq!(all.count, 5);
    let filtered =
        kv.get("a/", GetOptions::new().prefix().min_mod_revision(5).max_mod_revision(5)).await.expect("mod filter");
    assert_eq!(keys(&filtered.kvs), vec!["a/2"]);
    let filtered = kv.get("", GetOptions::new().prefix().min_create_revision(6)).await.expect("create filter");
    assert_eq!(keys(&filtered.kvs), vec!["a/3", "b"]);
    let serializable = kv.get("foo", GetOptions::new().serializable()).await.expect("serializable");
    assert_eq!(serializable.kvs[0].value, b"baz");

    // ignore_value / ignore_lease keep what is there; a missing key is an error.
    let lease = client.lease().grant(60).await.expect("grant");
    kv.put("b", "", PutOptions::new().lease(lease.id).ignore_value()).await.expect("put ignore_value");
    let b = kv.get("b", GetOptions::new()).await.expect("get b").kvs.remove(0);
    assert_eq!((b.value.as_slice(), b.lease), (&b"v3"[..], lease.id));
    kv.put("b", "w", PutOptions::new().ignore_lease()).await.expect("put ignore_lease");
    let b = kv.get("b", GetOptions::new()).await.expect("get b").kvs.remove(0);
    assert_eq!((b.value.as_slice(), b.lease), (&b"w"[..], lease.id));
    let err = kv.put("nope", "", PutOptions::new().ignore_value()).await.expect_err("ignore_value on a missing key");
    assert_eq!((err.code(), err.kind()), (Some(Code::InvalidArgument), Some(ErrorKind::KeyNotFound)));
    let err = kv.put("", "v", PutOptions::new()).await.expect_err("empty key");
    assert_eq!(err.kind(), Some(ErrorKind::EmptyKey));
    let err = kv.put("k", "v", PutOptions::new().lease(0x1234)).await.expect_err("unknown lease");
    assert_eq!((err.code(), err.kind()), (Some(Code::NotFound), Some(ErrorKind::LeaseNotFound)));

    let deleted = kv.delete("a/", DeleteOptions::new().prefix().prev_kv()).await.expect("delete prefix");
    assert_eq!((deleted.deleted, keys(&deleted.prev_kvs)), (3, vec!["a/1".into(), "a/2".into(), "a/3".into()]));
    let current = rev(&deleted.header);
    let none = kv.delete("a/", DeleteOptions::new().prefix()).await.expect("delete nothing");
    assert_eq!((none.deleted, rev(&none.header)), (0, current), "deleting nothing keeps the revision");
    let one = kv.delete("foo", DeleteOptions::new()).await.expect("delete foo");
    assert_eq!(one.deleted, 1);

    // Compaction: the past before it is gone, with etcd's error.
    kv.compact(current, true).await.expect("compact");
    let err = kv.get("foo", GetOptions::new().revision(2)).await.expect_err("compacted read");
    assert!(err.is_compacted());
    assert_eq!(err.code(), Some(Code::OutOfRange));
    assert_eq!(err.etcd().expect("server error").message(), "etcdserver: mvcc: required revision has been compacted");
    let err = kv.compact(current - 1, false).await.expect_err("compact again below");
    assert!(err.is_compacted());
    let err = kv.get("foo", GetOptions::new().revision(current + 100)).await.expect_err("future revision");
    assert_eq!(err.kind(), Some(ErrorKind::FutureRevision));
}

fn op_range(r: &ketch_client::proto::ResponseOp) -> &ketch_client::proto::RangeResponse {
    match r.response.as_ref() {
        Some(OpResponse::ResponseRange(range)) => range,
        other => panic!("expected a range response, got {other:?}"),
    }
}

#[tokio::test]
async fn txn_branches_and_nesting() {
    let member = Member::subject().await;
    let client = connect(&member).await;
    let kv = client.kv();
    kv.put("k", "v1", PutOptions::new()).await.expect("put"); // rev 2
    kv.put("p/1", "x", PutOptions::new()).await.expect("put"); // rev 3
    kv.put("p/2", "x", PutOptions::new()).await.expect("put"); // rev 4

    // Create-if-absent: fails, reads instead.
    let txn = Txn::new()
        .when([Compare::create_revision("k", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("k", "never", PutOptions::new())])
        .or_else([TxnOp::get("k", GetOptions::new())]);
    let resp = kv.txn(txn).await.expect("txn");
    assert!(!resp.succeeded);
    assert_eq!(rev(&resp.header), 4, "a failed read-only branch does not write");
    assert_eq!(op_range(&resp.responses[0]).kvs[0].value, b"v1");

    // Compare every target at once, then write in the success branch.
    let txn = Txn::new()
        .when([
            Compare::version("k", CompareOp::Equal, 1),
            Compare::create_revision("k", CompareOp::Equal, 2),
            Compare::mod_revision("k", CompareOp::Less, 3),
            Compare::value("k", CompareOp::Equal, "v1"),
            Compare::lease("k", CompareOp::Equal, 0),
            Compare::value("p/", CompareOp::Equal, "x").with_prefix(),
            Compare::version("missing", CompareOp::NotEqual, 1),
        ])
        .and_then([
            TxnOp::put("k", "v2", PutOptions::new().prev_kv()),
            TxnOp::delete("p/1", DeleteOptions::new()),
            TxnOp::txn(
                Txn::new()
                    .when([Compare::value("p/2", CompareOp::Greater, "w")])
                    .and_then([TxnOp::get("p/", GetOptions::new().prefix().count_only())]),
            ),
        ])
        .or_else([TxnOp::put("failed", "", PutOptions::new())]);
    let resp = kv.txn(txn).await.expect("txn");
    assert!(resp.succeeded);
    assert_eq!(rev(&resp.header), 5, "one revision for every write of the txn");
    match resp.responses[2].response.as_ref() {
        Some(OpResponse::ResponseTxn(nested)) => {
            assert!(nested.succeeded);
            assert_eq!(op_range(&nested.responses[0]).count, 1, "the nested read sees the outer delete");
        }
        other => panic!("expected a nested txn response, got {other:?}"),
    }
    let k = kv.get("k", GetOptions::new()).await.expect("get").kvs.remove(0);
    assert_eq!((k.value.as_slice(), k.mod_revision, k.version), (&b"v2"[..], 5, 2));

    // A value compare on a missing key is false.
    let txn = Txn::new().when([Compare::value("missing", CompareOp::NotEqual, "z")]);
    assert!(!kv.txn(txn).await.expect("txn").succeeded);

    let err = kv
        .txn(Txn::new().and_then([TxnOp::put("d", "1", PutOptions::new()), TxnOp::put("d", "2", PutOptions::new())]))
        .await
        .expect_err("duplicate key");
    assert_eq!((err.code(), err.kind()), (Some(Code::InvalidArgument), Some(ErrorKind::DuplicateKey)));
    let ops: Vec<TxnOp> = (0..129).map(|i| TxnOp::get(format!("k{i}"), GetOptions::new())).collect();
    let err = kv.txn(Txn::new().and_then(ops)).await.expect_err("too many ops");
    assert_eq!(err.kind(), Some(ErrorKind::TooManyOps));
}

/// Polls `cond` every 100 ms until it holds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn lease_keep_alive_holds_and_expiry_follows() {
    let member = Member::subject().await;
    let client = connect(&member).await;
    let (kv, leases) = (client.kv(), client.lease());

    let lease = leases.grant(3).await.expect("grant");
    assert_eq!(lease.ttl, 3);
    kv.put("held", "1", PutOptions::new().lease(lease.id)).await.expect("put with lease");
    let keep_alive = leases.keep_alive(lease.id).await.expect("keep alive");
    assert_eq!((keep_alive.id(), keep_alive.ttl()), (lease.id, Some(3)));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(keep_alive.is_alive());
    assert_eq!(kv.get("held", GetOptions::new()).await.expect("get").count, 1, "kept alive past its TTL");
    let ttl = leases.time_to_live(lease.id, true).await.expect("time to live");
    assert_eq!((ttl.granted_ttl, ttl.keys.clone()), (3, vec![b"held".to_vec()]));
    assert!(ttl.ttl > 0 && ttl.ttl <= 3, "remaining {}", ttl.ttl);
    let listed = leases.leases().await.expect("leases");
    assert!(listed.leases.iter().any(|l| l.id == lease.id));
    let once = leases.keep_alive_once(lease.id).await.expect("keep alive once");
    assert_eq!((once.id, once.ttl), (lease.id, 3));

    // Stop renewing: the lease expires, and its key with it.
    drop(keep_alive);
    eventually(Duration::from_secs(8), "the key of an expired lease is deleted", || async {
        kv.get("held", GetOptions::new()).await.expect("get").count == 0
    })
    .await;
    assert_eq!(leases.time_to_live(lease.id, false).await.expect("time to live").ttl, -1);
    let err = leases.keep_alive_once(lease.id).await.expect_err("expired lease");
    assert!(matches!(err, Error::LeaseExpired { id } if id == lease.id), "{err:?}");
    let err = leases.keep_alive(lease.id).await.expect_err("keep alive of an expired lease");
    assert!(err.is_lease_gone());

    // Revoke deletes the keys at once; a keep-alive notices the lease is gone.
    let lease = leases.grant_with_id(30, 0x7777).await.expect("grant with id");
    assert_eq!(lease.id, 0x7777);
    let err = leases.grant_with_id(30, 0x7777).await.expect_err("grant an existing id");
    assert_eq!(err.kind(), Some(ErrorKind::LeaseExists));
    kv.put("r", "1", PutOptions::new().lease(lease.id)).await.expect("put");
    let keep_alive = leases.keep_alive(lease.id).await.expect("keep alive");
    leases.revoke(lease.id).await.expect("revoke");
    assert_eq!(kv.get("r", GetOptions::new()).await.expect("get").count, 0);
    let ended = tokio::time::timeout(Duration::from_secs(15), keep_alive.ended()).await.expect("keep-alive ends");
    assert!(matches!(ended, Error::LeaseExpired { id: 0x7777 }), "{ended:?}");
    let err = leases.revoke(lease.id).await.expect_err("revoke twice");
    assert_eq!((err.code(), err.kind()), (Some(Code::NotFound), Some(ErrorKind::LeaseNotFound)));
}

/// The next response within 10 s.
async fn next(watcher: &mut Watcher) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), watcher.message())
        .await
        .expect("a watch response within 10 s")
        .expect("watch error")
        .expect("watch ended")
}

/// `(type, key, value, mod revision)` of each event.
fn events(response: &WatchResponse) -> Vec<(i32, String, String, i64)> {
    response
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().expect("event kv");
            (
                e.r#type,
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.mod_revision,
            )
        })
        .collect()
}

const PUT: i32 = EventType::Put as i32;
const DELETE: i32 = EventType::Delete as i32;

#[tokio::test]
async fn watch_events_filters_progress_and_compaction() {
    let member = Member::subject().await;
    let client = connect(&member).await;
    let kv = client.kv();
    let watch = client.watch();

    let mut all = watch.watch("w/", WatchOptions::new().prefix().prev_kv()).await.expect("watch");
    assert_eq!(all.created_revision(), 1);
    let mut no_delete = watch.watch("w/", WatchOptions::new().prefix().no_delete()).await.expect("watch");
    let mut one_key = watch.watch("w/a", WatchOptions::new()).await.expect("watch");

    kv.put("w/a", "1", PutOptions::new()).await.expect("put"); // 2
    kv.put("w/b", "2", PutOptions::new()).await.expect("put"); // 3
    kv.put("other", "x", PutOptions::new()).await.expect("put"); // 4
    kv.put("w/a", "3", PutOptions::new()).await.expect("put"); // 5
    kv.delete("w/", DeleteOptions::new().prefix()).await.expect("delete"); // 6
    let txn =
        Txn::new().and_then([TxnOp::put("w/x", "x", PutOptions::new()), TxnOp::put("w/y", "y", PutOptions::new())]);
    kv.txn(txn).await.expect("txn"); // 7

    let mut seen = Vec::new();
    while seen.len() < 7 {
        let response = next(&mut all).await;
        if !response.is_progress_notify() {
            seen.extend(events(&response));
        }
    }
    let expected = vec![
        (PUT, "w/a".to_string(), "1".to_string(), 2),
        (PUT, "w/b".into(), "2".into(), 3),
        (PUT, "w/a".into(), "3".into(), 5),
        (DELETE, "w/a".into(), "".into(), 6),
        (DELETE, "w/b".into(), "".into(), 6),
        (PUT, "w/x".into(), "x".into(), 7),
        (PUT, "w/y".into(), "y".into(), 7),
    ];
    assert_eq!(seen, expected);

    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.extend(events(&next(&mut no_delete).await));
    }
    assert!(seen.iter().all(|e| e.0 == PUT), "{seen:?}");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.extend(events(&next(&mut one_key).await));
    }
    assert_eq!(seen.iter().map(|e| e.3).collect::<Vec<_>>(), vec![2, 5, 6]);

    // prev_kv: the value before each event.
    let mut replay = watch.watch("w/a", WatchOptions::new().start_revision(2).prev_kv()).await.expect("replay");
    let mut prev = Vec::new();
    while prev.len() < 3 {
        let response = next(&mut replay).await;
        prev.extend(response.events.iter().map(|e| e.prev_kv.as_ref().map(|kv| kv.value.clone())));
    }
    assert_eq!(prev, vec![None, Some(b"1".to_vec()), Some(b"3".to_vec())]);

    // A progress request is answered with an event-less response at the current revision.
    all.request_progress().await.expect("progress request");
    let progress = next(&mut all).await;
    assert!(progress.is_progress_notify());
    assert_eq!(progress.revision(), 7);

    // Cancel ends the stream.
    one_key.cancel().await.expect("cancel");

    // Watching from a compacted revision is a compaction error.
    kv.compact(5, true).await.expect("compact");
    let outcome = match watch.watch("w/", WatchOptions::new().prefix().start_revision(2)).await {
        Err(e) => e,
        Ok(mut watcher) => tokio::time::timeout(Duration::from_secs(10), watcher.message())
            .await
            .expect("an answer within 10 s")
            .expect_err("a compacted start revision fails"),
    };
    assert!(matches!(outcome, Error::Compacted { compact_revision: 5 }), "{outcome:?}");
}

#[tokio::test]
async fn mutex_excludes() {
    const TASKS: usize = 4;
    const ROUNDS: usize = 5;
    let member = Member::subject().await;
    let client = connect(&member).await;
    client.kv().put("counter", "0", PutOptions::new()).await.expect("put counter");
    let holders = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let client = client.clone();
        let holders = Arc::clone(&holders);
        tasks.push(tokio::spawn(async move {
            let session = Session::new(&client, SessionOptions::new().ttl(10)).await.expect("session");
            let mut mutex = Mutex::new(&session, "lock");
            for _ in 0..ROUNDS {
                mutex.lock().await.expect("lock");
                assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
                let got = client.kv().get("counter", GetOptions::new()).await.expect("get").kvs.remove(0);
                let n: usize = String::from_utf8_lossy(&got.value).parse().expect("a number");
                tokio::time::sleep(Duration::from_millis(5)).await;
                // Written only as the holder: a lost lock makes the txn fail.
                let write = Txn::new().when([mutex.is_owner()]).and_then([TxnOp::put(
                    "counter",
                    (n + 1).to_string(),
                    PutOptions::new(),
                )]);
                assert!(client.kv().txn(write).await.expect("txn").succeeded, "the holder's write");
                holders.fetch_sub(1, Ordering::SeqCst);
                mutex.unlock().await.expect("unlock");
            }
            session.close().await.expect("close session");
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let got = client.kv().get("counter", GetOptions::new()).await.expect("get").kvs.remove(0);
    assert_eq!(got.value, (TASKS * ROUNDS).to_string().into_bytes(), "no lost update");
    assert_eq!(client.kv().get("lock/", GetOptions::new().prefix()).await.expect("get").count, 0);

    // try_lock: taken by another session means no.
    let s1 = Session::new(&client, SessionOptions::new().ttl(10)).await.expect("session");
    let s2 = Session::new(&client, SessionOptions::new().ttl(10)).await.expect("session");
    let mut m1 = Mutex::new(&s1, "try");
    let mut m2 = Mutex::new(&s2, "try");
    assert!(m1.try_lock().await.expect("try_lock"));
    assert!(!m2.try_lock().await.expect("try_lock"));
    // Closing the holder's session releases the lock.
    s1.close().await.expect("close");
    tokio::time::timeout(Duration::from_secs(10), m2.lock()).await.expect("lock within 10 s").expect("lock");
    assert_eq!(m2.key(), format!("try/{:x}", s2.lease()).as_bytes());
}

/// The next observed leader value, within 10 s.
async fn observed(observer: &mut ketch_client::concurrency::Observer) -> String {
    let kv = tokio::time::timeout(Duration::from_secs(10), observer.next())
        .await
        .expect("observed within 10 s")
        .expect("observe")
        .expect("observer ended");
    String::from_utf8_lossy(&kv.value).into_owned()
}

#[tokio::test]
async fn election_campaign_proclaim_observe_resign() {
    let member = Member::subject().await;
    let client = connect(&member).await;
    let s1 = Session::new(&client, SessionOptions::new().ttl(10)).await.expect("session");
    let s2 = Session::new(&client, SessionOptions::new().ttl(10)).await.expect("session");
    let mut e1 = Election::new(&s1, "elect");
    let mut e2 = Election::new(&s2, "elect");
    let err = e1.leader().await.expect_err("no leader yet");
    assert!(matches!(err, Error::ElectionNoLeader));

    let mut observer = e1.observe();
    e1.campaign("a").await.expect("campaign");
    assert_eq!(observed(&mut observer).await, "a");
    assert_eq!(e1.leader().await.expect("leader").value, b"a");

    // The second candidate waits behind the first.
    let second = tokio::spawn(async move {
        e2.campaign("b").await.expect("campaign b");
        e2
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "elected while the first leader is still there");
    e1.proclaim("a2").await.expect("proclaim");
    assert_eq!(observed(&mut observer).await, "a2");
    assert_eq!(e1.leader().await.expect("leader").value, b"a2");

    e1.resign().await.expect("resign");
    let mut e2 = tokio::time::timeout(Duration::from_secs(10), second).await.expect("elected").expect("task");
    assert_eq!(observed(&mut observer).await, "b");
    assert_eq!(e2.leader().await.expect("leader").key, e2.key().expect("key"));
    let err = e1.proclaim("x").await.expect_err("not the leader");
    assert!(matches!(err, Error::ElectionNotLeader));
    e2.proclaim("b2").await.expect("proclaim");
    assert_eq!(observed(&mut observer).await, "b2");

    // The leader's session ends: leadership is free again.
    s2.close().await.expect("close");
    let err = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match e1.leader().await {
                Err(e) => return e,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("leader gone");
    assert!(matches!(err, Error::ElectionNoLeader));
}

#[tokio::test]
async fn cluster_and_maintenance() {
    let member = Member::subject().await;
    let client = connect(&member).await;
    let members = client.cluster().member_list().await.expect("member list");
    assert_eq!(members.members.len(), 1);
    assert_eq!(members.members[0].client_ur_ls, vec![member.client_url()]);
    assert_eq!(client.sync_endpoints().await.expect("sync"), vec![member.client_url()]);

    client.kv().put("k", "v", PutOptions::new()).await.expect("put");
    let maintenance = client.maintenance();
    let status = maintenance.status().await.expect("status");
    assert_eq!(status.version, "3.4.23");
    assert_eq!(rev(&status.header), 2);
    assert_eq!(status.leader, status.header.expect("header").member_id);
    let of = maintenance.status_of(&member.endpoint()).await.expect("status of");
    assert_eq!(of.header.expect("header").member_id, status.leader);
    let hash = maintenance.hash_kv(&member.client_url(), 0).await.expect("hash kv");
    assert_eq!(hash, maintenance.hash_kv(&member.endpoint(), 2).await.expect("hash kv at 2"));
    assert!(maintenance.alarm_list().await.expect("alarm list").alarms.is_empty());
    let err = maintenance.status_of("127.0.0.1:1").await.expect_err("status of nothing");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");

    let unimplemented_on_ketch = |what: &str, err: Error| {
        assert!(subject_kind() == ketch_e2e::Kind::Ketch && err.code() == Some(Code::Unimplemented), "{what}: {err:?}");
    };

    // Membership changes pass through: a learner that never starts.
    let peer = format!("http://127.0.0.1:{}", ketch_e2e::free_port());
    match client.cluster().member_add(vec![peer.clone()], true).await {
        Ok(added) => {
            let learner = added.member.expect("the added member");
            assert!(learner.is_learner && learner.name.is_empty(), "{learner:?}");
            assert_eq!((learner.peer_ur_ls.clone(), added.members.len()), (vec![peer], 2));
            let err = client.cluster().member_promote(learner.id).await.expect_err("promote a learner not in sync");
            assert_eq!(err.kind(), Some(ErrorKind::LearnerNotReady), "{err:?}");
            let moved = format!("http://127.0.0.1:{}", ketch_e2e::free_port());
            let updated = client.cluster().member_update(learner.id, vec![moved.clone()]).await.expect("update");
            assert!(updated.members.iter().any(|m| m.id == learner.id && m.peer_ur_ls == vec![moved.clone()]));
            let removed = client.cluster().member_remove(learner.id).await.expect("remove");
            assert_eq!(removed.members.len(), 1);
            let err = client.cluster().member_remove(learner.id).await.expect_err("remove twice");
            assert_eq!(err.kind(), Some(ErrorKind::MemberNotFound), "{err:?}");
            // A learner's URLs are not endpoints, a removed member's neither.
            assert_eq!(client.sync_endpoints().await.expect("sync"), vec![member.client_url()]);
        }
        Err(e) => unimplemented_on_ketch("member add", e),
    }

    match maintenance.snapshot().await {
        Ok(snapshot) => match snapshot.read_to_end().await {
            // bbolt file plus the 32-byte sha256 trailer.
            Ok(data) => assert!(data.len() > 32, "snapshot of {} bytes", data.len()),
            Err(e) => unimplemented_on_ketch("snapshot", e),
        },
        Err(e) => unimplemented_on_ketch("snapshot", e),
    }
    if let Err(e) = maintenance.defragment(&member.endpoint()).await {
        unimplemented_on_ketch("defragment", e);
    }
}
