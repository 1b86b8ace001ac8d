//! A short nemesis run on real processes: a 3-member cluster of the
//! implementation under test (`KETCH_E2E_SUBJECT`), five clients putting
//! unique values and reading a handful of keys through random members, while
//! a seeded nemesis kills (`kill -9`) and restarts members, isolates them
//! (both ways, at the peer proxies) and stops the leader (SIGSTOP). Every
//! request and what its client saw is recorded, with timeouts and lost
//! connections as unknown outcomes, and `ketch-check` decides:
//!
//! - the history is linearizable per key against etcd's KV model (values,
//!   versions, create and mod revisions, header revisions never going back);
//! - after healing, every member reaches the same revision and HashKV.
//!
//! The workload and its recording are `ketch_e2e::workload`, shared with the
//! network-namespace run (`netns_nemesis.rs`).
//!
//! The seed is printed; `KETCH_SEED=<seed>` replays the same fault schedule
//! and workload choices (timing still varies: it is a real network).

use std::time::{Duration, Instant};

use ketch_check::{CheckConfig, Verdict, check_linearizable_per_key};
use ketch_e2e::cluster::Cluster;
use ketch_e2e::seed;
use ketch_e2e::workload::{Mix, Recorder, Workload};
use ketch_proto::etcdserverpb::kv_client::KvClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

const CLIENTS: u64 = 5;
const KEYS: u64 = 24;
const RUN: Duration = Duration::from_secs(12);
const OP_TIMEOUT: Duration = Duration::from_secs(2);
const CONVERGE: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_history_is_linearizable_and_members_converge() {
    let seed = seed();
    println!("nemesis seed {seed} (KETCH_SEED={seed} replays the schedule)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = Cluster::subject(3, &[]).await;
    c.wait_leader(Duration::from_secs(20)).await;
    let members: Vec<KvClient<Channel>> = (0..3).map(|i| c.kv(i)).collect();
    let rec = Recorder::new();
    let until = Instant::now() + RUN;
    let workload =
        Workload { clients: CLIENTS, keys: KEYS, prefix: "nemesis/".into(), mix: Mix::PUT_GET, op_timeout: OP_TIMEOUT };
    let clients = workload.spawn(seed, members, rec.clone(), until);

    let mut faults = Vec::new();
    while Instant::now() + Duration::from_secs(2) < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
        let victim = rng.random_range(0..3);
        match rng.random_range(0..3) {
            0 => {
                faults.push(format!("kill -9 m{victim}"));
                c.kill9(victim);
                tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
                c.restart(victim).await;
            }
            1 => {
                faults.push(format!("isolate m{victim}"));
                c.isolate(victim);
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..2000))).await;
                c.heal(victim);
            }
            _ => {
                let Some(leader) = c.leader().await else { continue };
                faults.push(format!("SIGSTOP leader m{leader}"));
                c.sigstop(leader);
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..2000))).await;
                c.sigcont(leader);
            }
        }
    }
    println!("faults: {faults:?}");
    let totals = clients.join().await;
    println!("operations: {} ok, {} failed, {} unknown outcome", totals.ok, totals.failed, totals.unknown);
    assert!(totals.ok > 50, "too little got through to say anything: {totals:?}");

    c.heal_all();
    let (rev, hash) = c.wait_converged(CONVERGE).await;
    println!("converged at revision {rev}, hash {hash}");

    let history = rec.history();
    let config = CheckConfig { step_budget: 20_000_000, ..CheckConfig::default() };
    match check_linearizable_per_key(&history, &config).expect("a well-formed history") {
        Verdict::Ok(_) => {}
        Verdict::Violation(v) => panic!("not linearizable (KETCH_SEED={seed}):\n{}", v.explain(&history)),
        Verdict::Inconclusive(i) => panic!("linearizability check inconclusive (KETCH_SEED={seed}): {i:?}"),
    }
}
