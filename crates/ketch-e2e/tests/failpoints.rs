//! Crashes at the server's failpoints (the places etcd's robustness tests
//! crash etcd through gofail), one test per failpoint.
//!
//! Each test arms one crash point with `FAILPOINTS=<name>=<n>*off->return`
//! (the `n+1`-th hit aborts the process), sends puts of unique keys and values
//! until the member dies there (it must die by SIGABRT, with the failpoint's
//! own line in its log, after having become ready with the failpoint armed),
//! restarts it without the failpoint and checks what it holds against what
//! was sent and acknowledged:
//!
//! - every acknowledged put is there, with its value, at the revision it was
//!   acknowledged at;
//! - every key there was sent with that value, and written once (version 1,
//!   its own revision);
//! - the store's revision is the revision before the writes plus the number of
//!   puts it holds (nothing applied twice, nothing else applied);
//! - it takes writes again.
//!
//! Most run on a single member. The snapshot-install ones run on a 3-member
//! cluster: a member is down while the others write past their log's reach,
//! then comes back armed and crashes while installing the leader's snapshot;
//! after its restart all three members must converge (same revision and
//! `HashKV`) and each must pass the checks above. The compaction ones also
//! send a `Compact` every few puts.
//!
//! Needs the `ketch` binary built with the failpoints:
//! `cargo build -p ketch --features failpoints` (what `scripts/test` does,
//! as `cargo build --workspace --bins --features ketch/failpoints`).

use std::collections::{BTreeMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ketch_e2e::cluster::{Cluster, call, lazy_channel};
use ketch_e2e::{Kind, Member, ketch_binary};
use ketch_proto::etcdserverpb::kv_client::KvClient;
use ketch_proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};
use tonic::transport::Channel;

/// Concurrent writers.
const WRITERS: usize = 4;
/// Bound of one request.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an armed member may take to reach its failpoint.
const DIE_WITHIN: Duration = Duration::from_secs(25);
/// Prefix of every key the tests write.
const PREFIX: &str = "fp/";

/// What the writers sent and what was acknowledged.
#[derive(Default)]
struct Record {
    /// key -> value of every put sent.
    sent: BTreeMap<String, String>,
    /// (key, revision) of every acknowledged put.
    acked: Vec<(String, i64)>,
}

/// A key as a member holds it.
#[derive(Clone, Debug, PartialEq)]
struct Held {
    value: String,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
}

/// Everything under [`PREFIX`] on one member, and its revision.
struct Contents {
    keys: BTreeMap<String, Held>,
    revision: i64,
}

/// What is wrong with `held` after a crash, given what was written on top
/// of revision `base` (empty: nothing).
fn check(record: &Record, base: i64, held: &Contents) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, revision) in &record.acked {
        match held.keys.get(key) {
            None => problems.push(format!("acknowledged put of {key} (revision {revision}) is lost")),
            Some(h) if Some(&h.value) != record.sent.get(key) || h.mod_revision != *revision => problems.push(format!(
                "acknowledged put of {key} = {:?} at revision {revision} is held as {h:?}",
                record.sent.get(key)
            )),
            Some(_) => {}
        }
    }
    let mut revisions = HashSet::new();
    for (key, h) in &held.keys {
        if record.sent.get(key) != Some(&h.value) {
            problems.push(format!("{key} is held as {h:?} but was sent as {:?}", record.sent.get(key)));
        }
        if h.version != 1 || h.create_revision != h.mod_revision {
            problems.push(format!("{key} was written more than once: {h:?}"));
        }
        if !revisions.insert(h.mod_revision) {
            problems.push(format!("{key} shares revision {} with another key", h.mod_revision));
        }
    }
    let expected = base + held.keys.len() as i64;
    if held.revision != expected {
        problems.push(format!(
            "revision {} after {} applied puts on top of revision {base} (expected {expected})",
            held.revision,
            held.keys.len()
        ));
    }
    problems
}

