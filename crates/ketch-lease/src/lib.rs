//! Ketch's lessor: etcd's lease bookkeeping (etcd 3.4 `lease/lessor.go`), sans-IO.
//!
//! A lease is a TTL that keys can be attached to; when the lease is revoked, its
//! keys are deleted with it. etcd splits a lease's state in two, and so does this
//! crate, because the two halves obey different rules:
//!
//! * **Applied state** (which leases exist, their granted TTL, the remaining TTL of
//!   the last checkpoint, and which key belongs to which lease) changes only when a
//!   committed raft entry is applied. Every member applies the same entries in the
//!   same order, so these methods are deterministic and take no time argument that
//!   could make members disagree: [`Lessor::grant`], [`Lessor::revoke`],
//!   [`Lessor::attach`], [`Lessor::detach`], [`Lessor::checkpoint`]. (`grant` takes
//!   `now_ms` only to start the expiry clock when this member is the primary.)
//! * **The expiry clock** is volatile and exists only on the primary lessor (the
//!   raft leader). Clocks of different machines cannot be compared, so expiry times
//!   are never replicated or stored: a newly promoted leader restarts every lease's
//!   countdown from its TTL ([`Lessor::promote`]), using the checkpointed remaining
//!   TTL when there is one so that long leases are not extended indefinitely by
//!   repeated elections. The primary finds expired leases ([`Lessor::expired`]) and
//!   due checkpoints ([`Lessor::checkpoints_due`]), and the caller proposes
//!   `LeaseRevoke` / `LeaseCheckpoint` entries for them through raft; nothing here
//!   deletes anything by itself.
//!
//! # Time, threads and files
//!
//! The crate reads no clock, spawns nothing and opens no file. Time is an explicit
//! monotonic `now_ms: u64` supplied by the caller (the raft loop), which keeps every
//! rule testable to the millisecond and keeps the raft loop the only owner of time,
//! as the architecture requires below `ketch-server`.
//!
//! # Persistence
//!
//! Persistence belongs to the caller, in the same backend transaction as the apply
//! that caused it. After applying a `grant`, or a `checkpoint` that returned `true`,
//! it stores [`Lessor::record`] of that lease (the byte layout is in [`record`]);
//! after a `revoke` it deletes the lease's record. At start it rebuilds with
//! [`Lessor::restore`] from all stored records and then calls [`Lessor::attach`]
//! for every live key that names a lease, as etcd rebuilds its item sets from the
//! MVCC store. Unlike etcd 3.4, which only kept checkpoints in memory, the
//! checkpointed remaining TTL is part of the record, so it also survives restarts
//! (what later etcd releases do with checkpoint persistence, etcd PR #13508).
//!
//! # Bounds
//!
//! Every structure holds at most one entry per live lease or per attached key: the
//! expiry queue and the checkpoint queue are ordered sets of `(time, id)` with exact
//! removal, so finding what is due costs `O(log n)` per returned lease and never
//! scans all leases. Results are bounded by the caller's `limit`.

pub mod record;

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use record::{LeaseRecord, RECORD_LEN, RECORD_VERSION};

/// The largest TTL a lease may be granted, in seconds (etcd `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// etcd's `leaseRevokeRate`: at most this many leases are revoked per second.
/// [`Lessor::promote`] spreads expiries only when at least this many leases exist
/// (below it, no pile-up can exceed the rate); callers pace [`Lessor::expired`]
/// with it (etcd asks for `LEASE_REVOKE_RATE / 2` every 500 ms).
pub const LEASE_REVOKE_RATE: usize = 1000;

/// etcd's default interval after which a lease returned by [`Lessor::expired`]
/// is returned again if its revoke was not applied (`expiredLeaseRetryInterval`).
pub const EXPIRED_LEASE_RETRY_MS: u64 = 3_000;

/// etcd's default lease checkpoint interval (`--experimental-lease-checkpoint-interval`).
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 5 * 60 * 1000;

/// etcd's `maxLeaseCheckpointBatchSize`: checkpoints per `LeaseCheckpointRequest`.
pub const MAX_CHECKPOINT_BATCH: usize = 1000;

