//! Lease differential tests over gRPC: the same Lease and KV requests are
//! sent in lockstep to a reference etcd and to ketch (see
//! `KETCH_E2E_SUBJECT` in the library docs) and the answers compared:
//! `client_chosen_lease_ids` (a fixed sequence of edge cases: duplicate,
//! negative and extreme IDs, TTL limits, lease compares in txns, a
//! server-chosen ID), `pipelined_keep_alives` (several keep-alives on one
//! stream before reading), and `differential_leases` (a seeded random mix
//! of grants, revokes, time-to-live and lease listings, keep-alives over one
//! bidi stream, puts with and without leases and `ignore_lease`, deletes,
//! txns with LEASE compares and leased puts, with kill -9 restarts).
//!
//! Leases are granted with client-chosen IDs, so the IDs line up on both
//! servers and every response can be compared whole: the gRPC status code
//! and message of an error, or the full response with `cluster_id`,
//! `member_id` and `raft_term` zeroed in every header (revisions kept).
//! The only other normalisations, each because the two answers cannot or
//! need not agree:
//!
//! - `LeaseTimeToLive.TTL` (remaining seconds) is measured on two clocks: the
//!   subject's may differ from etcd's by at most 1 when both are positive.
//!   `grantedTTL`, the ID and the keys are exact.
//! - `LeaseTimeToLive.keys` are sorted on both sides: etcd 3.4 collects
//!   them by iterating a Go map (`Lease.Keys()`), i.e. in random order.
//! - `LeaseLeases.leases` are compared as a set (sorted by ID on both
//!   sides): etcd 3.4 sorts them by expiry time (`leasesByExpiry`, with Go's
//!   unstable sort above 12 elements). How often the subject's order differed
//!   from etcd's is printed at the end (`lease.rs` compares the order of
//!   `etcdctl lease list`, where expiries are far apart).
//!
//! Every lease in the random sequence has a TTL far above the test's
//! duration, so nothing expires by itself (an expiry revokes at a time the
//! test does not control, and its deletions would shift revisions). TTLs
//! below the minimum (raised to it: 2 s with etcd's default flags) are
//! granted, inspected and revoked in consecutive requests.
//!
//! - The seed is printed first; `KETCH_SEED=<n>` replays a run.
//! - `KETCH_LEASE_DIFF_STEPS=<n>` changes the number of requests (default 3000).
//! - `KETCH_LEASE_DIFF_RESTARTS=<n>` kill -9s and restarts both servers `n`
//!   times, evenly spread (default 2): leases, their keys and attachments
//!   must survive. Each server restarts the countdown of every lease when it
//!   becomes leader again (ketch checkpoints only every 5 minutes by
//!   default), and etcd takes 1-2 s longer than ketch to get there, so every
//!   live lease is then renewed on both (keep-alive answers compared) to
//!   make remaining TTLs comparable again.
//! - `KETCH_DIFF_KEEP_GOING=1` records mismatches and goes on instead of
//!   stopping at the first one; the test still fails at the end.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use ketch_e2e::{ClearHeaders, Member, env_flag, readable, seed, subject_kind};
use ketch_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, TxnResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    lease_client::LeaseClient,
    request_op::Request,
};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