/// Reads everything under [`PREFIX`] (serializable: from the member's own
/// store), in pages at one revision (values may be large).
async fn contents(url: &str) -> Contents {
    const PAGE: i64 = 50;
    let mut kv = KvClient::new(lazy_channel(url)).max_decoding_message_size(usize::MAX);
    let mut keys = BTreeMap::new();
    let mut from = PREFIX.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let req = RangeRequest {
            key: from.clone(),
            range_end: ketch_e2e::prefix_end(PREFIX.as_bytes()),
            serializable: true,
            limit: PAGE,
            revision,
            ..Default::default()
        };
        let resp = call(OP_TIMEOUT, req, |r| kv.range(r)).await.unwrap_or_else(|e| panic!("range on {url}: {e}"));
        if revision == 0 {
            revision = resp.header.map_or(0, |h| h.revision);
        }
        for kv in &resp.kvs {
            let held = Held {
                value: String::from_utf8_lossy(&kv.value).into_owned(),
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
            };
            keys.insert(String::from_utf8_lossy(&kv.key).into_owned(), held);
        }
        match resp.kvs.last() {
            Some(last) if resp.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => return Contents { keys, revision },
        }
    }
}

/// The revision of the member's store.
async fn revision(url: &str) -> i64 {
    contents(url).await.revision
}

/// How the writers write.
#[derive(Clone, Copy)]
struct Writes {
    /// Bytes of padding in each value.
    value_bytes: usize,
    /// Writer 0 sends a `Compact` (to its latest revision but 5) every this many puts.
    compact_every: Option<usize>,
}

const SMALL: Writes = Writes { value_bytes: 16, compact_every: None };

/// Starts [`WRITERS`] writers sending puts to `url` until `stop` or, if
/// `until_error`, their first failed put.
fn spawn_writers(
    url: &str,
    label: &str,
    writes: Writes,
    until_error: bool,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Record>> {
    (0..WRITERS)
        .map(|w| {
            let mut kv = KvClient::new(lazy_channel(url));
            let label = label.to_string();
            let stop = Arc::clone(stop);
            tokio::spawn(async move {
                let mut record = Record::default();
                for n in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = format!("{PREFIX}{label}/w{w}/{n:06}");
                    let value = format!("{label}-{w}-{n}-{}", "v".repeat(writes.value_bytes));
                    record.sent.insert(key.clone(), value.clone());
                    let req =
                        PutRequest { key: key.clone().into_bytes(), value: value.into_bytes(), ..Default::default() };
                    match call(OP_TIMEOUT, req, |r| kv.put(r)).await {
                        Ok(resp) => record.acked.push((key, resp.header.map_or(0, |h| h.revision))),
                        Err(_) if until_error => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                    if w == 0
                        && let (Some(every), Some((_, rev))) = (writes.compact_every, record.acked.last())
                        && n % every == every - 1
                        && *rev > 5
                    {
                        // Past revisions and revisions compacted already are
                        // refused; what counts is that some go through.
                        let _ = compact(&mut kv, rev - 5).await;
                    }
                }
                record
            })
        })
        .collect()
}

async fn compact(kv: &mut KvClient<Channel>, revision: i64) -> Result<(), String> {
    call(OP_TIMEOUT, CompactionRequest { revision, physical: false }, |r| kv.compact(r)).await.map(|_| ())
}

async fn join(writers: Vec<tokio::task::JoinHandle<Record>>) -> Record {
    let mut all = Record::default();
    for w in writers {
        let record = w.await.expect("a writer panicked");
        all.sent.extend(record.sent);
        all.acked.extend(record.acked);
    }
    all
}

/// Panics unless the ketch binary has the crash points compiled in.
fn require_failpoints_build() {
    static CHECKED: OnceLock<bool> = OnceLock::new();
    let has = *CHECKED.get_or_init(|| {
        let bin = ketch_binary();
        let status = std::process::Command::new("grep")
            .args(["-q", "-a", "-F", "failpoint raft_after_save: crashing"])
            .arg(&bin)
            .status()
            .expect("cannot run grep");
        status.success()
    });
    assert!(
        has,
        "{} was built without the crash points: build it with `cargo build -p ketch --features failpoints`",
        ketch_binary().display()
    );
}

/// Asserts that `status` is the abort of failpoint `name` (log `log`).
fn assert_crashed_at(name: &str, status: Option<std::process::ExitStatus>, log: &str, record: &Record) {
    let status = status.unwrap_or_else(|| {
        panic!(
            "the member did not reach failpoint {name} within {DIE_WITHIN:?} ({} puts sent, {} acknowledged); \
             log tail:\n{log}",
            record.sent.len(),
            record.acked.len()
        )
    });
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "the member did not die by the failpoint's abort: {status}; log tail:\n{log}"
    );
    assert!(
        log.contains(&format!("failpoint {name}: crashing")),
        "the member aborted, but not at failpoint {name}; log tail:\n{log}"
    );
}

