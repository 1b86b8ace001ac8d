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
//! The seed is printed; `KETCH_SEED=<seed>` replays the same fault schedule
//! and workload choices (timing still varies: it is a real network).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ketch_check::{
    CheckConfig, Failure, History, KeyValue, Outcome, Request, Response, Verdict, check_linearizable_per_key,
};
use ketch_e2e::cluster::Cluster;
use ketch_e2e::seed;
use ketch_proto::etcdserverpb::kv_client::KvClient;
use ketch_proto::etcdserverpb::{PutRequest, RangeRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;
use tonic::transport::Channel;

const CLIENTS: u64 = 5;
const KEYS: u64 = 24;
const RUN: Duration = Duration::from_secs(12);
const OP_TIMEOUT: Duration = Duration::from_secs(2);
const CONVERGE: Duration = Duration::from_secs(40);

/// A shared history with timestamps in microseconds since the run started.
struct Recorder {
    start: Instant,
    history: Mutex<History>,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

fn key(k: u64) -> Vec<u8> {
    format!("nemesis/{k}").into_bytes()
}

/// Errors that prove a request had no effect; anything else may have applied.
/// A failed dial means the request never left; "no leader" and "too many
/// requests" are answered before the request is proposed.
fn definite(status: &tonic::Status) -> bool {
    ketch_client::request_never_sent(status)
        || matches!(status.code(), Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange | Code::NotFound)
        || matches!(status.message(), "etcdserver: no leader" | "etcdserver: too many requests")
}

async fn client(
    id: u64,
    mut rng: StdRng,
    members: Vec<KvClient<Channel>>,
    rec: Arc<Recorder>,
    until: Instant,
) -> (u64, u64, u64) {
    let (mut ok, mut failed, mut unknown) = (0, 0, 0);
    let mut n = 0u64;
    while Instant::now() < until {
        let mut kv = members[rng.random_range(0..members.len())].clone();
        let k = key(rng.random_range(0..KEYS));
        if rng.random_bool(0.5) {
            n += 1;
            let value = format!("c{id}-{n}").into_bytes();
            let request = Request::put(k.clone(), value.clone());
            let op = rec.history.lock().expect("history").invoke(id, rec.now(), request);
            let sent = PutRequest { key: k, value, ..Default::default() };
            let outcome = match tokio::time::timeout(OP_TIMEOUT, kv.put(sent)).await {
                Ok(Ok(resp)) => {
                    ok += 1;
                    Outcome::Ok(Response::put(resp.into_inner().header.map_or(0, |h| h.revision)))
                }
                Ok(Err(status)) if definite(&status) => {
                    failed += 1;
                    Outcome::Err(Failure::Rejected(status.message().to_string()))
                }
                _ => {
                    unknown += 1;
                    Outcome::Unknown
                }
            };
            rec.history.lock().expect("history").complete(op, rec.now(), outcome);
        } else {
            let request = Request::get(k.clone());
            let op = rec.history.lock().expect("history").invoke(id, rec.now(), request);
            let sent = RangeRequest { key: k, ..Default::default() };
            let outcome = match tokio::time::timeout(OP_TIMEOUT, kv.range(sent)).await {
                Ok(Ok(resp)) => {
                    ok += 1;
                    let resp = resp.into_inner();
                    let kvs = resp
                        .kvs
                        .into_iter()
                        .map(|kv| {
                            KeyValue::new(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)
                                .with_lease(kv.lease)
                        })
                        .collect();
                    Outcome::Ok(Response::range(resp.header.map_or(0, |h| h.revision), kvs))
                }
                // A read that failed had no effect, whatever the reason.
                Ok(Err(status)) => {
                    failed += 1;
                    Outcome::Err(Failure::Rejected(status.message().to_string()))
                }
                Err(_) => {
                    failed += 1;
                    Outcome::Err(Failure::Rejected("timed out".into()))
                }
            };
            rec.history.lock().expect("history").complete(op, rec.now(), outcome);
        }
    }
    (ok, failed, unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_history_is_linearizable_and_members_converge() {
    let seed = seed();
    println!("nemesis seed {seed} (KETCH_SEED={seed} replays the schedule)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = Cluster::subject(3, &[]).await;
    c.wait_leader(Duration::from_secs(20)).await;
    let members: Vec<KvClient<Channel>> = (0..3).map(|i| c.kv(i)).collect();
    let rec = Arc::new(Recorder { start: Instant::now(), history: Mutex::new(History::new()) });
    let until = Instant::now() + RUN;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let rng = StdRng::seed_from_u64(seed ^ (id + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            tokio::spawn(client(id, rng, members.clone(), rec.clone(), until))
        })
        .collect();

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
    let mut totals = (0, 0, 0);
    for t in clients {
        let (ok, failed, unknown) = t.await.expect("client task");
        totals = (totals.0 + ok, totals.1 + failed, totals.2 + unknown);
    }
    println!("operations: {} ok, {} failed, {} unknown outcome", totals.0, totals.1, totals.2);
    assert!(totals.0 > 50, "too little got through to say anything: {totals:?}");

    c.heal_all();
    let (rev, hash) = c.wait_converged(CONVERGE).await;
    println!("converged at revision {rev}, hash {hash}");

    let history = rec.history.lock().expect("history").clone();
    let config = CheckConfig { step_budget: 20_000_000, ..CheckConfig::default() };
    match check_linearizable_per_key(&history, &config).expect("a well-formed history") {
        Verdict::Ok(_) => {}
        Verdict::Violation(v) => panic!("not linearizable (KETCH_SEED={seed}):\n{}", v.explain(&history)),
        Verdict::Inconclusive(i) => panic!("linearizability check inconclusive (KETCH_SEED={seed}): {i:?}"),
    }
}
