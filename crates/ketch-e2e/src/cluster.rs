//! Multi-member clusters with a fault-injecting network between the members.
//!
//! [`Cluster::start`] starts `size` members (`m0`, `m1`, ...) of one
//! [`Kind`], each a [`Member`] with its own temporary directory, client port
//! and listen-peer port. In front of every member's peer port sits a TCP
//! proxy that runs in this process (on a small tokio runtime of its own, so
//! that a test blocking its own runtime, e.g. on an etcdctl run, cannot stall
//! the cluster's network): members listen on their real peer port, but
//! `--initial-advertise-peer-urls` and `--initial-cluster` name the proxy's
//! port, so every peer connection *to* a member passes through that member's
//! proxy.
//!
//! Faults:
//!
//! - [`Cluster::cut`]: member `i`'s proxy drops its open connections and
//!   closes new ones at once: nothing can reach `i`'s peer port. Note what
//!   that does and does not do: TCP connections carry data both ways, and
//!   which side dials is up to the implementation. etcd's rafthttp reads a
//!   peer's messages from a stream that it dialed itself, and falls back to
//!   POSTing to the peer's URL when that stream is down, so cutting
//!   connections *to* one etcd member does not isolate it at all: its
//!   messages travel over POSTs to the other members' (uncut) proxies and
//!   theirs over the streams it dials. A transport where every sender dials
//!   the receiver instead loses exactly the member's inbound messages.
//!   Assert only what holds either way.
//! - [`Cluster::isolate`]: a real partition of member `i` from all others:
//!   `i`'s proxy refuses everything (as with `cut`), and every other proxy
//!   drops the connections that member `i`'s process opened. A proxy tells
//!   who dialed it by looking the connecting socket up in `/proc/net/tcp`
//!   and finding the member process holding it (`/proc/<pid>/fd`), which
//!   works for any implementation.
//! - [`Cluster::heal`] undoes both for member `i`; [`Cluster::heal_all`].
//! - [`Cluster::kill9`] / [`Cluster::restart`] (same flags, same data dir and
//!   ports: a restarting etcd ignores the `--initial-*` flags once its data
//!   dir exists, and so must the subject), [`Cluster::sigstop`] /
//!   [`Cluster::sigcont`].
//!
//! Observation (over the client port, every member separately):
//! [`Cluster::status`], [`Cluster::leader`] (the member that says it leads,
//! with the highest term), [`Cluster::wait_leader`] (a leader a quorum of the
//! members agrees on), [`Cluster::hash_kv_all`], [`Cluster::wait_converged`]
//! (all running members at the same revision with the same `HashKV` there).
//!
//! Timing: unless `extra_args` sets them, members run with
//! `--heartbeat-interval 50 --election-timeout 500` ([`DEFAULT_TIMING`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ketch_proto::etcdserverpb::{
    HashKvRequest, HashKvResponse, StatusRequest, StatusResponse, kv_client::KvClient,
    maintenance_client::MaintenanceClient,
};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Channel, Endpoint};

use crate::{Kind, Member, READY_POLL, READY_TIMEOUT, free_port, probe_status};

/// Default Raft timing of cluster members (heartbeat 50 ms, election timeout
/// 500 ms), used unless `extra_args` sets either flag.
pub const DEFAULT_TIMING: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

/// Per-request bound of the observation calls ([`Cluster::status`],
/// [`Cluster::hash_kv_all`]); a stopped or partitioned member must not stall
/// a poll for long.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Interval between polls of the `wait_*` methods.
pub const POLL: Duration = Duration::from_millis(50);