/// Errors of the lessor. The messages are etcd's `lease` package error strings;
/// `ketch-server` maps them to gRPC codes and etcd's `etcdserver: ...` messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// No lease with this ID (etcd `ErrLeaseNotFound`); also returned for ID 0.
    #[error("lease not found")]
    NotFound,
    /// A lease with this ID already exists (etcd `ErrLeaseExists`).
    #[error("lease already exists")]
    AlreadyExists,
    /// The requested TTL is above [`MAX_LEASE_TTL`] (etcd `ErrLeaseTTLTooLarge`).
    #[error("too large lease TTL")]
    TtlTooLarge,
    /// The call needs the expiry clock and this lessor is not the primary
    /// (etcd `ErrNotPrimary`); the caller forwards to the leader or retries.
    #[error("not a primary lessor")]
    NotPrimary,
    /// Renewal of a lease whose expiry has passed. etcd's `Renew` does not extend
    /// such a lease: it waits until the pending revoke is applied (then answers
    /// "lease not found") or the lessor is demoted (then "not a primary lessor").
    /// A sans-IO lessor cannot wait, so the caller does the waiting.
    #[error("lease expired")]
    Expired,
    /// A durable lease record could not be decoded or is inconsistent.
    #[error("corrupt lease record: {0}")]
    Corrupt(String),
}

/// The result of [`Lessor::grant`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub id: i64,
    /// The granted TTL in seconds, after raising it to the minimum TTL.
    pub ttl: i64,
}

/// The result of [`Lessor::renew`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// The lease's granted TTL in seconds: what a keep-alive response reports.
    pub ttl: i64,
    /// The lease carries a checkpointed remaining TTL, which a renewal must clear on
    /// every member: when checkpointing is enabled the caller proposes
    /// `LeaseCheckpoint { id, remaining_ttl: 0 }` (etcd's `Renew` does exactly this
    /// before answering). The lessor does not clear it locally, because that is
    /// applied state and must change in log order on all members alike.
    pub clear_checkpoint: bool,
}

/// The result of [`Lessor::time_to_live`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeToLive {
    /// Seconds until expiry as etcd reports it: `int64(Remaining().Seconds())`,
    /// i.e. truncated toward zero; 0 or negative once the expiry has passed but
    /// the revoke has not been applied yet.
    pub remaining_secs: i64,
    /// The granted TTL in seconds.
    pub granted_secs: i64,
    /// The attached keys, sorted.
    pub keys: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct Lease {
    /// Granted TTL in seconds (after the minimum raise). Applied state.
    ttl: i64,
    /// Remaining TTL of the last applied checkpoint, 0 = none. Applied state.
    remaining_ttl: i64,
    /// Attached keys. Applied state.
    keys: BTreeSet<Vec<u8>>,
    /// When the lease expires; `Some` exactly when the lessor is primary.
    expiry_ms: Option<u64>,
    /// The time under which the lease sits in `expiry_queue`: its expiry, or the
    /// retry time after `expired` returned it. `Some` exactly when primary.
    queued_ms: Option<u64>,
    /// The time the lease's checkpoint clock last started (its entry in
    /// `checkpoint_queue`); `None` when not primary or never worth checkpointing.
    checkpoint_anchor_ms: Option<u64>,
}

impl Lease {
    fn new(ttl: i64, remaining_ttl: i64) -> Lease {
        Lease {
            ttl,
            remaining_ttl,
            keys: BTreeSet::new(),
            expiry_ms: None,
            queued_ms: None,
            checkpoint_anchor_ms: None,
        }
    }

    /// etcd's `Lease.RemainingTTL()`: the checkpointed remaining TTL if set,
    /// else the granted TTL. This is what a promotion restarts the countdown from.
    fn effective_ttl(&self) -> i64 {
        if self.remaining_ttl > 0 { self.remaining_ttl } else { self.ttl }
    }
}