/// Client-chosen lease IDs (duplicates happen; negative and extreme ones too).
const IDS: &[i64] = &[1, 2, 3, 7, 42, 100, 101, 102, 103, 0x1234, 1 << 40, i64::MAX, -5];
/// An ID never granted by the random sequence.
const UNKNOWN_ID: i64 = 0x0bad_1ea5e;
/// Keys (leases get attached to them); `l/` is a prefix of several.
const KEYS: &[&[u8]] = &[b"a", b"b", b"c", b"l/1", b"l/2", b"l/3", b"m", b"z\xff"];
/// TTLs far above the test's duration.
const LONG_TTLS: &[i64] = &[60, 300, 3600, 86_400, 9_000_000_000];
/// TTLs at or below the minimum (2 s with the default flags).
const SHORT_TTLS: &[i64] = &[i64::MIN, -1, 0, 1, 2];
/// Above etcd's `MaxLeaseTTL` (9,000,000,000 s).
const TOO_LARGE_TTLS: &[i64] = &[9_000_000_001, i64::MAX];
/// Bound on one keep-alive answer.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
enum Req {
    Grant(LeaseGrantRequest),
    Revoke(LeaseRevokeRequest),
    TimeToLive(LeaseTimeToLiveRequest),
    Leases,
    KeepAlive(LeaseKeepAliveRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Range(RangeRequest),
}

#[derive(Clone, Debug, PartialEq)]
enum Resp {
    Grant(LeaseGrantResponse),
    Revoke(LeaseRevokeResponse),
    TimeToLive(LeaseTimeToLiveResponse),
    Leases(LeaseLeasesResponse),
    KeepAlive(LeaseKeepAliveResponse),
    Put(PutResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnResponse),
    Range(RangeResponse),
}

/// `Ok(response)` or `Err((gRPC code, message))`.
type Outcome = Result<Resp, (tonic::Code, String)>;

/// One server's clients, including a lazily opened keep-alive stream.
struct Conn {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    /// For the keep-alive stream: no request timeout (it would bound the stream).
    stream_lease: LeaseClient<Channel>,
    keepalive: Option<(mpsc::Sender<LeaseKeepAliveRequest>, Streaming<LeaseKeepAliveResponse>)>,
}

impl Conn {
    async fn new(m: &Member) -> Conn {
        Conn {
            kv: m.kv().await,
            lease: LeaseClient::new(m.channel().await),
            stream_lease: LeaseClient::new(m.stream_channel().await),
            keepalive: None,
        }
    }

    /// Sends one keep-alive on the stream (opening it first if needed) and
    /// reads one answer; a failed stream is dropped and reopened next time.
    async fn keep_alive(&mut self, req: LeaseKeepAliveRequest) -> Result<LeaseKeepAliveResponse, tonic::Status> {
        let result = tokio::time::timeout(KEEPALIVE_TIMEOUT, async {
            if let Some((tx, _)) = &self.keepalive {
                tx.send(req).await.map_err(|_| tonic::Status::internal("keep-alive stream closed"))?;
            } else {
                let (tx, rx) = mpsc::channel(16);
                tx.send(req).await.map_err(|_| tonic::Status::internal("keep-alive sender closed"))?;
                let stream = self.stream_lease.lease_keep_alive(ReceiverStream::new(rx)).await?.into_inner();
                self.keepalive = Some((tx, stream));
            }
            let (_, stream) = self.keepalive.as_mut().expect("stream is open");
            match stream.message().await? {
                Some(resp) => Ok(resp),
                None => Err(tonic::Status::internal("keep-alive stream ended")),
            }
        })
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no keep-alive answer within 10 s")));
        if result.is_err() {
            self.keepalive = None;
        }
        result
    }

