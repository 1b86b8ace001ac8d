//! Clusters whose members each run in their own network namespace, on a
//! real (bridged) network with packet-level faults: see [`crate::netns`].
//!
//! [`NetCluster::start`] creates a [`Net`], one host per member (`m0`, ...),
//! and starts every member inside its namespace (`ip netns exec`) with its
//! client URL `http://<addr>:2379` and peer URL `http://<addr>:2380`: the
//! fixed ports cannot clash, each member has its own address. The test
//! process is the client, in the root namespace.
//!
//! Faults: the network's ([`NetCluster::net`]: partitions, one-way drops,
//! delay, loss, heal) and the processes' ([`NetCluster::kill9`],
//! [`NetCluster::restart`] on the same data dir, [`NetCluster::sigstop`],
//! [`NetCluster::sigcont`]). Observation over the client URLs as in
//! [`crate::cluster::Cluster`]: status, leader, `HashKV`, convergence.
//!
//! Dropping the cluster kills every member (printing their log tails when
//! the test panics), removes their directories and then the network.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ketch_proto::etcdserverpb::{
    HashKvRequest, HashKvResponse, StatusResponse, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use tonic::transport::Channel;

use crate::cluster::{
    POLL, PROBE_TIMEOUT, agreed_leader, bounded, connect, flag_value, futures_join, lazy_channel, leader_of, status_at,
};
use crate::netns::Net;
use crate::{ETCD_BIN, Kind, READY_POLL, READY_TIMEOUT, die_with_parent, ketch_binary, probe_status, spawn_child};

/// Client port of every member (on its own address).
pub const CLIENT_PORT: u16 = 2379;
/// Peer port of every member.
pub const PEER_PORT: u16 = 2380;

/// Raft timing of the members unless `extra_args` sets it: heartbeat 100 ms,
/// election timeout 1 s (a little slack for injected delays and a loaded
/// machine).
pub const NET_TIMING: &[&str] = &["--heartbeat-interval", "100", "--election-timeout", "1000"];