/// The failpoint setting that crashes at hit `skip + 1`.
fn arm(name: &str, skip: usize) -> String {
    format!("{name}={skip}*off->return")
}

/// One member: arm `name` (crash at hit `skip + 1`), write until it dies
/// there, restart it unarmed, check.
async fn crash_single(name: &str, skip: usize, args: &[&str], writes: Writes) {
    require_failpoints_build();
    let mut m = Member::start(Kind::Ketch, args).await;
    m.set_env("FAILPOINTS", Some(&arm(name, skip)));
    // Ready with the failpoint armed: it did not fire during start-up.
    m.restart().await;
    let url = m.client_url();
    let base = revision(&url).await;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writers = spawn_writers(&url, name, writes, true, &stop);
    let status = m.wait_exit(DIE_WITHIN).await;
    stop.store(true, Ordering::SeqCst);
    let record = join(writers).await;
    assert_crashed_at(name, status, &m.log_tail(30), &record);
    println!(
        "{name}: crashed after {:?}: {} puts sent, {} acknowledged",
        started.elapsed(),
        record.sent.len(),
        record.acked.len()
    );
    assert!(!record.acked.is_empty(), "no put was acknowledged before the crash at {name}");

    m.set_env("FAILPOINTS", None);
    m.restart().await;
    let held = contents(&url).await;
    let problems = check(&record, base, &held);
    assert!(
        problems.is_empty(),
        "after the crash at {name} and a restart, {} problem(s) (held {} keys at revision {}):\n  {}",
        problems.len(),
        held.keys.len(),
        held.revision,
        problems.iter().take(10).cloned().collect::<Vec<_>>().join("\n  ")
    );
    let mut kv = m.kv().await;
    let req = PutRequest { key: format!("{PREFIX}probe").into_bytes(), value: b"p".to_vec(), ..Default::default() };
    let resp = kv.put(req).await.unwrap_or_else(|e| panic!("put after the restart: {e}")).into_inner();
    assert_eq!(resp.header.map_or(0, |h| h.revision), held.revision + 1, "revision of the first put after the restart");
    println!(
        "{name}: {} acknowledged of {} held at revision {}: all there",
        record.acked.len(),
        held.keys.len(),
        held.revision
    );
}

