//! A Kubernetes-style list-then-watch client (a "reflector") built on the
//! third-party Rust `etcd-client` crate (0.21), run against a reference etcd
//! (premise: the scenario must pass there) and against the subject (ketch,
//! see `KETCH_E2E_SUBJECT` in the library docs):
//!
//! 1. list the prefix at revision R (a prefix get; R from its header), watch
//!    the prefix from R + 1 while a concurrent writer keeps writing; every
//!    acknowledged write after R must arrive exactly once, in revision order,
//!    and nothing at or below R;
//! 2. stop: cancel the watch (the cancel is acknowledged), write more,
//!    compact (physically) to a revision beyond what the watch had seen;
//! 3. re-watch from the last seen revision + 1: the server must answer with
//!    a created response and then cancel the watch with `compact_revision` =
//!    the compaction revision (and the same `cancel_reason` as etcd: empty in
//!    etcd 3.4);
//! 4. relist (the list must equal the state the writer produced) and rewatch
//!    from the new list revision + 1 with `prev_kv` while writing again:
//!    every write after the relist arrives exactly once, with the right
//!    previous pair, and the reflector's cache equals a final list.
//!
//! Every value written is unique (`v<n>`), so a duplicated or missed event is
//! seen as such. The writer's operations are seeded: the seed is printed,
//! `KETCH_SEED=<n>` replays a run.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Client, CompactionOptions, DeleteOptions, EventType, GetOptions, WatchOptions, WatchResponse, WatchStream,
};
use ketch_e2e::{Member, seed, subject_kind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PREFIX: &str = "lw/";
const KEYS: usize = 24;
/// Bound on any single wait for a watch response.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// One acknowledged write, as a watcher must see it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Change {
    revision: i64,
    key: String,
    /// `Some(value)` for a put, `None` for a delete.
    value: Option<String>,
    /// The value before (for `prev_kv`).
    prev: Option<String>,
}

/// The writer: seeded puts and deletes on `lw/k00`..`lw/k23`, with a model
/// of the resulting state.
struct Writer {
    client: Client,
    rng: StdRng,
    next_value: usize,
    state: BTreeMap<String, String>,
}

impl Writer {
    fn key(&mut self) -> String {
        format!("{PREFIX}k{:02}", self.rng.random_range(0..KEYS))
    }

    /// `n` writes that each create a revision; returns them in order.
    async fn write(&mut self, n: usize) -> Result<Vec<Change>, String> {
        let mut out = Vec::new();
        while out.len() < n {
            let key = self.key();
            let prev = self.state.get(&key).cloned();
            if prev.is_some() && self.rng.random_bool(0.25) {
                let resp = self.client.delete(key.as_str(), None).await.map_err(|e| format!("delete {key}: {e}"))?;
                if resp.deleted() != 1 {
                    return Err(format!("delete {key} deleted {} keys, the model says 1", resp.deleted()));
                }
                let revision = resp.header().map_or(0, |h| h.revision());
                self.state.remove(&key);
                out.push(Change { revision, key, value: None, prev });
            } else {
                let value = format!("v{}", self.next_value);
                self.next_value += 1;
                let resp =
                    self.client.put(key.as_str(), value.as_str(), None).await.map_err(|e| format!("put {key}: {e}"))?;
                let revision = resp.header().map_or(0, |h| h.revision());
                self.state.insert(key.clone(), value.clone());
                out.push(Change { revision, key, value: Some(value), prev });
            }
        }
        Ok(out)
    }
}

async fn next(stream: &mut WatchStream) -> Result<WatchResponse, String> {
    match tokio::time::timeout(STEP_TIMEOUT, stream.message()).await {
        Err(_) => Err(format!("no watch response within {STEP_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("watch stream error: {e}")),
        Ok(Ok(None)) => Err("watch stream ended".to_string()),
        Ok(Ok(Some(r))) => Ok(r),
    }
}

/// Lists the prefix: (state, revision).
async fn list(client: &mut Client) -> Result<(BTreeMap<String, String>, i64), String> {
    let resp = client.get(PREFIX, Some(GetOptions::new().with_prefix())).await.map_err(|e| format!("list: {e}"))?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let state = resp
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap_or("?").to_string(), kv.value_str().unwrap_or("?").to_string()))
        .collect();
    Ok((state, revision))
}