struct NetMember {
    name: String,
    dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl NetMember {
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A cluster of members in network namespaces; see the module docs.
pub struct NetCluster {
    kind: Kind,
    members: Vec<NetMember>,
    ids: Vec<u64>,
    stopped: Vec<bool>,
    election_timeout: Duration,
    // Declared last: dropped after the members are killed.
    net: Net,
}

impl NetCluster {
    /// Creates the network and starts a `size`-member cluster of `kind` in
    /// it, `extra_args` appended to every member's flags (after
    /// [`NET_TIMING`] unless they set the timing). Waits until every member
    /// answers `Maintenance.Status`. `Err` if the network cannot be made
    /// (not root, a tool missing); panics if a member does not start.
    pub async fn start(kind: Kind, size: usize, extra_args: &[&str]) -> Result<NetCluster, String> {
        assert!(size >= 1, "a cluster needs at least one member");
        let mut net = Net::new()?;
        for i in 0..size {
            net.add_host(&format!("m{i}"))?;
        }
        let sets_timing = extra_args.iter().any(|a| {
            let flag = a.split('=').next().unwrap_or(a);
            flag == "--heartbeat-interval" || flag == "--election-timeout"
        });
        let mut timing: Vec<String> = Vec::new();
        if !sets_timing {
            timing.extend(NET_TIMING.iter().map(|s| s.to_string()));
        }
        timing.extend(extra_args.iter().map(|s| s.to_string()));
        let election_timeout = Duration::from_millis(flag_value(&timing, "--election-timeout").unwrap_or(1000));
        let peer_url = |i: usize| format!("http://{}:{PEER_PORT}", net.addr(i));
        let initial_cluster = (0..size).map(|i| format!("m{i}={}", peer_url(i))).collect::<Vec<_>>().join(",");
        let members = (0..size)
            .map(|i| {
                let name = format!("m{i}");
                let dir = tempfile::Builder::new()
                    .prefix(&format!("ketch-e2e-netns-{}-{name}-", kind.as_str()))
                    .tempdir()
                    .expect("cannot create a temporary directory for a member");
                let client = format!("http://{}:{CLIENT_PORT}", net.addr(i));
                let mut args: Vec<String> = vec![
                    "--name".into(),
                    name.clone(),
                    "--data-dir".into(),
                    dir.path().join("data").display().to_string(),
                    "--listen-client-urls".into(),
                    client.clone(),
                    "--advertise-client-urls".into(),
                    client,
                    "--listen-peer-urls".into(),
                    peer_url(i),
                    "--initial-advertise-peer-urls".into(),
                    peer_url(i),
                    "--initial-cluster".into(),
                    initial_cluster.clone(),
                    "--initial-cluster-token".into(),
                    net.tag().to_string(),
                    "--initial-cluster-state".into(),
                    "new".into(),
                ];
                args.extend(timing.iter().cloned());
                NetMember { name, dir, args, child: None }
            })
            .collect();
        let mut cluster =
            NetCluster { kind, members, ids: vec![0; size], stopped: vec![false; size], election_timeout, net };
        for i in 0..size {
            cluster.spawn(i);
        }
        if let Err((i, why)) = cluster.wait_ready(&(0..size).collect::<Vec<_>>()).await {
            cluster.fail_start(i, &why);
        }
        for i in 0..size {
            let status =
                cluster.status(i).await.unwrap_or_else(|e| panic!("m{i} answered Status once but not again: {e}"));
            cluster.ids[i] = status.header.map_or(0, |h| h.member_id);
            assert_ne!(cluster.ids[i], 0, "m{i} reports member id 0");
        }
        Ok(cluster)
    }

    /// Starts a cluster of the implementation under test
    /// ([`crate::subject_kind`]).
    pub async fn subject(size: usize, extra_args: &[&str]) -> Result<NetCluster, String> {
        NetCluster::start(crate::subject_kind(), size, extra_args).await
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "m{i} is already running");
        let program = match self.kind {
            Kind::Etcd => PathBuf::from(ETCD_BIN),
            Kind::Ketch => ketch_binary(),
        };
        let log = OpenOptions::new().create(true).append(true).open(m.log_path()).expect("cannot open a member's log");
        let log_err = log.try_clone().expect("cannot duplicate the log file handle");
        let mut cmd = self.net.command(i, program);
        cmd.args(&m.args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        {
            let mut log = OpenOptions::new().append(true).open(m.log_path()).expect("cannot open a member's log");
            let _ = writeln!(log, "=== ketch-e2e: starting {cmd:?}");
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
        die_with_parent(&mut cmd);
        let child = spawn_child(cmd).unwrap_or_else(|e| panic!("cannot start m{i}: {e}"));
        m.child = Some(child);
        self.stopped[i] = false;
    }

    async fn wait_ready(&mut self, which: &[usize]) -> Result<(), (usize, String)> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut pending: Vec<usize> = which.to_vec();
        let mut last_error = String::new();
        while !pending.is_empty() {
            for &i in &pending {
                if let Some(child) = self.members[i].child.as_mut()
                    && let Some(status) = child.try_wait().expect("cannot poll a member's process")
                {
                    return Err((i, format!("exited: {status}")));
                }
            }
            let urls: Vec<String> = pending.iter().map(|&i| self.client_url(i)).collect();
            let probes = futures_join(urls.iter().map(|url| probe_status(url)).collect()).await;
            let mut still = Vec::new();
            for (&i, probe) in pending.iter().zip(probes) {
                if let Err(e) = probe {
                    last_error = format!("m{i}: {e}");
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err((
                    pending[0],
                    format!("not ready within {READY_TIMEOUT:?} (members {pending:?}); last error: {last_error}"),
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
            "{} member m{i} did not become ready on {} ({why}); last lines of {}:\n{}",
            self.kind.as_str(),
            self.client_url(i),
            self.members[i].log_path().display(),
            self.members[i].log_tail(40)
        );
    }

    /// The network (faults: [`Net::partition`], [`Net::one_way`],
    /// [`Net::netem`], [`Net::heal`]).
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// Which implementation the members run.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Smallest majority.
    pub fn quorum(&self) -> usize {
        self.size() / 2 + 1
    }

    /// The election timeout the members run with.
    pub fn election_timeout(&self) -> Duration {
        self.election_timeout
    }

    /// Member `i`'s client URL, `http://<addr>:2379`.
    pub fn client_url(&self, i: usize) -> String {
        format!("http://{}:{CLIENT_PORT}", self.net.addr(i))
    }

    /// Every member's client URL.
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.size()).map(|i| self.client_url(i)).collect()
    }

    /// A `KV` client for member `i` on a lazily connected channel (see
    /// [`lazy_channel`]); bound calls yourself.
    pub fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(lazy_channel(&self.client_url(i)))
    }

    /// Member `i`'s ID.
    pub fn id(&self, i: usize) -> u64 {
        self.ids[i]
    }

    /// The index of the member with ID `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|&x| x == id)
    }

    /// The last `lines` lines of member `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        self.members[i].log_tail(lines)
    }

    /// Member `i`'s process id, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Whether member `i` runs and is not SIGSTOPped (reaps it if it exited).
    pub fn is_up(&mut self, i: usize) -> bool {
        if self.stopped[i] {
            return false;
        }
        let m = &mut self.members[i];
        match m.child.as_mut() {
            None => false,
            Some(child) => match child.try_wait().expect("cannot poll a member's process") {
                None => true,
                Some(status) => {
                    eprintln!("{} exited unexpectedly: {status}", m.name);
                    m.child = None;
                    false
                }
            },
        }
    }

    /// Indices of the members that are up.
    pub fn up(&mut self) -> Vec<usize> {
        (0..self.size()).filter(|&i| self.is_up(i)).collect()
    }

    /// SIGKILLs member `i` and reaps it (no-op if it is not running).
    pub fn kill9(&mut self, i: usize) {
        self.members[i].stop();
        self.stopped[i] = false;
    }

    /// Starts member `i` again (same flags and data dir), killing it first if
    /// it runs, and waits until it answers `Maintenance.Status`.
    pub async fn restart(&mut self, i: usize) {
        self.kill9(i);
        self.spawn(i);
        if let Err((i, why)) = self.wait_ready(&[i]).await {
            self.fail_start(i, &why);
        }
    }

    /// Whether member `i` has a process (running or stopped).
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// SIGSTOPs member `i`.
    pub fn sigstop(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.stopped[i] = true;
    }

    /// SIGCONTs member `i`.
    pub fn sigcont(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.stopped[i] = false;
    }

    /// Whether member `i` is SIGSTOPped.
    pub fn is_stopped(&self, i: usize) -> bool {
        self.stopped[i]
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        let pid = self.pid(i).unwrap_or_else(|| panic!("m{i} is not running"));
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed: {}", std::io::Error::last_os_error());
    }

    /// `Maintenance.Status` of member `i`, bounded by [`PROBE_TIMEOUT`].
    pub async fn status(&self, i: usize) -> Result<StatusResponse, String> {
        status_at(self.client_url(i)).await
    }

    /// `Maintenance.Status` of every member that is up (`None` otherwise).
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

    /// The member that says it leads, with the highest term, among those up.
    pub async fn leader(&mut self) -> Option<usize> {
        leader_of(&self.statuses().await)
    }

    /// Waits until a member accepted by `accept` leads with a quorum's
    /// agreement; `Err` with the members' statuses after `timeout`.
    pub async fn wait_leader_where(
        &mut self,
        timeout: Duration,
        accept: impl Fn(usize) -> bool,
    ) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            if let Some(l) = agreed_leader(&statuses, self.quorum())
                && accept(l)
            {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                return Err(format!("no leader agreed by a quorum within {timeout:?}; {}", self.describe(&statuses)));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until a member leads with a quorum's agreement; panics after
    /// `timeout`.
    pub async fn wait_leader(&mut self, timeout: Duration) -> usize {
        self.wait_leader_where(timeout, |_| true).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// `HashKV` at `revision` of every member that is up.
    pub async fn hash_kv_all(&mut self, revision: i64) -> Vec<Result<HashKvResponse, String>> {
        let up = self.up();
        let urls = self.client_urls();
        let calls = urls
            .into_iter()
            .enumerate()
            .map(|(i, url)| {
                let up = up.contains(&i);
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

    /// Waits until every member that is up reports the same revision and the
    /// same `HashKV` (hash, compact revision) there; returns `(revision,
    /// per-member HashKV)`. `Err` with what each reported after `timeout`.
    pub async fn wait_converged(&mut self, timeout: Duration) -> Result<(i64, Vec<HashKvResponse>), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            let up = self.up();
            if up.is_empty() {
                return Err("no member is up".into());
            }
            let revisions: Vec<Option<i64>> =
                statuses.iter().map(|s| s.as_ref().and_then(|s| s.header.as_ref()).map(|h| h.revision)).collect();
            let mut detail = format!("revisions {revisions:?}");
            if let Some(rev) = revisions[up[0]]
                && up.iter().all(|&i| revisions[i] == Some(rev))
            {
                let hashes = self.hash_kv_all(rev).await;
                let got: Vec<Option<(u32, i64)>> =
                    hashes.iter().map(|h| h.as_ref().ok().map(|h| (h.hash, h.compact_revision))).collect();
                if got[up[0]].is_some() && up.iter().all(|&i| got[i] == got[up[0]]) {
                    let all = up.iter().map(|&i| hashes[i].clone().expect("checked above")).collect();
                    return Ok((rev, all));
                }
                detail = format!("{detail}; (hash, compact revision) at {rev}: {got:?}");
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "members {up:?} did not converge within {timeout:?}: {detail}; {}",
                    self.describe(&statuses)
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One line per member (ID, state, Status summary) and the network's
    /// faults, for failure messages.
    pub fn describe(&self, statuses: &[Option<StatusResponse>]) -> String {
        let mut out = String::from("members:");
        for (i, s) in statuses.iter().enumerate() {
            out.push_str(&format!("\n  m{i} {} id {:x}", self.net.addr(i), self.ids[i]));
            if self.stopped[i] {
                out.push_str(" (SIGSTOPped)");
            }
            if self.members[i].child.is_none() {
                out.push_str(" (not running)");
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
        out.push_str(&format!("\nnetwork: {}", self.net.describe()));
        out
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.stop();
        }
        if std::thread::panicking() {
            eprintln!("--- network {}: {}", self.net.tag(), self.net.describe());
            for m in &self.members {
                eprintln!("--- last lines of {} ({}):\n{}", m.name, m.log_path().display(), m.log_tail(25));
            }
        }
        // The members' directories go with `members`, then the network.
    }
}
