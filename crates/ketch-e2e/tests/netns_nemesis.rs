//! Nemesis on a real network: every member of a 3-member cluster of the
//! implementation under test (`KETCH_E2E_SUBJECT`) runs in its own network
//! namespace behind a Linux bridge (`ketch_e2e::netns`), and the faults are
//! packet-level: nftables drops in the bridge (majority/minority partitions,
//! a "bridge" partition where one member sees both halves, one-way loss of a
//! member's outbound packets), delay with jitter and random loss on a
//! member's egress, plus `kill -9` and restart, and SIGSTOP/SIGCONT.
//!
//! `netns_faults_really_cut_traffic` proves the plumbing before anything
//! relies on it: a partitioned minority cannot serve a linearizable read or
//! a write while the majority can, the drop rules count packets, a one-way
//! loss of the leader's packets makes the others elect a new leader, and the
//! delay and loss slow or stop a member's answers.
//!
//! `netns_nemesis_run` records a client workload (puts of unique values,
//! gets, deletes, transactions with compares, a watch that moves between
//! members) while a seeded nemesis injects faults, then heals everything and
//! checks: the cluster makes progress through every member within
//! [`LIVENESS`], the members converge (equal `HashKV` at equal revision), the
//! history is linearizable per key, the watch kept its guarantees and every
//! acknowledged write is durable.
//!
//! The seed is printed with a command that replays it
//! (`KETCH_NEMESIS_SEED=<seed>`; timing still varies on a real network).
//! Needs root (network namespaces); `KETCH_E2E_NO_NETNS=1` skips these tests
//! explicitly where that is impossible.

use std::time::{Duration, Instant};

use ketch_check::KeyRange;
use ketch_check::convergence::MemberDigest;
use ketch_e2e::net_cluster::NetCluster;
use ketch_e2e::workload::{
    Evidence, Mix, Recorder, WatchRecorder, Workload, check_all, get, ok_timeline, put, read_event_log,
    read_final_state,
};
use ketch_e2e::{Kind, env_flag, subject_kind};
use ketch_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ketch_proto::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The fault phase.
const FAULTS: Duration = Duration::from_secs(22);
/// After healing, a write through every member must succeed within this.
const LIVENESS: Duration = Duration::from_secs(15);
const CONVERGE: Duration = Duration::from_secs(20);
const OP_TIMEOUT: Duration = Duration::from_secs(2);
const PREFIX: &str = "netns/";

/// One cluster at a time in this binary: the machine is small and timing
/// matters.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn seed() -> u64 {
    for var in ["KETCH_NEMESIS_SEED", "KETCH_SEED"] {
        if let Ok(s) = std::env::var(var) {
            return s.trim().parse().unwrap_or_else(|e| panic!("{var}={s:?} is not a u64: {e}"));
        }
    }
    ketch_e2e::seed()
}

/// The cluster, or `None` if the tests are skipped on purpose.
async fn start_cluster() -> Option<NetCluster> {
    if env_flag("KETCH_E2E_NO_NETNS") {
        println!("SKIPPED: KETCH_E2E_NO_NETNS is set");
        return None;
    }
    // The watch's HTTP/2 pings come every 500 ms; etcd's default policy
    // (`--grpc-keepalive-min-time` 5 s) answers pings that often, on a
    // connection with nothing else to send, by closing it (GOAWAY
    // too_many_pings). Let the reference accept them, as Ketch does.
    let extra: &[&str] = match subject_kind() {
        Kind::Etcd => &["--grpc-keepalive-min-time=100ms"],
        Kind::Ketch => &[],
    };
    match NetCluster::subject(3, extra).await {
        Ok(c) => Some(c),
        Err(e) => panic!("cannot build the network ({e}); run as root, or set KETCH_E2E_NO_NETNS=1 to skip"),
    }
}

