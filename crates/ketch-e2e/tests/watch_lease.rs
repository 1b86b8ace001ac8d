//! Lease revocation and expiry as a watcher sees them, compared with etcd: the
//! keys of a revoked (or expired) lease are deleted in one revision, which
//! arrives as DELETE events in one response.

use std::time::Duration;

use ketch_e2e::{Kind, Member, subject_kind};
use ketch_proto::etcdserverpb::lease_client::LeaseClient;
use ketch_proto::etcdserverpb::watch_request::RequestUnion;
use ketch_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseRevokeRequest, PutRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// (event type, key, mod revision) per response.
type Shape = Vec<Vec<(i32, String, i64)>>;

async fn scenario(member: &Member, expire: bool) -> Shape {
    let (tx, rx) = mpsc::channel(4);
    let create = WatchCreateRequest { key: b"l/".to_vec(), range_end: b"l0".to_vec(), ..Default::default() };
    tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.expect("queue create");
    let mut stream = member.watch().await.watch(ReceiverStream::new(rx)).await.expect("watch").into_inner();
    let created = stream.message().await.expect("stream").expect("created");
    assert!(created.created);
    let mut lease = LeaseClient::new(member.channel().await);
    let ttl = if expire { 1 } else { 60 };
    lease.lease_grant(LeaseGrantRequest { ttl, id: 7 }).await.expect("grant");
    let mut kv = member.kv().await;
    for k in ["l/a", "l/b", "l/c"] {
        kv.put(PutRequest { key: k.into(), value: b"v".to_vec(), lease: 7, ..Default::default() }).await.expect("put");
    }
    if !expire {
        lease.lease_revoke(LeaseRevokeRequest { id: 7 }).await.expect("revoke");
    }
    let mut shapes = Vec::new();
    let mut events = 0;
    while events < 6 {
        let r: WatchResponse = tokio::time::timeout(Duration::from_secs(15), stream.message())
            .await
            .expect("events within 15 s")
            .expect("stream")
            .expect("open");
        events += r.events.len();
        shapes.push(
            r.events
                .iter()
                .map(|e| {
                    let kv = e.kv.as_ref().expect("kv");
                    (e.r#type, String::from_utf8_lossy(&kv.key).into_owned(), kv.mod_revision)
                })
                .collect(),
        );
    }
    drop(tx);
    shapes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_leases_delete_their_keys_in_one_revision() {
    let args = ["--election-timeout", "500", "--heartbeat-interval", "100"];
    let (etcd, subject) = tokio::join!(Member::start(Kind::Etcd, &args), Member::start(subject_kind(), &args));
    for expire in [false, true] {
        let want = scenario(&etcd, expire).await;
        let deletes = want.last().expect("responses");
        assert!(deletes.len() == 3 && deletes.iter().all(|(t, _, _)| *t == 1), "premise: {want:?}");
        let got = scenario(&subject, expire).await;
        assert_eq!(got, want, "{} vs etcd (expire: {expire})", subject_kind().as_str());
    }
}
