//! `ketch-client` failover on a 3-member cluster of the implementation under
//! test (see `KETCH_E2E_SUBJECT` in the library docs), while members are
//! killed with SIGKILL and restarted one after the other:
//!
//! - `reads_writes_and_watches_survive_member_kills`: two writers put
//!   unique keys with unique values, a reader reads acknowledged keys back,
//!   three watchers (one per member) watch the prefix. Asserted: no read
//!   fails and every read sees every write acknowledged before it started;
//!   writes fail only with `OutcomeUnknown`; no write is applied twice
//!   (every key has version 1; an acknowledged write is at the revision it
//!   was acknowledged with; a failed one is absent or at version 1); each
//!   watcher sees every applied write exactly once, in revision order, and
//!   nothing else.
//! - `lease_kept_alive_across_leader_kills`: three kept-alive leases (their
//!   streams spread over the members) with a key each, while the leader is
//!   killed, then the new leader: no keep-alive ends, no key disappears, the
//!   leases still live at the end. A `require_leader` watch on the keys
//!   follows along and sees no event.
//! - `endpoint_sync_and_move_leader`: auto-sync grows one endpoint into
//!   all three; `Maintenance.MoveLeader` reaches the leader from a client
//!   whose first endpoint is a follower.
//! - `watch_resumed_past_compaction_reports_it`: the watcher's member is
//!   frozen while history is written and compacted, then killed: the resumed
//!   watch ends with `Error::Compacted`.
//! - `require_leader_watch_leaves_an_isolated_member`: a `require_leader`
//!   watch on a member cut off from the others moves to a member with a
//!   leader and delivers what was written meanwhile.
//!
//! Which members die is drawn from a printed seed (`KETCH_SEED` replays).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ketch_client::{Client, ClientOptions, Error, EventType, GetOptions, KeepAlive, PutOptions, WatchOptions, Watcher};
use ketch_e2e::cluster::Cluster;
use ketch_e2e::seed;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

/// How long the cluster may take to agree on a leader or converge.
const LIVENESS: Duration = Duration::from_secs(20);

fn options() -> ClientOptions {
    ClientOptions::new()
        .dial_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(15))
        .attempt_timeout(Duration::from_secs(3))
}

async fn connect(cluster: &Cluster) -> Client {
    let endpoints: Vec<String> = cluster.members().iter().map(|m| m.client_url()).collect();
    Client::connect(endpoints, options()).await.expect("connect")
}

/// A write's outcome, by key.
#[derive(Debug, Clone)]
enum Outcome {
    Acknowledged(i64),
    Unknown(String),
}

#[derive(Default)]
struct Log {
    writes: BTreeMap<String, Outcome>,
    /// Keys acknowledged so far, for the reader.
    acknowledged: Vec<(String, i64)>,
}

async fn writer(client: Client, tag: char, stop: Arc<AtomicBool>, log: Arc<Mutex<Log>>) {
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let key = format!("f/{tag}{i:05}");
        let value = format!("{tag}-{i}");
        i += 1;
        let outcome = match client.kv().put(key.clone(), value, PutOptions::new()).await {
            Ok(put) => Outcome::Acknowledged(put.header.expect("header").revision),
            Err(e @ Error::OutcomeUnknown { .. }) => Outcome::Unknown(e.to_string()),
            Err(e) => panic!("write {key} failed with something other than OutcomeUnknown: {e:?}"),
        };
        let mut log = log.lock().await;
        if let Outcome::Acknowledged(rev) = outcome {
            log.acknowledged.push((key.clone(), rev));
        }
        log.writes.insert(key, outcome);
    }
}

/// Reads back keys whose write was acknowledged before the read started;
/// every read must succeed and see the write. Returns the number of reads.
async fn reader(client: Client, seed: u64, stop: Arc<AtomicBool>, log: Arc<Mutex<Log>>, reads: Arc<AtomicU64>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    while !stop.load(Ordering::SeqCst) {
        let pick = {
            let log = log.lock().await;
            (!log.acknowledged.is_empty())
                .then(|| log.acknowledged[rng.random_range(0..log.acknowledged.len())].clone())
        };
        let Some((key, rev)) = pick else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let got = client.kv().get(key.clone(), GetOptions::new()).await;
        let got = got.unwrap_or_else(|e| panic!("read of {key} failed: {e:?}"));
        let kv = got.kvs.first().unwrap_or_else(|| panic!("acknowledged {key} (revision {rev}) not found"));
        assert_eq!(kv.mod_revision, rev, "{key}: read back at another revision");
        reads.fetch_add(1, Ordering::SeqCst);
    }
}