    async fn exec(&mut self, req: &Req) -> Outcome {
        let result = match req {
            Req::Grant(r) => self.lease.lease_grant(*r).await.map(|r| Resp::Grant(r.into_inner())),
            Req::Revoke(r) => self.lease.lease_revoke(*r).await.map(|r| Resp::Revoke(r.into_inner())),
            Req::TimeToLive(r) => self.lease.lease_time_to_live(*r).await.map(|r| Resp::TimeToLive(r.into_inner())),
            Req::Leases => self.lease.lease_leases(LeaseLeasesRequest {}).await.map(|r| Resp::Leases(r.into_inner())),
            Req::KeepAlive(r) => self.keep_alive(*r).await.map(Resp::KeepAlive),
            Req::Put(r) => self.kv.put(r.clone()).await.map(|r| Resp::Put(r.into_inner())),
            Req::Delete(r) => self.kv.delete_range(r.clone()).await.map(|r| Resp::Delete(r.into_inner())),
            Req::Txn(r) => self.kv.txn(r.clone()).await.map(|r| Resp::Txn(r.into_inner())),
            Req::Range(r) => self.kv.range(r.clone()).await.map(|r| Resp::Range(r.into_inner())),
        };
        result.map_err(|s| (s.code(), s.message().to_string()))
    }
}

/// Header fields zeroed, keys of TimeToLive sorted, leases sorted by ID.
/// Returns whether a `LeaseLeases` answer had to be reordered.
fn normalize(outcome: &mut Outcome) -> bool {
    let Ok(resp) = outcome else { return false };
    match resp {
        Resp::Grant(r) => r.header.clear_headers(),
        Resp::Revoke(r) => r.header.clear_headers(),
        Resp::TimeToLive(r) => {
            r.header.clear_headers();
            r.keys.sort();
        }
        Resp::Leases(r) => {
            r.header.clear_headers();
            let before: Vec<i64> = r.leases.iter().map(|l| l.id).collect();
            r.leases.sort_by_key(|l| l.id);
            return r.leases.iter().map(|l| l.id).ne(before);
        }
        Resp::KeepAlive(r) => r.header.clear_headers(),
        Resp::Put(r) => r.clear_headers(),
        Resp::Delete(r) => r.clear_headers(),
        Resp::Txn(r) => r.clear_headers(),
        Resp::Range(r) => r.clear_headers(),
    }
    false
}

/// The remaining TTL may differ by 1 (two clocks): take etcd's.
fn reconcile_ttl(etcd: &Outcome, subject: &mut Outcome) {
    if let (Ok(Resp::TimeToLive(e)), Ok(Resp::TimeToLive(s))) = (etcd, subject)
        && e.ttl > 0
        && s.ttl > 0
        && (e.ttl - s.ttl).abs() <= 1
    {
        s.ttl = e.ttl;
    }
}

struct Runner {
    etcd: Member,
    subject: Member,
    e: Conn,
    s: Conn,
    /// Answers of `LeaseLeases` whose order the subject had differently
    /// from etcd (compared as sets; see the module docs).
    leases_order_differs: usize,
    leases_calls: usize,
}

impl Runner {
    async fn start() -> Runner {
        let (etcd, subject) = tokio::join!(Member::etcd(), Member::subject());
        let (e, s) = tokio::join!(Conn::new(&etcd), Conn::new(&subject));
        Runner { etcd, subject, e, s, leases_order_differs: 0, leases_calls: 0 }
    }

    /// kill -9 and restart both servers (same data dirs), reconnect, wait
    /// until both answer lease requests again, and return the revision each
    /// reports on a linearizable range afterwards.
    ///
    /// The linearizable range is also a barrier: right after a restart etcd
    /// 3.4 has been seen (once in many runs, etcd-vs-etcd) to answer a
    /// keep-alive with a header revision a few revisions behind, i.e. before
    /// it had re-applied its whole log; a linearizable read waits for that.
    async fn restart_both(&mut self) -> (i64, i64) {
        self.etcd.kill9();
        self.subject.kill9();
        tokio::join!(self.etcd.restart(), self.subject.restart());
        let (e, s) = tokio::join!(Conn::new(&self.etcd), Conn::new(&self.subject));
        (self.e, self.s) = (e, s);
        let mut revs = Vec::new();
        for (conn, m) in [(&mut self.e, &self.etcd), (&mut self.s, &self.subject)] {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let probe = conn.exec(&ttl(UNKNOWN_ID, false)).await;
                let range = conn.exec(&range_all()).await;
                match (probe, range) {
                    (Ok(_), Ok(resp)) => {
                        revs.push(revision(&resp));
                        break;
                    }
                    (Err(e), _) | (_, Err(e)) if std::time::Instant::now() < deadline => {
                        println!("{} not serving yet after restart: {e:?}", m.kind().as_str());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        panic!("{} does not serve after restart: {e:?}", m.kind().as_str())
                    }
                }
            }
        }
        (revs[0], revs[1])
    }

