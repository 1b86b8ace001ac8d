//! Watch under load, against the subject (ketch; a second etcd with
//! `KETCH_E2E_SUBJECT=etcd`), each test also run against the reference etcd
//! first to calibrate (the same bounds must hold there: a premise):
//!
//! - `many_watchers_and_streams_get_every_event`: 1,000 watchers on one
//!   stream plus 50 more streams (over 5 connections) watching one prefix all
//!   receive a burst of 200 puts completely, in revision order, with the
//!   right values;
//! - `stalled_watcher_does_not_block_writes`: a client opens 10 watchers
//!   (with `prev_kv`) on a busy prefix over a connection with a 64 KiB HTTP/2
//!   window, reads their created responses and then never reads again; 2,000
//!   puts of 1 KiB (4 concurrent writers) must all succeed within the bound,
//!   a watcher on another connection must still get every event, and the
//!   server's resident memory must stay below its starting RSS + 200 MiB.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ketch_e2e::{Kind, Member, prefix_end, rss_kib, subject_kind};
use ketch_proto::etcdserverpb::{
    PutRequest, WatchCreateRequest, WatchRequest, WatchResponse, watch_client::WatchClient, watch_request::RequestUnion,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

const PREFIX: &[u8] = b"burst/";

/// The (revision, value) of every put, in revision order, once known.
type Expected = Arc<tokio::sync::OnceCell<Vec<(i64, Vec<u8>)>>>;

fn create(key: &[u8], range_end: &[u8], prev_kv: bool) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            prev_kv,
            ..Default::default()
        })),
    }
}

/// Opens a watch stream on `client` and sends `creates` on it.
async fn open(
    client: &mut WatchClient<Channel>,
    creates: Vec<WatchRequest>,
) -> Result<(mpsc::UnboundedSender<WatchRequest>, Streaming<WatchResponse>), String> {
    let (tx, rx) = mpsc::unbounded_channel();
    for c in creates {
        tx.send(c).expect("receiver is alive");
    }
    let stream = client.watch(UnboundedReceiverStream::new(rx)).await.map_err(|e| format!("watch call: {e}"))?;
    Ok((tx, stream.into_inner()))
}

/// Per-watcher progress of a reader: events seen, first problem.
#[derive(Default, Debug)]
struct Seen {
    events: usize,
    problem: Option<String>,
}

/// Reads `stream` until each of its `watchers` got `revisions.len()` events
/// (checked against `revisions` and `values` in order) or `deadline`.
async fn read_all(
    mut stream: Streaming<WatchResponse>,
    watchers: usize,
    revisions: Expected,
    created_count: Arc<AtomicUsize>,
    expected_events: usize,
    deadline: Instant,
) -> Result<HashMap<i64, Seen>, String> {
    let mut seen: HashMap<i64, Seen> = HashMap::new();
    let mut created = 0;
    let mut pending: Vec<WatchResponse> = Vec::new();
    let complete =
        |seen: &HashMap<i64, Seen>| seen.len() == watchers && seen.values().all(|s| s.events >= expected_events);
    loop {
        // The expected sequence is known once the writes are done.
        if let Some(expected) = revisions.get() {
            for r in pending.drain(..) {
                let s = seen.entry(r.watch_id).or_default();
                for ev in &r.events {
                    let kv = ev.kv.as_ref().map(|kv| (kv.mod_revision, kv.value.clone()));
                    if s.problem.is_none() && kv.as_ref() != expected.get(s.events) {
                        s.problem = Some(format!(
                            "event #{} of watch {}: got (revision, value) {:?}, expected {:?}",
                            s.events,
                            r.watch_id,
                            kv.map(|(r, v)| (r, String::from_utf8_lossy(&v).into_owned())),
                            expected.get(s.events).map(|(r, v)| (r, String::from_utf8_lossy(v).into_owned()))
                        ));
                    }
                    s.events += 1;
                }
            }
        }
        if created == watchers && complete(&seen) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let done = seen.values().filter(|s| s.events >= expected_events).count();
            let mut counts: Vec<usize> = seen.values().map(|s| s.events).collect();
            counts.sort();
            counts.dedup();
            return Err(format!(
                "deadline: {created} of {watchers} created, {done} complete; distinct event counts: {counts:?}"
            ));
        }
        let r = match tokio::time::timeout(left.min(Duration::from_millis(20)), stream.message()).await {
            Err(_) => continue,
            Ok(Err(e)) => return Err(format!("stream error: {e}")),
            Ok(Ok(None)) => return Err("stream ended".to_string()),
            Ok(Ok(Some(r))) => r,
        };
        if r.created {
            if r.canceled {
                return Err(format!("watch refused: {r:?}"));
            }
            created += 1;
            created_count.fetch_add(1, Ordering::SeqCst);
            seen.entry(r.watch_id).or_default();
            continue;
        }
        if r.canceled {
            return Err(format!("watch cancelled: {r:?}"));
        }
        pending.push(r);
    }
    Ok(seen)
}

