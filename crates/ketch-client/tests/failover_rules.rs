//! The failover and retry-safety rules through the real call path, without
//! an etcd: in-process fake `KV` servers that answer as scripted and count
//! what reached them, a closed port (connection refused), a server that
//! drops the connection after the request arrived, and one that never
//! answers.
//!
//! What must hold: a write reaches a server at most once; it is re-sent
//! only after a failed dial; a read is re-sent after any failure of the
//! serving member; a definite answer is never re-sent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ketch_client::proto::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
    kv_server::{Kv, KvServer},
};
use ketch_client::{Client, ClientOptions, Code, Error, ErrorKind, GetOptions, PutOptions, Txn, TxnOp};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// Scripted answers (`Ok` = a normal answer) and counters per method.
#[derive(Clone, Default)]
struct Fake {
    script: Arc<Mutex<VecDeque<Result<(), Status>>>>,
    ranges: Arc<AtomicUsize>,
    puts: Arc<AtomicUsize>,
    txns: Arc<AtomicUsize>,
    leader_required: Arc<AtomicUsize>,
}

impl Fake {
    fn scripted(answers: Vec<Result<(), Status>>) -> Fake {
        let fake = Fake::default();
        fake.script.lock().unwrap().extend(answers);
        fake
    }

    fn answer<T>(&self, request: &Request<impl Sized>, counter: &AtomicUsize, ok: T) -> Result<Response<T>, Status> {
        counter.fetch_add(1, Ordering::SeqCst);
        if request.metadata().get("hasleader").and_then(|v| v.to_str().ok()) == Some("true") {
            self.leader_required.fetch_add(1, Ordering::SeqCst);
        }
        match self.script.lock().unwrap().pop_front() {
            Some(Err(status)) => Err(status),
            Some(Ok(())) | None => Ok(Response::new(ok)),
        }
    }
}

fn header() -> Option<ResponseHeader> {
    Some(ResponseHeader { cluster_id: 1, member_id: 1, revision: 5, raft_term: 2 })
}

#[tonic::async_trait]
impl Kv for Fake {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.answer(&request, &self.ranges, RangeResponse { header: header(), ..Default::default() })
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.answer(&request, &self.puts, PutResponse { header: header(), prev_kv: None })
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.answer(&request, &self.puts, DeleteRangeResponse { header: header(), ..Default::default() })
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.answer(&request, &self.txns, TxnResponse { header: header(), ..Default::default() })
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        self.answer(&request, &self.puts, CompactionResponse { header: header() })
    }
}

/// Serves `fake` on a fresh loopback port; returns `host:port`.
async fn serve(fake: Fake) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    address
}

/// A loopback port nobody listens on: connections are refused.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    address
}

/// Accepts connections, takes in whatever the client sends for a while
/// (the request included), then drops the connection: a member that died
/// with the request in hand.
async fn dropper() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = tokio::time::timeout(Duration::from_millis(200), async {
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            });
        }
    });
    address
}

/// Accepts connections and never answers: a stopped member.
async fn black_hole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    address
}

fn options() -> ClientOptions {
    ClientOptions::new()
        .dial_timeout(Duration::from_millis(500))
        .attempt_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_secs(3))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
}