    /// Sends `req` to both servers at once; returns etcd's normalised
    /// outcome and a report if the answers differ.
    async fn step(&mut self, req: &Req) -> (Outcome, Option<String>) {
        let (mut e, mut s) = tokio::join!(self.e.exec(req), self.s.exec(req));
        let reordered_e = normalize(&mut e);
        let reordered_s = normalize(&mut s);
        if matches!(req, Req::Leases) {
            self.leases_calls += 1;
            if reordered_e != reordered_s {
                self.leases_order_differs += 1;
            }
        }
        reconcile_ttl(&e, &mut s);
        for member in [&mut self.etcd, &mut self.subject] {
            assert!(
                member.is_running(),
                "{} DIED on request {}\nlast lines of its log:\n{}",
                member.kind().as_str(),
                readable(req),
                member.log_tail(60)
            );
        }
        let report = (e != s).then(|| {
            format!(
                "request:          {}\nreference etcd:   {}\nsubject ({}): {}",
                readable(req),
                readable(&e),
                subject_kind().as_str(),
                readable(&s)
            )
        });
        (e, report)
    }
}

fn grant(id: i64, ttl: i64) -> Req {
    Req::Grant(LeaseGrantRequest { ttl, id })
}
fn revoke(id: i64) -> Req {
    Req::Revoke(LeaseRevokeRequest { id })
}
fn ttl(id: i64, keys: bool) -> Req {
    Req::TimeToLive(LeaseTimeToLiveRequest { id, keys })
}
fn keep_alive(id: i64) -> Req {
    Req::KeepAlive(LeaseKeepAliveRequest { id })
}
fn put(key: &[u8], lease: i64) -> PutRequest {
    PutRequest { key: key.to_vec(), value: b"v".to_vec(), lease, ..Default::default() }
}
fn range_all() -> Req {
    Req::Range(RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() })
}
fn lease_compare(key: &[u8], result: CompareResult, lease: i64) -> Compare {
    Compare {
        result: result as i32,
        target: CompareTarget::Lease as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::Lease(lease)),
    }
}
fn op_put(p: PutRequest) -> RequestOp {
    RequestOp { request: Some(Request::RequestPut(p)) }
}

