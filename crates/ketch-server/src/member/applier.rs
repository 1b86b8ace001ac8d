//! The apply thread: committed entries become store writes, off the raft
//! loop's critical path.
//!
//! The raft loop hands each batch of committed entries over in log order and
//! goes on persisting and replicating the next batch; this thread applies them
//! (several queued batches share one backend transaction, which also records
//! the applied index), answers the clients waiting for them, publishes watch
//! events, and makes the backend durable every [`DURABLE_EVERY_ENTRIES`]
//! entries or [`DURABLE_EVERY`], reporting the durable point back so the raft
//! loop can write a snapshot marker and drop old log. It also installs
//! snapshots from other members, in order with the entries around them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::Duration;

use ketch_lease::{LeaseError, Lessor};
use ketch_mvcc::{RangeEnd, RangeOptions, Store};
use ketch_proto::etcdserverpb::{self as pb, InternalRaftRequest};
use ketch_raft::eraftpb::{Entry, EntryType, SnapshotMetadata};
use prost::Message as _;

use super::{Applied, Command, MemberConfig, Shared, SnapshotSource};
use crate::apply;
use crate::cluster::{MemberInfo, Membership};
use crate::error::ServerError;
use crate::storage;

/// Applied entries between durable backend commits.
const DURABLE_EVERY_ENTRIES: u64 = 10_000;
/// Longest time applied data stays only in the WAL.
const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// Keys read per step when re-attaching keys to leases at start-up.
const LEASE_ATTACH_SCAN_KEYS: usize = 10_000;
/// Wait between rounds of snapshot fetch attempts.
const SNAPSHOT_FETCH_BACKOFF: Duration = Duration::from_millis(500);
/// Entries applied in one backend transaction when batches queue up.
const ENTRIES_PER_TXN_MAX: usize = 4096;

/// Work for the apply thread, in raft-log order.
pub(super) enum ApplyMsg {
    Entries(Vec<Entry>),
    /// Replace the store with another member's covering this snapshot; the
    /// answer is the installed store's applied (index, term).
    Snapshot {
        meta: SnapshotMetadata,
        leader: u64,
        reply: SyncSender<Result<(u64, u64), ServerError>>,
    },
}

pub(super) struct Applier {
    pub(super) store: Arc<Store>,
    pub(super) shared: Arc<Shared>,
    pub(super) cfg: MemberConfig,
    /// For fetching snapshots over the peer link (None in a simulation).
    pub(super) runtime: Option<tokio::runtime::Handle>,
    /// Snapshot transfer other than the peer link (a simulator's).
    pub(super) snapshots: Option<Arc<dyn SnapshotSource>>,
    pub(super) rx: Receiver<ApplyMsg>,
    pub(super) applied: u64,
    pub(super) applied_term: u64,
    pub(super) durable_applied: u64,
    /// Clock ms of the last durable commit.
    pub(super) last_durable_at: u64,
    /// The install flag is set in the store: the next batch (handed over only
    /// after the raft loop wrote the install's WAL marker) clears it.
    pub(super) installing: bool,
}