async fn burst(member: &Member) -> Result<Duration, String> {
    const ON_ONE_STREAM: usize = 1000;
    const STREAMS: usize = 50;
    const CONNECTIONS: usize = 5;
    const PUTS: usize = 200;
    let deadline = Instant::now() + Duration::from_secs(40);
    let end = prefix_end(PREFIX);
    let expected = Arc::new(tokio::sync::OnceCell::new());
    let created = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    // Keep the request senders alive: dropping one ends its stream.
    let mut senders = Vec::new();
    let mut big_client = member.watch().await;
    let creates = (0..ON_ONE_STREAM).map(|i| create(PREFIX, &end, i % 2 == 0)).collect();
    let (tx, stream) = open(&mut big_client, creates).await?;
    senders.push(tx);
    readers.push(tokio::spawn(read_all(stream, ON_ONE_STREAM, expected.clone(), created.clone(), PUTS, deadline)));
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(member.watch().await);
    }
    for i in 0..STREAMS {
        let (tx, stream) = open(&mut clients[i % CONNECTIONS], vec![create(PREFIX, &end, i % 3 == 0)]).await?;
        senders.push(tx);
        readers.push(tokio::spawn(read_all(stream, 1, expected.clone(), created.clone(), PUTS, deadline)));
    }
    // Start revision 0 ("from now"): a watcher is registered once its
    // created response was sent; wait for all of them before writing.
    let total = ON_ONE_STREAM + STREAMS;
    while created.load(Ordering::SeqCst) < total {
        if Instant::now() >= deadline {
            return Err(format!("only {} of {total} watchers created", created.load(Ordering::SeqCst)));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut kv = member.kv().await;
    let started = Instant::now();
    let mut writes = Vec::new();
    for i in 0..PUTS {
        let value = format!("value-{i}").into_bytes();
        let mut key = PREFIX.to_vec();
        key.extend_from_slice(format!("{}", i % 10).as_bytes());
        let resp = kv
            .put(PutRequest { key, value: value.clone(), ..Default::default() })
            .await
            .map_err(|e| format!("put {i}: {e}"))?
            .into_inner();
        writes.push((resp.header.map_or(0, |h| h.revision), value));
    }
    expected.set(writes).expect("set once");
    let mut problems = Vec::new();
    let mut watchers = 0;
    for reader in readers {
        match reader.await.map_err(|e| format!("reader panicked: {e}"))? {
            Err(e) => problems.push(e),
            Ok(seen) => {
                watchers += seen.len();
                problems.extend(seen.into_values().filter_map(|s| s.problem));
            }
        }
    }
    drop(senders);
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(5);
        return Err(format!("{n} problem(s), first ones:\n{}", problems.join("\n")));
    }
    if watchers != ON_ONE_STREAM + STREAMS {
        return Err(format!("{watchers} watchers reported, expected {}", ON_ONE_STREAM + STREAMS));
    }
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_and_streams_get_every_event() {
    let (etcd, subject) = tokio::join!(Member::etcd(), Member::subject());
    let took = burst(&etcd).await.unwrap_or_else(|e| panic!("premise on etcd: {e}"));
    println!("etcd: every watcher got every event {took:?} after the first put");
    let took = burst(&subject).await.unwrap_or_else(|e| panic!("{}: {e}", subject_kind().as_str()));
    println!("{}: every watcher got every event {took:?} after the first put", subject_kind().as_str());
}

/// Samples the resident set size of `pid` every 20 ms until `stop`; returns
/// the maximum in KiB.
fn rss_sampler(pid: u32, stop: Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut max = 0;
        while !stop.load(Ordering::SeqCst) {
            max = max.max(rss_kib(pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        max.max(rss_kib(pid).unwrap_or(0))
    })
}

async fn stalled(member: &Member) -> Result<String, String> {
    const PUTS: usize = 2000;
    const WRITERS: usize = 4;
    const STALLED_WATCHERS: usize = 10;
    const RSS_BOUND_KIB: u64 = 200 * 1024;
    let bound = Duration::from_secs(40);
    let deadline = Instant::now() + bound;
    let pid = member.pid().ok_or("server is not running")?;
    let busy = b"busy/";
    let end = prefix_end(busy);

    // The stalled client: its own connection, small HTTP/2 windows.
    let channel = Endpoint::from_shared(member.client_url())
        .expect("client URL is a valid URI")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut stalled_client = WatchClient::new(channel);
    let creates = (0..STALLED_WATCHERS).map(|_| create(busy, &end, true)).collect();
    let (stalled_tx, mut stalled_stream) = open(&mut stalled_client, creates).await?;
    for _ in 0..STALLED_WATCHERS {
        let r = tokio::time::timeout(Duration::from_secs(10), stalled_stream.message())
            .await
            .map_err(|_| "no created response for the stalled watchers".to_string())?
            .map_err(|e| format!("stalled stream: {e}"))?
            .ok_or("stalled stream ended")?;
        if !r.created || r.canceled {
            return Err(format!("stalled watcher not created: {r:?}"));
        }
    }
    // From here on the stalled stream is never read again.

    // A healthy watcher on another connection must get everything.
    let expected = Arc::new(tokio::sync::OnceCell::new());
    let created = Arc::new(AtomicUsize::new(0));
    let mut healthy_client = member.watch().await;
    let (healthy_tx, healthy_stream) = open(&mut healthy_client, vec![create(busy, &end, false)]).await?;
    let healthy = tokio::spawn(read_all(healthy_stream, 1, expected.clone(), created.clone(), PUTS, deadline));
    while created.load(Ordering::SeqCst) < 1 {
        if Instant::now() >= deadline {
            return Err("healthy watcher not created".to_string());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let rss_start = rss_kib(pid).ok_or("cannot read the server's RSS")?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = rss_sampler(pid, stop.clone());
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut kv = member.kv().await;
        writers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0..PUTS / WRITERS {
                let mut value = format!("w{w}-{i}-").into_bytes();
                value.resize(1024, b'x');
                let key = format!("busy/{}", i % 25).into_bytes();
                let left = deadline.saturating_duration_since(Instant::now());
                let put = kv.put(PutRequest { key, value: value.clone(), ..Default::default() });
                let resp = tokio::time::timeout(left, put)
                    .await
                    .map_err(|_| format!("writer {w}: put {i} not done by the deadline"))?
                    .map_err(|e| format!("writer {w}: put {i} failed: {e}"))?
                    .into_inner();
                done.push((resp.header.map_or(0, |h| h.revision), value));
            }
            Ok::<_, String>(done)
        }));
    }
    let mut writes = Vec::new();
    for writer in writers {
        writes.extend(writer.await.map_err(|e| format!("writer panicked: {e}"))??);
    }
    let writes_took = started.elapsed();
    writes.sort();
    expected.set(writes).expect("set once");
    let healthy = healthy.await.map_err(|e| format!("reader panicked: {e}"))?;
    let delivered_took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let rss_max = sampler.await.map_err(|e| format!("sampler panicked: {e}"))?;
    let seen = healthy.map_err(|e| format!("the healthy watcher on another connection: {e}"))?;
    if let Some(problem) = seen.into_values().find_map(|s| s.problem) {
        return Err(format!("the healthy watcher on another connection: {problem}"));
    }
    let summary = format!(
        "{PUTS} puts of 1 KiB in {writes_took:?} (healthy watcher complete after {delivered_took:?}), \
         RSS {rss_start} KiB at the start, at most {rss_max} KiB (+{} KiB)",
        rss_max.saturating_sub(rss_start)
    );
    if rss_max > rss_start + RSS_BOUND_KIB {
        return Err(format!("RSS grew by more than {RSS_BOUND_KIB} KiB: {summary}"));
    }
    drop((stalled_tx, stalled_stream, healthy_tx));
    Ok(summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_watcher_does_not_block_writes() {
    let etcd = Member::start(Kind::Etcd, &[]).await;
    let summary = stalled(&etcd).await.unwrap_or_else(|e| panic!("premise on etcd: {e}"));
    println!("etcd: {summary}");
    drop(etcd);
    let subject = Member::subject().await;
    let summary = stalled(&subject).await.unwrap_or_else(|e| panic!("{}: {e}", subject_kind().as_str()));
    println!("{}: {summary}", subject_kind().as_str());
}