/// A fixed sequence around client-chosen IDs; every answer compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_lease_ids() {
    let mut r = Runner::start().await;
    let mut reqs = vec![
        grant(1, 300),
        grant(1, 600),           // lease already exists
        grant(1, 9_000_000_001), // too large wins over "exists"
        grant(2, 9_000_000_001), // too large
        grant(2, i64::MAX),      // too large
        grant(2, 9_000_000_000), // the maximum
        grant(i64::MAX, 60),     // the largest ID
        grant(-5, 60),           // a negative ID
        grant(3, 0),             // raised to the minimum
        ttl(3, true),
        revoke(3),
        grant(4, -10), // raised to the minimum
        revoke(4),
        ttl(1, false),
        ttl(1, true),
        ttl(2, false),
        ttl(i64::MAX, true),
        ttl(-5, true),
        ttl(UNKNOWN_ID, true), // TTL -1
        ttl(0, false),
        Req::Leases,
        Req::Put(put(b"a", 1)),
        Req::Put(put(b"b", 1)),
        Req::Put(put(b"c", -5)),
        Req::Put(put(b"d", UNKNOWN_ID)), // requested lease not found
        Req::Put(put(b"e", i64::MAX)),
        Req::Put(PutRequest { ignore_lease: true, ..put(b"a", 0) }), // keeps lease 1
        Req::Put(PutRequest { ignore_lease: true, ..put(b"a", 1) }), // lease is provided
        Req::Put(PutRequest { ignore_lease: true, ..put(b"nokey", 0) }), // key not found
        Req::Put(PutRequest { prev_kv: true, ..put(b"b", 2) }),      // moves b from 1 to 2
        range_all(),
        ttl(1, true),
        ttl(2, true),
        keep_alive(1),
        keep_alive(2),
        keep_alive(i64::MAX),
        keep_alive(UNKNOWN_ID), // TTL 0
        keep_alive(0),
        keep_alive(1),
        ttl(1, true),
    ];
    // Txns with lease compares (a missing key compares as lease 0) and
    // leased puts.
    let txns = [
        TxnRequest {
            compare: vec![lease_compare(b"a", CompareResult::Equal, 1)],
            success: vec![op_put(put(b"t1", 2))],
            failure: vec![op_put(put(b"t2", 1))],
        },
        TxnRequest {
            compare: vec![lease_compare(b"a", CompareResult::Equal, 2)],
            success: vec![op_put(put(b"t3", 2))],
            failure: vec![op_put(put(b"t4", 1))],
        },
        TxnRequest {
            compare: vec![lease_compare(b"missing", CompareResult::Equal, 0)],
            success: vec![op_put(put(b"t5", -5))],
            failure: Vec::new(),
        },
        TxnRequest {
            compare: vec![lease_compare(b"b", CompareResult::Greater, 1), lease_compare(b"c", CompareResult::Less, 0)],
            success: vec![op_put(put(b"t6", 1))],
            failure: vec![op_put(put(b"t7", 2))],
        },
        TxnRequest {
            compare: vec![lease_compare(b"a", CompareResult::NotEqual, 0)],
            success: vec![op_put(put(b"t8", UNKNOWN_ID))], // the whole txn fails
            failure: Vec::new(),
        },
        TxnRequest {
            compare: vec![lease_compare(b"a", CompareResult::NotEqual, 0)],
            success: vec![op_put(put(b"t9", 1))],
            failure: vec![op_put(put(b"t10", UNKNOWN_ID))], // branch not taken
        },
        TxnRequest {
            compare: vec![Compare {
                key: b"l/".to_vec(),
                range_end: b"l0".to_vec(),
                ..lease_compare(b"", CompareResult::Equal, 0)
            }],
            success: vec![op_put(put(b"l/1", 1))],
            failure: Vec::new(),
        },
    ];
    reqs.extend(txns.into_iter().map(Req::Txn));
    reqs.extend([
        range_all(),
        ttl(1, true),
        ttl(2, true),
        Req::Delete(DeleteRangeRequest { key: b"t1".to_vec(), ..Default::default() }),
        ttl(2, true),
        revoke(1), // deletes a, t2/t4/t6/t9/l/1..., one revision
        range_all(),
        revoke(1),
        revoke(UNKNOWN_ID),
        revoke(0),
        keep_alive(1), // revoked: TTL 0
        ttl(1, true),
        Req::Put(put(b"a", 1)),
        grant(1, 60), // the ID can be granted again
        ttl(1, true),
        Req::Leases,
        revoke(2),
        revoke(i64::MAX),
        revoke(-5),
        revoke(1),
        Req::Leases,
        range_all(),
    ]);
    // A server-chosen ID (ID 0): IDs differ, so only the rest is compared.
    let mut mismatches = Vec::new();
    for req in &reqs {
        let (_, report) = r.step(req).await;
        mismatches.extend(report);
    }
    let auto = grant(0, 100);
    let (e, s) = tokio::join!(r.e.exec(&auto), r.s.exec(&auto));
    for (name, outcome) in [("etcd", &e), (subject_kind().as_str(), &s)] {
        match outcome {
            Ok(Resp::Grant(g)) if g.id > 0 && g.ttl == 100 && g.error.is_empty() => {}
            other => mismatches.push(format!("LeaseGrant(ID 0, TTL 100) on {name}: {}", readable(other))),
        }
    }
    assert!(mismatches.is_empty(), "{} mismatch(es):\n\n{}", mismatches.len(), mismatches.join("\n\n"));
}

/// Several keep-alives sent on one stream without waiting: one answer
/// each, in request order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_keep_alives() {
    let mut r = Runner::start().await;
    for req in [grant(1, 300), grant(2, 600), grant(3, 9_000_000_000)] {
        let (_, report) = r.step(&req).await;
        assert!(report.is_none(), "{}", report.unwrap_or_default());
    }
    let ids = [1, UNKNOWN_ID, 2, 1, 0, 3, 2, -1, 1];
    let burst = |m: &Member| {
        let url = m.client_url();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(url).expect("URL").connect().await.expect("connect");
            let mut client = LeaseClient::new(channel);
            let (tx, rx) = mpsc::channel(ids.len());
            for id in ids {
                tx.send(LeaseKeepAliveRequest { id }).await.expect("queue");
            }
            let mut stream =
                client.lease_keep_alive(ReceiverStream::new(rx)).await.expect("LeaseKeepAlive").into_inner();
            let mut answers = Vec::new();
            for _ in ids {
                let next = tokio::time::timeout(KEEPALIVE_TIMEOUT, stream.message()).await;
                let mut resp = next.expect("answer in time").expect("LeaseKeepAlive").expect("an answer");
                resp.header.clear_headers();
                answers.push(resp);
            }
            drop(tx);
            answers
        }
    };
    let (e, s) = tokio::join!(burst(&r.etcd), burst(&r.subject));
    assert_eq!(e.iter().map(|a| a.id).collect::<Vec<_>>(), ids, "premise: etcd answers in order");
    assert_eq!(e, s, "keep-alive answers (etcd left, {} right)", subject_kind().as_str());
}

