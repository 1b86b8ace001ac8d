//! Two watch behaviours that need large or delayed responses, compared with
//! the reference etcd: fragmentation of a revision larger than
//! `--max-request-bytes`, and a stream that stops reading for thousands of
//! revisions and then resumes (on Ketch, far beyond the broadcast buffer, so it
//! must be caught up from history) without losing or repeating anything.

use ketch_e2e::{Kind, Member, subject_kind};
use ketch_proto::etcdserverpb::request_op::Request;
use ketch_proto::etcdserverpb::watch_request::RequestUnion;
use ketch_proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// `--max-request-bytes`: etcd fragments at this plus gRPC's 512 KiB overhead
/// allowance, so 1,724,288 bytes.
const LIMIT: &str = "1200000";
const VALUE_LEN: usize = 280_000;

async fn open(
    member: &Member,
    create: WatchCreateRequest,
) -> (mpsc::Sender<WatchRequest>, tonic::Streaming<WatchResponse>) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.expect("queue create");
    let mut stream = member.watch().await.watch(ReceiverStream::new(rx)).await.expect("watch").into_inner();
    let created = stream.message().await.expect("stream").expect("created response");
    assert!(created.created, "first response is the creation: {created:?}");
    (tx, stream)
}

/// The shape of responses: (fragment flag, keys and revisions of its events).
fn shape(r: &WatchResponse) -> (bool, Vec<(String, i64, usize, bool)>) {
    let events = r
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().expect("event kv");
            (String::from_utf8_lossy(&kv.key).into_owned(), kv.mod_revision, kv.value.len(), e.prev_kv.is_some())
        })
        .collect();
    (r.fragment, events)
}

async fn fragments(member: &Member) -> Vec<(bool, Vec<(String, i64, usize, bool)>)> {
    let create = WatchCreateRequest {
        key: b"f/".to_vec(),
        range_end: b"f0".to_vec(),
        prev_kv: true,
        fragment: true,
        ..Default::default()
    };
    let (_tx, mut stream) = open(member, create).await;
    let mut kv = member.kv().await;
    // Two revisions of four 280 kB values (1.1 MB, under the request limit): the
    // second carries prev_kv too, so it is twice the size and over the
    // fragmentation limit.
    for round in 0..2u8 {
        let ops = (0..4)
            .map(|i| RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: format!("f/{i}").into_bytes(),
                    value: vec![b'a' + round; VALUE_LEN],
                    ..Default::default()
                })),
            })
            .collect();
        kv.txn(TxnRequest { success: ops, ..Default::default() }).await.expect("txn");
    }
    let mut got = Vec::new();
    let mut events = 0;
    while events < 8 {
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("events within 10 s")
            .expect("stream")
            .expect("open stream");
        events += r.events.len();
        got.push(shape(&r));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_revisions_are_fragmented_like_etcd() {
    let (etcd, subject) = tokio::join!(
        Member::start(Kind::Etcd, &["--max-request-bytes", LIMIT]),
        Member::start(subject_kind(), &["--max-request-bytes", LIMIT])
    );
    let want = fragments(&etcd).await;
    assert!(want.len() > 2, "the premise: etcd fragments the second revision: {want:?}");
    let got = fragments(&subject).await;
    assert_eq!(got, want, "responses (fragment flag, events) of {} vs etcd", subject_kind().as_str());
}

const PAUSED_PUTS: usize = 3000;

/// Opens a watch, stops reading while `PAUSED_PUTS` puts go by, then reads
/// everything: returns the (key, revision) of every event in order.
async fn pause_then_resume(member: &Member) -> Vec<(String, i64)> {
    let create = WatchCreateRequest { key: b"p/".to_vec(), range_end: b"p0".to_vec(), ..Default::default() };
    let (_tx, mut stream) = open(member, create).await;
    let mut kv = member.kv().await;
    for i in 0..PAUSED_PUTS {
        let put =
            PutRequest { key: format!("p/{:04}", i % 100).into_bytes(), value: vec![b'x'; 512], ..Default::default() };
        kv.put(put).await.expect("put while the watcher is not reading");
    }
    let mut got = Vec::new();
    while got.len() < PAUSED_PUTS {
        let r = tokio::time::timeout(std::time::Duration::from_secs(20), stream.message())
            .await
            .expect("events within 20 s")
            .expect("stream")
            .expect("open stream");
        assert!(!r.canceled, "the paused watcher was canceled: {r:?}");
        for e in r.events {
            let kv = e.kv.expect("event kv");
            got.push((String::from_utf8_lossy(&kv.key).into_owned(), kv.mod_revision));
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_stream_resumes_with_every_event_once() {
    let (etcd, subject) = tokio::join!(Member::etcd(), Member::subject());
    let want = pause_then_resume(&etcd).await;
    let got = pause_then_resume(&subject).await;
    assert_eq!(got.len(), PAUSED_PUTS);
    let revisions: Vec<i64> = got.iter().map(|(_, r)| *r).collect();
    assert!(revisions.windows(2).all(|w| w[1] == w[0] + 1), "revisions are contiguous, in order, no repeats");
    assert_eq!(got, want, "{} vs etcd", subject_kind().as_str());
}
