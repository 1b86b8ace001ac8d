//! The third-party Rust `etcd-client` crate (0.21) against ketch (see
//! `KETCH_E2E_SUBJECT` in the library docs): put, get, prefix get, delete,
//! txn with compares, compaction and status, with exact expected results
//! (revisions included) that hold for etcd 3.4.

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};
use ketch_e2e::Member;

async fn connect(member: &Member) -> Client {
    Client::connect([member.client_url()], None)
        .await
        .unwrap_or_else(|e| panic!("etcd-client cannot connect to {}: {e}", member.client_url()))
}

fn keys(kvs: &[etcd_client::KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key_str().expect("utf-8 key")).collect()
}

#[tokio::test]
async fn etcd_client_crate_against_subject() {
    let member = Member::subject().await;
    let mut client = connect(&member).await;

    // put / get
    let put = client.put("foo", "bar", None).await.expect("put foo");
    assert_eq!(put.header().expect("put header").revision(), 2);
    assert!(put.prev_key().is_none());
    let put = client.put("foo", "baz", Some(PutOptions::new().with_prev_key())).await.expect("put foo with prev_kv");
    assert_eq!(put.header().expect("header").revision(), 3);
    let prev = put.prev_key().expect("prev kv");
    assert_eq!((prev.key(), prev.value(), prev.version()), (&b"foo"[..], &b"bar"[..], 1));

    let get = client.get("foo", None).await.expect("get foo");
    assert_eq!(get.count(), 1);
    let kv = &get.kvs()[0];
    assert_eq!(kv.value_str().expect("utf-8"), "baz");
    assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version(), kv.lease()), (2, 3, 2, 0));
    let missing = client.get("nope", None).await.expect("get missing");
    assert_eq!((missing.count(), missing.kvs().len()), (0, 0));

    // prefix get, sorted, limited, keys-only, count-only
    for (k, v) in [("p/a", "1"), ("p/b", "2"), ("p/c", "3"), ("pz", "x")] {
        client.put(k, v, None).await.expect("put prefix key"); // revs 4..=7
    }
    let prefix = client.get("p/", Some(GetOptions::new().with_prefix())).await.expect("prefix get");
    assert_eq!(keys(prefix.kvs()), ["p/a", "p/b", "p/c"]);
    assert_eq!(prefix.header().expect("header").revision(), 7);
    let desc = client
        .get(
            "p/",
            Some(GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Descend).with_limit(2)),
        )
        .await
        .expect("sorted get");
    assert_eq!(keys(desc.kvs()), ["p/c", "p/b"]);
    assert!(desc.more());
    assert_eq!(desc.count(), 3);
    let keys_only =
        client.get("p", Some(GetOptions::new().with_prefix().with_keys_only())).await.expect("keys-only get");
    assert_eq!(keys(keys_only.kvs()), ["p/a", "p/b", "p/c", "pz"]);
    assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()));
    let count_only =
        client.get("p", Some(GetOptions::new().with_prefix().with_count_only())).await.expect("count-only get");
    assert_eq!((count_only.count(), count_only.kvs().len()), (4, 0));
    let from_key = client.get("p/b", Some(GetOptions::new().with_from_key())).await.expect("from-key get");
    assert_eq!(keys(from_key.kvs()), ["p/b", "p/c", "pz"]);
    let historical = client.get("foo", Some(GetOptions::new().with_revision(2))).await.expect("get at revision 2");
    assert_eq!(historical.kvs()[0].value(), b"bar");

    // delete
    let del =
        client.delete("p/", Some(DeleteOptions::new().with_prefix().with_prev_key())).await.expect("prefix delete");
    assert_eq!(del.deleted(), 3);
    assert_eq!(keys(del.prev_kvs()), ["p/a", "p/b", "p/c"]);
    assert_eq!(del.header().expect("header").revision(), 8);
    let del = client.delete("nope", None).await.expect("delete missing");
    assert_eq!(del.deleted(), 0);
    assert_eq!(del.header().expect("header").revision(), 8);

    // txn with compares: success branch
    let txn = Txn::new()
        .when([
            Compare::value("foo", CompareOp::Equal, "baz"),
            Compare::version("foo", CompareOp::Greater, 1),
            Compare::create_revision("new", CompareOp::Equal, 0),
            Compare::mod_revision("pz", CompareOp::Less, 100),
        ])
        .and_then([TxnOp::put("new", "1", None), TxnOp::get("foo", None), TxnOp::delete("pz", None)])
        .or_else([TxnOp::put("failed", "1", None)]);
    let resp = client.txn(txn).await.expect("txn (success)");
    assert!(resp.succeeded());
    // One txn, one revision, however many writes it makes.
    assert_eq!(resp.header().expect("header").revision(), 9);
    let ops = resp.op_responses();
    assert_eq!(ops.len(), 3);
    match &ops[1] {
        TxnOpResponse::Get(get) => assert_eq!(get.kvs()[0].value(), b"baz"),
        other => panic!("expected a get response, got {other:?}"),
    }
    match &ops[2] {
        TxnOpResponse::Delete(del) => assert_eq!(del.deleted(), 1),
        other => panic!("expected a delete response, got {other:?}"),
    }

    // txn with compares: failure branch
    let txn = Txn::new()
        .when([Compare::value("foo", CompareOp::NotEqual, "baz")])
        .and_then([TxnOp::put("never", "1", None)])
        .or_else([TxnOp::get("new", None)]);
    let resp = client.txn(txn).await.expect("txn (failure)");
    assert!(!resp.succeeded());
    assert_eq!(resp.header().expect("header").revision(), 9);
    match &resp.op_responses()[0] {
        TxnOpResponse::Get(get) => assert_eq!(get.kvs()[0].value(), b"1"),
        other => panic!("expected a get response, got {other:?}"),
    }
    let never = client.get("never", None).await.expect("get never");
    assert_eq!(never.count(), 0);

    // compaction
    client.compact(5, Some(CompactionOptions::new().with_physical())).await.expect("compact 5");
    let err = client.get("foo", Some(GetOptions::new().with_revision(3))).await.expect_err("read below the compaction");
    assert!(err.to_string().contains("required revision has been compacted"), "{err}");
    let err = client.compact(4, None).await.expect_err("compact to an already compacted revision");
    assert!(err.to_string().contains("required revision has been compacted"), "{err}");
    let err = client.compact(1000, None).await.expect_err("compact to a future revision");
    assert!(err.to_string().contains("future revision"), "{err}");
    let at5 = client
        .get("p/", Some(GetOptions::new().with_prefix().with_revision(5)))
        .await
        .expect("read at the compaction revision");
    assert_eq!(keys(at5.kvs()), ["p/a", "p/b"]);

    // status
    let status = client.status().await.expect("status");
    assert!(status.version().starts_with("3.4"), "version {:?} is not of the etcd 3.4 family", status.version());
    assert_eq!(status.header().expect("header").revision(), 9);
    assert_ne!(status.leader(), 0, "leader");
    assert_ne!(status.raft_index(), 0, "raft index");
    assert!(status.db_size() > 0, "db size");
}
