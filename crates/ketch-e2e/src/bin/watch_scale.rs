//! Watch at scale, Ketch and the reference etcd side by side: write throughput
//! and latency with no watchers, with 10,000 watchers on one stream, and with
//! 1,000 watch streams; every event is counted, so a lost or duplicated event
//! fails the run. Then the memory of a server whose one watch client never
//! reads while 20,000 writes go by.
//!
//! A benchmark, not a test: it reports, it asserts only completeness.
//!
//! ```text
//! cargo build --release -p ketch
//! cargo run --release -p ketch-e2e --bin watch-scale            # both servers
//! WATCH_SCALE_ONLY=ketch cargo run --release -p ketch-e2e --bin watch-scale
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ketch_e2e::{Kind, Member, rss_kib};
use ketch_proto::etcdserverpb::watch_request::RequestUnion;
use ketch_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const PREFIX: &str = "/bench/";
const KEYS: usize = 10_000;
const CLIENTS: usize = 64;
const CONNECTIONS: usize = 8;

struct Outcome {
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn key(i: usize) -> Vec<u8> {
    format!("{PREFIX}k{i:05}").into_bytes()
}

/// `total` puts of `value_len` bytes from [`CLIENTS`] concurrent clients.
async fn puts(member: &Member, total: usize, value_len: usize) -> Outcome {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(member.stream_channel().await);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut kv = KvClient::new(channels[c % CONNECTIONS].clone());
        let n = total / CLIENTS + usize::from(c < total % CLIENTS);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(n);
            for i in 0..n {
                let k = key((c * 7919 + i * 104_729) % KEYS);
                let t = Instant::now();
                kv.put(PutRequest { key: k, value: vec![b'v'; value_len], ..Default::default() })
                    .await
                    .expect("put during the benchmark");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    Outcome { ops_per_sec: total as f64 / secs, p50_ms: pct(0.5), p99_ms: pct(0.99) }
}

/// Opens one stream carrying the given watchers; returns a counter of received
/// events and the request sender (kept alive for the stream's life).
async fn watch_stream(
    channel: Channel,
    creates: Vec<WatchCreateRequest>,
    events: Arc<AtomicU64>,
    read: bool,
) -> mpsc::Sender<WatchRequest> {
    let (tx, rx) = mpsc::channel(1024);
    let mut client = ketch_proto::etcdserverpb::watch_client::WatchClient::new(channel);
    let wanted = creates.len();
    let sender = tx.clone();
    tokio::spawn(async move {
        for c in creates {
            if sender.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(c)) }).await.is_err() {
                return;
            }
        }
    });
    let mut stream = client.watch(ReceiverStream::new(rx)).await.expect("open watch stream").into_inner();
    let mut created = 0;
    while created < wanted {
        let resp = stream.message().await.expect("watch stream").expect("stream open");
        created += usize::from(resp.created);
        events.fetch_add(resp.events.len() as u64, Ordering::Relaxed);
    }
    if read {
        tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                events.fetch_add(resp.events.len() as u64, Ordering::Relaxed);
            }
        });
    } else {
        // Keep the stream open and never read it again.
        tokio::spawn(async move {
            let _stalled = stream;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
    }
    tx
}

async fn wait_for(counter: &AtomicU64, want: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while counter.load(Ordering::Relaxed) < want {
        assert!(Instant::now() < deadline, "{what}: {} of {want} events arrived", counter.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = counter.load(Ordering::Relaxed);
    assert_eq!(got, want, "{what}: duplicated events");
}

fn rss_mib(member: &Member) -> f64 {
    member.pid().and_then(rss_kib).map_or(f64::NAN, |k| k as f64 / 1024.0)
}

async fn run(kind: Kind) -> Vec<(String, Outcome)> {
    let mut results = Vec::new();
    let member = Member::start(kind, &[]).await;
    let total = 20_000;
    results.push(("no watchers, 20k puts".to_string(), puts(&member, total, 256).await));

    // 10,000 watchers on one stream, one per key: each put wakes one watcher.
    let counter = Arc::new(AtomicU64::new(0));
    let creates = (0..KEYS).map(|i| WatchCreateRequest { key: key(i), ..Default::default() }).collect();
    let _stream = watch_stream(member.stream_channel().await, creates, counter.clone(), true).await;
    let outcome = puts(&member, total, 256).await;
    wait_for(&counter, total as u64, "10k watchers").await;
    results.push(("10,000 watchers on 1 stream".to_string(), outcome));
    drop(_stream);

    // 1,000 streams over 10 connections, each watching the whole prefix.
    let counter = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(member.stream_channel().await);
    }
    for s in 0..1000 {
        let create = WatchCreateRequest {
            key: PREFIX.as_bytes().to_vec(),
            range_end: b"/bench0".to_vec(),
            ..Default::default()
        };
        streams.push(watch_stream(channels[s % 10].clone(), vec![create], counter.clone(), true).await);
    }
    let fanned = 2_000;
    let outcome = puts(&member, fanned, 256).await;
    wait_for(&counter, fanned as u64 * 1000, "1,000 streams").await;
    results.push(("1,000 streams, 2k puts (2M events)".to_string(), outcome));
    drop(streams);

    // A watch client that never reads.
    let before = rss_mib(&member);
    let create =
        WatchCreateRequest { key: PREFIX.as_bytes().to_vec(), range_end: b"/bench0".to_vec(), ..Default::default() };
    let stalled = watch_stream(member.stream_channel().await, vec![create], Arc::new(AtomicU64::new(0)), false).await;
    let outcome = puts(&member, total, 1024).await;
    let after = rss_mib(&member);
    results.push((format!("stalled watcher, 20k 1 KiB puts (RSS {before:.0} -> {after:.0} MiB)"), outcome));
    drop(stalled);
    results
}

#[tokio::main]
async fn main() {
    let only = std::env::var("WATCH_SCALE_ONLY").ok();
    let kinds: Vec<Kind> = match only.as_deref() {
        Some("ketch") => vec![Kind::Ketch],
        Some("etcd") => vec![Kind::Etcd],
        _ => vec![Kind::Etcd, Kind::Ketch],
    };
    let mut all = Vec::new();
    for kind in kinds {
        eprintln!("running against {}", kind.as_str());
        all.push((kind, run(kind).await));
    }
    println!("{:<62} {:>10} {:>10} {:>10}", "scenario", "ops/s", "p50 ms", "p99 ms");
    for (kind, results) in &all {
        for (name, o) in results {
            println!(
                "{:<62} {:>10.0} {:>10.2} {:>10.2}",
                format!("{} {name}", kind.as_str()),
                o.ops_per_sec,
                o.p50_ms,
                o.p99_ms
            );
        }
    }
    if let [(_, etcd), (_, ketch)] = all.as_slice() {
        println!("\nketch / etcd throughput:");
        for ((name, e), (_, k)) in etcd.iter().zip(ketch) {
            println!("  {:<60} {:.2}x", name, k.ops_per_sec / e.ops_per_sec);
        }
    }
}