struct Gen {
    rng: StdRng,
    /// Leases that exist (from etcd's answers).
    live: BTreeSet<i64>,
    /// Requests that must follow the last one (short leases).
    pending: VecDeque<Req>,
}

impl Gen {
    fn key(&mut self) -> Vec<u8> {
        KEYS.choose(&mut self.rng).expect("KEYS is not empty").to_vec()
    }

    /// Mostly a live lease, sometimes any ID of the pool, rarely unknown.
    fn id(&mut self) -> i64 {
        match self.rng.random_range(0..100) {
            0..65 if !self.live.is_empty() => {
                let live: Vec<i64> = self.live.iter().copied().collect();
                *live.choose(&mut self.rng).expect("not empty")
            }
            0..92 => *IDS.choose(&mut self.rng).expect("IDS is not empty"),
            92..97 => UNKNOWN_ID,
            _ => 0,
        }
    }

    /// An ID to grant: never 0 (the server would choose, differently on
    /// each side; `client_chosen_lease_ids` covers that case) nor
    /// [`UNKNOWN_ID`].
    fn grant_id(&mut self) -> i64 {
        match self.id() {
            0 | UNKNOWN_ID => *IDS.choose(&mut self.rng).expect("IDS is not empty"),
            id => id,
        }
    }

    /// The lease of a put: none, a lease, or (rarely) an unknown one.
    fn put_lease(&mut self) -> i64 {
        if self.rng.random_bool(0.35) { 0 } else { self.id() }
    }

    fn put(&mut self, key: Vec<u8>) -> PutRequest {
        let ignore_lease = self.rng.random_bool(0.1);
        PutRequest {
            key,
            value: vec![b'v', self.rng.random_range(b'0'..=b'9')],
            // With ignore_lease a lease is an error ("lease is provided"): rare.
            lease: if ignore_lease && self.rng.random_bool(0.85) { 0 } else { self.put_lease() },
            prev_kv: self.rng.random_bool(0.3),
            ignore_value: false,
            ignore_lease,
        }
    }

    fn compare(&mut self) -> Compare {
        let key = self.key();
        let result = self.rng.random_range(0..4);
        if self.rng.random_bool(0.7) {
            let lease = if self.rng.random_bool(0.2) { 0 } else { self.id() };
            let mut c = lease_compare(&key, CompareResult::Equal, lease);
            c.result = result;
            if self.rng.random_bool(0.1) {
                // A range compare: every key in l/.
                c.key = b"l/".to_vec();
                c.range_end = b"l0".to_vec();
            }
            c
        } else {
            Compare {
                result,
                target: CompareTarget::Version as i32,
                key,
                range_end: Vec::new(),
                target_union: Some(TargetUnion::Version(self.rng.random_range(0..3))),
            }
        }
    }

    /// Ops of one branch; writes touch distinct keys (etcd refuses a
    /// branch that writes one key twice).
    fn ops(&mut self) -> Vec<RequestOp> {
        let mut used = BTreeSet::new();
        let mut ops = Vec::new();
        for _ in 0..self.rng.random_range(0..4) {
            let key = self.key();
            let request = match self.rng.random_range(0..10) {
                _ if !used.insert(key.clone()) => Request::RequestRange(RangeRequest { key, ..Default::default() }),
                0..6 => Request::RequestPut(self.put(key)),
                6..8 => Request::RequestDeleteRange(DeleteRangeRequest {
                    key,
                    prev_kv: self.rng.random_bool(0.5),
                    ..Default::default()
                }),
                _ => Request::RequestRange(RangeRequest { key, ..Default::default() }),
            };
            ops.push(RequestOp { request: Some(request) });
        }
        ops
    }