/// A cluster of `size` members of one [`Kind`], each behind a fault-injecting
/// peer proxy. Dropping it kills every member (their log tails are printed
/// if the test is panicking) and stops the proxies.
pub struct Cluster {
    kind: Kind,
    members: Vec<Member>,
    ids: Vec<u64>,
    stopped: Vec<bool>,
    proxy_ports: Vec<u16>,
    net: Arc<Net>,
    election_timeout: Duration,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Cluster {
    /// Starts a `size`-member cluster of `kind` (names `m0`..), `extra_args`
    /// appended to every member's flags (after [`DEFAULT_TIMING`], which is
    /// left out if `extra_args` sets `--heartbeat-interval` or
    /// `--election-timeout`). Starts every process first, then waits until
    /// every member answers `Maintenance.Status` (a member serves clients
    /// only once the cluster has a leader) and records the member IDs.
    /// Retries with new ports if a member fails on `address already in use`.
    pub async fn start(kind: Kind, size: usize, extra_args: &[&str]) -> Cluster {
        assert!(size >= 1, "a cluster needs at least one member");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ketch-e2e-proxy")
            .enable_all()
            .build()
            .expect("cannot build the proxy runtime");
        let net = Arc::new(Net {
            state: Mutex::new(NetState {
                targets: vec![0; size],
                pids: vec![None; size],
                inbound_cut: vec![false; size],
                isolated: vec![false; size],
                conns: HashMap::new(),
                next_conn: 0,
                stats: vec![ProxyStats::default(); size],
            }),
        });
        // The proxies bind port 0 and keep their listener: no port race.
        let mut proxy_ports = Vec::with_capacity(size);
        for i in 0..size {
            let listener =
                std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind a proxy listener on 127.0.0.1:0");
            listener.set_nonblocking(true).expect("cannot make the proxy listener non-blocking");
            let port = listener.local_addr().expect("proxy listener has no address").port();
            proxy_ports.push(port);
            runtime.spawn(accept_loop(listener, i, port, Arc::clone(&net)));
        }

        let sets_timing = extra_args.iter().any(|a| {
            let flag = a.split('=').next().unwrap_or(a);
            flag == "--heartbeat-interval" || flag == "--election-timeout"
        });
        let mut args: Vec<String> = Vec::new();
        if !sets_timing {
            args.extend(DEFAULT_TIMING.iter().map(|s| s.to_string()));
        }
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let election_timeout = Duration::from_millis(flag_value(&args, "--election-timeout").unwrap_or(1000));

        static CLUSTERS: AtomicU64 = AtomicU64::new(0);
        let token = format!("ketch-e2e-{}-{}", std::process::id(), CLUSTERS.fetch_add(1, Ordering::Relaxed));
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", proxy_ports[i]);
        let initial_cluster = (0..size).map(|i| format!("m{i}={}", peer_url(i))).collect::<Vec<_>>().join(",");
        let members = (0..size)
            .map(|i| {
                let name = format!("m{i}");
                let dir = tempfile::Builder::new()
                    .prefix(&format!("ketch-e2e-{}-{name}-", kind.as_str()))
                    .tempdir()
                    .expect("cannot create a temporary directory for a member");
                Member {
                    kind,
                    name,
                    dir,
                    client_port: 0,
                    peer_port: 0,
                    extra_args: args.clone(),
                    peer_flags: Some(vec![
                        "--initial-advertise-peer-urls".into(),
                        peer_url(i),
                        "--initial-cluster".into(),
                        initial_cluster.clone(),
                        "--initial-cluster-token".into(),
                        token.clone(),
                        "--initial-cluster-state".into(),
                        "new".into(),
                    ]),
                    env: Vec::new(),
                    exited: None,
                    child: None,
                }
            })
            .collect();
        let mut cluster = Cluster {
            kind,
            members,
            ids: vec![0; size],
            stopped: vec![false; size],
            proxy_ports,
            net,
            election_timeout,
            runtime: Some(runtime),
        };

        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            for i in 0..size {
                let m = &mut cluster.members[i];
                m.client_port = free_port();
                m.peer_port = free_port();
                cluster.net.lock().targets[i] = m.peer_port;
            }
            for i in 0..size {
                cluster.spawn(i);
            }
            match cluster.wait_ready(&(0..size).collect::<Vec<_>>()).await {
                Ok(()) => break,
                Err((i, why))
                    if attempt < ATTEMPTS
                        && why.starts_with("exited")
                        && cluster.members[i].log_text().contains("address already in use") =>
                {
                    eprintln!("cluster member m{i} exited on a port conflict ({why}), retrying with new ports");
                    for m in &mut cluster.members {
                        m.stop();
                        let _ = std::fs::remove_dir_all(m.data_dir());
                    }
                }
                Err((i, why)) => cluster.fail_start(i, &why),
            }
        }
        for i in 0..size {
            let status =
                cluster.status(i).await.unwrap_or_else(|e| panic!("m{i} answered Status once but not again: {e}"));
            cluster.ids[i] = status.header.map_or(0, |h| h.member_id);
            assert_ne!(cluster.ids[i], 0, "m{i} reports member id 0");
        }
        let mut distinct = cluster.ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), size, "member ids are not distinct: {:x?}", cluster.ids);
        cluster
    }

    /// Starts a cluster of the implementation under test
    /// ([`crate::subject_kind`]).
    pub async fn subject(size: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start(crate::subject_kind(), size, extra_args).await
    }

    fn spawn(&mut self, i: usize) {
        self.members[i].spawn();
        self.stopped[i] = false;
        self.net.lock().pids[i] = self.members[i].pid();
    }

    /// Waits until every member in `which` answers `Maintenance.Status`;
    /// `Err((member, why))` if one exits or the time runs out.
    async fn wait_ready(&mut self, which: &[usize]) -> Result<(), (usize, String)> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut pending: Vec<usize> = which.to_vec();
        let mut last_error: HashMap<usize, String> = HashMap::new();
        while !pending.is_empty() {
            for &i in &pending {
                if let Some(child) = self.members[i].child.as_mut()
                    && let Some(status) = child.try_wait().expect("cannot poll a member's process")
                {
                    return Err((i, format!("exited: {status}")));
                }
            }
            let urls: Vec<String> = pending.iter().map(|&i| self.members[i].client_url()).collect();
            let probes = futures_join(urls.iter().map(|url| probe_status(url)).collect()).await;
            let mut still = Vec::new();
            for (&i, probe) in pending.iter().zip(probes) {
                if let Err(e) = probe {
                    last_error.insert(i, e);
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let i = pending[0];
                return Err((
                    i,
                    format!(
                        "no successful Maintenance.Status within {READY_TIMEOUT:?} (members not ready: {pending:?}); \
                         last error: {}",
                        last_error.get(&i).map_or("none", String::as_str)
                    ),
                ));
            }
            tokio::time::sleep(READY_POLL).await;
        }
        Ok(())
    }

    fn fail_start(&mut self, i: usize, why: &str) -> ! {
        for m in &mut self.members {
            m.stop();
        }
        panic!(
            "{} cluster member m{i} did not become ready on {} ({why}); last lines of {}:\n{}",
            self.kind.as_str(),
            self.members[i].client_url(),
            self.members[i].log_path().display(),
            self.members[i].log_tail(40)
        );
    }

    /// Which implementation the members run.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Smallest majority of the members.
    pub fn quorum(&self) -> usize {
        self.size() / 2 + 1
    }

    /// Member `i` (client helpers: [`Member::kv`], [`Member::client_url`],
    /// [`Member::log_tail`], ...). Kill, restart and signal members through
    /// the cluster, which keeps track of their process ids for the proxies.
    pub fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }

    /// All members, in index order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// A `KV` client for member `i` on a lazily connected channel (connect
    /// bounded by 1 s, no request timeout: bound calls yourself, e.g. with
    /// [`call`]). Usable while the member is down; calls then fail.
    pub fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(lazy_channel(&self.members[i].client_url()))
    }

    /// Member `i`'s name, `m<i>`.
    pub fn name(&self, i: usize) -> String {
        format!("m{i}")
    }

    /// Member `i`'s ID (as reported in its response headers at start).
    pub fn id(&self, i: usize) -> u64 {
        self.ids[i]
    }

    /// The index of the member with ID `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|&x| x == id)
    }

    /// Every member's client URL, comma-joined (for `etcdctl --endpoints`).
    pub fn endpoints(&self) -> String {
        self.members.iter().map(Member::client_url).collect::<Vec<_>>().join(",")
    }

    /// Member `i`'s advertised peer URL: its proxy, `http://127.0.0.1:<port>`.
    pub fn peer_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.proxy_ports[i])
    }

    /// Member `i`'s proxy port (the advertised peer port).
    pub fn proxy_port(&self, i: usize) -> u16 {
        self.proxy_ports[i]
    }

    /// The election timeout the members run with.
    pub fn election_timeout(&self) -> Duration {
        self.election_timeout
    }

    /// Whether member `i`'s process runs and is not stopped by
    /// [`Cluster::sigstop`].
    pub fn is_up(&mut self, i: usize) -> bool {
        !self.stopped[i] && self.members[i].is_running()
    }

    /// Indices of the members that are up ([`Cluster::is_up`]).
    pub fn up(&mut self) -> Vec<usize> {
        (0..self.size()).filter(|&i| self.is_up(i)).collect()
    }

    /// SIGKILLs member `i` and reaps it. No-op if it is not running.
    pub fn kill9(&mut self, i: usize) {
        self.members[i].kill9();
        self.stopped[i] = false;
        self.net.lock().pids[i] = None;
    }

    /// Starts member `i` again with the same flags, data dir and ports
    /// (killing it first if it still runs) and waits until it answers
    /// `Maintenance.Status`.
    pub async fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.spawn(i);
        if let Err((i, why)) = self.wait_ready(&[i]).await {
            self.fail_start(i, &why);
        }
    }

    /// Sets (`Some`) or removes (`None`) an environment variable of member
    /// `i`'s process from its next start on ([`Member::set_env`]).
    pub fn set_env(&mut self, i: usize, key: &str, value: Option<&str>) {
        self.members[i].set_env(key, value);
    }

    /// Starts member `i` again like [`Cluster::restart`], without waiting
    /// until it is ready (it may be meant to crash).
    pub fn respawn(&mut self, i: usize) {
        self.kill9(i);
        self.spawn(i);
    }

    /// Waits up to `timeout` for member `i` to exit by itself
    /// ([`Member::wait_exit`]).
    pub async fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = self.members[i].wait_exit(timeout).await;
        if status.is_some() {
            self.net.lock().pids[i] = None;
        }
        status
    }

    /// Sends SIGSTOP to member `i` (it keeps its sockets but does nothing).
    pub fn sigstop(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.stopped[i] = true;
    }

    /// Sends SIGTERM to member `i` (a graceful stop) and waits up to `limit`
    /// for it to exit; returns how long it took.
    pub fn sigterm(&mut self, i: usize, limit: Duration) -> Duration {
        let started = std::time::Instant::now();
        self.signal(i, libc::SIGTERM);
        while self.members[i].is_running() {
            assert!(started.elapsed() < limit, "m{i} did not exit within {limit:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.net.lock().pids[i] = None;
        started.elapsed()
    }

    /// Sends SIGCONT to member `i`.
    pub fn sigcont(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.stopped[i] = false;
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        let pid = self.members[i].pid().unwrap_or_else(|| panic!("m{i} is not running"));
        // SAFETY: plain kill(2) on our own child's pid (not yet reaped).
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed: {}", std::io::Error::last_os_error());
    }

    /// Member `i`'s proxy drops its open connections and closes new ones at
    /// once: nothing reaches `i`'s peer port until [`Cluster::heal`]. See the
    /// module docs for why this alone need not isolate `i`.
    pub fn cut(&self, i: usize) {
        let mut state = self.net.lock();
        state.inbound_cut[i] = true;
        state.enforce();
    }

    /// Partitions member `i` from every other member, both ways, until
    /// [`Cluster::heal`]: `i`'s proxy refuses everything and the other
    /// proxies drop the connections that `i`'s process opens.
    pub fn isolate(&self, i: usize) {
        let mut state = self.net.lock();
        state.isolated[i] = true;
        state.enforce();
    }

    /// Undoes [`Cluster::cut`] and [`Cluster::isolate`] of member `i`.
    pub fn heal(&self, i: usize) {
        let mut state = self.net.lock();
        state.inbound_cut[i] = false;
        state.isolated[i] = false;
    }

    /// Heals every member.
    pub fn heal_all(&self) {
        for i in 0..self.size() {
            self.heal(i);
        }
    }

    /// Per-proxy counters (connections accepted, refused, killed by a fault,
    /// of unknown origin), for diagnostics.
    pub fn proxy_stats(&self) -> Vec<ProxyStats> {
        self.net.lock().stats.clone()
    }

    /// `Maintenance.Status` of member `i`, on a fresh connection, bounded by
    /// [`PROBE_TIMEOUT`].
    pub async fn status(&self, i: usize) -> Result<StatusResponse, String> {
        status_at(self.members[i].client_url()).await
    }

    /// `Maintenance.Status` of every member that is up (`None` for the
    /// others and for failed calls), in index order.
    pub async fn statuses(&mut self) -> Vec<Option<StatusResponse>> {
        let up = self.up();
        let this = &*self;
        let calls = (0..this.size())
            .map(|i| {
                let up = up.contains(&i);
                async move { if up { this.status(i).await.ok() } else { None } }
            })
            .collect();
        futures_join(calls).await
    }

    /// The member that says it is the leader (`Status.leader` equals its own
    /// ID), among the members that are up; if more than one says so (an old
    /// leader that has not noticed yet), the one with the highest term.
    pub async fn leader(&mut self) -> Option<usize> {
        leader_of(&self.statuses().await)
    }

    /// Waits until a member leads with the agreement of a quorum: it says it
    /// is the leader and at least [`Cluster::quorum`] members (itself
    /// included) report it as their leader. Panics after `timeout`.
    pub async fn wait_leader(&mut self, timeout: Duration) -> usize {
        self.wait_leader_where(timeout, |_| true).await
    }

    /// Like [`Cluster::wait_leader`], for a leader other than member `old`.
    pub async fn wait_new_leader(&mut self, old: usize, timeout: Duration) -> usize {
        self.wait_leader_where(timeout, |l| l != old).await
    }

    async fn wait_leader_where(&mut self, timeout: Duration, accept: impl Fn(usize) -> bool) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            if let Some(l) = agreed_leader(&statuses, self.quorum())
                && accept(l)
            {
                return l;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no leader{} agreed by a quorum of {} within {timeout:?}; {}",
                    if accept(usize::MAX) { "" } else { " (other than the excluded one)" },
                    self.quorum(),
                    self.describe(&statuses)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `Maintenance.HashKV` at `revision` (0: the latest) on every member
    /// that is up (`Err` for the others and failed calls), in index order.
    pub async fn hash_kv_all(&mut self, revision: i64) -> Vec<Result<HashKvResponse, String>> {
        let up = self.up();
        let this = &*self;
        let calls = (0..this.size())
            .map(|i| {
                let up = up.contains(&i);
                let url = this.members[i].client_url();
                async move {
                    if !up {
                        return Err("member is down".to_string());
                    }
                    bounded(PROBE_TIMEOUT, async move {
                        let mut client = MaintenanceClient::new(connect(&url).await?);
                        client
                            .hash_kv(HashKvRequest { revision })
                            .await
                            .map(|r| r.into_inner())
                            .map_err(|e| e.to_string())
                    })
                    .await
                }
            })
            .collect();
        futures_join(calls).await
    }

    /// Waits until every member that is up reports the same store revision
    /// (`Status` header) and the same `HashKV` (hash and compact revision)
    /// at that revision; returns `(revision, hash)`. Panics after `timeout`
    /// with what each member reported.
    pub async fn wait_converged(&mut self, timeout: Duration) -> (i64, u32) {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            let up = self.up();
            let revisions: Vec<Option<i64>> =
                statuses.iter().map(|s| s.as_ref().and_then(|s| s.header.as_ref()).map(|h| h.revision)).collect();
            assert!(!up.is_empty(), "wait_converged: no member is up");
            let mut detail = format!("revisions {revisions:?}");
            let first = revisions[up[0]];
            if let Some(rev) = first
                && up.iter().all(|&i| revisions[i] == Some(rev))
            {
                let hashes = self.hash_kv_all(rev).await;
                let got: Vec<Option<(u32, i64)>> =
                    hashes.iter().map(|h| h.as_ref().ok().map(|h| (h.hash, h.compact_revision))).collect();
                if let Some(h) = got[up[0]]
                    && up.iter().all(|&i| got[i] == Some(h))
                {
                    return (rev, h.0);
                }
                detail = format!("{detail}; (hash, compact revision) at {rev}: {got:?}; {hashes:?}");
            }
            if Instant::now() >= deadline {
                panic!(
                    "running members {up:?} did not converge within {timeout:?}: {detail}; {}",
                    self.describe(&statuses)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One line per member: ID, whether up, Status summary; and the proxy
    /// counters. For failure messages.
    pub fn describe(&self, statuses: &[Option<StatusResponse>]) -> String {
        let mut out = String::from("members:");
        for (i, s) in statuses.iter().enumerate() {
            out.push_str(&format!("\n  m{i} id {:x}", self.ids[i]));
            if self.stopped[i] {
                out.push_str(" (SIGSTOPped)");
            }
            match s {
                None => out.push_str(": no status"),
                Some(s) => out.push_str(&format!(
                    ": leader {:x} term {} index {} applied {} revision {}",
                    s.leader,
                    s.raft_term,
                    s.raft_index,
                    s.raft_applied_index,
                    s.header.as_ref().map_or(0, |h| h.revision)
                )),
            }
        }
        let state = self.net.lock();
        out.push_str(&format!(
            "\nnetwork: inbound cut {:?}, isolated {:?}, proxies {:?}",
            state.inbound_cut, state.isolated, state.stats
        ));
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let state = self.net.lock();
            eprintln!(
                "--- {} cluster: ids {:x?}, proxy ports {:?}, inbound cut {:?}, isolated {:?}, proxies {:?}",
                self.kind.as_str(),
                self.ids,
                self.proxy_ports,
                state.inbound_cut,
                state.isolated,
                state.stats
            );
        }
        for m in &mut self.members {
            m.stop();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        // The members themselves print their log tails when dropped during a
        // panic.
    }
}

/// The member a quorum agrees leads: it says it leads (its `Status.leader`
/// is its own ID) and at least `quorum` statuses name it as leader.
pub(crate) fn agreed_leader(statuses: &[Option<StatusResponse>], quorum: usize) -> Option<usize> {
    statuses.iter().enumerate().find_map(|(i, s)| {
        let s = s.as_ref()?;
        let me = s.header.as_ref()?.member_id;
        if me == 0 || s.leader != me {
            return None;
        }
        let votes = statuses.iter().flatten().filter(|o| o.leader == me).count();
        (votes >= quorum).then_some(i)
    })
}

/// The value of `--flag value` or `--flag=value` in `args`, parsed.
pub(crate) fn flag_value(args: &[String], flag: &str) -> Option<u64> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            return it.next().and_then(|v| v.parse().ok());
        }
        if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            return v.parse().ok();
        }
    }
    None
}

/// A channel to `url` that connects on first use (and reconnects after
/// failures), connect bounded by 1 s, no request timeout.
pub fn lazy_channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("client URL is a valid URI")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy()
}