async fn connect(endpoints: &[&str]) -> Client {
    Client::connect(endpoints, options()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_resent_only_after_a_failed_dial() {
    let fake = Fake::default();
    let up = serve(fake.clone()).await;
    let down = closed_port().await;
    let client = connect(&[&down, &up]).await;
    for i in 0..5 {
        client.kv().put(format!("k{i}"), "v", PutOptions::new()).await.unwrap();
    }
    assert_eq!(fake.puts.load(Ordering::SeqCst), 5, "every put reached the server exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_unavailable_is_not_resent() {
    let first = Fake::scripted(vec![Err(Status::unavailable("etcdserver: request timed out"))]);
    let second = Fake::default();
    let client = connect(&[&serve(first.clone()).await, &serve(second.clone()).await]).await;
    let err = client.kv().put("k", "v", PutOptions::new()).await.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err:?}");
    assert!(err.to_string().contains("etcdserver: request timed out"), "{err}");
    let total = first.puts.load(Ordering::SeqCst) + second.puts.load(Ordering::SeqCst);
    assert_eq!(total, 1, "the write was sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_connection_died_is_unknown_and_not_resent() {
    let fake = Fake::default();
    let client = connect(&[&dropper().await, &serve(fake.clone()).await]).await;
    let err = client.kv().put("k", "v", PutOptions::new()).await.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err:?}");
    assert_eq!(fake.puts.load(Ordering::SeqCst), 0, "not re-sent to the other endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_answer_within_the_attempt_timeout_is_unknown() {
    let fake = Fake::default();
    let client = connect(&[&black_hole().await, &serve(fake.clone()).await]).await;
    let err = client.kv().put("k", "v", PutOptions::new()).await.unwrap_err();
    assert!(matches!(err, Error::OutcomeUnknown { request: "KV.Put", .. }), "{err:?}");
    assert_eq!(fake.puts.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fail_over_after_any_failure_of_the_serving_member() {
    let flaky = Fake::scripted(vec![
        Err(Status::unavailable("etcdserver: leader changed")),
        Err(Status::unavailable("etcdserver: no leader")),
    ]);
    let flaky_address = serve(flaky.clone()).await;
    let client = connect(&[&flaky_address]).await;
    client.kv().get("k", GetOptions::new()).await.unwrap();
    assert_eq!(flaky.ranges.load(Ordering::SeqCst), 3);

    // Dead, dropping and silent members before a good one.
    let good = Fake::default();
    let endpoints = [closed_port().await, dropper().await, black_hole().await, serve(good.clone()).await];
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    let client = connect(&endpoints).await;
    for _ in 0..4 {
        client.kv().get("k", GetOptions::new()).await.unwrap();
    }
    assert_eq!(good.ranges.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definite_answers_are_returned_as_is() {
    let fake = Fake::scripted(vec![
        Err(Status::out_of_range("etcdserver: mvcc: required revision has been compacted")),
        Err(Status::not_found("etcdserver: requested lease not found")),
    ]);
    let client = connect(&[&serve(fake.clone()).await]).await;
    let err = client.kv().get("k", GetOptions::new().revision(1)).await.unwrap_err();
    assert!(err.is_compacted());
    assert_eq!(err.code(), Some(Code::OutOfRange));
    let err = client.kv().put("k", "v", PutOptions::new().lease(7)).await.unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::LeaseNotFound));
    assert_eq!(err.etcd().unwrap().message(), "etcdserver: requested lease not found");
    assert_eq!((fake.ranges.load(Ordering::SeqCst), fake.puts.load(Ordering::SeqCst)), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_member_reachable_nothing_happened() {
    let client = connect(&[&closed_port().await, &closed_port().await]).await;
    let err = client.kv().put("k", "v", PutOptions::new()).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { request: "KV.Put", attempts, .. } if attempts > 1), "{err:?}");
    let err = client.kv().get("k", GetOptions::new()).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { request: "KV.Range", .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_fail_over_and_writing_ones_do_not() {
    let fake = Fake::scripted(vec![
        Err(Status::unavailable("etcdserver: leader changed")),
        Err(Status::unavailable("etcdserver: leader changed")),
    ]);
    let client = connect(&[&serve(fake.clone()).await]).await;
    let read = Txn::new().and_then([TxnOp::get("k", GetOptions::new())]);
    client.kv().txn(read).await.unwrap();
    assert_eq!(fake.txns.load(Ordering::SeqCst), 3);
    fake.script.lock().unwrap().push_back(Err(Status::unavailable("etcdserver: leader changed")));
    let write = Txn::new().and_then([TxnOp::put("k", "v", PutOptions::new())]);
    assert!(client.kv().txn(write).await.unwrap_err().is_outcome_unknown());
    assert_eq!(fake.txns.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_leader_sends_etcds_metadata() {
    let fake = Fake::default();
    let address = serve(fake.clone()).await;
    let plain = connect(&[&address]).await;
    plain.kv().get("k", GetOptions::new()).await.unwrap();
    assert_eq!(fake.leader_required.load(Ordering::SeqCst), 0);
    let requiring = Client::connect([&address], options().require_leader(true)).await.unwrap();
    requiring.kv().get("k", GetOptions::new()).await.unwrap();
    assert_eq!(fake.leader_required.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bad_endpoints_are_refused_at_connect() {
    assert!(matches!(Client::connect(Vec::<String>::new(), options()).await, Err(Error::NoEndpoints)));
    let err = Client::connect(["unix://127.0.0.1:2379"], options()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidEndpoint { .. }), "{err:?}");
    let client = Client::connect(["127.0.0.1:1", "http://127.0.0.1:1/", "localhost:2"], options()).await.unwrap();
    assert_eq!(client.endpoints(), vec!["http://127.0.0.1:1", "http://localhost:2"]);
    // TLS: https:// always, host:port with TLS options.
    let client = Client::connect(["https://127.0.0.1:1", "localhost:2"], options()).await.unwrap();
    assert_eq!(client.endpoints(), vec!["https://127.0.0.1:1", "http://localhost:2"]);
    let tls = options().tls(ketch_client::TlsOptions::new());
    let client = Client::connect(["127.0.0.1:1", "http://localhost:2"], tls).await.unwrap();
    assert_eq!(client.endpoints(), vec!["https://127.0.0.1:1", "http://localhost:2"]);
}
