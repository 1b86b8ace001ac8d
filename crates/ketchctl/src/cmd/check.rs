//! `check perf` (etcdctl's `check.go`): writes 1 KiB values under a prefix
//! at the model's rate from its number of clients for a minute, then
//! judges throughput, slowest request and standard deviation with
//! etcdctl's thresholds, and cleans up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ketch_client::{DeleteOptions, GetOptions, PutOptions};
use tokio::sync::mpsc;

use crate::cli::Invocation;
use crate::error::{CtlResult, EXIT_BAD_FEATURE, EXIT_ERROR, EXIT_INVALID_INPUT, Exit, message, out};
use crate::gofmt::{self, quote};
use crate::session::{self, Session};

/// One of `check perf`'s workload models (`checkPerfCfgMap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PerfModel {
    /// Writes a second.
    limit: u32,
    /// Clients (each with its own connection).
    clients: usize,
    /// Seconds of writing.
    duration: u64,
}

fn perf_model(load: &str) -> Option<PerfModel> {
    let (limit, clients) = match load {
        "s" | "small" => (150, 50),
        "m" | "medium" => (1000, 200),
        "l" | "large" => (8000, 500),
        "xl" | "xLarge" => (15000, 1000),
        _ => return None,
    };
    Some(PerfModel { limit, clients, duration: 60 })
}

/// Key and value sizes of the writes.
const KEY_SIZE: usize = 256;
const VALUE_SIZE: usize = 1024;
/// The progress bar's redraw period (pb's refresh rate).
const PROGRESS_REFRESH: Duration = Duration::from_millis(200);
/// Bound on the final delete, compaction and defragmentation.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Go's `binary.PutVarint` into the start of a zeroed key suffix.
fn key_suffix(n: i64) -> [u8; KEY_SIZE] {
    let mut k = [0u8; KEY_SIZE];
    let mut ux = (n as u64) << 1;
    if n < 0 {
        ux = !ux;
    }
    let mut i = 0;
    while ux >= 0x80 {
        k[i] = (ux as u8) | 0x80;
        ux >>= 7;
        i += 1;
    }
    k[i] = ux as u8;
    k
}

/// One line of the `pb` progress bar as etcdctl draws it without a
/// terminal (no bar): counters, percent, then the time left, or the time
/// taken once finished.
fn progress_line(current: u64, total: u64, since_start: Duration, since_change: Duration, done: bool) -> String {
    let percent = if total > 0 { current as f64 / (total as f64 / 100.0) } else { current as f64 / 100.0 };
    let mut line = format!(" {current} / {total}  {percent:6.2}%");
    if done {
        let secs = Duration::from_secs(since_start.as_secs());
        line.push(' ');
        line.push_str(&gofmt::format_duration(secs));
    } else if current > 0 {
        // pb: the time per step so far, times the steps left, less the
        // time since the last step, in whole seconds.
        let per_step = (since_start.saturating_sub(since_change)).as_secs_f64() / current as f64;
        let left = total.saturating_sub(current) as f64 * per_step - since_change.as_secs_f64();
        let left = left.trunc() as i64;
        if left > 0 {
            line.push_str(&format!(" {:02}m{:02}s", left / 60, left % 60));
        }
    }
    line
}

/// Draws the progress bar on stdout every [`PROGRESS_REFRESH`], one step a
/// second for `seconds` seconds, then the final state and a newline.
async fn progress(seconds: u64) {
    let start = Instant::now();
    loop {
        tokio::time::sleep(PROGRESS_REFRESH).await;
        let elapsed = start.elapsed();
        let current = elapsed.as_secs().min(seconds);
        let since_change = elapsed.saturating_sub(Duration::from_secs(current));
        if current >= seconds {
            out(format!("\r{}\n", progress_line(current, seconds, elapsed, since_change, true)));
            return;
        }
        out(format!("\r{}", progress_line(current, seconds, elapsed, since_change, false)));
    }
}

/// A token bucket with a burst of one (Go's `rate.NewLimiter(limit, 1)`):
/// the slot of each request, fixed when it asks.
struct Limiter {
    every: Duration,
    next: Instant,
}

impl Limiter {
    fn new(per_sec: u32) -> Limiter {
        Limiter { every: Duration::from_secs(1) / per_sec.max(1), next: Instant::now() }
    }

    /// Waits for the next slot; `false` (without waiting) if it comes after
    /// `deadline`, as `rate.Limiter.Wait` refuses to wait past the
    /// context's deadline.
    async fn wait(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        let slot = self.next.max(now);
        if slot > deadline || now >= deadline {
            return false;
        }
        self.next = slot + self.every;
        tokio::time::sleep_until(slot.into()).await;
        true
    }
}

/// What the writes came to (etcd's `pkg/report` statistics).
#[derive(Debug, Default)]
struct PerfStats {
    lats: Vec<f64>,
    errors: BTreeMap<String, u64>,
    total: Duration,
}