/// Opens a prefix watch from `start` and returns it with its created response.
async fn watch_from(client: &mut Client, start: i64, prev_kv: bool) -> Result<(WatchStream, WatchResponse), String> {
    let mut options = WatchOptions::new().with_prefix().with_start_revision(start);
    if prev_kv {
        options = options.with_prev_key();
    }
    let mut stream = client.watch(PREFIX, Some(options)).await.map_err(|e| format!("watch: {e}"))?;
    let created = next(&mut stream).await?;
    if !created.created() || created.canceled() {
        return Err(format!("first response is not a successful created response: {created:?}"));
    }
    Ok((stream, created))
}

/// Reads events until one at `until` (or later) arrived; returns them.
async fn collect_until(stream: &mut WatchStream, until: i64, prev_kv: bool) -> Result<Vec<Change>, String> {
    let mut got = Vec::new();
    let mut last = 0;
    while last < until {
        let resp = next(stream).await.map_err(|e| format!("{e} (waiting for revision {until}, at {last})"))?;
        if resp.canceled() || resp.created() || resp.compact_revision() != 0 {
            return Err(format!("unexpected response while reading events: {resp:?}"));
        }
        for ev in resp.events() {
            let kv = ev.kv().ok_or("event without kv")?;
            let key = kv.key_str().map_err(|e| e.to_string())?.to_string();
            let value = match ev.event_type() {
                EventType::Put => Some(kv.value_str().map_err(|e| e.to_string())?.to_string()),
                EventType::Delete => None,
            };
            let prev = if prev_kv { ev.prev_kv().map(|p| p.value_str().unwrap_or("?").to_string()) } else { None };
            last = kv.mod_revision();
            got.push(Change { revision: kv.mod_revision(), key, value, prev });
        }
    }
    Ok(got)
}

/// `got` must be exactly `want` (every change once, in order).
fn check_exactly_once(phase: &str, want: &[Change], got: &[Change], compare_prev: bool) -> Result<(), String> {
    let strip = |c: &Change| if compare_prev { c.clone() } else { Change { prev: None, ..c.clone() } };
    let want: Vec<Change> = want.iter().map(strip).collect();
    if want == got {
        return Ok(());
    }
    let mut seen = BTreeMap::<(i64, &str), usize>::new();
    for c in got {
        *seen.entry((c.revision, c.key.as_str())).or_default() += 1;
    }
    let dup: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let missed: Vec<&Change> = want.iter().filter(|c| !got.contains(c)).collect();
    let extra: Vec<&Change> = got.iter().filter(|c| !want.contains(c)).collect();
    Err(format!(
        "{phase}: events differ from the acknowledged writes\n  duplicated (revision, key): {dup:?}\n  \
         missed: {missed:?}\n  unexpected: {extra:?}\n  want {} events, got {}",
        want.len(),
        got.len()
    ))
}