    fn next(&mut self) -> Req {
        if let Some(req) = self.pending.pop_front() {
            return req;
        }
        match self.rng.random_range(0..1000) {
            0..100 => {
                let long = *LONG_TTLS.choose(&mut self.rng).expect("TTLs");
                // Mostly a free ID; sometimes a live one ("lease already exists").
                let free: Vec<i64> = IDS.iter().copied().filter(|id| !self.live.contains(id)).collect();
                let id = match free.choose(&mut self.rng) {
                    Some(&id) if self.rng.random_bool(0.85) => id,
                    _ => self.grant_id(),
                };
                grant(id, long)
            }
            100..150 => {
                let large = *TOO_LARGE_TTLS.choose(&mut self.rng).expect("TTLs");
                grant(self.grant_id(), large)
            }
            150..170 => {
                // Granted, then inspected and revoked at once if it was new.
                let short = *SHORT_TTLS.choose(&mut self.rng).expect("TTLs");
                let id = self.grant_id();
                if !self.live.contains(&id) {
                    self.pending.push_back(ttl(id, true));
                    self.pending.push_back(keep_alive(id));
                    self.pending.push_back(revoke(id));
                }
                grant(id, short)
            }
            170..250 => {
                let live: Vec<i64> = self.live.iter().copied().collect();
                match live.choose(&mut self.rng) {
                    Some(&id) if self.rng.random_bool(0.8) => revoke(id),
                    _ => revoke(self.id()),
                }
            }
            250..450 => {
                let key = self.key();
                Req::Put(self.put(key))
            }
            450..520 => {
                let key = self.key();
                let prefix = self.rng.random_bool(0.2);
                Req::Delete(DeleteRangeRequest {
                    range_end: if prefix { b"l0".to_vec() } else { Vec::new() },
                    key: if prefix { b"l/".to_vec() } else { key },
                    prev_kv: self.rng.random_bool(0.5),
                })
            }
            520..680 => {
                let n = self.rng.random_range(0..3);
                Req::Txn(TxnRequest {
                    compare: (0..n).map(|_| self.compare()).collect(),
                    success: self.ops(),
                    failure: self.ops(),
                })
            }
            680..760 => range_all(),
            760..870 => {
                let keys = self.rng.random_bool(0.7);
                ttl(self.id(), keys)
            }
            870..910 => Req::Leases,
            _ => keep_alive(self.id()),
        }
    }

    /// Tracks which leases exist from etcd's answers.
    fn observe(&mut self, req: &Req, outcome: &Outcome) {
        match (req, outcome) {
            (Req::Grant(g), Ok(_)) => {
                self.live.insert(g.id);
            }
            (Req::Revoke(r), Ok(_)) => {
                self.live.remove(&r.id);
            }
            _ => {}
        }
    }
}