/// Runs one gRPC call bounded by `limit` (also sent as the request's
/// `grpc-timeout`), flattening a timeout and an error status into `Err`.
///
/// ```ignore
/// let resp = call(Duration::from_secs(2), put_req, |r| kv.put(r)).await;
/// ```
pub async fn call<Req, Resp, F, Fut>(limit: Duration, req: Req, f: F) -> Result<Resp, String>
where
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let mut req = tonic::Request::new(req);
    req.set_timeout(limit);
    match tokio::time::timeout(limit, f(req)).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// A channel to `url` (connect bounded by 1 s; no request timeout, callers
/// bound the whole call).
pub(crate) async fn connect(url: &str) -> Result<Channel, String> {
    Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .map_err(|e| format!("connect {url}: {e}"))
}

pub(crate) async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
}

/// Runs `futures` concurrently on the current task and returns their outputs
/// in order.
pub(crate) async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (fut, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future finished")).collect()
}

/// Counters of one member's peer proxy.
#[derive(Clone, Debug, Default)]
pub struct ProxyStats {
    /// Connections forwarded to the member.
    pub accepted: u64,
    /// Connections closed at once because of a fault.
    pub refused: u64,
    /// Open connections closed by [`Cluster::cut`] / [`Cluster::isolate`].
    pub killed: u64,
    /// Connections whose dialing member could not be identified.
    pub unknown_origin: u64,
}

