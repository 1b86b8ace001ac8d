//! Crash safety: 4 concurrent writers put unique keys into ketch (see
//! `KETCH_E2E_SUBJECT` in the library docs), the server is killed with
//! SIGKILL mid-stream, restarted on the same data dir, and then
//!
//! - every acknowledged put is present with its value,
//! - every present key was sent, with the value that was sent,
//! - acknowledged <= applied (present) <= sent, over all rounds so far,
//! - the store revision is 1 + the number of applied puts (the only writes),
//! - the server accepts writes again.
//!
//! Three kill/restart rounds on the same data dir.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ketch_e2e::{Member, subject_kind};
use ketch_proto::etcdserverpb::{PutRequest, RangeRequest};

const WRITERS: usize = 4;
const ROUNDS: usize = 3;
/// Kill after this long, or after [`KILL_AFTER_ACKS`] acks in the round.
const KILL_AFTER: Duration = Duration::from_secs(1);
const KILL_AFTER_ACKS: usize = 400;
/// Bound on a writer's life if the server somehow does not die.
const WRITER_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct WriterLog {
    /// `(key, value)` of every put started, in order.
    sent: Vec<(String, String)>,
    /// Keys of the puts that were acknowledged.
    acked: Vec<String>,
    /// The error that ended the writer, if any.
    error: Option<String>,
}

fn key_of(round: usize, writer: usize, n: usize) -> String {
    format!("crash/r{round}/w{writer}/{n:07}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_and_restart_keep_acknowledged_writes() {
    let mut member = Member::subject().await;
    let name = subject_kind().as_str();
    // key -> value of everything sent / acked over all rounds.
    let mut sent: BTreeMap<String, String> = BTreeMap::new();
    let mut acked: Vec<String> = Vec::new();

    for round in 0..ROUNDS {
        let acks = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut kv = member.kv().await;
            let acks = Arc::clone(&acks);
            tasks.push(tokio::spawn(async move {
                let mut log = WriterLog::default();
                let start = Instant::now();
                for n in 0.. {
                    if start.elapsed() > WRITER_DEADLINE {
                        log.error = Some("writer deadline".into());
                        break;
                    }
                    let key = key_of(round, w, n);
                    let value = format!("value-{round}-{w}-{n}-{}", "x".repeat(n % 50));
                    log.sent.push((key.clone(), value.clone()));
                    let req =
                        PutRequest { key: key.clone().into_bytes(), value: value.into_bytes(), ..Default::default() };
                    match kv.put(req).await {
                        Ok(_) => {
                            log.acked.push(key);
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) => {
                            log.error = Some(status.to_string());
                            break;
                        }
                    }
                }
                log
            }));
        }

        let started = Instant::now();
        while started.elapsed() < KILL_AFTER && acks.load(Ordering::Relaxed) < KILL_AFTER_ACKS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let acks_at_kill = acks.load(Ordering::Relaxed);
        member.kill9();

        let mut round_sent = 0;
        let mut round_acked = 0;
        for task in tasks {
            let log = task.await.expect("writer task panicked");
            assert!(
                log.error.as_deref() != Some("writer deadline"),
                "a writer was still being acknowledged {WRITER_DEADLINE:?} after the kill"
            );
            round_sent += log.sent.len();
            round_acked += log.acked.len();
            sent.extend(log.sent);
            acked.extend(log.acked);
        }
        assert!(round_acked > 0, "round {round}: no put was acknowledged before the kill");

        member.restart().await;
        let mut kv = member.kv().await;
        let resp = kv
            .range(RangeRequest { key: b"crash/".to_vec(), range_end: b"crash0".to_vec(), ..Default::default() })
            .await
            .unwrap_or_else(|e| panic!("range after restart {round} failed: {e}"))
            .into_inner();
        let present: BTreeMap<String, String> = resp
            .kvs
            .iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), String::from_utf8_lossy(&kv.value).into_owned()))
            .collect();
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        println!(
            "round {round}: {round_acked} acked ({acks_at_kill} at kill) of {round_sent} sent; \
             total acked {} <= applied {} <= sent {}; revision {revision}",
            acked.len(),
            present.len(),
            sent.len()
        );

        let lost: Vec<&String> = acked.iter().filter(|k| present.get(*k) != sent.get(*k)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged put(s) missing or wrong after kill -9 + restart \
             of {name}, e.g. {:?} (present: {:?})",
            lost.len(),
            &lost[..lost.len().min(5)],
            lost.first().map(|k| present.get(*k))
        );
        let bogus: Vec<(&String, &String)> = present.iter().filter(|(k, v)| sent.get(*k) != Some(*v)).collect();
        assert!(
            bogus.is_empty(),
            "round {round}: keys present that were never sent with that value: {:?}",
            &bogus[..bogus.len().min(5)]
        );
        assert_eq!(resp.count as usize, present.len(), "count vs kvs returned");
        assert!(
            acked.len() <= present.len() && present.len() <= sent.len(),
            "round {round}: acked {} <= applied {} <= sent {} does not hold",
            acked.len(),
            present.len(),
            sent.len()
        );
        assert_eq!(revision, 1 + present.len() as i64, "round {round}: revision must be 1 + number of applied puts");

        // Writable again, and the revision continues from there. The probe
        // key is unique and under `crash/`, so "revision = 1 + applied puts"
        // keeps holding in the next round.
        let probe = format!("crash/probe/{round}");
        let put = kv
            .put(PutRequest { key: probe.clone().into_bytes(), value: b"probe".to_vec(), ..Default::default() })
            .await
            .unwrap_or_else(|e| panic!("put after restart {round} failed: {e}"))
            .into_inner();
        assert_eq!(
            put.header.map_or(0, |h| h.revision),
            revision + 1,
            "revision of the first put after restart {round}"
        );
        sent.insert(probe.clone(), "probe".into());
        acked.push(probe);
    }
}
