//! The lease workload and its checks.
//!
//! A lease client grants leases (TTL 2 to 5 s) through random members and
//! attaches a key of its own to each (`l<n>`, outside the KV workload's
//! keys), keeps some of them alive for a while on the leader (the way a
//! keep-alive stream renews them), and reads the keys back linearizably.
//! Two rules are checked:
//!
//! * **never early:** a key read as absent was not revoked before its
//!   lease's deadline (the grant's or last renewal's invocation plus the
//!   TTL): a read that returned before that deadline and missed an
//!   acknowledged lease key is a violation;
//! * **never much late:** once healed, every lease is gone within a bound
//!   after its deadline, counting etcd's extension on a leader change (the
//!   new leader gives every lease its full TTL plus an election timeout).

use std::collections::BTreeMap;

use ketch_check::history::Outcome;
use ketch_proto::etcdserverpb::{self as pb, InternalRaftRequest};
use ketch_server::ServerError;
use ketch_server::member::{Applied, Member};
use rand::Rng;
use rand::rngs::StdRng;
use tokio::sync::oneshot;

use crate::client::read_now;

/// How long after its deadline a lease's key may outlive it once healed
/// (revoke retries, apply, a read).
pub const LATE_SLACK_MS: u64 = 2_000;

type Reply<T> = oneshot::Receiver<Result<T, ServerError>>;

enum Step {
    Idle,
    Granting { ttl: i64, invoked: u64, rx: Reply<Applied> },
    Attaching { lease: usize, rx: Reply<Applied> },
    Reading { lease: usize, invoked: u64, member: usize, rx: Reply<()>, range: pb::RangeRequest },
}

/// One lease the client was told was granted.
pub struct Lease {
    pub id: i64,
    pub ttl_ms: u64,
    pub key: Vec<u8>,
    /// When the grant was sent (the lease cannot expire before this + TTL).
    pub granted_at: u64,
    /// When its key's put was acknowledged (None: not attached).
    pub attached_at: Option<u64>,
    /// Renew until then (0: never).
    pub keep_alive_until: u64,
    /// Invocation time of the last successful renewal.
    pub renewed_at: u64,
}

impl Lease {
    /// The earliest moment the lease may expire.
    pub fn deadline(&self) -> u64 {
        self.granted_at.max(self.renewed_at) + self.ttl_ms
    }
}

pub struct LeaseClient {
    step: Step,
    next_at: u64,
    deadline: u64,
    pub leases: Vec<Lease>,
    /// Violations of the rules above.
    pub violations: Vec<String>,
    pub reads: usize,
}

fn failed(at: u64, deadline: u64) -> bool {
    at >= deadline
}

impl Default for LeaseClient {
    fn default() -> Self {
        LeaseClient::new()
    }
}

impl LeaseClient {
    pub fn new() -> LeaseClient {
        LeaseClient { step: Step::Idle, next_at: 0, deadline: 0, leases: Vec::new(), violations: Vec::new(), reads: 0 }
    }

    /// Sends a new request when idle (`grants`: whether new leases may be
    /// granted), or collects the pending one's answer.
    pub fn step(&mut self, now: u64, rng: &mut StdRng, members: &[Option<Member>], grants: bool) {
        match std::mem::replace(&mut self.step, Step::Idle) {
            Step::Idle => {
                if now < self.next_at {
                    return;
                }
                let target = rng.random_range(0..members.len());
                let Some(m) = &members[target] else {
                    self.next_at = now + 100;
                    return;
                };
                self.deadline = now + 3_000;
                let attached: Vec<usize> =
                    (0..self.leases.len()).filter(|&i| self.leases[i].attached_at.is_some()).collect();
                if grants && (attached.is_empty() || rng.random_bool(0.3)) {
                    let ttl = rng.random_range(2..=5);
                    let req = pb::LeaseGrantRequest { ttl, id: m.next_lease_id() };
                    if let Ok(rx) = m.submit(InternalRaftRequest { lease_grant: Some(req), ..Default::default() }) {
                        self.step = Step::Granting { ttl, invoked: now, rx };
                    }
                } else if !attached.is_empty() {
                    let lease = attached[rng.random_range(0..attached.len())];
                    let range = pb::RangeRequest { key: self.leases[lease].key.clone(), ..Default::default() };
                    match m.submit_read() {
                        Ok(Some(rx)) => self.step = Step::Reading { lease, invoked: now, member: target, rx, range },
                        Ok(None) => self.observe(lease, now, now, m, &range),
                        Err(_) => {}
                    }
                }
                self.next_at = now + rng.random_range(20..200);
            }
            Step::Granting { ttl, invoked, mut rx } => match rx.try_recv() {
                Ok(Ok(Applied::LeaseGrant(resp))) => {
                    let key = format!("l{}", self.leases.len()).into_bytes();
                    let keep_alive_until = if rng.random_bool(0.4) { now + rng.random_range(2_000..8_000) } else { 0 };
                    self.leases.push(Lease {
                        id: resp.id,
                        ttl_ms: u64::try_from(resp.ttl.max(ttl)).unwrap_or(0) * 1000,
                        key: key.clone(),
                        granted_at: invoked,
                        attached_at: None,
                        keep_alive_until,
                        renewed_at: 0,
                    });
                    let lease = self.leases.len() - 1;
                    let put = pb::PutRequest { key, value: b"v".to_vec(), lease: resp.id, ..Default::default() };
                    let target = members.iter().position(Option::is_some);
                    if let Some(m) = target.and_then(|t| members[t].as_ref())
                        && let Ok(rx) = m.submit(InternalRaftRequest { put: Some(put), ..Default::default() })
                    {
                        self.deadline = now + 3_000;
                        self.step = Step::Attaching { lease, rx };
                    }
                }
                Err(oneshot::error::TryRecvError::Empty) if !failed(now, self.deadline) => {
                    self.step = Step::Granting { ttl, invoked, rx };
                }
                _ => {}
            },
            Step::Attaching { lease, mut rx } => match rx.try_recv() {
                Ok(Ok(Applied::Put(_))) => self.leases[lease].attached_at = Some(now),
                Err(oneshot::error::TryRecvError::Empty) if !failed(now, self.deadline) => {
                    self.step = Step::Attaching { lease, rx };
                }
                _ => {}
            },
            Step::Reading { lease, invoked, member, mut rx, range } => match rx.try_recv() {
                Ok(Ok(())) => {
                    if let Some(m) = &members[member] {
                        self.observe(lease, invoked, now, m, &range);
                    }
                }
                Err(oneshot::error::TryRecvError::Empty) if !failed(now, self.deadline) => {
                    self.step = Step::Reading { lease, invoked, member, rx, range };
                }
                _ => {}
            },
        }
    }