impl Applier {
    /// Runs until the raft loop drops its sender; then makes the backend durable.
    pub(super) fn run(&mut self) -> Result<(), ServerError> {
        loop {
            let since = self.shared.now_ms().saturating_sub(self.last_durable_at);
            let wait = DURABLE_EVERY.saturating_sub(Duration::from_millis(since)).max(Duration::from_millis(1));
            match self.rx.recv_timeout(wait) {
                Ok(msg) => self.handle(msg)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.durable_if_due()?;
        }
        if self.applied > self.durable_applied {
            self.make_durable()?;
        }
        Ok(())
    }

    /// Works off at most `max` queued messages without waiting (an applier
    /// driven by a simulator). Returns how many there were.
    pub(super) fn drain(&mut self, max: usize) -> Result<usize, ServerError> {
        let mut n = 0;
        while n < max {
            match self.rx.try_recv() {
                Ok(msg) => self.handle(msg)?,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
            n += 1;
        }
        self.durable_if_due()?;
        Ok(n)
    }

    fn durable_if_due(&mut self) -> Result<(), ServerError> {
        let since = self.shared.now_ms().saturating_sub(self.last_durable_at);
        if self.applied > self.durable_applied && since >= DURABLE_EVERY.as_millis() as u64 {
            self.make_durable()?;
        }
        Ok(())
    }

    fn handle(&mut self, msg: ApplyMsg) -> Result<(), ServerError> {
        match msg {
            ApplyMsg::Entries(mut entries) => {
                // Whatever else is queued goes into the same transaction.
                let mut snapshot = None;
                while entries.len() < ENTRIES_PER_TXN_MAX {
                    match self.rx.try_recv() {
                        Ok(ApplyMsg::Entries(more)) => entries.extend(more),
                        Ok(msg @ ApplyMsg::Snapshot { .. }) => {
                            snapshot = Some(msg);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                self.apply(entries)?;
                if let Some(ApplyMsg::Snapshot { meta, leader, reply }) = snapshot {
                    let _ = reply.send(self.install_snapshot(meta, leader));
                }
            }
            ApplyMsg::Snapshot { meta, leader, reply } => {
                let _ = reply.send(self.install_snapshot(meta, leader));
            }
        }
        Ok(())
    }

    fn make_durable(&mut self) -> Result<(), ServerError> {
        crash_point!("backend_before_commit");
        crash_point!("backend_before_durable_commit");
        self.store.batch()?.commit(&[], true)?;
        crash_point!("backend_after_durable_commit");
        crash_point!("backend_after_commit");
        self.mark_durable(self.applied, self.applied_term);
        Ok(())
    }

    /// Tells the raft loop the backend durably holds everything up to `index`.
    fn mark_durable(&mut self, index: u64, term: u64) {
        self.durable_applied = index;
        self.last_durable_at = self.shared.now_ms();
        *self.shared.durable.lock().expect("durable lock poisoned") = (index, term);
        self.wake_raft_loop();
    }

    fn wake_raft_loop(&self) {
        if !self.shared.applied_wake.swap(true, Ordering::SeqCst) && self.shared.tx.try_send(Command::Applied).is_err()
        {
            self.shared.applied_wake.store(false, Ordering::SeqCst);
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), ServerError> {
        let entries: Vec<Entry> = entries.into_iter().filter(|e| e.index > self.applied).collect();
        let Some(last) = entries.last() else { return Ok(()) };
        let (last_index, last_term) = (last.index, last.term);
        crash_point!("apply_before");
        let store = self.store.clone();
        if self.shared.bugs.applied_index_apart {
            // The planted bug: the index is durable before the data it covers.
            let (i, t) = (last_index.to_le_bytes(), last_term.to_le_bytes());
            store
                .batch()?
                .commit(&[(storage::META_CONSISTENT_INDEX, &i), (storage::META_CONSISTENT_TERM, &t)], true)?;
        }
        let mut batch = store.batch()?;
        let mut results = Vec::new();
        let mut membership_changed = false;
        for e in &entries {
            if e.get_entry_type() != EntryType::EntryNormal {
                tracing::warn!(
                    index = e.index,
                    "ignoring a configuration change entry: membership changes are not supported yet"
                );
                continue;
            }
            if e.data.is_empty() {
                continue; // a new leader's empty entry
            }
            let req = InternalRaftRequest::decode(&e.data[..])
                .map_err(|err| ServerError::Internal(format!("raft entry {} does not decode: {err}", e.index)))?;
            let id = req.header.as_ref().map_or(req.id, |h| h.id);
            if let Some(attrs) = &req.cluster_member_attr_set {
                membership_changed |= self.apply_member_attributes(attrs);
                results.push((id, Ok(Applied::Attributes)));
                continue;
            }
            let now = self.shared.now_ms();
            let result = apply_request(&mut batch, &req, &mut self.shared.lessor(), now);
            if let Err(ServerError::Internal(why)) = &result {
                return Err(ServerError::Internal(format!("applying entry {}: {why}", e.index)));
            }
            results.push((id, result));
        }
        let durable = last_index - self.durable_applied >= DURABLE_EVERY_ENTRIES
            || self.shared.now_ms().saturating_sub(self.last_durable_at) >= DURABLE_EVERY.as_millis() as u64;
        let members =
            membership_changed.then(|| self.shared.membership.read().expect("membership lock poisoned").encode());
        let mut meta: Vec<(&str, &[u8])> = Vec::with_capacity(3);
        let (index_bytes, term_bytes) = (last_index.to_le_bytes(), last_term.to_le_bytes());
        if !self.shared.bugs.applied_index_apart {
            meta.push((storage::META_CONSISTENT_INDEX, &index_bytes));
            meta.push((storage::META_CONSISTENT_TERM, &term_bytes));
        }
        if let Some(m) = &members {
            meta.push((storage::META_MEMBERS, m));
        }
        if self.installing {
            meta.push((storage::META_SNAPSHOT_INSTALLING, b"0"));
            self.installing = false;
        }
        let durable = durable && !self.shared.bugs.applied_index_apart;
        crash_point!("compact_before_commit", compacts(&results));
        crash_point!("backend_before_commit");
        crash_point!("backend_before_durable_commit", durable);
        let events = batch.commit(&meta, durable)?;
        crash_point!("backend_after_durable_commit", durable);
        crash_point!("backend_after_commit");
        crash_point!("compact_after_commit", compacts(&results));
        self.shared.watch_hub.publish(events);
        self.applied = last_index;
        self.applied_term = last_term;
        self.shared.applied_index.store(last_index, Ordering::SeqCst);
        {
            let mut waiters = self.shared.waiters.lock().expect("waiters lock poisoned");
            for (id, result) in results {
                if let Some(reply) = waiters.remove(&id) {
                    let _ = reply.send(result);
                }
            }
        }
        if durable {
            self.mark_durable(last_index, last_term);
        } else {
            self.wake_raft_loop();
        }
        crash_point!("apply_after");
        Ok(())
    }

    /// A member published its name and client URLs; true if that changed anything.
    fn apply_member_attributes(&mut self, attrs: &ketch_proto::membershippb::ClusterMemberAttrSetRequest) -> bool {
        let Some(a) = &attrs.member_attributes else { return false };
        let mut membership = self.shared.membership.write().expect("membership lock poisoned");
        let before = membership.get(attrs.member_id).cloned();
        if !membership.set_attributes(attrs.member_id, &a.name, &a.client_urls) {
            tracing::warn!(member = %format!("{:x}", attrs.member_id), "attributes for an unknown member ignored");
            return false;
        }
        before.as_ref() != membership.get(attrs.member_id)
    }

    /// Replaces the store with a copy of another member's that covers the
    /// leader's snapshot `meta`. Retries (other members too) until it succeeds
    /// or the member is stopped. Returns the installed store's applied
    /// (index, term), which may be past the snapshot's.
    fn install_snapshot(&mut self, meta: SnapshotMetadata, leader: u64) -> Result<(u64, u64), ServerError> {
        tracing::info!(index = meta.index, term = meta.term, "installing a snapshot from the leader");
        // Durable before the store is replaced; cleared once the raft loop's
        // WAL marker for the install is durable (see META_SNAPSHOT_INSTALLING).
        self.store.batch()?.commit(&[(storage::META_SNAPSHOT_INSTALLING, b"1")], true)?;
        self.installing = true;
        let me = self.shared.member_id;
        loop {
            let membership = self.shared.membership.read().expect("membership lock poisoned").clone();
            let mut sources: Vec<MemberInfo> = membership.iter().filter(|m| m.id != me).cloned().collect();
            sources.sort_by_key(|m| m.id != leader);
            for source in sources {
                let fetched = match &self.snapshots {
                    Some(snapshots) => snapshots.fetch(source.id, meta.index, &self.store),
                    None => self.fetch_snapshot(&source, meta.index),
                };
                match fetched {
                    Ok(()) => return self.after_snapshot(&meta),
                    Err(e) => tracing::warn!(from = %format!("{:x}", source.id), error = %e, "snapshot fetch failed"),
                }
            }
            if self.shared.stop_requested.load(Ordering::SeqCst) {
                return Err(ServerError::Stopped);
            }
            if self.snapshots.is_some() {
                // A simulation cannot wait here: the raft loop retries later.
                return Err(ServerError::Internal("no member could send a snapshot".into()));
            }
            std::thread::sleep(SNAPSHOT_FETCH_BACKOFF);
        }
    }

    fn fetch_snapshot(&mut self, source: &MemberInfo, min_index: u64) -> Result<(), ServerError> {
        let peers = &self.shared.peers;
        let runtime = self
            .runtime
            .clone()
            .ok_or_else(|| ServerError::Internal("fetching a snapshot needs a tokio runtime".into()))?;
        let mut stream = runtime.block_on(peers.fetch_snapshot(source.id, &source.peer_urls, min_index))?;
        let mut chunks = 0usize;
        self.store.install(storage::LOCAL_META, || {
            let next =
                runtime.block_on(async { tokio::time::timeout(Duration::from_secs(30), stream.message()).await });
            match next {
                Ok(Ok(Some(chunk))) => {
                    chunks += 1;
                    crate::peer::records_from_wire(chunk).map(Some).map_err(ketch_mvcc::MvccError::Snapshot)
                }
                Ok(Ok(None)) => Ok(None),
                Ok(Err(status)) => Err(ketch_mvcc::MvccError::Snapshot(status.message().to_string())),
                Err(_) => Err(ketch_mvcc::MvccError::Snapshot("timed out waiting for the next chunk".into())),
            }
        })?;
        tracing::info!(from = %format!("{:x}", source.id), chunks, "snapshot installed");
        Ok(())
    }

    /// After an install: the applied position, lessor and membership come from
    /// the new store (durable: `install` commits durably).
    fn after_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(u64, u64), ServerError> {
        let applied = storage::u64_meta(self.store.meta(storage::META_CONSISTENT_INDEX)?).unwrap_or(meta.index);
        let term = storage::u64_meta(self.store.meta(storage::META_CONSISTENT_TERM)?).unwrap_or(meta.term);
        if applied < meta.index {
            return Err(ServerError::Internal(format!(
                "snapshot store is at index {applied}, behind the snapshot index {}",
                meta.index
            )));
        }
        self.applied = applied;
        self.applied_term = term;
        self.durable_applied = applied;
        self.last_durable_at = self.shared.now_ms();
        self.shared.applied_index.store(applied, Ordering::SeqCst);
        *self.shared.durable.lock().expect("durable lock poisoned") = (applied, term);
        *self.shared.lessor() = restore_lessor(&self.store, &self.cfg)?;
        if let Some(bytes) = self.store.meta(storage::META_MEMBERS)? {
            *self.shared.membership.write().expect("membership lock poisoned") = Membership::decode(&bytes)?;
        }
        Ok((applied, term))
    }
}

/// Whether a batch's results include a compaction (for its crash points).
#[cfg(feature = "failpoints")]
fn compacts(results: &[(u64, Result<Applied, ServerError>)]) -> bool {
    results.iter().any(|(_, r)| matches!(r, Ok(Applied::Compaction(_))))
}

/// The lessor as the apply layer sees it.
struct LessorLeases<'a>(&'a mut Lessor);

impl apply::Leases for LessorLeases<'_> {
    fn exists(&self, id: i64) -> bool {
        self.0.exists(id)
    }
    fn attach(&mut self, key: &[u8], lease: i64) {
        if lease == 0 {
            self.0.detach(key);
        } else if let Err(e) = self.0.attach(key, lease) {
            // Checked before the write; reaching this is a bug, not bad input.
            panic!("attaching a key to lease {lease}: {e}");
        }
    }
    fn detach(&mut self, key: &[u8]) {
        self.0.detach(key);
    }
}

fn lease_error(e: LeaseError) -> ServerError {
    match e {
        LeaseError::NotFound | LeaseError::Expired => ServerError::LeaseNotFound,
        LeaseError::AlreadyExists => ServerError::LeaseExists,
        LeaseError::TtlTooLarge => ServerError::LeaseTtlTooLarge,
        LeaseError::NotPrimary => ServerError::NotLeader,
        other => ServerError::Internal(other.to_string()),
    }
}

fn store_lease_record(batch: &mut ketch_mvcc::Batch<'_>, lessor: &Lessor, id: i64) -> Result<(), ServerError> {
    batch.set_lease_record(id, lessor.record(id).as_deref())?;
    Ok(())
}

fn apply_request(
    batch: &mut ketch_mvcc::Batch<'_>,
    req: &InternalRaftRequest,
    lessor: &mut Lessor,
    now_ms: u64,
) -> Result<Applied, ServerError> {
    let header = |rev: i64| Some(pb::ResponseHeader { revision: rev, ..Default::default() });
    if let Some(p) = &req.put {
        return apply::put(batch, p, &mut LessorLeases(lessor)).map(Applied::Put);
    }
    if let Some(d) = &req.delete_range {
        return apply::delete_range(batch, d, &mut LessorLeases(lessor)).map(Applied::DeleteRange);
    }
    if let Some(t) = &req.txn {
        return apply::txn(batch, t, &mut LessorLeases(lessor)).map(Applied::Txn);
    }
    if let Some(c) = &req.compaction {
        return apply::compact(batch, c).map(Applied::Compaction);
    }
    if let Some(g) = &req.lease_grant {
        let granted = lessor.grant(g.id, g.ttl, now_ms).map_err(lease_error)?;
        store_lease_record(batch, lessor, granted.id)?;
        let resp = pb::LeaseGrantResponse {
            header: header(batch.rev()),
            id: granted.id,
            ttl: granted.ttl,
            error: String::new(),
        };
        return Ok(Applied::LeaseGrant(resp));
    }
    if let Some(r) = &req.lease_revoke {
        let keys = lessor.revoke(r.id).map_err(lease_error)?;
        batch.set_lease_record(r.id, None)?;
        let rev = apply::delete_keys(batch, &keys)?;
        return Ok(Applied::LeaseRevoke(pb::LeaseRevokeResponse { header: header(rev) }));
    }
    if let Some(c) = &req.lease_checkpoint {
        for cp in &c.checkpoints {
            if lessor.checkpoint(cp.id, cp.remaining_ttl) {
                store_lease_record(batch, lessor, cp.id)?;
            }
        }
        return Ok(Applied::LeaseCheckpoint(pb::LeaseCheckpointResponse { header: header(batch.rev()) }));
    }
    Err(ServerError::Internal("raft entry carries no request this member can apply".into()))
}

/// Rebuilds the lessor from its records and the keys that name a lease.
pub(super) fn restore_lessor(store: &Store, cfg: &MemberConfig) -> Result<Lessor, ServerError> {
    // etcd: minimum TTL = ceil(1.5 election timeouts), in whole ticks.
    let election_ticks = (cfg.election_ms / cfg.heartbeat_ms.max(1)).max(1);
    let min_ttl_ms = (3 * election_ticks / 2) * cfg.heartbeat_ms;
    let min_ttl_secs = i64::try_from(min_ttl_ms.div_ceil(1000)).unwrap_or(i64::MAX);
    let records = store.lease_records()?.into_iter().map(|(_, r)| r);
    let mut lessor =
        Lessor::restore(records, min_ttl_secs).map_err(|e| ServerError::Internal(format!("lease records: {e}")))?;
    let view = store.read()?;
    let mut from = vec![0u8];
    loop {
        let opts = RangeOptions { limit: LEASE_ATTACH_SCAN_KEYS, ..Default::default() };
        let page = view.range(&from, &RangeEnd::Unbounded, opts)?;
        for kv in page.kvs.iter().filter(|kv| kv.lease != 0) {
            if lessor.attach(&kv.key, kv.lease).is_err() {
                tracing::warn!(key = %String::from_utf8_lossy(&kv.key), lease = kv.lease, "key names a lease that no longer exists");
            }
        }
        match page.kvs.last() {
            Some(last) if page.kvs.len() == LEASE_ATTACH_SCAN_KEYS => {
                from = last.key.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(lessor)
}
