//! Three-member clusters, Ketch and the reference etcd 3.4 side by side: put
//! throughput and latency at 1, 64 and 256 concurrent clients, linearizable
//! and serializable Range reads at 64 clients, and the resident memory of
//! every member afterwards.
//!
//! A benchmark, not a test: it reports, and asserts only that every request
//! succeeds (and that every read finds its preloaded key).
//!
//! Each cluster is started the same way (`--name m0..m2`, `--initial-cluster
//! m0=...,m1=...,m2=...`, `--initial-cluster-token`, `--initial-cluster-state
//! new`, loopback client and peer ports, data dirs in a temporary directory
//! under `$TMPDIR`, default heartbeat and election timeouts), one cluster at a
//! time so the two never compete for CPU, and is used once all three members
//! agree on a leader. Keys are 8 bytes (`k0000000`..`k0099999`, drawn by a
//! seeded per-client RNG, the same sequence for both servers), values 256
//! bytes. Clients share 4 gRPC connections per member (12 in all) and are
//! spread round-robin over the members, followers first, so the single client
//! of the 1-client scenario talks to a follower (as a client that does not know
//! the leader usually does). Every client issues requests back to back for a
//! fixed time; the 100,000 keys are written by 256 clients before the reads.
//! Clients and servers share this machine's cores.
//!
//! ```text
//! cargo build --release -p ketch
//! cargo run --release -p ketch-e2e --bin cluster_bench               # both servers
//! CLUSTER_BENCH_ONLY=etcd cargo run --release -p ketch-e2e --bin cluster_bench
//! CLUSTER_BENCH_SECS=3 cargo run --release -p ketch-e2e --bin cluster_bench
//! ```
//!
//! - `CLUSTER_BENCH_ONLY=ketch|etcd`: run only one of the two clusters.
//! - `CLUSTER_BENCH_SECS`: seconds per measured scenario (default 10).
//! - `KETCH_BIN`: the ketch binary (default: `ketch` next to this binary).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ketch_e2e::{ETCD_BIN, Kind, RPC_TIMEOUT, die_with_parent, free_port, ketch_binary, rss_kib, spawn_child};
use ketch_proto::etcdserverpb::{
    PutRequest, RangeRequest, StatusRequest, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use tonic::transport::{Channel, Endpoint};

const MEMBERS: usize = 3;
const KEY_SPACE: u64 = 100_000;
const VALUE_LEN: usize = 256;
const CONNS_PER_MEMBER: usize = 4;
const PRELOAD_CLIENTS: usize = 256;
/// How long a new cluster may take until all members agree on a leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// Key `i` of the key space: 8 bytes.
fn key(i: u64) -> Vec<u8> {
    format!("k{i:07}").into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    (0..VALUE_LEN).map(|j| b'a' + ((i as usize + j) % 26) as u8).collect()
}

/// One member process of a benchmark cluster.
struct Node {
    name: String,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Node {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A three-member cluster of one kind; dropping it SIGKILLs every member.
struct Cluster {
    kind: Kind,
    nodes: Vec<Node>,
    /// Index in `nodes` of the leader all members agreed on.
    leader: usize,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }
}

impl Cluster {
    /// Starts the three members and waits until they agree on a leader;
    /// retries with fresh ports if a member lost a port race.
    async fn start(kind: Kind) -> Result<Cluster, String> {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let mut cluster = Cluster::spawn(kind);
            match cluster.wait_leader().await {
                Ok(leader) => {
                    cluster.leader = leader;
                    return Ok(cluster);
                }
                Err(e)
                    if attempt < ATTEMPTS
                        && cluster.nodes.iter().any(|n| n.log_tail(200).contains("address already in use")) =>
                {
                    eprintln!("{}: port conflict ({e}), retrying with new ports", kind.as_str());
                }
                Err(e) => {
                    let tails: Vec<String> = cluster
                        .nodes
                        .iter()
                        .map(|n| {
                            format!("--- last lines of {} ({}):\n{}", n.name, n.log_path().display(), n.log_tail(15))
                        })
                        .collect();
                    return Err(format!("{e}\n{}", tails.join("\n")));
                }
            }
        }
        unreachable!("the last attempt either returns or fails")
    }

    fn spawn(kind: Kind) -> Cluster {
        let mut nodes: Vec<Node> = (0..MEMBERS)
            .map(|i| Node {
                name: format!("m{i}"),
                dir: tempfile::Builder::new()
                    .prefix(&format!("ketch-bench-{}-m{i}-", kind.as_str()))
                    .tempdir()
                    .expect("cannot create a temporary directory for a member"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let initial_cluster =
            nodes.iter().map(|n| format!("{}={}", n.name, n.peer_url())).collect::<Vec<_>>().join(",");
        let program = match kind {
            Kind::Etcd => PathBuf::from(ETCD_BIN),
            Kind::Ketch => ketch_binary(),
        };
        for node in &mut nodes {
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(node.log_path())
                .expect("cannot open the member's log file");
            let log_err = log.try_clone().expect("cannot duplicate the log file handle");
            let mut cmd = Command::new(&program);
            cmd.arg("--name")
                .arg(&node.name)
                .arg("--data-dir")
                .arg(node.dir.path().join("data"))
                .arg("--listen-client-urls")
                .arg(node.client_url())
                .arg("--advertise-client-urls")
                .arg(node.client_url())
                .arg("--listen-peer-urls")
                .arg(node.peer_url())
                .arg("--initial-advertise-peer-urls")
                .arg(node.peer_url())
                .arg("--initial-cluster")
                .arg(&initial_cluster)
                .arg("--initial-cluster-token")
                .arg(format!("cluster-bench-{}", kind.as_str()))
                .arg("--initial-cluster-state")
                .arg("new");
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("ETCD_") {
                    cmd.env_remove(key);
                }
            }
            cmd.stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
            die_with_parent(&mut cmd);
            {
                let mut log = OpenOptions::new().append(true).open(node.log_path()).expect("cannot open the log file");
                let _ = writeln!(log, "=== cluster_bench: starting {cmd:?}");
            }
            let child = spawn_child(cmd).unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
            node.child = Some(child);
        }
        Cluster { kind, nodes, leader: 0 }
    }

    /// Polls `Maintenance.Status` on every member until all three answer
    /// with the same cluster id and the same non-zero leader, which must be
    /// one of them; returns the leader's index.
    async fn wait_leader(&mut self) -> Result<usize, String> {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            let mut last = String::new();
            for node in &mut self.nodes {
                if let Some(child) = node.child.as_mut()
                    && let Some(status) = child.try_wait().expect("cannot poll a member's process")
                {
                    node.child = None;
                    return Err(format!("{} {} exited: {status}", self.kind.as_str(), node.name));
                }
            }
            let mut answers = Vec::new();
            for node in &self.nodes {
                match status(&node.client_url()).await {
                    Ok(s) => answers.push(s),
                    Err(e) => last = format!("{}: {e}", node.name),
                }
            }
            if answers.len() == MEMBERS {
                let (cluster_id, _, leader) = answers[0];
                let agreed = leader != 0 && answers.iter().all(|&(c, _, l)| c == cluster_id && l == leader);
                if let Some(index) = answers.iter().position(|&(_, member, _)| member == leader)
                    && agreed
                {
                    return Ok(index);
                }
                last = format!(
                    "members do not agree on one leader among them: (cluster id, member id, leader) = {answers:x?}"
                );
            }
            if Instant::now() >= deadline {
                return Err(format!("no agreed leader within {LEADER_TIMEOUT:?}; last: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Member indices, followers first, then the leader.
    fn order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.nodes.len()).filter(|&i| i != self.leader).collect();
        order.push(self.leader);
        order
    }

    /// [`CONNS_PER_MEMBER`] connections per member, interleaved by member
    /// (followers first), so that handing them out round-robin spreads
    /// clients evenly over the members.
    async fn channels(&self) -> Vec<Channel> {
        let mut channels = Vec::new();
        for _ in 0..CONNS_PER_MEMBER {
            for &i in &self.order() {
                let url = self.nodes[i].client_url();
                let channel = Endpoint::from_shared(url.clone())
                    .expect("client URL is a valid URI")
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(RPC_TIMEOUT)
                    .connect()
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
                channels.push(channel);
            }
        }
        channels
    }
}

/// `(cluster id, member id, leader id)` from one `Maintenance.Status`.
async fn status(url: &str) -> Result<(u64, u64, u64), String> {
    let channel = Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let resp = MaintenanceClient::new(channel)
        .status(StatusRequest {})
        .await
        .map_err(|e| format!("status: {e}"))?
        .into_inner();
    let header = resp.header.unwrap_or_default();
    Ok((header.cluster_id, header.member_id, resp.leader))
}

#[derive(Clone, Copy)]
enum Op {
    Put,
    Get { serializable: bool },
}

/// How long each client runs: for a fixed time, or a fixed share of keys.
#[derive(Clone, Copy)]
enum Load {
    For(Duration),
    /// Every key of the key space once, split among the clients.
    EveryKey,
}

struct Outcome {
    ops: usize,
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `clients` concurrent clients on `channels` (client `c` on channel
/// `c % channels.len()`), each issuing `op` back to back. The first failed
/// request (or read that misses its preloaded key) ends the run with an error.
async fn measure(channels: &[Channel], clients: usize, op: Op, load: Load, seed: u64) -> Result<Outcome, String> {
    let start = Instant::now();
    // A JoinSet: if one client fails, the others are aborted with it.
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let mut kv = KvClient::new(channels[c % channels.len()].clone());
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (c as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let mut latencies_us: Vec<u32> = Vec::new();
            let mut next_key = c as u64;
            loop {
                let k = match load {
                    Load::For(d) if start.elapsed() < d => rng.random_range(0..KEY_SPACE),
                    Load::EveryKey if next_key < KEY_SPACE => {
                        next_key += clients as u64;
                        next_key - clients as u64
                    }
                    _ => break,
                };
                let t = Instant::now();
                match op {
                    Op::Put => {
                        kv.put(PutRequest { key: key(k), value: value(k), ..Default::default() })
                            .await
                            .map_err(|e| format!("put of key {k}: {e}"))?;
                    }
                    Op::Get { serializable } => {
                        let resp = kv
                            .range(RangeRequest { key: key(k), serializable, ..Default::default() })
                            .await
                            .map_err(|e| format!("range of key {k}: {e}"))?
                            .into_inner();
                        if resp.kvs.len() != 1 {
                            return Err(format!("preloaded key {k} not found (serializable: {serializable})"));
                        }
                    }
                }
                latencies_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            Ok((latencies_us, start.elapsed()))
        });
    }
    let mut all = Vec::new();
    let mut elapsed = Duration::ZERO;
    while let Some(result) = tasks.join_next().await {
        // Returning early drops (aborts) the other clients.
        let (latencies, done) = result.map_err(|e| format!("client task: {e}"))??;
        all.extend(latencies);
        elapsed = elapsed.max(done);
    }
    all.sort_unstable();
    let pct = |p: f64| {
        if all.is_empty() {
            f64::NAN
        } else {
            all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0
        }
    };
    Ok(Outcome {
        ops: all.len(),
        ops_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    })
}

/// Everything measured on one cluster.
struct Report {
    rows: Vec<(&'static str, Outcome)>,
    /// Per member: name, whether it was the leader, RSS in KiB.
    rss: Vec<(String, bool, Option<u64>)>,
}

async fn run(kind: Kind, secs: Duration) -> Result<Report, String> {
    let name = kind.as_str();
    let started = Instant::now();
    let cluster = Cluster::start(kind).await?;
    eprintln!(
        "{name}: cluster up after {:.1} s, leader {}",
        started.elapsed().as_secs_f64(),
        cluster.nodes[cluster.leader].name
    );
    let channels = cluster.channels().await;
    let serializable = Op::Get { serializable: true };
    let linearizable = Op::Get { serializable: false };
    // The single client uses one connection (to a follower); the others
    // share all connections.
    let scenarios: [(&'static str, &[Channel], usize, Op, Load); 6] = [
        ("put, 1 client", &channels[..1], 1, Op::Put, Load::For(secs)),
        ("put, 64 clients", &channels, 64, Op::Put, Load::For(secs)),
        ("put, 256 clients", &channels, 256, Op::Put, Load::For(secs)),
        ("preload 100k keys, 256 clients", &channels, PRELOAD_CLIENTS, Op::Put, Load::EveryKey),
        ("linearizable get, 64 clients", &channels, 64, linearizable, Load::For(secs)),
        ("serializable get, 64 clients", &channels, 64, serializable, Load::For(secs)),
    ];
    let mut rows = Vec::new();
    for (seed, (label, channels, clients, op, load)) in scenarios.into_iter().enumerate() {
        let o = measure(channels, clients, op, load, seed as u64).await.map_err(|e| format!("{label}: {e}"))?;
        eprintln!(
            "{name}: {label}: {} ops, {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms",
            o.ops, o.ops_per_sec, o.p50_ms, o.p99_ms
        );
        rows.push((label, o));
    }
    let rss = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i == cluster.leader, n.child.as_ref().and_then(|c| rss_kib(c.id()))))
        .collect();
    Ok(Report { rows, rss })
}

fn find<'a>(report: &'a Option<Report>, label: &str) -> Option<&'a Outcome> {
    report.as_ref().and_then(|r| r.rows.iter().find(|(l, _)| *l == label).map(|(_, o)| o))
}

fn latency_cell(o: Option<&Outcome>) -> String {
    o.map_or("-".to_string(), |o| format!("{:.2} / {:.2}", o.p50_ms, o.p99_ms))
}

fn rss_cell(r: Option<&(String, bool, Option<u64>)>) -> String {
    match r {
        None => "-".to_string(),
        Some((_, leader, rss)) => {
            let mib = rss.map_or("?".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
            if *leader { format!("{mib} (leader)") } else { mib }
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".to_string())
}

#[tokio::main]
async fn main() {
    let kinds: Vec<Kind> = match std::env::var("CLUSTER_BENCH_ONLY").as_deref() {
        Ok("ketch") => vec![Kind::Ketch],
        Ok("etcd") => vec![Kind::Etcd],
        Ok("") | Err(_) => vec![Kind::Etcd, Kind::Ketch],
        Ok(other) => panic!("CLUSTER_BENCH_ONLY must be `ketch` or `etcd`, not {other:?}"),
    };
    let secs = match std::env::var("CLUSTER_BENCH_SECS") {
        Ok(s) => s.trim().parse::<f64>().unwrap_or_else(|e| panic!("CLUSTER_BENCH_SECS={s:?}: {e}")),
        Err(_) => 10.0,
    };
    let secs = Duration::from_secs_f64(secs);
    if kinds.contains(&Kind::Ketch) {
        ketch_binary(); // fail early with the build hint
    }

    let mut etcd: Option<Report> = None;
    let mut ketch: Option<Report> = None;
    let mut failures = Vec::new();
    for kind in kinds {
        eprintln!("starting a 3-member {} cluster ({} s per scenario)", kind.as_str(), secs.as_secs_f64());
        // In a task of its own so that even a panic still
        // leaves the other cluster's numbers; the cluster dies with the task.
        let result = match tokio::spawn(run(kind, secs)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(format!("panicked: {}", panic_message(&*e.into_panic()))),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(report) => match kind {
                Kind::Etcd => etcd = Some(report),
                Kind::Ketch => ketch = Some(report),
            },
            Err(e) => {
                eprintln!("{}: FAILED: {e}", kind.as_str());
                failures.push(format!("{}: {}", kind.as_str(), e.lines().next().unwrap_or_default()));
            }
        }
        // Let the killed cluster's memory and disk writes settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let labels: Vec<&'static str> =
        etcd.iter().chain(ketch.iter()).next().map(|r| r.rows.iter().map(|(l, _)| *l).collect()).unwrap_or_default();
    if etcd.is_none() && ketch.is_none() {
        eprintln!("no results");
        std::process::exit(1);
    }
    println!("\n3-member clusters, {} s per scenario, key 8 B, value {VALUE_LEN} B\n", secs.as_secs_f64());
    println!("| scenario | ketch ops/s | etcd ops/s | ratio | ketch p50/p99 ms | etcd p50/p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for label in &labels {
        let (k, e) = (find(&ketch, label), find(&etcd, label));
        let ops = |o: Option<&Outcome>| o.map_or("-".to_string(), |o| format!("{:.0}", o.ops_per_sec));
        let ratio = match (k, e) {
            (Some(k), Some(e)) => format!("{:.2}x", k.ops_per_sec / e.ops_per_sec),
            _ => "-".to_string(),
        };
        println!("| {label} | {} | {} | {ratio} | {} | {} |", ops(k), ops(e), latency_cell(k), latency_cell(e));
    }
    println!("\n| member | ketch RSS MiB | etcd RSS MiB |");
    println!("|---|---:|---:|");
    for i in 0..MEMBERS {
        let k = ketch.as_ref().and_then(|r| r.rss.get(i));
        let e = etcd.as_ref().and_then(|r| r.rss.get(i));
        println!("| m{i} | {} | {} |", rss_cell(k), rss_cell(e));
    }
    for f in &failures {
        println!("\nFAILED: {f}");
    }
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