/// The lease bookkeeping of one member. See the crate documentation for which
/// methods are applied state (called in log order on every member) and which are
/// the primary's volatile expiry clock.
#[derive(Debug, Clone)]
pub struct Lessor {
    min_ttl_secs: i64,
    leases: BTreeMap<i64, Lease>,
    /// key -> lease ID, the reverse of every `Lease::keys`.
    items: HashMap<Vec<u8>, i64>,
    primary: bool,
    /// `(queued_ms, id)` for every lease while primary.
    expiry_queue: BTreeSet<(u64, i64)>,
    /// `(checkpoint_anchor_ms, id)` for every lease with an anchor.
    checkpoint_queue: BTreeSet<(u64, i64)>,
}

/// Seconds to milliseconds, with negative TTLs counting as 0 and no overflow.
fn secs_to_ms(secs: i64) -> u64 {
    u64::try_from(secs).unwrap_or(0).saturating_mul(1000)
}

/// Moves `id`'s entry in `queue` from `*slot` to `at` (removing it if `at` is None).
fn requeue(queue: &mut BTreeSet<(u64, i64)>, slot: &mut Option<u64>, id: i64, at: Option<u64>) {
    if let Some(old) = slot.take() {
        queue.remove(&(old, id));
    }
    if let Some(t) = at {
        queue.insert((t, id));
        *slot = Some(t);
    }
}

impl Lessor {
    /// An empty, non-primary lessor. `min_ttl_secs` is etcd's minimum lease TTL,
    /// `ceil(1.5 * election timeout)` in seconds, computed by the caller: a lease
    /// shorter than an election could expire merely because the leader changed.
    pub fn new(min_ttl_secs: i64) -> Lessor {
        Lessor {
            min_ttl_secs,
            leases: BTreeMap::new(),
            items: HashMap::new(),
            primary: false,
            expiry_queue: BTreeSet::new(),
            checkpoint_queue: BTreeSet::new(),
        }
    }

    /// The minimum TTL every grant and restored lease is raised to.
    pub fn min_ttl_secs(&self) -> i64 {
        self.min_ttl_secs
    }

    // ---- applied state ----

