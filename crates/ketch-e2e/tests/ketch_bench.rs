//! The `ketch-bench` binary (etcd's benchmark tool in Rust) against one
//! reference etcd and one ketch member: every subcommand with small totals
//! (`put`, `range` linearizable and serializable, `txn-put`, `txn-mixed`,
//! `watch`, `watch-latency`, `lease-keepalive`), each with `--json`. For
//! every run: the report parses, its counts match the totals asked for,
//! nothing failed, and the server's state shows the work (keys written,
//! revisions advanced by exactly the writes, leases granted, reads writing
//! nothing). Then its put throughput is checked against an independent
//! measurement of the same workload with the `etcd-client` crate on the same
//! server: the two must agree within a factor of 3 (it is a timing, on a
//! shared machine: the bound only catches a report that is off by a lot,
//! e.g. counting the wrong requests or the wrong time).
//!
//! Needs the binaries: `cargo build --workspace --bins` (`KETCH_BENCH_BIN`
//! overrides where `ketch-bench` is looked for, as `KETCH_BIN` does for
//! `ketch`).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ketch_e2e::{Kind, Member};
use ketch_proto::etcdserverpb::{LeaseLeasesRequest, PutRequest, RangeRequest, lease_client::LeaseClient};
use serde_json::Value;

/// Wall-clock bound of one ketch-bench run.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How far ketch-bench's throughput may be from etcd-client's, either way.
const THROUGHPUT_FACTOR: f64 = 3.0;

/// Path of `ketch-bench`: `$KETCH_BENCH_BIN`, or `target/<profile>/ketch-bench`
/// next to the test executable (as [`ketch_e2e::ketch_binary`] finds `ketch`).
fn ketch_bench_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KETCH_BENCH_BIN") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "KETCH_BENCH_BIN={} does not exist or is not a file", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("cannot find the path of the test executable");
    let mut dir = exe.parent().expect("test executable has no parent directory").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join("ketch-bench");
    assert!(
        bin.is_file(),
        "ketch-bench binary not found at {}: run `cargo build --workspace --bins` first \
         (with the same profile as the tests), or point KETCH_BENCH_BIN at it",
        bin.display()
    );
    bin
}

/// Runs `ketch-bench --endpoints <member> --json --no-progress <args>`,
/// bounded by [`RUN_TIMEOUT`]; asserts it succeeded and returns its report.
fn bench_blocking(endpoint: String, args: Vec<String>) -> Value {
    let mut child = Command::new(ketch_bench_binary())
        .arg("--endpoints")
        .arg(&endpoint)
        .arg("--json")
        .arg("--no-progress")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start ketch-bench");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot poll ketch-bench") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().expect("cannot reap ketch-bench");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (stdout, stderr) = (out.join().expect("stdout reader"), err.join().expect("stderr reader"));
    assert!(
        status.success(),
        "ketch-bench {args:?} against {endpoint} failed ({status}); stderr:\n{stderr}\nstdout:\n{stdout}"
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("ketch-bench {args:?}: report is not JSON ({e}): {stdout}\nstderr:\n{stderr}"))
}

async fn bench(member: &Member, args: &[&str]) -> Value {
    let (endpoint, args) = (member.endpoint(), args.iter().map(|s| s.to_string()).collect());
    tokio::task::spawn_blocking(move || bench_blocking(endpoint, args)).await.expect("ketch-bench runner panicked")
}

/// The report named `name`, checked: it parses into the expected fields,
/// has `count` successful requests and no errors, and its figures are
/// consistent with each other.
fn report<'a>(json: &'a Value, name: &str, count: u64) -> &'a Value {
    let reports = json["reports"].as_array().unwrap_or_else(|| panic!("no reports in {json}"));
    let r = reports.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no report {name} in {json}"));
    assert_eq!(r["errors"], 0, "{name}: errors in {r}");
    assert_eq!(r["count"], count, "{name}: count in {r}");
    assert_eq!(r["requests"], count, "{name}: requests in {r}");
    let total = r["total_secs"].as_f64().expect("total_secs");
    let rps = r["requests_per_sec"].as_f64().expect("requests_per_sec");
    assert!(total > 0.0 && (rps * total - count as f64).abs() < 1.0, "{name}: rps {rps} x total {total} != {count}");
    if count > 0 {
        let (fastest, slowest) =
            (r["fastest_secs"].as_f64().expect("fastest"), r["slowest_secs"].as_f64().expect("slowest"));
        let average = r["average_secs"].as_f64().expect("average");
        assert!(0.0 <= fastest && fastest <= average && average <= slowest, "{name}: {r}");
        let histogram: u64 =
            r["histogram"].as_array().expect("histogram").iter().map(|b| b["count"].as_u64().expect("n")).sum();
        assert_eq!(histogram, count, "{name}: histogram counts in {r}");
        assert!(!r["latency_distribution"].as_array().expect("latency distribution").is_empty(), "{name}: {r}");
    }
    r
}