struct Net {
    state: Mutex<NetState>,
}

impl Net {
    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct NetState {
    /// Real peer port of each member (the proxies' targets).
    targets: Vec<u16>,
    /// Process id of each running member, to identify who dials a proxy.
    pids: Vec<Option<u32>>,
    inbound_cut: Vec<bool>,
    isolated: Vec<bool>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    stats: Vec<ProxyStats>,
}

struct Conn {
    /// Member whose proxy accepted the connection.
    dst: usize,
    /// Member that dialed, if known.
    src: Option<usize>,
    /// Dropping it (or sending) closes both sides.
    kill: tokio::sync::oneshot::Sender<()>,
}

impl NetState {
    /// Whether a connection dialed by `src` to member `dst`'s proxy may pass.
    fn admits(&self, dst: usize, src: Option<usize>) -> bool {
        !self.inbound_cut[dst] && !self.isolated[dst] && src.is_none_or(|s| !self.isolated[s])
    }

    /// Closes every open connection that the current faults forbid.
    fn enforce(&mut self) {
        let doomed: Vec<u64> =
            self.conns.iter().filter(|(_, c)| !self.admits(c.dst, c.src)).map(|(&id, _)| id).collect();
        for id in doomed {
            if let Some(conn) = self.conns.remove(&id) {
                self.stats[conn.dst].killed += 1;
                let _ = conn.kill.send(());
            }
        }
    }
}

async fn accept_loop(listener: std::net::TcpListener, dst: usize, port: u16, net: Arc<Net>) {
    let listener = TcpListener::from_std(listener).expect("cannot register the proxy listener");
    loop {
        match listener.accept().await {
            Ok((inbound, from)) => {
                tokio::spawn(proxy_connection(inbound, from, dst, port, Arc::clone(&net)));
            }
            Err(e) => {
                eprintln!("proxy of m{dst} on port {port}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn proxy_connection(mut inbound: TcpStream, from: SocketAddr, dst: usize, port: u16, net: Arc<Net>) {
    let refuse = |net: &Net, inbound: &TcpStream| {
        net.lock().stats[dst].refused += 1;
        // Reset rather than a graceful close: the dialer sees the failure at once.
        let _ = inbound.set_zero_linger();
    };
    let closed_to_all = {
        let state = net.lock();
        state.inbound_cut[dst] || state.isolated[dst]
    };
    if closed_to_all {
        refuse(&net, &inbound);
        return;
    }
    let pids = net.lock().pids.clone();
    let src = identify_dialer(from.port(), port, &pids);
    let target = {
        let mut state = net.lock();
        if src.is_none() {
            state.stats[dst].unknown_origin += 1;
        }
        state.targets[dst]
    };
    let connected = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(("127.0.0.1", target))).await;
    let Ok(Ok(mut outbound)) = connected else {
        // The member is down: close, as a dead port would (by refusing).
        let _ = inbound.set_zero_linger();
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel();
    let id = {
        let mut state = net.lock();
        if !state.admits(dst, src) {
            state.stats[dst].refused += 1;
            drop(state);
            let _ = inbound.set_zero_linger();
            let _ = outbound.set_zero_linger();
            return;
        }
        state.stats[dst].accepted += 1;
        let id = state.next_conn;
        state.next_conn += 1;
        state.conns.insert(id, Conn { dst, src, kill: kill_tx });
        id
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = kill_rx => {
            let _ = inbound.set_zero_linger();
            let _ = outbound.set_zero_linger();
        }
    }
    net.lock().conns.remove(&id);
}

/// The member whose process holds the client end of a loopback connection
/// from `127.0.0.1:<src_port>` to `127.0.0.1:<dst_port>`: the socket's inode
/// from `/proc/net/tcp`, then the member process with an fd on that socket.
fn identify_dialer(src_port: u16, dst_port: u16, pids: &[Option<u32>]) -> Option<usize> {
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        let Some(inode) = socket_inode(src_port, dst_port) else { continue };
        let needle = format!("socket:[{inode}]");
        for (i, pid) in pids.iter().enumerate() {
            let Some(pid) = pid else { continue };
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == needle.as_str()) {
                    return Some(i);
                }
            }
        }
    }
    None
}

fn socket_inode(src_port: u16, dst_port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    // Addresses are hex; 127.0.0.1 is stored in host (little-endian) order.
    let local = format!("0100007F:{src_port:04X}");
    let remote = format!("0100007F:{dst_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let inode = fields.get(9)?;
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()) && *inode != "0")
            .then(|| inode.to_string())
    })
}

