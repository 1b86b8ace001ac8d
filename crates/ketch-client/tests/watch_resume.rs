//! Watch resumption through the real client, without an etcd: an
//! in-process fake `Watch` server plays a script per stream (acknowledge,
//! send events, fail, cancel) and records every create request's start
//! revision. What must hold: a broken stream is reopened from the first
//! revision not yet delivered; events a server sends again are not
//! delivered twice; a compacted resume point ends the watch with
//! `Error::Compacted`; cancel returns even if the caller stopped reading.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ketch_client::proto::watch_request::RequestUnion;
use ketch_client::proto::watch_server::{Watch, WatchServer};
use ketch_client::proto::{ResponseHeader, WatchRequest, WatchResponse};
use ketch_client::{Client, ClientOptions, Error, Event, KeyValue, WatchOptions, Watcher};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// One step of a stream's script.
#[derive(Clone, Debug)]
enum Step {
    /// The creation acknowledgement, at this store revision.
    Created(i64),
    /// One response with an event per revision given.
    Events(Vec<i64>),
    /// Cancel the watch for compaction at this revision.
    Compacted(i64),
    /// End the stream with `Unavailable`.
    Fail,
}

#[derive(Clone, Default)]
struct FakeWatch {
    scripts: Arc<Mutex<Vec<Vec<Step>>>>,
    streams: Arc<AtomicUsize>,
    start_revisions: Arc<Mutex<Vec<i64>>>,
    cancels: Arc<AtomicUsize>,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { cluster_id: 1, member_id: 1, revision, raft_term: 1 })
}

fn event(revision: i64) -> Event {
    Event {
        r#type: 0,
        kv: Some(KeyValue {
            key: b"k".to_vec(),
            value: revision.to_string().into_bytes(),
            create_revision: 2,
            mod_revision: revision,
            version: revision - 1,
            lease: 0,
        }),
        prev_kv: None,
    }
}

#[tonic::async_trait]
impl Watch for FakeWatch {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let n = self.streams.fetch_add(1, Ordering::SeqCst);
        let script = self.scripts.lock().unwrap().get(n).cloned().unwrap_or_default();
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let fake = self.clone();
        tokio::spawn(async move {
            let Ok(Some(first)) = incoming.message().await else { return };
            if let Some(RequestUnion::CreateRequest(create)) = first.request_union {
                fake.start_revisions.lock().unwrap().push(create.start_revision);
            }
            for step in script {
                let response = match step {
                    Step::Created(rev) => WatchResponse { header: header(rev), created: true, ..Default::default() },
                    Step::Events(revs) => WatchResponse {
                        header: header(*revs.last().unwrap()),
                        events: revs.into_iter().map(event).collect(),
                        ..Default::default()
                    },
                    Step::Compacted(rev) => WatchResponse {
                        header: header(rev),
                        canceled: true,
                        compact_revision: rev,
                        ..Default::default()
                    },
                    Step::Fail => {
                        let _ = tx.send(Err(Status::unavailable("etcdserver: no leader"))).await;
                        return;
                    }
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
            // Hold the stream; answer a cancel.
            while let Ok(Some(request)) = incoming.message().await {
                if let Some(RequestUnion::CancelRequest(_)) = request.request_union {
                    fake.cancels.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(Ok(WatchResponse { canceled: true, ..Default::default() })).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn serve(scripts: Vec<Vec<Step>>) -> (FakeWatch, Client) {
    let fake = FakeWatch { scripts: Arc::new(Mutex::new(scripts)), ..Default::default() };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WatchServer::new(fake.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let options = ClientOptions::new().retry_backoff(Duration::from_millis(5), Duration::from_millis(20));
    let client = Client::connect([address], options).await.unwrap();
    (fake, client)
}

async fn next(watcher: &mut Watcher) -> Result<Option<ketch_client::WatchResponse>, Error> {
    tokio::time::timeout(Duration::from_secs(5), watcher.message()).await.expect("an answer within 5 s")
}

fn revisions(response: &ketch_client::WatchResponse) -> Vec<i64> {
    response.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_resumes_from_the_next_revision_without_duplicates() {
    let (fake, client) = serve(vec![
        vec![Step::Created(1), Step::Events(vec![2]), Step::Events(vec![3, 3]), Step::Fail],
        // The second stream sends revision 3 again, then new ones.
        vec![Step::Created(3), Step::Events(vec![3]), Step::Events(vec![3, 4]), Step::Events(vec![5])],
    ])
    .await;
    let mut watcher = client.watch().watch("k", WatchOptions::new()).await.unwrap();
    assert_eq!(watcher.created_revision(), 1);
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.extend(revisions(&next(&mut watcher).await.unwrap().unwrap()));
    }
    assert_eq!(seen, vec![2, 3, 3, 4, 5]);
    assert_eq!(*fake.start_revisions.lock().unwrap(), vec![0, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_before_any_event_starts_after_the_creation_revision() {
    let (fake, client) = serve(vec![
        vec![Step::Created(7), Step::Fail],
        vec![Step::Fail],
        vec![Step::Created(9), Step::Events(vec![8, 9])],
    ])
    .await;
    let mut watcher = client.watch().watch("k", WatchOptions::new()).await.unwrap();
    assert_eq!(revisions(&next(&mut watcher).await.unwrap().unwrap()), vec![8, 9]);
    assert_eq!(*fake.start_revisions.lock().unwrap(), vec![0, 8, 8]);

    // With a start revision, the resume point is that revision until events came.
    let (fake, client) = serve(vec![vec![Step::Created(7), Step::Fail], vec![Step::Created(7)]]).await;
    let watcher = client.watch().watch("k", WatchOptions::new().start_revision(3)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while fake.start_revisions.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(*fake.start_revisions.lock().unwrap(), vec![3, 3]);
    drop(watcher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_resume_point_ends_the_watch() {
    let (_, client) = serve(vec![
        vec![Step::Created(1), Step::Events(vec![2]), Step::Fail],
        vec![Step::Created(10), Step::Compacted(6)],
    ])
    .await;
    let mut watcher = client.watch().watch("k", WatchOptions::new()).await.unwrap();
    assert_eq!(revisions(&next(&mut watcher).await.unwrap().unwrap()), vec![2]);
    let err = next(&mut watcher).await.unwrap_err();
    assert!(matches!(err, Error::Compacted { compact_revision: 6 }), "{err:?}");
    assert!(next(&mut watcher).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_returns_even_with_unread_responses() {
    let flood: Vec<Step> =
        std::iter::once(Step::Created(1)).chain((2..100).map(|rev| Step::Events(vec![rev]))).collect();
    let (fake, client) = serve(vec![flood]).await;
    let watcher = client.watch().watch("k", WatchOptions::new()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(Duration::from_secs(10), watcher.cancel()).await.expect("cancel returns").unwrap();
    assert_eq!(fake.cancels.load(Ordering::SeqCst), 1);
}