/// A linearizable get through member `i`, bounded by `limit`.
async fn try_get(c: &NetCluster, i: usize, key: &str, limit: Duration) -> Result<i64, String> {
    let mut kv = c.kv(i);
    let req = RangeRequest { key: key.into(), ..Default::default() };
    match tokio::time::timeout(limit, kv.range(req)).await {
        Ok(Ok(r)) => Ok(r.into_inner().header.map_or(0, |h| h.revision)),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// A put through member `i`, bounded by `limit`.
async fn try_put(c: &NetCluster, i: usize, key: &str, value: &str, limit: Duration) -> Result<i64, String> {
    let mut kv = c.kv(i);
    let req = PutRequest { key: key.into(), value: value.into(), ..Default::default() };
    match tokio::time::timeout(limit, kv.put(req)).await {
        Ok(Ok(r)) => Ok(r.into_inner().header.map_or(0, |h| h.revision)),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Retries a put through member `i` until it succeeds or `limit` passes.
async fn put_within(c: &NetCluster, i: usize, key: &str, value: &str, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < limit {
        match try_put(c, i, key, value, Duration::from_secs(2)).await {
            Ok(_) => return Ok(started.elapsed()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("no put through m{i} succeeded within {limit:?}; last error: {last}"))
}

/// The fastest of three successful linearizable gets through member `i`
/// (each on a new connection), retrying failures for up to 20 s.
async fn timed_get(c: &NetCluster, i: usize) -> Result<Duration, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut times = Vec::new();
    while times.len() < 3 {
        let started = Instant::now();
        match try_get(c, i, "probe/a", Duration::from_secs(5)).await {
            Ok(_) => times.push(started.elapsed()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Ok(times.into_iter().min().expect("three reads"))
}

/// Sum of the packet counters of the drop rules in the bridge.
fn dropped_packets(c: &NetCluster) -> u64 {
    let rules = c.net().rules().expect("cannot list the bridge's rules");
    rules
        .lines()
        .filter_map(|l| l.split("counter packets ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Polls every member's `Status` every 200 ms until told to stop; the
/// changes of (leader, term) each member reported, as lines
/// `<time> m<i>: leader m<j> term <t>` (for understanding an outage).
fn spawn_leader_timeline(
    urls: Vec<String>,
    ids: Vec<u64>,
    rec: std::sync::Arc<Recorder>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let clients: Vec<_> =
            urls.iter().map(|u| MaintenanceClient::new(ketch_e2e::cluster::lazy_channel(u))).collect();
        let mut last: Vec<Option<String>> = vec![None; urls.len()];
        let mut lines = Vec::new();
        loop {
            for (i, client) in clients.iter().enumerate() {
                let mut client = client.clone();
                let now = match tokio::time::timeout(Duration::from_millis(300), client.status(StatusRequest {})).await
                {
                    Ok(Ok(s)) => {
                        let s = s.into_inner();
                        let leader =
                            ids.iter().position(|&id| id == s.leader).map_or("none".into(), |l| format!("m{l}"));
                        format!("leader {leader} term {}", s.raft_term)
                    }
                    _ => "no answer".to_string(),
                };
                if last[i].as_ref() != Some(&now) {
                    lines.push(format!("{:.1}s m{i}: {now}", rec.elapsed().as_secs_f64()));
                    last[i] = Some(now);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return lines,
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_faults_really_cut_traffic() {
    let _serial = SERIAL.lock().await;
    let Some(mut c) = start_cluster().await else { return };
    println!("network {} ({:?} delay), {} members", c.net().tag(), c.net().delay_mechanism(), c.size());
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    try_put(&c, leader, "probe/a", "1", Duration::from_secs(5)).await.expect("a put before any fault");

    // 1. The leader alone in a minority: it must stop serving linearizable
    // reads and writes, while the other two elect a leader and serve both.
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    c.net().partition(&[&[leader], &others]).expect("partition");
    let before = dropped_packets(&c);
    let new_leader = c
        .wait_leader_where(Duration::from_secs(15), |l| l != leader)
        .await
        .unwrap_or_else(|e| panic!("the majority did not elect a leader of its own: {e}"));
    assert!(others.contains(&new_leader));
    let rev = try_put(&c, others[0], "probe/a", "2", Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("the majority cannot write: {e}"));
    try_get(&c, others[1], "probe/a", Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("the majority cannot read: {e}"));
    let read = try_get(&c, leader, "probe/a", Duration::from_secs(3)).await;
    assert!(
        read.is_err(),
        "the isolated old leader served a linearizable read during the partition: revision {read:?}"
    );
    let write = try_put(&c, leader, "probe/b", "minority", Duration::from_secs(3)).await;
    assert!(write.is_err(), "the isolated old leader acknowledged a write during the partition: {write:?}");
    let after = dropped_packets(&c);
    assert!(after > before, "the partition's drop rules counted no packets ({before} -> {after})");
    println!(
        "partition: majority wrote at revision {rev}; minority refused ({read:?}, {write:?}); {after} packets dropped"
    );

    // Healed, the old leader catches up and serves the majority's write.
    c.net().heal().expect("heal");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match try_get(&c, leader, "probe/a", Duration::from_secs(2)).await {
            Ok(r) if r >= rev => break,
            other => assert!(Instant::now() < deadline, "m{leader} does not serve after healing: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 2. One-way: the leader's outbound packets are lost (it still hears the
    // others), so the others stop hearing heartbeats and elect a new leader.
    let leader = c.wait_leader(Duration::from_secs(15)).await;
    c.net().one_way(leader).expect("one-way");
    c.wait_leader_where(Duration::from_secs(15), |l| l != leader)
        .await
        .unwrap_or_else(|e| panic!("losing m{leader}'s outbound packets did not move the leadership: {e}"));
    c.net().heal().expect("heal");
    c.wait_leader(Duration::from_secs(15)).await;

    // 3. Delay: every packet m0 sends waits 300 ms, so its answers do too.
    // (The healed one-way fault may still cost an election: retry.)
    let fast = timed_get(&c, 0).await.expect("a read before the delay");
    c.net().netem(0, Duration::from_millis(300), Duration::ZERO, 0.0).expect("delay");
    let slow = timed_get(&c, 0).await.expect("a read through the delayed member");
    assert!(
        slow >= Duration::from_millis(300),
        "a read through m0 took {slow:?} with a 300 ms delay (before: {fast:?})"
    );
    println!("delay: the fastest of 3 reads took {fast:?}, then {slow:?} with 300 ms delay on m0's egress");

    // 4. Loss: all of m0's packets are lost; it answers nothing.
    c.net().netem(0, Duration::ZERO, Duration::ZERO, 1.0).expect("loss");
    let lost = try_get(&c, 0, "probe/a", Duration::from_secs(2)).await;
    assert!(lost.is_err(), "m0 answered with 100% loss on its egress: {lost:?}");
    c.net().heal().expect("heal");
    put_within(&c, 0, "probe/c", "healed", Duration::from_secs(15)).await.expect("m0 serves after healing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_nemesis_run() {
    let _serial = SERIAL.lock().await;
    let seed = seed();
    println!(
        "netns nemesis seed {seed}; replay: KETCH_NEMESIS_SEED={seed} KETCH_E2E_SUBJECT={} \
         cargo test -p ketch-e2e --test netns_nemesis -- netns_nemesis_run --nocapture",
        subject_kind().as_str()
    );
    let test_started = Instant::now();
    let Some(mut c) = start_cluster().await else { return };
    println!("network {} ({:?} delay)", c.net().tag(), c.net().delay_mechanism());
    let mut rng = StdRng::seed_from_u64(seed);
    c.wait_leader(Duration::from_secs(20)).await;

    let workload = Workload { clients: 5, keys: 16, prefix: PREFIX.into(), mix: Mix::ALL, op_timeout: OP_TIMEOUT };
    let rec = Recorder::new();
    let until = Instant::now() + FAULTS;
    let members = (0..c.size()).map(|i| c.kv(i)).collect();
    let clients = workload.spawn(seed, members, rec.clone(), until);
    let watch = WatchRecorder::spawn(KeyRange::prefix(PREFIX), c.client_urls(), seed);
    let (stop_timeline, stop_rx) = tokio::sync::watch::channel(false);
    let ids = (0..c.size()).map(|i| c.id(i)).collect();
    let timeline = spawn_leader_timeline(c.client_urls(), ids, rec.clone(), stop_rx);

    let mut faults = Vec::new();
    while Instant::now() + Duration::from_secs(2) < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..800))).await;
        let n = c.size();
        let victim = rng.random_range(0..n);
        let hold = Duration::from_millis(rng.random_range(800..2500));
        let at = format!("{:.1}s", rec.elapsed().as_secs_f64());
        match rng.random_range(0..7) {
            0 => {
                let target = if rng.random_bool(0.5) { c.leader().await.unwrap_or(victim) } else { victim };
                faults.push(format!("{at} kill -9 m{target}"));
                c.kill9(target);
                tokio::time::sleep(hold / 2).await;
                c.restart(target).await;
            }
            1 => {
                // The leader if there is one: the interesting victim.
                let target = c.leader().await.unwrap_or(victim);
                faults.push(format!("{at} SIGSTOP m{target} for {hold:?}"));
                c.sigstop(target);
                tokio::time::sleep(hold).await;
                c.sigcont(target);
            }
            2 => {
                let target = if rng.random_bool(0.5) { c.leader().await.unwrap_or(victim) } else { victim };
                let rest: Vec<usize> = (0..n).filter(|&i| i != target).collect();
                faults.push(format!("{at} partition [m{target}] | {rest:?} for {hold:?}"));
                c.net().partition(&[&[target], &rest]).expect("partition");
                tokio::time::sleep(hold).await;
                c.net().heal().expect("heal");
            }
            3 => {
                // victim sees both halves; the other two cannot see each other.
                let (a, b) = ((victim + 1) % n, (victim + 2) % n);
                faults.push(format!("{at} bridge m{a} - m{victim} - m{b} for {hold:?}"));
                c.net().partition(&[&[a, victim], &[victim, b]]).expect("bridge partition");
                tokio::time::sleep(hold).await;
                c.net().heal().expect("heal");
            }
            4 => {
                let target = if rng.random_bool(0.5) { c.leader().await.unwrap_or(victim) } else { victim };
                faults.push(format!("{at} one-way: m{target}'s outbound packets lost for {hold:?}"));
                c.net().one_way(target).expect("one-way");
                tokio::time::sleep(hold).await;
                c.net().heal().expect("heal");
            }
            6 => {
                // Two at once: a slow, lossy network everywhere and a
                // minority cut off.
                let delay = Duration::from_millis(rng.random_range(10..80));
                let loss = [0.01, 0.05, 0.1][rng.random_range(0..3)];
                let rest: Vec<usize> = (0..n).filter(|&i| i != victim).collect();
                faults.push(format!(
                    "{at} netem all: delay {delay:?} ± {:?}, loss {}%, and partition [m{victim}] | {rest:?} for {hold:?}",
                    delay / 2,
                    loss * 100.0
                ));
                for t in 0..n {
                    c.net().netem(t, delay, delay / 2, loss).expect("netem");
                }
                c.net().partition(&[&[victim], &rest]).expect("partition");
                tokio::time::sleep(hold).await;
                c.net().heal().expect("heal");
            }
            _ => {
                let delay = Duration::from_millis(rng.random_range(10..150));
                let jitter = delay / 2;
                let loss = [0.0, 0.02, 0.1, 0.3][rng.random_range(0..4)];
                let all = rng.random_bool(0.3);
                let targets: Vec<usize> = if all { (0..n).collect() } else { vec![victim] };
                faults.push(format!(
                    "{at} netem {targets:?}: delay {delay:?} ± {jitter:?}, loss {}% for {hold:?}",
                    loss * 100.0
                ));
                for &t in &targets {
                    c.net().netem(t, delay, jitter, loss).expect("netem");
                }
                tokio::time::sleep(hold).await;
                c.net().heal().expect("heal");
            }
        }
    }
    println!("faults:\n  {}", faults.join("\n  "));
    let totals = clients.join().await;
    println!("operations: {} ok, {} failed, {} unknown outcome", totals.ok, totals.failed, totals.unknown);
    println!("ok per second: {:?}", ok_timeline(&rec.history(), Duration::from_secs(1)));
    let _ = stop_timeline.send(true);
    println!("leaders:\n  {}", timeline.await.expect("timeline task").join("\n  "));

    // Heal everything; every member must serve a write within LIVENESS.
    c.net().heal().expect("heal");
    for i in 0..c.size() {
        if c.is_stopped(i) {
            c.sigcont(i);
        }
        if !c.is_running(i) {
            c.restart(i).await;
        }
    }
    let healed = Instant::now();
    for i in 0..c.size() {
        loop {
            let key = format!("{PREFIX}live-{i}").into_bytes();
            let value = format!("live-{i}-{}", healed.elapsed().as_millis()).into_bytes();
            let outcome = put(&rec, 1000 + i as u64, c.kv(i), key, value, OP_TIMEOUT).await;
            if matches!(outcome, ketch_check::Outcome::Ok(_)) {
                break;
            }
            if healed.elapsed() > LIVENESS {
                let statuses = c.statuses().await;
                panic!(
                    "LIVENESS (KETCH_NEMESIS_SEED={seed}): no write through m{i} succeeded within {LIVENESS:?} \
                     of healing (last outcome {outcome}); {}",
                    c.describe(&statuses)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // And a linearizable read through each.
    for i in 0..c.size() {
        let outcome = get(&rec, 1000 + i as u64, c.kv(i), format!("{PREFIX}live-0").into_bytes(), OP_TIMEOUT).await;
        assert!(
            matches!(outcome, ketch_check::Outcome::Ok(_)),
            "LIVENESS (KETCH_NEMESIS_SEED={seed}): m{i} cannot serve a linearizable read after healing: {outcome}"
        );
    }
    println!("liveness: every member wrote and read within {:?} of healing", healed.elapsed());
    assert!(totals.ok > 100, "too little got through to say anything: {totals:?}");

    let (rev, hashes) = c.wait_converged(CONVERGE).await.unwrap_or_else(|e| panic!("KETCH_NEMESIS_SEED={seed}: {e}"));
    println!("converged at revision {rev}, hash {}", hashes[0].hash);
    let watch_caught_up = watch.wait_reached(rev, Duration::from_secs(10)).await;
    let attempts = watch.attempts();
    let (watcher, ends) = watch.finish().await;
    println!("watch: {attempts} streams; ends: {ends:?}");
    if let Err(e) = watch_caught_up {
        panic!("LIVENESS (KETCH_NEMESIS_SEED={seed}): {e}");
    }
    let log = read_event_log(&c.client_url(0), rev, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("cannot read m0's event log: {e}"));
    let state = read_final_state(c.kv(0), rev).await.unwrap_or_else(|e| panic!("cannot read the final state: {e}"));
    let digests: Vec<MemberDigest> = hashes
        .iter()
        .map(|h| MemberDigest {
            member: format!("{:x}", h.header.as_ref().map_or(0, |h| h.member_id)),
            revision: rev,
            compact_revision: h.compact_revision,
            hash: u64::from(h.hash),
        })
        .collect();
    let history = rec.history();
    let failures =
        check_all(&Evidence { history: &history, watchers: &[watcher], log: &log, state: &state, digests: &digests });
    println!("whole test: {:?}", test_started.elapsed());
    assert!(
        failures.is_empty(),
        "{} check(s) failed (KETCH_NEMESIS_SEED={seed}):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