/// `Maintenance.Status` of the member at `url`, on a fresh connection,
/// bounded by [`PROBE_TIMEOUT`].
pub(crate) async fn status_at(url: String) -> Result<StatusResponse, String> {
    bounded(PROBE_TIMEOUT, async move {
        let mut client = MaintenanceClient::new(connect(&url).await?);
        client.status(StatusRequest {}).await.map(|r| r.into_inner()).map_err(|e| e.to_string())
    })
    .await
}

/// Among members' statuses (`None`: down or unanswered), the one that says
/// it leads; with several (an old leader that has not noticed yet), the one
/// with the highest term.
pub(crate) fn leader_of(statuses: &[Option<StatusResponse>]) -> Option<usize> {
    statuses
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let s = s.as_ref()?;
            let me = s.header.as_ref()?.member_id;
            (s.leader == me && me != 0).then_some((s.raft_term, i))
        })
        .max()
        .map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_are_parsed() {
        let args: Vec<String> = ["--snapshot-count", "1000", "--election-timeout=800"].map(String::from).to_vec();
        assert_eq!(flag_value(&args, "--snapshot-count"), Some(1000));
        assert_eq!(flag_value(&args, "--election-timeout"), Some(800));
        assert_eq!(flag_value(&args, "--heartbeat-interval"), None);
    }

    #[test]
    fn dialer_of_own_loopback_connection_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, from) = listener.accept().unwrap();
        let me = std::process::id();
        assert_eq!(identify_dialer(from.port(), port, &[Some(u32::MAX - 1), Some(me)]), Some(1));
        assert_eq!(identify_dialer(from.port(), port, &[Some(u32::MAX - 1)]), None);
        drop(client);
    }

    #[tokio::test]
    async fn futures_join_keeps_order() {
        let out = futures_join(vec![
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                1
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = i32> + Send>>,
            Box::pin(async { 2 }),
        ])
        .await;
        assert_eq!(out, vec![1, 2]);
    }
}