/// The whole scenario against one member; returns the compaction cancel
/// response's (compact_revision, cancel_reason, header revision).
async fn scenario(member: &Member, seed: u64) -> Result<(i64, String, i64), String> {
    let mut client = Client::connect([member.client_url()], None).await.map_err(|e| format!("connect: {e}"))?;
    let mut writer =
        Writer { client: client.clone(), rng: StdRng::seed_from_u64(seed), next_value: 0, state: BTreeMap::new() };
    // Something outside the prefix, and initial content.
    client.put("lw", "outside", None).await.map_err(|e| format!("put: {e}"))?;
    client.put("lw0", "outside", None).await.map_err(|e| format!("put: {e}"))?;
    writer.write(40).await?;

    // 1. List, then watch from the next revision while writing.
    let (listed, r) = list(&mut client).await?;
    if listed != writer.state {
        return Err(format!("list at {r} differs from the writes: {listed:?} vs {:?}", writer.state));
    }
    let (mut stream, created) = watch_from(&mut client, r + 1, false).await?;
    let watch_id = created.watch_id();
    let (phase1, got1) = {
        let write = writer.write(120);
        let read = async {
            // Start reading at once, while the writer runs; the last write's
            // revision is only known at the end, so read up to a bound
            // first and then to the exact end below.
            collect_until(&mut stream, r + 60, false).await
        };
        let (w, g) = tokio::join!(write, read);
        (w?, g?)
    };
    let last_rev = phase1.last().map_or(r, |c| c.revision);
    let mut got1 = got1;
    if got1.last().map_or(0, |c| c.revision) < last_rev {
        got1.extend(collect_until(&mut stream, last_rev, false).await?);
    }
    if got1.iter().any(|c| c.revision <= r) {
        return Err(format!("watch from {} delivered events at or below the list revision {r}", r + 1));
    }
    check_exactly_once("watch after the first list", &phase1, &got1, false)?;
    let seen = last_rev;

    // 2. Cancel, keep writing, compact beyond what the watch has seen.
    stream.cancel(watch_id).await.map_err(|e| format!("cancel: {e}"))?;
    let cancel = next(&mut stream).await?;
    if !cancel.canceled() || cancel.watch_id() != watch_id || !cancel.events().is_empty() {
        return Err(format!("cancel of watch {watch_id} answered with {cancel:?}"));
    }
    let phase2 = writer.write(30).await?;
    let compact_to = phase2[10].revision;
    client
        .compact(compact_to, Some(CompactionOptions::new().with_physical()))
        .await
        .map_err(|e| format!("compact {compact_to}: {e}"))?;

    // 3. Re-watch from where the old watch stopped: compacted.
    let (mut stream, _) = watch_from(&mut client, seen + 1, false).await?;
    let compacted = next(&mut stream).await?;
    if !compacted.canceled() || compacted.compact_revision() != compact_to || !compacted.events().is_empty() {
        return Err(format!(
            "watch from {} after compaction to {compact_to}: expected a compaction cancel, got {compacted:?}",
            seen + 1
        ));
    }
    let result = (
        compacted.compact_revision(),
        compacted.cancel_reason().to_string(),
        compacted.header().map_or(-1, |h| h.revision()),
    );

    // 4. Relist and rewatch (with previous pairs) while writing.
    let (relisted, r2) = list(&mut client).await?;
    let last_write = phase2.last().map_or(0, |c| c.revision);
    if r2 != last_write || relisted != writer.state {
        return Err(format!(
            "relist at {r2} (last write {last_write}) differs from the writes: {relisted:?} vs {:?}",
            writer.state
        ));
    }
    let (mut stream, _) = watch_from(&mut client, r2 + 1, true).await?;
    let phase3 = writer.write(120).await?;
    let got3 = collect_until(&mut stream, phase3.last().map_or(r2, |c| c.revision), true).await?;
    check_exactly_once("watch after the relist", &phase3, &got3, true)?;
    // The reflector's cache: relist + events = a final list.
    let mut cache = relisted;
    for c in &got3 {
        match &c.value {
            Some(v) => cache.insert(c.key.clone(), v.clone()),
            None => cache.remove(&c.key),
        };
    }
    let (final_list, _) = list(&mut client).await?;
    if cache != final_list {
        return Err(format!("reflector cache {cache:?} != final list {final_list:?}"));
    }
    // Nothing more on the stream: a progress request is answered next.
    stream.request_progress().await.map_err(|e| format!("progress request: {e}"))?;
    let progress = next(&mut stream).await?;
    if !progress.events().is_empty() || progress.canceled() || progress.created() {
        return Err(format!("expected a progress response after the last event, got {progress:?}"));
    }
    let values: Vec<&String> = got1.iter().chain(&got3).filter_map(|c| c.value.as_ref()).collect();
    let mut unique = values.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != values.len() {
        return Err("a put value was delivered twice".to_string());
    }
    let _ = client.delete(PREFIX, Some(DeleteOptions::new().with_prefix())).await;
    Ok(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_compaction_relist() {
    let seed = seed();
    println!("list-watch seed: {seed} (replay with KETCH_SEED={seed})");
    let (etcd, subject) = tokio::join!(Member::etcd(), Member::subject());
    let expected = scenario(&etcd, seed).await.unwrap_or_else(|e| panic!("premise on etcd (seed {seed}): {e}"));
    println!("etcd's compaction cancel: (compact_revision, cancel_reason, header revision) = {expected:?}");
    let got =
        scenario(&subject, seed).await.unwrap_or_else(|e| panic!("{} (seed {seed}): {e}", subject_kind().as_str()));
    assert_eq!(
        got,
        expected,
        "compaction cancel (compact_revision, cancel_reason, header revision): {} vs etcd (seed {seed})",
        subject_kind().as_str()
    );
}