    /// Applies `LeaseGrant`. Checks in etcd's order: ID 0 is
    /// [`LeaseError::NotFound`] (the caller picks a non-zero ID before proposing),
    /// a TTL above [`MAX_LEASE_TTL`] is [`LeaseError::TtlTooLarge`], an existing ID
    /// is [`LeaseError::AlreadyExists`]. A TTL below the minimum (including zero
    /// and negative ones) is raised to it. On the primary the lease expires at
    /// `now_ms + ttl`; elsewhere it has no expiry until a promotion.
    pub fn grant(&mut self, id: i64, ttl_secs: i64, now_ms: u64) -> Result<Granted, LeaseError> {
        if id == 0 {
            return Err(LeaseError::NotFound);
        }
        if ttl_secs > MAX_LEASE_TTL {
            return Err(LeaseError::TtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(LeaseError::AlreadyExists);
        }
        let ttl = ttl_secs.max(self.min_ttl_secs);
        let mut lease = Lease::new(ttl, 0);
        if self.primary {
            let expiry = now_ms.saturating_add(secs_to_ms(ttl));
            lease.expiry_ms = Some(expiry);
            requeue(&mut self.expiry_queue, &mut lease.queued_ms, id, Some(expiry));
            requeue(&mut self.checkpoint_queue, &mut lease.checkpoint_anchor_ms, id, Some(now_ms));
        }
        self.leases.insert(id, lease);
        Ok(Granted { id, ttl })
    }

    /// Applies `LeaseRevoke`: removes the lease and all its key attachments and
    /// returns the keys that were attached, sorted. The caller deletes those keys
    /// in the same apply, in this order (etcd sorts them so that every member's
    /// backend ends up byte-identical), and deletes the lease's record.
    pub fn revoke(&mut self, id: i64) -> Result<Vec<Vec<u8>>, LeaseError> {
        let lease = self.leases.remove(&id).ok_or(LeaseError::NotFound)?;
        if let Some(t) = lease.queued_ms {
            self.expiry_queue.remove(&(t, id));
        }
        if let Some(t) = lease.checkpoint_anchor_ms {
            self.checkpoint_queue.remove(&(t, id));
        }
        for key in &lease.keys {
            self.items.remove(key);
        }
        Ok(lease.keys.into_iter().collect())
    }

    /// Whether a lease with this ID exists (etcd checks this before applying a
    /// put with a lease, answering "lease not found" otherwise).
    pub fn exists(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// The lease `key` is attached to, 0 (etcd `NoLease`) if none.
    pub fn lease_of(&self, key: &[u8]) -> i64 {
        self.items.get(key).copied().unwrap_or(0)
    }

    /// Attaches `key` to lease `id`, detaching it from any lease it belonged to
    /// before (a put replaces the key's lease); `id` 0 only detaches. Attaching to
    /// a lease that does not exist is [`LeaseError::NotFound`] and changes nothing;
    /// etcd validates the lease before it applies the put, and the caller should
    /// too.
    pub fn attach(&mut self, key: &[u8], id: i64) -> Result<(), LeaseError> {
        if id != 0 && !self.leases.contains_key(&id) {
            return Err(LeaseError::NotFound);
        }
        if self.lease_of(key) == id {
            return Ok(());
        }
        self.detach(key);
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.insert(key.to_vec());
            self.items.insert(key.to_vec(), id);
        }
        Ok(())
    }

    /// Detaches `key` from its lease, if any (the key was deleted, or put without
    /// a lease).
    pub fn detach(&mut self, key: &[u8]) {
        if let Some(old) = self.items.remove(key)
            && let Some(lease) = self.leases.get_mut(&old)
        {
            lease.keys.remove(key);
        }
    }

    /// Applies one `LeaseCheckpoint`: remembers the lease's remaining TTL, which a
    /// later promotion restarts the countdown from instead of the full TTL. As in
    /// etcd it does not touch the current expiry, a missing lease is ignored, and
    /// 0 (or anything below it) means "no checkpoint", which is how a renewal
    /// clears one. Returns whether the lease exists, i.e. whether its durable
    /// record changed and must be stored again.
    pub fn checkpoint(&mut self, id: i64, remaining_ttl_secs: i64) -> bool {
        match self.leases.get_mut(&id) {
            Some(lease) => {
                lease.remaining_ttl = remaining_ttl_secs.max(0);
                true
            }
            None => false,
        }
    }

    /// The durable record of a lease (layout in [`record`]), `None` if it does not
    /// exist.
    pub fn record(&self, id: i64) -> Option<Vec<u8>> {
        self.leases
            .get(&id)
            .map(|l| LeaseRecord { id, ttl_secs: l.ttl, remaining_ttl_secs: l.remaining_ttl }.to_bytes())
    }

    /// Rebuilds a non-primary lessor from stored records. TTLs below
    /// `min_ttl_secs` are raised to it, as etcd does at recovery (the election
    /// timeout may have been lowered since the grant). Key attachments are not in
    /// the records: the caller re-adds them with [`Lessor::attach`]. A record that
    /// does not decode, or a duplicate ID, is [`LeaseError::Corrupt`].
    pub fn restore(records: impl IntoIterator<Item = Vec<u8>>, min_ttl_secs: i64) -> Result<Lessor, LeaseError> {
        let mut lessor = Lessor::new(min_ttl_secs);
        for bytes in records {
            let r = LeaseRecord::from_bytes(&bytes)?;
            let lease = Lease::new(r.ttl_secs.max(min_ttl_secs), r.remaining_ttl_secs);
            if lessor.leases.insert(r.id, lease).is_some() {
                return Err(LeaseError::Corrupt(format!("duplicate lease record for ID {}", r.id)));
            }
        }
        Ok(lessor)
    }

    /// All lease IDs, sorted.
    pub fn leases(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// All lease IDs in the order etcd's `LeaseLeases` lists them: by expiry,
    /// soonest first (leases without an expiry, as on a non-primary, last), ties
    /// by ID.
    pub fn leases_by_expiry(&self) -> Vec<i64> {
        let mut ids: Vec<(u64, i64)> =
            self.leases.iter().map(|(id, l)| (l.expiry_ms.unwrap_or(u64::MAX), *id)).collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// The number of leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether there are no leases.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The granted TTL of a lease in seconds, on any member (for `LeaseLeases`-like
    /// listings and for followers, which have no expiry clock).
    pub fn granted_ttl(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).map(|l| l.ttl)
    }

    /// Checks the internal indexes against each other (every attached key maps
    /// back to its lease, each queue holds exactly one entry per scheduled lease,
    /// volatile state exists only on the primary). For tests; `Err` describes the
    /// first inconsistency.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut keys = 0usize;
        let (mut queued, mut anchored) = (0usize, 0usize);
        for (&id, lease) in &self.leases {
            for key in &lease.keys {
                if self.items.get(key) != Some(&id) {
                    return Err(format!("key {key:?} of lease {id} not indexed"));
                }
            }
            keys += lease.keys.len();
            if lease.expiry_ms.is_some() != self.primary || lease.queued_ms.is_some() != self.primary {
                return Err(format!("lease {id}: expiry state does not match primary={}", self.primary));
            }
            if let Some(t) = lease.queued_ms {
                queued += 1;
                if !self.expiry_queue.contains(&(t, id)) {
                    return Err(format!("lease {id}: expiry entry {t} missing"));
                }
            }
            if let Some(t) = lease.checkpoint_anchor_ms {
                anchored += 1;
                if !self.primary || !self.checkpoint_queue.contains(&(t, id)) {
                    return Err(format!("lease {id}: checkpoint entry {t} missing or not primary"));
                }
            }
        }
        if keys != self.items.len() {
            return Err(format!("{} indexed keys, {keys} attached", self.items.len()));
        }
        if queued != self.expiry_queue.len() || anchored != self.checkpoint_queue.len() {
            return Err(format!(
                "queues hold {} expiry and {} checkpoint entries for {queued} and {anchored} leases",
                self.expiry_queue.len(),
                self.checkpoint_queue.len()
            ));
        }
        Ok(())
    }

    // ---- the primary's expiry clock ----

    /// Makes this lessor the primary (the member became raft leader). Every lease
    /// then expires at `now_ms + extend_ms +` its checkpointed remaining TTL if it
    /// has one, else its granted TTL (etcd `Promote`, `refresh(extend)`);
    /// `extend_ms` is the election timeout in etcd, covering the time the old
    /// leader may still have renewed leases unseen. Every lease's checkpoint
    /// clock restarts at `now_ms`: etcd 3.4's `Promote` rescheduled checkpoints
    /// only for the leases it spread, so checkpointing stopped after the first
    /// leader change; this follows etcd's fix (PR #13508).
    ///
    /// With at least [`LEASE_REVOKE_RATE`] leases, expiries are spread as etcd
    /// does, so that a pile-up of leases expiring together does not exceed the
    /// revoke rate: walking leases by expiry in one-second windows, every lease
    /// beyond the 750th (3/4 of the rate) in a window is delayed by
    /// `1 s * n / 750 - (its remaining - the window's first remaining)`, and the
    /// window's end moves to that delay. The arithmetic is etcd's, in milliseconds.
    pub fn promote(&mut self, now_ms: u64, extend_ms: u64) {
        self.primary = true;
        self.expiry_queue.clear();
        self.checkpoint_queue.clear();
        for (&id, lease) in self.leases.iter_mut() {
            let expiry = now_ms.saturating_add(extend_ms).saturating_add(secs_to_ms(lease.effective_ttl()));
            lease.expiry_ms = Some(expiry);
            lease.queued_ms = Some(expiry);
            self.expiry_queue.insert((expiry, id));
            lease.checkpoint_anchor_ms = Some(now_ms);
            self.checkpoint_queue.insert((now_ms, id));
        }
        if self.leases.len() < LEASE_REVOKE_RATE {
            // No possibility of a pile-up above the revoke rate.
            return;
        }
        let by_expiry: Vec<(u64, i64)> = self.expiry_queue.iter().copied().collect();
        let target = (3 * LEASE_REVOKE_RATE / 4) as u64;
        let Some(&(first, _)) = by_expiry.first() else { return };
        let mut base = first - now_ms;
        let mut next = base.saturating_add(1000);
        let mut expires: u64 = 0;
        for (expiry, id) in by_expiry {
            let remaining = expiry - now_ms;
            if remaining > next {
                base = remaining;
                next = base.saturating_add(1000);
                expires = 1;
                continue;
            }
            expires += 1;
            if expires <= target {
                continue;
            }
            // If leases are extended by n seconds, leases n seconds ahead of the
            // base window are extended by only one second (etcd's comment).
            let rate_delay = 1000.0 * (expires as f64 / target as f64) - (remaining - base) as f64;
            let delay = if rate_delay > 0.0 { rate_delay as u64 } else { 0 };
            next = base.saturating_add(delay);
            if let Some(lease) = self.leases.get_mut(&id) {
                let expiry = expiry.saturating_add(delay);
                lease.expiry_ms = Some(expiry);
                requeue(&mut self.expiry_queue, &mut lease.queued_ms, id, Some(expiry));
            }
        }
    }

    /// Stops being the primary (leadership lost): all expiries and scheduled
    /// checkpoints are forgotten, as etcd sets every expiry to "forever". Expiry
    /// is the leader's business; a follower must never revoke on its own clock.
    pub fn demote(&mut self) {
        self.primary = false;
        self.expiry_queue.clear();
        self.checkpoint_queue.clear();
        for lease in self.leases.values_mut() {
            lease.expiry_ms = None;
            lease.queued_ms = None;
            lease.checkpoint_anchor_ms = None;
        }
    }

    /// Whether this lessor is the primary (runs the expiry clock).
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// A keep-alive: the lease now expires at `now_ms + granted TTL` (etcd `Renew`;
    /// the checkpointed remaining TTL no longer counts, see
    /// [`Renewed::clear_checkpoint`]). Errors in etcd's order:
    /// [`LeaseError::NotPrimary`] on a non-primary, [`LeaseError::NotFound`],
    /// then [`LeaseError::Expired`] if the expiry already passed (an expired lease
    /// is never brought back; its revoke is pending).
    pub fn renew(&mut self, id: i64, now_ms: u64) -> Result<Renewed, LeaseError> {
        if !self.primary {
            return Err(LeaseError::NotPrimary);
        }
        let lease = self.leases.get_mut(&id).ok_or(LeaseError::NotFound)?;
        if lease.expiry_ms.is_none_or(|expiry| now_ms >= expiry) {
            return Err(LeaseError::Expired);
        }
        let expiry = now_ms.saturating_add(secs_to_ms(lease.ttl));
        lease.expiry_ms = Some(expiry);
        requeue(&mut self.expiry_queue, &mut lease.queued_ms, id, Some(expiry));
        Ok(Renewed { ttl: lease.ttl, clear_checkpoint: lease.remaining_ttl > 0 })
    }

    /// `LeaseTimeToLive` as the leader answers it. Only the primary has an expiry
    /// clock; etcd forwards the request to the leader (and 3.5 refuses to answer
    /// from a lessor demoted meanwhile), so a non-primary gets
    /// [`LeaseError::NotPrimary`] rather than a made-up remaining time. Then
    /// [`LeaseError::NotFound`] for a missing lease (etcd's gRPC layer turns that
    /// into a response with TTL -1).
    pub fn time_to_live(&self, id: i64, now_ms: u64) -> Result<TimeToLive, LeaseError> {
        if !self.primary {
            return Err(LeaseError::NotPrimary);
        }
        let lease = self.leases.get(&id).ok_or(LeaseError::NotFound)?;
        let expiry = lease.expiry_ms.ok_or(LeaseError::NotPrimary)?;
        // Go's int64(d.Seconds()) truncates toward zero, as Rust's `/` does.
        let remaining_ms = i128::from(expiry) - i128::from(now_ms);
        let remaining_secs = i64::try_from(remaining_ms / 1000).unwrap_or(i64::MAX);
        Ok(TimeToLive { remaining_secs, granted_secs: lease.ttl, keys: lease.keys.iter().cloned().collect() })
    }

    /// Leases whose expiry has passed (`now_ms >= expiry`), at most `limit`, the
    /// earliest first, for the caller to propose `LeaseRevoke`. A returned lease
    /// is not returned again for `retry_ms` ([`EXPIRED_LEASE_RETRY_MS`] in etcd):
    /// if its revoke is lost (e.g. the proposal was dropped) it comes back then,
    /// and once the revoke is applied it is gone for good. Empty on a non-primary.
    pub fn expired(&mut self, now_ms: u64, limit: usize, retry_ms: u64) -> Vec<i64> {
        let mut out = Vec::new();
        if !self.primary {
            return out;
        }
        // Re-queued after the loop, so a zero `retry_ms` cannot return one lease twice.
        let mut requeue_at: Vec<(i64, u64)> = Vec::new();
        while out.len() < limit {
            let Some(&(at, id)) = self.expiry_queue.first() else { break };
            if at > now_ms {
                break;
            }
            self.expiry_queue.remove(&(at, id));
            let Some(lease) = self.leases.get_mut(&id) else { continue };
            lease.queued_ms = None;
            match lease.expiry_ms {
                Some(expiry) if now_ms < expiry => requeue_at.push((id, expiry)),
                _ => {
                    out.push(id);
                    requeue_at.push((id, now_ms.saturating_add(retry_ms)));
                }
            }
        }
        for (id, at) in requeue_at {
            if let Some(lease) = self.leases.get_mut(&id) {
                requeue(&mut self.expiry_queue, &mut lease.queued_ms, id, Some(at));
            }
        }
        out
    }

    /// Lease checkpoints due (etcd's lease checkpointing), at most `limit`
    /// ([`MAX_CHECKPOINT_BATCH`] per request in etcd), as `(id, remaining TTL in
    /// seconds)` for the caller to propose as one `LeaseCheckpointRequest`.
    ///
    /// Each lease's checkpoint clock starts when it is granted on, or promoted to,
    /// the primary; a lease is due `interval_ms` later
    /// ([`DEFAULT_CHECKPOINT_INTERVAL_MS`] in etcd) and is then scheduled again
    /// `interval_ms` after `now_ms`. A due lease yields a checkpoint only when it
    /// changes something, with etcd's rules (`findDueScheduledCheckpoints`,
    /// `scheduleCheckpointIfNeeded`): the lease has not expired, its TTL (the
    /// checkpointed one if set) is longer than the interval in whole seconds, and
    /// its remaining TTL `ceil((expiry - now) / 1 s)` is below its granted TTL.
    /// Expired leases and leases too short ever to be checkpointed leave the
    /// schedule until the next promotion. Empty on a non-primary.
    pub fn checkpoints_due(&mut self, now_ms: u64, interval_ms: u64, limit: usize) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        if !self.primary {
            return out;
        }
        let interval_ms = interval_ms.max(1);
        let Some(cutoff) = now_ms.checked_sub(interval_ms) else { return out };
        let interval_secs = i64::try_from(interval_ms / 1000).unwrap_or(i64::MAX);
        let mut reschedule: Vec<i64> = Vec::new();
        while out.len() < limit {
            let Some(&(anchor, id)) = self.checkpoint_queue.first() else { break };
            if anchor > cutoff {
                break;
            }
            self.checkpoint_queue.remove(&(anchor, id));
            let Some(lease) = self.leases.get_mut(&id) else { continue };
            lease.checkpoint_anchor_ms = None;
            let Some(expiry) = lease.expiry_ms.filter(|&e| now_ms < e) else { continue };
            if lease.ttl <= interval_secs && lease.remaining_ttl <= interval_secs {
                continue;
            }
            reschedule.push(id);
            if lease.effective_ttl() <= interval_secs {
                continue;
            }
            let remaining = i64::try_from((expiry - now_ms).div_ceil(1000)).unwrap_or(i64::MAX);
            if remaining >= lease.ttl {
                continue;
            }
            out.push((id, remaining));
        }
        for id in reschedule {
            if let Some(lease) = self.leases.get_mut(&id) {
                requeue(&mut self.checkpoint_queue, &mut lease.checkpoint_anchor_ms, id, Some(now_ms));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