/// Collects a watcher's events as `(key, mod revision, type)` until the
/// marker key appears.
async fn collect(mut watcher: Watcher, marker: &'static str) -> Vec<(String, i64, i32)> {
    let mut seen = Vec::new();
    loop {
        let response = tokio::time::timeout(Duration::from_secs(60), watcher.message())
            .await
            .expect("watch response within 60 s")
            .unwrap_or_else(|e| panic!("watch failed: {e:?}"))
            .expect("watch ended");
        for event in response.events {
            let kv = event.kv.expect("event kv");
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            if key == marker {
                return seen;
            }
            seen.push((key, kv.mod_revision, event.r#type));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_writes_and_watches_survive_member_kills() {
    let seed = seed();
    eprintln!("reads_writes_and_watches_survive_member_kills: seed {seed} (KETCH_SEED={seed} replays)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::subject(3, &[]).await;
    cluster.wait_leader(LIVENESS).await;
    let client = connect(&cluster).await;

    // One watcher per member: a fresh client hands out endpoints in order.
    let watch_client = connect(&cluster).await;
    let mut watchers = Vec::new();
    for _ in 0..3 {
        watchers.push(watch_client.watch().watch("f/", WatchOptions::new().prefix()).await.expect("watch"));
    }
    let start_rev = watchers.iter().map(Watcher::created_revision).max().expect("watchers");
    let collectors: Vec<_> = watchers.into_iter().map(|w| tokio::spawn(collect(w, "f/~end"))).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Log::default()));
    let reads = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for tag in ['a', 'b'] {
        load.push(tokio::spawn(writer(client.clone(), tag, Arc::clone(&stop), Arc::clone(&log))));
    }
    load.push(tokio::spawn(reader(client.clone(), seed, Arc::clone(&stop), Arc::clone(&log), Arc::clone(&reads))));

    let mut victims = [0, 1, 2];
    victims.shuffle(&mut rng);
    for &victim in &victims[..2] {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..1500))).await;
        eprintln!("killing m{victim}");
        cluster.kill9(victim);
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..2000))).await;
        eprintln!("restarting m{victim}");
        cluster.restart(victim).await;
        cluster.wait_leader(LIVENESS).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.expect("load task");
    }
    client.kv().put("f/~end", "", PutOptions::new()).await.expect("marker");
    let final_state = client.kv().get("f/", GetOptions::new().prefix()).await.expect("final read");

    let log = log.lock().await;
    let acknowledged = log.writes.values().filter(|o| matches!(o, Outcome::Acknowledged(_))).count();
    let unknown: Vec<(&String, &String)> = log
        .writes
        .iter()
        .filter_map(|(k, o)| match o {
            Outcome::Unknown(why) => Some((k, why)),
            Outcome::Acknowledged(_) => None,
        })
        .collect();
    eprintln!(
        "{} writes: {acknowledged} acknowledged, {} outcome unknown; {} reads",
        log.writes.len(),
        unknown.len(),
        reads.load(Ordering::SeqCst)
    );
    for (key, why) in unknown.iter().take(10) {
        eprintln!("  unknown: {key}: {why}");
    }
    assert!(acknowledged > 20, "too few writes went through: {acknowledged}");
    assert!(reads.load(Ordering::SeqCst) > 20, "too few reads");

    // No write applied twice; every acknowledged one at its revision.
    let mut applied: BTreeMap<String, i64> = BTreeMap::new();
    for kv in &final_state.kvs {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        if key == "f/~end" {
            continue;
        }
        assert_eq!(kv.version, 1, "{key} was written {} times", kv.version);
        assert_eq!(kv.create_revision, kv.mod_revision);
        let tail = &key[2..];
        let (tag, i) = tail.split_at(1);
        assert_eq!(String::from_utf8_lossy(&kv.value), format!("{tag}-{}", i.parse::<u64>().expect("index")));
        match log.writes.get(&key) {
            Some(Outcome::Acknowledged(rev)) => assert_eq!(kv.mod_revision, *rev, "{key}"),
            Some(Outcome::Unknown(_)) => {}
            None => panic!("{key} was never written"),
        }
        applied.insert(key, kv.mod_revision);
    }
    for (key, outcome) in &log.writes {
        if let Outcome::Acknowledged(rev) = outcome {
            assert_eq!(applied.get(key), Some(rev), "acknowledged {key} missing from the final state");
        }
    }
    let mut revisions: Vec<i64> = applied.values().copied().collect();
    revisions.sort_unstable();
    let distinct: HashSet<i64> = revisions.iter().copied().collect();
    assert_eq!(distinct.len(), revisions.len(), "two puts share a revision");

    // Every watcher: each applied write exactly once, in order, nothing else.
    let mut expected: Vec<(String, i64, i32)> = applied
        .iter()
        .filter(|(_, rev)| **rev > start_rev)
        .map(|(k, r)| (k.clone(), *r, EventType::Put as i32))
        .collect();
    expected.sort_by_key(|e| e.1);
    assert_eq!(expected.len(), applied.len(), "a write applied before the watchers were created");
    for (i, collector) in collectors.into_iter().enumerate() {
        let seen = tokio::time::timeout(Duration::from_secs(60), collector)
            .await
            .expect("watcher reached the marker")
            .expect("collector task");
        let revs: Vec<i64> = seen.iter().map(|e| e.1).collect();
        assert!(revs.windows(2).all(|w| w[0] < w[1]), "watcher {i}: events out of order or repeated");
        if seen != expected {
            let seen_set: HashSet<_> = seen.iter().cloned().collect();
            let expected_set: HashSet<_> = expected.iter().cloned().collect();
            let missing: Vec<_> = expected_set.difference(&seen_set).take(5).collect();
            let extra: Vec<_> = seen_set.difference(&expected_set).take(5).collect();
            panic!(
                "watcher {i}: {} events, expected {}; missing e.g. {missing:?}; unexpected e.g. {extra:?}",
                seen.len(),
                expected.len()
            );
        }
    }
    cluster.wait_converged(LIVENESS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_kept_alive_across_leader_kills() {
    const TTL: i64 = 6;
    let seed = seed();
    eprintln!("lease_kept_alive_across_leader_kills: seed {seed} (KETCH_SEED={seed} replays)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::subject(3, &[]).await;
    cluster.wait_leader(LIVENESS).await;
    let client = connect(&cluster).await;

    // A fresh client per lease spreads the keep-alive streams over the members.
    let mut keep_alives: Vec<KeepAlive> = Vec::new();
    let mut lease_clients = Vec::new();
    for i in 0..3 {
        let lease_client = connect(&cluster).await;
        let lease = lease_client.lease().grant(TTL).await.expect("grant");
        client.kv().put(format!("l/{i}"), "held", PutOptions::new().lease(lease.id)).await.expect("put");
        for _ in 0..i {
            // Skip endpoints so that each keep-alive stream starts on another member.
            lease_client.maintenance().status().await.expect("status");
        }
        keep_alives.push(lease_client.lease().keep_alive(lease.id).await.expect("keep alive"));
        lease_clients.push(lease_client);
    }
    let watch_client =
        Client::connect(cluster.members().iter().map(|m| m.client_url()), options().require_leader(true))
            .await
            .expect("connect");
    let mut watcher =
        watch_client.watch().watch("l/", WatchOptions::new().prefix().require_leader()).await.expect("watch");

    let check = |client: Client| async move {
        let got = client.kv().get("l/", GetOptions::new().prefix().count_only()).await.expect("read during kills");
        assert_eq!(got.count, 3, "a kept-alive lease's key disappeared");
    };
    for round in 0..2 {
        let leader = cluster.wait_leader(LIVENESS).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        eprintln!("round {round}: killing the leader m{leader}");
        cluster.kill9(leader);
        let down_since = Instant::now();
        // Longer than the TTL: the lease must outlive the outage.
        while down_since.elapsed() < Duration::from_secs(TTL as u64 + 2) {
            check(client.clone()).await;
            assert!(keep_alives.iter().all(KeepAlive::is_alive), "a keep-alive ended");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eprintln!("round {round}: restarting m{leader}");
        cluster.restart(leader).await;
    }
    for keep_alive in &keep_alives {
        assert!(keep_alive.is_alive(), "keep-alive of {:x} ended", keep_alive.id());
        let ttl = client.lease().time_to_live(keep_alive.id(), false).await.expect("time to live");
        assert!(ttl.ttl > 0, "lease {:x} expired: {ttl:?}", keep_alive.id());
    }
    check(client.clone()).await;
    // The require-leader watch saw no event on the leased keys.
    let quiet = tokio::time::timeout(Duration::from_millis(500), watcher.message()).await;
    match quiet {
        Err(_) => {}
        Ok(Ok(Some(response))) => assert!(response.events.is_empty(), "a leased key changed: {response:?}"),
        Ok(other) => panic!("the watch ended: {other:?}"),
    }
}

/// Endpoints in the order `first`, then the other members.
fn endpoints_from(cluster: &Cluster, first: usize) -> Vec<String> {
    let n = cluster.size();
    (0..n).map(|i| cluster.member((first + i) % n).client_url()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_sync_and_move_leader() {
    let mut cluster = Cluster::subject(3, &[]).await;
    let leader = cluster.wait_leader(LIVENESS).await;
    let follower = (leader + 1) % 3;
    let target = (leader + 2) % 3;

    // Auto-sync: from one endpoint to every member's.
    let synced = Client::connect(
        [cluster.member(follower).client_url()],
        options().auto_sync_interval(Duration::from_millis(200)),
    )
    .await
    .expect("connect");
    let mut all: Vec<String> = cluster.members().iter().map(|m| m.client_url()).collect();
    all.sort();
    let deadline = Instant::now() + LIVENESS;
    loop {
        let mut got = synced.endpoints();
        got.sort();
        if got == all {
            break;
        }
        assert!(Instant::now() < deadline, "endpoints not synced: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // MoveLeader goes to the leader, wherever it is among the endpoints.
    let endpoints = [cluster.member(follower).client_url(), cluster.member(leader).client_url()];
    let client = Client::connect(endpoints, options()).await.expect("connect");
    client.maintenance().move_leader(cluster.id(target)).await.expect("move leader");
    let deadline = Instant::now() + LIVENESS;
    loop {
        if cluster.leader().await == Some(target) {
            break;
        }
        assert!(Instant::now() < deadline, "m{target} did not become the leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The leader is now none of the client's endpoints: it says so.
    let err = client.maintenance().move_leader(cluster.id(leader)).await.expect_err("no endpoint leads");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let err = synced.maintenance().move_leader(0x1234).await.expect_err("move to a non-member");
    assert_eq!(err.kind(), Some(ketch_client::ErrorKind::BadLeaderTransferee), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumed_past_compaction_reports_it() {
    let mut cluster = Cluster::subject(3, &[]).await;
    let leader = cluster.wait_leader(LIVENESS).await;
    let watched = (leader + 1) % 3;
    // The watch is the first request of a client whose first endpoint is
    // `watched`: its stream is there.
    let watch_client = Client::connect(endpoints_from(&cluster, watched), options()).await.expect("connect");
    let mut watcher = watch_client.watch().watch("c", WatchOptions::new()).await.expect("watch");
    let writer =
        Client::connect(endpoints_from(&cluster, leader).into_iter().take(1), options()).await.expect("connect");
    let first = writer.kv().put("c", "1", PutOptions::new()).await.expect("put");
    let first_rev = first.header.expect("header").revision;
    let got = tokio::time::timeout(Duration::from_secs(10), watcher.message()).await.expect("event").expect("watch");
    assert_eq!(got.expect("response").events[0].kv.as_ref().expect("kv").mod_revision, first_rev);

    // The watcher's member freezes; meanwhile history moves on and is compacted.
    cluster.sigstop(watched);
    writer.kv().put("c", "2", PutOptions::new()).await.expect("put");
    let last = writer.kv().put("c", "3", PutOptions::new()).await.expect("put").header.expect("header").revision;
    writer.kv().compact(last, true).await.expect("compact");
    // It dies: the watch resumes elsewhere from first_rev + 1, now compacted.
    cluster.kill9(watched);
    let outcome =
        tokio::time::timeout(Duration::from_secs(30), watcher.message()).await.expect("an answer within 30 s");
    assert!(matches!(outcome, Err(Error::Compacted { compact_revision }) if compact_revision == last), "{outcome:?}");
    assert!(matches!(watcher.message().await, Ok(None)), "the watch ends after the error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_leader_watch_leaves_an_isolated_member() {
    let mut cluster = Cluster::subject(3, &[]).await;
    let leader = cluster.wait_leader(LIVENESS).await;
    let isolated = (leader + 1) % 3;
    let watch_client = Client::connect(endpoints_from(&cluster, isolated), options()).await.expect("connect");
    let mut watcher = watch_client.watch().watch("r", WatchOptions::new().require_leader()).await.expect("watch");
    cluster.isolate(isolated);
    // Written where the isolated member cannot see it: only a watch that
    // moved to another member delivers it.
    let writer =
        Client::connect(endpoints_from(&cluster, leader).into_iter().take(1), options()).await.expect("connect");
    let put = writer.kv().put("r", "1", PutOptions::new()).await.expect("put");
    let rev = put.header.expect("header").revision;
    let got = tokio::time::timeout(Duration::from_secs(20), watcher.message()).await;
    cluster.heal(isolated);
    let got = got.expect("the event within 20 s: the watch stayed on the isolated member").expect("watch");
    let event_revs: Vec<i64> =
        got.expect("response").events.iter().map(|e| e.kv.as_ref().expect("kv").mod_revision).collect();
    assert_eq!(event_revs, vec![rev]);
}