async fn revision(member: &Member) -> i64 {
    let mut kv = member.kv().await;
    let r =
        kv.range(RangeRequest { key: b"\0".to_vec(), count_only: true, ..Default::default() }).await.expect("range");
    r.into_inner().header.expect("header").revision
}

/// Keys of exactly `len` bytes (ketch-bench's keys are `--key-size` bytes).
async fn keys_of_len(member: &Member, len: usize) -> usize {
    let mut kv = member.kv().await;
    let request = RangeRequest { key: vec![0], range_end: vec![0], keys_only: true, ..Default::default() };
    let r = kv.range(request).await.expect("range of every key").into_inner();
    r.kvs.iter().filter(|kv| kv.key.len() == len).count()
}

/// Every subcommand against `member`, with the server state checked after each.
async fn every_subcommand(member: &Member) {
    let kind = member.kind().as_str();
    let clients: &[&str] = &["--clients", "8", "--conns", "2"];
    let with = |args: &[&'static str]| -> Vec<&'static str> { [clients, args].concat() };

    // put: 500 sequential keys of 8 bytes, one revision each.
    let rev = revision(member).await;
    let json = bench(
        member,
        &with(&["put", "--total", "500", "--sequential-keys", "--key-space-size", "500", "--val-size", "64"]),
    )
    .await;
    assert_eq!(
        (json["command"].as_str(), json["conns"].as_u64(), json["clients"].as_u64()),
        (Some("put"), Some(2), Some(8))
    );
    report(&json, "put", 500);
    assert_eq!(keys_of_len(member, 8).await, 500, "{kind}: keys after put");
    assert_eq!(revision(member).await, rev + 500, "{kind}: revision after put");

    // range, linearizable and serializable: reads write nothing.
    member
        .kv()
        .await
        .put(PutRequest { key: b"bench-foo".to_vec(), value: b"bar".to_vec(), ..Default::default() })
        .await
        .expect("put bench-foo");
    let rev = revision(member).await;
    for consistency in ["l", "s"] {
        let json = bench(member, &with(&["range", "bench-foo", "--consistency", consistency, "--total", "300"])).await;
        report(&json, "range", 300);
    }
    assert_eq!(revision(member).await, rev, "{kind}: revision after range");

    // txn-put: 200 transactions of 4 puts over 100 keys of 10 bytes.
    let json = bench(
        member,
        &with(&["txn-put", "--total", "200", "--txn-ops", "4", "--key-space-size", "100", "--key-size", "10"]),
    )
    .await;
    report(&json, "txn-put", 200);
    assert_eq!(keys_of_len(member, 10).await, 100, "{kind}: keys after txn-put");
    assert_eq!(revision(member).await, rev + 200, "{kind}: revision after txn-put");

    // txn-mixed: one revision per write, none per read.
    let rev = revision(member).await;
    let json =
        bench(member, &with(&["txn-mixed", "--total", "300", "--key-space-size", "50", "--key-size", "12"])).await;
    let (reads, writes) =
        (json["read_ops"].as_u64().expect("read_ops"), json["write_ops"].as_u64().expect("write_ops"));
    assert_eq!(reads + writes, 300, "{kind}: {json}");
    report(&json, "read", reads);
    report(&json, "write", writes);
    assert!((1..=50).contains(&keys_of_len(member, 12).await) || writes == 0, "{kind}: keys after txn-mixed");
    assert_eq!(revision(member).await, rev + writes as i64, "{kind}: revision after txn-mixed");

    // watch: 100 watchers on 5 keys (20 each), 100 puts: 2,000 events.
    let rev = revision(member).await;
    let json = bench(
        member,
        &with(&[
            "watch",
            "--streams",
            "4",
            "--watch-per-stream",
            "25",
            "--watched-key-total",
            "5",
            "--key-space-size",
            "5",
            "--sequential-keys",
            "--key-size",
            "16",
            "--put-total",
            "100",
        ]),
    )
    .await;
    report(&json, "watch-creation", 100);
    assert_eq!(json["events_expected"], 2000, "{kind}: {json}");
    report(&json, "watch-events", 2000);
    assert_eq!(keys_of_len(member, 16).await, 5, "{kind}: keys after watch");
    assert_eq!(revision(member).await, rev + 100, "{kind}: revision after watch");

    // watch-latency: 10 watchers (with prev_kv), 50 puts: 500 events.
    let rev = revision(member).await;
    let json = bench(
        member,
        &with(&[
            "watch-latency",
            "--streams",
            "2",
            "--watchers-per-stream",
            "5",
            "--prevkv",
            "--put-total",
            "50",
            "--put-rate",
            "500",
        ]),
    )
    .await;
    report(&json, "put", 50);
    report(&json, "watch-events", 500);
    assert_eq!(revision(member).await, rev + 50, "{kind}: revision after watch-latency");

    // lease-keepalive: one lease per client, renewed 300 times in all.
    let json = bench(member, &with(&["lease-keepalive", "--total", "300"])).await;
    report(&json, "lease-keepalive", 300);
    let leases = LeaseClient::new(member.channel().await)
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("lease leases")
        .into_inner()
        .leases;
    assert_eq!(leases.len(), 8, "{kind}: one lease per client");
}

/// Put throughput of `clients` concurrent etcd-client clients on one
/// connection, `total` puts of sequential keys (the workload of
/// `ketch-bench --clients <clients> --conns 1 put --sequential-keys`).
async fn etcd_client_put_rate(member: &Member, clients: usize, total: u64, val_size: usize) -> f64 {
    let client = etcd_client::Client::connect([member.client_url()], None).await.expect("etcd-client connects");
    let next = Arc::new(AtomicU64::new(0));
    let value = vec![b'v'; val_size];
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (mut client, next, value) = (client.clone(), next.clone(), value.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                client.put(format!("etcd-client/{i:06}"), value.clone(), None).await.expect("etcd-client put");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("etcd-client task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// ketch-bench's put throughput agrees with etcd-client's on the same
/// workload (best of two interleaved runs each, to damp noise).
async fn throughput_agrees_with_etcd_client(member: &Member) {
    const CLIENTS: usize = 16;
    const TOTAL: u64 = 1000;
    let kind = member.kind().as_str();
    let (mut ours, mut theirs) = (0f64, 0f64);
    for _ in 0..2 {
        let json = bench(
            member,
            &[
                "--clients",
                "16",
                "--conns",
                "1",
                "put",
                "--total",
                "1000",
                "--sequential-keys",
                "--key-space-size",
                "1000",
                "--key-size",
                "8",
                "--val-size",
                "256",
            ],
        )
        .await;
        let rps = report(&json, "put", TOTAL)["requests_per_sec"].as_f64().expect("requests_per_sec");
        ours = ours.max(rps);
        theirs = theirs.max(etcd_client_put_rate(member, CLIENTS, TOTAL, 256).await);
    }
    eprintln!("{kind}: put, {CLIENTS} clients: ketch-bench {ours:.0}/s, etcd-client {theirs:.0}/s");
    let ratio = ours / theirs;
    assert!(
        (1.0 / THROUGHPUT_FACTOR..=THROUGHPUT_FACTOR).contains(&ratio),
        "{kind}: ketch-bench says {ours:.0} puts/s, etcd-client measured {theirs:.0}/s (ratio {ratio:.2})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ketch_bench_against_etcd() {
    let member = Member::start(Kind::Etcd, &[]).await;
    every_subcommand(&member).await;
    throughput_agrees_with_etcd_client(&member).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ketch_bench_against_ketch() {
    let member = Member::start(Kind::Ketch, &[]).await;
    every_subcommand(&member).await;
    throughput_agrees_with_etcd_client(&member).await;
}

/// Without `--json`, the text is etcd's report.
#[test]
fn text_report_is_etcds() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let member = runtime.block_on(Member::start(Kind::Ketch, &[]));
    let output = Command::new(ketch_bench_binary())
        .args(["--endpoints", &member.endpoint(), "put", "--total", "50"])
        .stdin(Stdio::null())
        .output()
        .expect("ketch-bench runs");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.stderr.is_empty(), "no progress bar without a terminal: {output:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..2], ["", "Summary:"], "{text}");
    for (i, label) in ["Total:", "Slowest:", "Fastest:", "Average:", "Stddev:"].iter().enumerate() {
        let line = lines[2 + i];
        assert!(line.starts_with(&format!("  {label}\t")) && line.ends_with(" secs."), "{line:?} in\n{text}");
    }
    assert!(lines[7].starts_with("  Requests/sec:\t"), "{text}");
    assert_eq!(lines[8..10], ["", "Response time histogram:"], "{text}");
    let bars = lines[10..21].iter().filter(|l| l.starts_with("  ") && l.contains(" [") && l.contains("]\t|")).count();
    assert_eq!(bars, 11, "{text}");
    assert_eq!(lines[21..23], ["", "Latency distribution:"], "{text}");
    assert!(lines[23].starts_with("  10% in ") && lines[23].ends_with(" secs."), "{text}");
}