    /// A linearizable read of a lease's key returned at `now`.
    fn observe(&mut self, lease: usize, invoked: u64, now: u64, m: &Member, range: &pb::RangeRequest) {
        self.reads += 1;
        let l = &self.leases[lease];
        let Outcome::Ok(resp) = read_now(m, range) else { return };
        let present = matches!(&resp.body, ketch_check::history::ResponseBody::Range(r) if !r.kvs.is_empty());
        let attached_before = l.attached_at.is_some_and(|t| t <= invoked);
        if !present && attached_before && now < l.deadline() {
            self.violations.push(format!(
                "lease {:x} revoked early: its key {} was gone at {now} ms, before the deadline {} ms (granted at {}, TTL {} ms, renewed at {})",
                l.id,
                String::from_utf8_lossy(&l.key),
                l.deadline(),
                l.granted_at,
                l.ttl_ms,
                l.renewed_at
            ));
        }
    }

    /// Renews the leases being kept alive, on the leader, as a keep-alive
    /// stream does.
    pub fn keep_alive(&mut self, now: u64, leader: Option<&Member>) {
        let Some(leader) = leader else { return };
        for l in &mut self.leases {
            if l.keep_alive_until > now && now >= l.granted_at.max(l.renewed_at) + l.ttl_ms / 3 {
                let id = l.id;
                if leader.with_lessor(|lessor, at| lessor.renew(id, at)).is_ok() {
                    l.renewed_at = now;
                }
            }
        }
    }

    /// Stops every keep-alive (the liveness phase).
    pub fn stop_keep_alives(&mut self) {
        for l in &mut self.leases {
            l.keep_alive_until = 0;
        }
    }

    /// The latest moment, given the last leader change, by which every lease
    /// must be gone.
    pub fn all_gone_by(&self, last_leader_change: u64, election_ms: u64) -> u64 {
        self.leases
            .iter()
            .map(|l| l.deadline().max(last_leader_change + election_ms + l.ttl_ms) + LATE_SLACK_MS)
            .max()
            .unwrap_or(0)
    }

    /// The "never much late" rule, on the final state's lease keys.
    pub fn check_gone(
        &mut self,
        now: u64,
        last_leader_change: u64,
        election_ms: u64,
        present: &BTreeMap<Vec<u8>, i64>,
    ) {
        for l in &self.leases {
            let bound = l.deadline().max(last_leader_change + election_ms + l.ttl_ms) + LATE_SLACK_MS;
            if now >= bound && present.contains_key(&l.key) {
                self.violations.push(format!(
                    "lease {:x} outlived its bound: its key {} is still there at {now} ms, bound {bound} ms",
                    l.id,
                    String::from_utf8_lossy(&l.key)
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(granted_at: u64, ttl_ms: u64) -> Lease {
        Lease {
            id: 7,
            ttl_ms,
            key: b"l0".to_vec(),
            granted_at,
            attached_at: Some(granted_at + 10),
            keep_alive_until: 0,
            renewed_at: 0,
        }
    }

    #[test]
    fn a_key_past_its_bound_is_reported_and_one_within_it_is_not() {
        let mut c = LeaseClient::new();
        c.leases.push(lease(1_000, 2_000));
        let present: BTreeMap<Vec<u8>, i64> = [(b"l0".to_vec(), 7)].into();
        // Bound: max(3 000, last leader change 500 + election 1 000 + 2 000) + slack.
        c.check_gone(3_500 + LATE_SLACK_MS - 1, 500, 1_000, &present);
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        c.check_gone(3_500 + LATE_SLACK_MS, 500, 1_000, &present);
        assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
        c.check_gone(10_000, 500, 1_000, &BTreeMap::new());
        assert_eq!(c.violations.len(), 1, "a gone key is fine");
        assert_eq!(c.all_gone_by(500, 1_000), 3_500 + LATE_SLACK_MS);
    }
}