impl PerfStats {
    fn rps(&self) -> f64 {
        self.lats.len() as f64 / self.total.as_secs_f64()
    }

    fn slowest(&self) -> f64 {
        self.lats.iter().copied().fold(0.0, f64::max)
    }

    /// Population standard deviation (NaN without a successful write).
    fn stddev(&self) -> f64 {
        let n = self.lats.len() as f64;
        let average = self.lats.iter().sum::<f64>() / n;
        (self.lats.iter().map(|l| (l - average) * (l - average)).sum::<f64>() / n).sqrt()
    }
}

/// etcdctl's verdict lines and whether the check passed.
fn verdict(stats: &PerfStats, model: PerfModel) -> (String, bool) {
    let mut s = String::new();
    let mut ok = true;
    if !stats.errors.is_empty() {
        s.push_str("FAIL: too many errors\n");
        for (error, count) in &stats.errors {
            s.push_str(&format!("FAIL: ERROR({error}) -> {count}\n"));
        }
        ok = false;
    }
    let rps = stats.rps();
    // Go's `int(s.RPS)+1`.
    let shown = (rps.trunc() as i64) + 1;
    if rps / f64::from(model.limit) <= 0.9 {
        s.push_str(&format!("FAIL: Throughput too low: {shown} writes/s\n"));
        ok = false;
    } else {
        s.push_str(&format!("PASS: Throughput is {shown} writes/s\n"));
    }
    let slowest = stats.slowest();
    if slowest > 0.5 {
        s.push_str(&format!("Slowest request took too long: {slowest:.6}s\n"));
        ok = false;
    } else {
        s.push_str(&format!("PASS: Slowest request took {slowest:.6}s\n"));
    }
    let stddev = stats.stddev();
    if stddev > 0.1 {
        s.push_str(&format!("Stddev too high: {stddev:.6}s\n"));
        ok = false;
    } else {
        s.push_str(&format!("PASS: Stddev is {stddev:.6}s\n"));
    }
    s.push_str(if ok { "PASS\n" } else { "FAIL\n" });
    (s, ok)
}

/// Writes from every session until the producer stops; the statistics.
async fn run_workload(sessions: &[Session], model: PerfModel, prefix: &[u8]) -> PerfStats {
    let (requests_tx, requests_rx) = async_channel(model.clients);
    let (results_tx, mut results_rx) = mpsc::unbounded_channel::<Result<f64, String>>();
    let value = vec![0u8; VALUE_SIZE];
    let start = Instant::now();
    let mut workers = Vec::with_capacity(sessions.len());
    for s in sessions {
        let kv = s.client.kv();
        let requests = requests_rx.clone();
        let results = results_tx.clone();
        let value = value.clone();
        workers.push(tokio::spawn(async move {
            while let Some(key) = requests.recv().await {
                let started = Instant::now();
                let outcome = match kv.put(key, value.clone(), PutOptions::new()).await {
                    Ok(_) => Ok(started.elapsed().as_secs_f64()),
                    Err(e) => Err(message(&e)),
                };
                if results.send(outcome).is_err() {
                    return;
                }
            }
        }));
    }
    drop(results_tx);
    let prefix = prefix.to_vec();
    let producer = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(model.duration);
        let mut limiter = Limiter::new(model.limit);
        while limiter.wait(deadline).await {
            let mut key = prefix.clone();
            key.extend_from_slice(&key_suffix(rand::random_range(0..i64::MAX)));
            if requests_tx.send(key).await.is_err() {
                return;
            }
        }
    });
    let mut stats = PerfStats::default();
    while let Some(outcome) = results_rx.recv().await {
        match outcome {
            Ok(latency) => stats.lats.push(latency),
            Err(error) => *stats.errors.entry(error).or_insert(0) += 1,
        }
    }
    stats.total = start.elapsed();
    let _ = producer.await;
    for w in workers {
        let _ = w.await;
    }
    stats
}

/// A bounded queue many workers take from (Go's channel of requests).
fn async_channel(capacity: usize) -> (mpsc::Sender<Vec<u8>>, SharedReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (tx, SharedReceiver(std::sync::Arc::new(tokio::sync::Mutex::new(rx))))
}

#[derive(Clone)]
struct SharedReceiver(std::sync::Arc<tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>>);

impl SharedReceiver {
    async fn recv(&self) -> Option<Vec<u8>> {
        self.0.lock().await.recv().await
    }
}