/// Three members: one is down while the others write past their log's
/// reach; it comes back armed with `name` and must crash installing the
/// leader's snapshot; restarted unarmed, the members converge and hold
/// every acknowledged put.
async fn crash_installing_snapshot(name: &str) {
    require_failpoints_build();
    let mut c =
        Cluster::start(Kind::Ketch, 3, &["--snapshot-count", "100", "--experimental-snapshot-catchup-entries", "20"])
            .await;
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let lagger = (leader + 1) % 3;
    c.kill9(lagger);
    let url = c.member(leader).client_url();
    let base = revision(&url).await;

    // Write until the leader has taken a snapshot (its log then starts past
    // the lagger's), and a little more.
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&url, name, SMALL, false, &stop);
    let started = Instant::now();
    let snapshotted = |c: &Cluster| {
        std::fs::read_to_string(c.member(leader).log_path()).unwrap_or_default().contains("snapshot taken")
    };
    while !snapshotted(&c) {
        assert!(started.elapsed() < DIE_WITHIN, "the leader m{leader} took no snapshot within {DIE_WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The lagger comes back armed while the writes go on.
    c.set_env(lagger, "FAILPOINTS", Some(&arm(name, 0)));
    c.respawn(lagger);
    let status = c.wait_exit(lagger, DIE_WITHIN).await;
    stop.store(true, Ordering::SeqCst);
    let record = join(writers).await;
    assert_crashed_at(name, status, &c.member(lagger).log_tail(30), &record);
    println!(
        "{name}: m{lagger} crashed installing a snapshot; {} puts sent, {} acknowledged",
        record.sent.len(),
        record.acked.len()
    );

    c.set_env(lagger, "FAILPOINTS", None);
    c.restart(lagger).await;
    let (rev, hash) = c.wait_converged(Duration::from_secs(30)).await;
    println!("{name}: converged at revision {rev}, hash {hash}");
    for i in 0..3 {
        let held = contents(&c.member(i).client_url()).await;
        let problems = check(&record, base, &held);
        assert!(
            problems.is_empty(),
            "m{i} after m{lagger}'s crash at {name}: {} problem(s):\n  {}",
            problems.len(),
            problems.iter().take(10).cloned().collect::<Vec<_>>().join("\n  ")
        );
    }
}

// ---- The raft loop ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_before_save() {
    crash_single("raft_before_save", 100, &[], SMALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_after_save() {
    crash_single("raft_after_save", 100, &[], SMALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_before_save_snap() {
    crash_single("raft_before_save_snap", 1, &["--snapshot-count", "50"], SMALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_after_save_snap() {
    crash_single("raft_after_save_snap", 1, &["--snapshot-count", "50"], SMALL).await;
}

/// WAL segments are 64 MiB: puts of ~1 MB fill one quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_after_wal_purge() {
    let big = Writes { value_bytes: 1_000_000, compact_every: None };
    crash_single("raft_after_wal_purge", 0, &["--snapshot-count", "10"], big).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_before_apply_snap() {
    crash_installing_snapshot("raft_before_apply_snap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_after_apply_snap() {
    crash_installing_snapshot("raft_after_apply_snap").await;
}

// ---- The apply thread ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_before() {
    crash_single("apply_before", 100, &[], SMALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_after() {
    crash_single("apply_after", 100, &[], SMALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_before_commit() {
    crash_single("backend_before_commit", 100, &[], SMALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_after_commit() {
    crash_single("backend_after_commit", 100, &[], SMALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_before_durable_commit() {
    crash_single("backend_before_durable_commit", 1, &[], SMALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_after_durable_commit() {
    crash_single("backend_after_durable_commit", 1, &[], SMALL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_before_commit() {
    let writes = Writes { value_bytes: 16, compact_every: Some(10) };
    crash_single("compact_before_commit", 2, &[], writes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_after_commit() {
    let writes = Writes { value_bytes: 16, compact_every: Some(10) };
    crash_single("compact_after_commit", 2, &[], writes).await;
}

// ---- The checks themselves ----

/// The checks report a lost acknowledged put, a put applied twice, a value
/// nobody sent and a revision that does not add up.
#[test]
fn check_reports_lost_duplicated_and_bogus_writes() {
    let held = |value: &str, create: i64, modified: i64, version: i64| Held {
        value: value.into(),
        create_revision: create,
        mod_revision: modified,
        version,
    };
    let mut record = Record::default();
    record.sent.insert("a".into(), "1".into());
    record.sent.insert("b".into(), "2".into());
    record.sent.insert("c".into(), "3".into());
    record.acked.push(("a".into(), 2));
    record.acked.push(("b".into(), 3));
    let good =
        Contents { keys: [("a".into(), held("1", 2, 2, 1)), ("b".into(), held("2", 3, 3, 1))].into(), revision: 3 };
    assert_eq!(check(&record, 1, &good), Vec::<String>::new());
    // An unacknowledged put that was applied is fine.
    let mut more = Contents { keys: good.keys.clone(), revision: 4 };
    more.keys.insert("c".into(), held("3", 4, 4, 1));
    assert_eq!(check(&record, 1, &more), Vec::<String>::new());

    let mut lost = Contents { keys: good.keys.clone(), revision: 2 };
    lost.keys.remove("b");
    assert!(
        check(&record, 1, &lost).iter().any(|p| p.contains("b (revision 3) is lost")),
        "{:?}",
        check(&record, 1, &lost)
    );

    let mut twice = Contents { keys: good.keys.clone(), revision: 4 };
    twice.keys.insert("b".into(), held("2", 3, 4, 2));
    let problems = check(&record, 1, &twice);
    assert!(problems.iter().any(|p| p.contains("more than once")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("is held as")), "{problems:?}");

    let mut bogus = Contents { keys: good.keys.clone(), revision: 4 };
    bogus.keys.insert("d".into(), held("4", 4, 4, 1));
    assert!(check(&record, 1, &bogus).iter().any(|p| p.contains("d is held")), "{:?}", check(&record, 1, &bogus));

    let skipped = Contents { keys: good.keys.clone(), revision: 5 };
    assert!(
        check(&record, 1, &skipped).iter().any(|p| p.starts_with("revision 5")),
        "{:?}",
        check(&record, 1, &skipped)
    );
}