/// The header revision of an answer.
fn revision(resp: &Resp) -> i64 {
    let header = match resp {
        Resp::Grant(r) => &r.header,
        Resp::Revoke(r) => &r.header,
        Resp::TimeToLive(r) => &r.header,
        Resp::Leases(r) => &r.header,
        Resp::KeepAlive(r) => &r.header,
        Resp::Put(r) => &r.header,
        Resp::Delete(r) => &r.header,
        Resp::Txn(r) => &r.header,
        Resp::Range(r) => &r.header,
    };
    header.as_ref().map_or(0, |h| h.revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_leases() {
    let seed = seed();
    println!("lease differential seed: {seed} (replay with KETCH_SEED={seed})");
    let steps: usize = std::env::var("KETCH_LEASE_DIFF_STEPS")
        .ok()
        .map(|s| s.parse().expect("KETCH_LEASE_DIFF_STEPS must be a number"))
        .unwrap_or(3000);
    let keep_going = env_flag("KETCH_DIFF_KEEP_GOING");
    let mut r = Runner::start().await;
    let mut generator = Gen { rng: StdRng::seed_from_u64(seed), live: BTreeSet::new(), pending: VecDeque::new() };
    let mut mismatches = Vec::new();
    let mut errors = BTreeMap::<String, usize>::new();
    let mut kinds = BTreeMap::<&str, usize>::new();
    let mut rev = 1;
    let mut revokes_deleting = 0;
    let restarts: usize = std::env::var("KETCH_LEASE_DIFF_RESTARTS")
        .ok()
        .map(|s| s.parse().expect("KETCH_LEASE_DIFF_RESTARTS must be a number"))
        .unwrap_or(2);
    let mut restart_at: VecDeque<usize> = (1..=restarts).map(|i| i * steps / (restarts + 1)).collect();
    for step in 0..steps {
        // Not between a short grant and its revoke.
        if restart_at.front().is_some_and(|&at| step >= at) && generator.pending.is_empty() {
            restart_at.pop_front();
            println!("step {step}: kill -9 and restart of both servers");
            let (e_rev, s_rev) = r.restart_both().await;
            assert_eq!(e_rev, rev, "premise: etcd's revision after restart");
            if s_rev != e_rev {
                let report = format!(
                    "MISMATCH seed={seed} step={step}: revision after kill -9 and restart: etcd {e_rev}, {} {s_rev}",
                    subject_kind().as_str()
                );
                assert!(keep_going, "{report}");
                mismatches.push(report);
            }
            // Each server restarts every lease's countdown when it becomes
            // leader again, and etcd takes ~1-2 s longer than ketch to get
            // there: renew every lease on both at the same moment so that
            // remaining TTLs are comparable (within 1 s) again.
            for &id in &generator.live {
                if let (_, Some(report)) = r.step(&keep_alive(id)).await {
                    let report = format!("MISMATCH seed={seed} step={step} (after restart)\n{report}");
                    assert!(keep_going, "{report}");
                    mismatches.push(report);
                }
            }
        }
        let req = generator.next();
        let (e, report) = r.step(&req).await;
        if let Some(report) = report {
            let report = format!("MISMATCH seed={seed} step={step} (replay with KETCH_SEED={seed})\n{report}");
            if !keep_going {
                panic!("{report}");
            }
            println!("{report}\n");
            mismatches.push(report);
        }
        if let Err((code, msg)) = &e {
            *errors.entry(format!("{code:?}: {msg}")).or_default() += 1;
        }
        let kind = match &req {
            Req::Grant(_) => "grant",
            Req::Revoke(_) => "revoke",
            Req::TimeToLive(_) => "timetolive",
            Req::Leases => "leases",
            Req::KeepAlive(_) => "keepalive",
            Req::Put(_) => "put",
            Req::Delete(_) => "delete",
            Req::Txn(_) => "txn",
            Req::Range(_) => "range",
        };
        *kinds.entry(kind).or_default() += 1;
        if let Ok(resp) = &e {
            let new_rev = revision(resp);
            if matches!(resp, Resp::Revoke(_)) && new_rev > rev {
                revokes_deleting += 1;
            }
            rev = rev.max(new_rev);
        }
        generator.observe(&req, &e);
    }
    let error_count: usize = errors.values().sum();
    println!(
        "{steps} requests, {error_count} answered with an error by etcd; live leases at the end: {:?}\n\
         requests: {kinds:?}\netcd errors: {errors:#?}\n\
         LeaseLeases answers whose order differed from etcd's (compared as sets): {} of {}\n\
         revokes that deleted keys: {revokes_deleting}; final revision {rev}",
        generator.live, r.leases_order_differs, r.leases_calls
    );
    assert!(mismatches.is_empty(), "{} mismatch(es), seed {seed}; first:\n{}", mismatches.len(), mismatches[0]);
    assert!(error_count < steps / 2, "too many errors: {errors:?}");
    assert!(revokes_deleting > 0, "no revoke ever deleted keys");
}