/// `check perf [--load] [--prefix] [--auto-compact] [--auto-defrag]`.
pub async fn perf(mut inv: Invocation) -> CtlResult {
    let load = inv.flags.string("load");
    let model =
        perf_model(&load).ok_or_else(|| Exit::error(EXIT_BAD_FEATURE, format!("unknown load option {load}")))?;
    let prefix = inv.flags.string("prefix");
    let printer = session::prepare(&mut inv)?;
    let endpoints = inv.flags.strings("endpoints");
    let mut sessions = Vec::with_capacity(model.clients);
    for _ in 0..model.clients {
        sessions.push(session::connect_to(&inv.flags, endpoints.clone(), printer.clone()).await?);
    }
    let first = &sessions[0];
    let kv = first.client.kv();
    let existing = first
        .logged(kv.get(prefix.as_str(), GetOptions::new().prefix().limit(1)).await)
        .map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    if !existing.kvs.is_empty() {
        return Err(Exit::error(
            EXIT_INVALID_INPUT,
            format!("prefix {} has keys. Delete with etcdctl del --prefix {prefix} first", quote(prefix.as_bytes())),
        ));
    }
    let bar = tokio::spawn(progress(model.duration));
    let stats = run_workload(&sessions, model, prefix.as_bytes()).await;
    let _ = bar.await;

    let deleted = tokio::time::timeout(CLEANUP_TIMEOUT, kv.delete(prefix.as_str(), DeleteOptions::new().prefix()))
        .await
        .unwrap_or_else(|_| Err(timed_out()));
    let deleted = first.logged(deleted).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    if inv.flags.bool("auto-compact") {
        let revision = deleted.header.as_ref().map_or(0, |h| h.revision);
        out(format!("Compacting with revision {revision}\n"));
        let compacted = tokio::time::timeout(CLEANUP_TIMEOUT, kv.compact(revision, true))
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        first.logged(compacted).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
        out(format!("Compacted with revision {revision}\n"));
    }
    if inv.flags.bool("auto-defrag") {
        for endpoint in &first.endpoints {
            out(format!("Defragmenting {}\n", quote(endpoint.as_bytes())));
            let defragmented = tokio::time::timeout(CLEANUP_TIMEOUT, first.client.maintenance().defragment(endpoint))
                .await
                .unwrap_or_else(|_| Err(timed_out()));
            first.logged_on(endpoint, defragmented).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
            out(format!("Defragmented {}\n", quote(endpoint.as_bytes())));
        }
    }
    let (text, ok) = verdict(&stats, model);
    out(text);
    if ok { Ok(()) } else { Err(Exit::silent(EXIT_ERROR)) }
}

/// A cleanup step that did not finish in time (etcdctl: its context's
/// deadline).
fn timed_out() -> ketch_client::Error {
    ketch_client::Error::Server(ketch_client::EtcdError::new(
        ketch_client::Code::DeadlineExceeded,
        "context deadline exceeded",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_and_aliases() {
        assert_eq!(perf_model("s"), perf_model("small"));
        assert_eq!(perf_model("xLarge").map(|m| (m.limit, m.clients)), Some((15000, 1000)));
        assert_eq!(perf_model("xlarge"), None);
    }

    #[test]
    fn varint_keys_as_go() {
        let k = key_suffix(1);
        assert_eq!(&k[..2], &[2, 0]);
        let k = key_suffix(300);
        assert_eq!(&k[..3], &[0xd8, 0x04, 0]);
        assert_eq!(k.len(), KEY_SIZE);
    }

    #[test]
    fn progress_lines_as_pb_draws_them() {
        let s = Duration::from_secs;
        assert_eq!(progress_line(0, 60, Duration::from_millis(200), Duration::ZERO, false), " 0 / 60    0.00%");
        assert_eq!(
            progress_line(10, 60, Duration::from_millis(10_200), Duration::from_millis(200), false),
            " 10 / 60   16.67% 00m49s"
        );
        assert_eq!(progress_line(60, 60, s(60), Duration::ZERO, true), " 60 / 60  100.00% 1m0s");
    }

    #[test]
    fn verdicts_use_etcdctls_thresholds() {
        let model = PerfModel { limit: 150, clients: 50, duration: 60 };
        let stats = PerfStats { lats: vec![0.01; 9000], errors: BTreeMap::new(), total: Duration::from_secs(60) };
        let (text, ok) = verdict(&stats, model);
        assert!(ok, "{text}");
        assert_eq!(
            text,
            "PASS: Throughput is 151 writes/s\nPASS: Slowest request took 0.010000s\nPASS: Stddev is 0.000000s\nPASS\n"
        );
        let mut errors = BTreeMap::new();
        errors.insert("etcdserver: permission denied".to_string(), 3);
        let stats = PerfStats { lats: vec![0.01, 0.9], errors, total: Duration::from_secs(60) };
        let (text, ok) = verdict(&stats, model);
        assert!(!ok);
        assert!(text.starts_with("FAIL: too many errors\nFAIL: ERROR(etcdserver: permission denied) -> 3\nFAIL: Throughput too low: 1 writes/s\nSlowest request took too long: 0.900000s\nStddev too high: 0.445000s\nFAIL\n"), "{text}");
    }
}
