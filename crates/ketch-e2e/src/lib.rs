//! End-to-end test harness for Ketch.
//!
//! The tests in `tests/` start REAL server processes: our `ketch` binary and
//! the reference etcd 3.4 server (`/usr/bin/etcd`), talk to them over gRPC
//! on `127.0.0.1` and with the reference `etcdctl`, and compare the answers.
//!
//! What this library provides:
//!
//! - [`Member`]: one single-node server process (etcd or ketch) with its own
//!   temporary directory (data dir + log file), free loopback ports picked by
//!   binding port 0, a readiness wait on `Maintenance.Status`, [`Member::kill9`],
//!   [`Member::restart`] on the same data dir and ports, and SIGKILL + wait on
//!   drop. Children also get `PR_SET_PDEATHSIG(SIGKILL)`, so they die with the
//!   test process even if it is killed before it can run destructors.
//!   [`Member::set_env`] sets a variable of the process's next starts (the
//!   harness keeps `ETCD_*` and `FAILPOINTS` of its own environment from
//!   members); [`Member::respawn`] and [`Member::wait_exit`] start a member
//!   meant to crash and wait for it (`tests/failpoints.rs`).
//! - Twins: members with the same member and cluster IDs, from a shared
//!   advertised peer URL ([`Member::start_with_peer_flags`]).
//! - [`etcdctl`]: runs `/usr/bin/etcdctl` (`ETCDCTL_API=3`) against one endpoint
//!   with a wall-clock bound; [`spawn_etcdctl`] starts a long-running one
//!   (`etcdctl watch`) as an [`EtcdctlProcess`] whose output can be waited
//!   on while it runs, fed on stdin, and which is killed at the end.
//! - [`Member::watch`] / [`Member::stream_channel`]: clients for long-lived
//!   streams (no per-request timeout); [`rss_kib`]: a process's resident
//!   memory (with [`Member::pid`]).
//! - Normalisation helpers: [`normalize_json_headers`] and [`ClearHeaders`] drop
//!   `cluster_id`, `member_id` and `raft_term` from every response header
//!   (nested txn headers included) and keep `revision`;
//!   [`normalize_endpoint`] replaces a server's address in messages.
//! - [`readable`]: `Debug` output with byte arrays shown as `b"..."` strings,
//!   for failure messages.
//! - [`tls`]: certificates made at test time and etcd serving clients over
//!   TLS; [`dns`]: a network namespace with dnsmasq serving SRV records.
//! - [`cluster::Cluster`]: a 3-member cluster on loopback behind in-process
//!   peer proxies that cut or isolate members. [`netns::Net`] and
//!   [`net_cluster::NetCluster`]: the same on a real network, each member in
//!   its own network namespace behind a Linux bridge, with packet-level
//!   faults (nftables partitions and one-way drops, delay and loss). Both
//!   kill -9, restart, SIGSTOP and SIGCONT members.
//! - [`workload`]: the recorded client workload of the nemesis runs (puts,
//!   gets, deletes, transactions, a watch) and the `ketch-check` checks on
//!   what it recorded.
//!
//! Running:
//!
//! ```text
//! cargo build -p ketch && cargo test -p ketch-e2e --no-fail-fast
//! KETCH_E2E_SUBJECT=etcd cargo test -p ketch-e2e   # harness self-check, etcd vs etcd
//! KETCH_SEED=<seed> cargo test -p ketch-e2e --test differential   # replay a run
//! ```
//!
//! Environment variables:
//!
//! - `KETCH_BIN`: path of the ketch binary (default: `target/<profile>/ketch`
//!   next to the test executable; build it with `cargo build -p ketch`).
//! - `KETCHCTL_BIN`: path of the ketchctl binary, likewise ([`ketchctl_binary`]).
//! - `KETCH_E2E_SUBJECT=etcd`: run the "subject" side of every test (the side
//!   that is normally ketch) on a second real etcd instead. Used to validate
//!   the harness and the tests themselves: everything must pass etcd-vs-etcd.

use std::collections::HashSet;
use std::fmt::Debug;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ketch_proto::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, PutResponse, RangeResponse, ResponseHeader, StatusRequest, TxnResponse,
    kv_client::KvClient, maintenance_client::MaintenanceClient, response_op::Response, watch_client::WatchClient,
};
use tonic::transport::{Channel, Endpoint};

pub mod cluster;
pub mod ctl;
pub mod dns;
pub mod net_cluster;
pub mod netns;
pub mod tls;
pub mod workload;

/// Reference etcd server binary (Debian `etcd-server`, 3.4.23).
pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// Reference etcdctl binary (Debian `etcd-client`, 3.4.23).
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";

/// How long a server may take to answer `Maintenance.Status` after start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Interval between readiness probes.
pub const READY_POLL: Duration = Duration::from_millis(20);
/// Wall-clock bound for one etcdctl invocation.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-request timeout of the gRPC clients handed out by [`Member`].
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Which server implementation a [`Member`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The reference etcd 3.4 server at [`ETCD_BIN`].
    Etcd,
    /// Our `ketch` binary (see [`ketch_binary`]).
    Ketch,
}

impl Kind {
    /// Short lowercase name, used for member names and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Etcd => "etcd",
            Kind::Ketch => "ketch",
        }
    }
}

/// The implementation under test: [`Kind::Ketch`], unless the environment
/// variable `KETCH_E2E_SUBJECT=etcd` asks for a second real etcd (harness
/// self-check).
pub fn subject_kind() -> Kind {
    match std::env::var("KETCH_E2E_SUBJECT").as_deref() {
        Ok("etcd") => Kind::Etcd,
        Ok("ketch") | Err(_) => Kind::Ketch,
        Ok(other) => panic!("KETCH_E2E_SUBJECT must be `etcd` or `ketch`, not {other:?}"),
    }
}

/// Path of the `ketch` binary: `$KETCH_BIN`, or `target/<profile>/ketch`
/// derived from the running test executable (`target/<profile>/deps/<test>`).
///
/// Panics with a hint to run `cargo build -p ketch` if it does not exist.
pub fn ketch_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KETCH_BIN") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "KETCH_BIN={} does not exist or is not a file", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("cannot find the path of the test executable");
    let mut dir = exe.parent().expect("test executable has no parent directory").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join("ketch");
    assert!(
        bin.is_file(),
        "ketch binary not found at {}: run `cargo build -p ketch` first \
         (with the same profile as the tests, e.g. `--release` for `cargo test --release`), \
         or point KETCH_BIN at it",
        bin.display()
    );
    bin
}

/// Path of the `ketchctl` binary: `$KETCHCTL_BIN`, or `target/<profile>/ketchctl`
/// next to the test executable, as [`ketch_binary`] finds `ketch`.
///
/// Panics with a hint to run `cargo build -p ketchctl` if it does not exist.
pub fn ketchctl_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KETCHCTL_BIN") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "KETCHCTL_BIN={} does not exist or is not a file", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("cannot find the path of the test executable");
    let mut dir = exe.parent().expect("test executable has no parent directory").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join("ketchctl");
    assert!(
        bin.is_file(),
        "ketchctl binary not found at {}: run `cargo build -p ketchctl` first \
         (with the same profile as the tests), or point KETCHCTL_BIN at it",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1, found by binding port 0.
///
/// Ports handed out by this process are remembered and never handed out
/// twice, so concurrently starting test members cannot collide with each
/// other (another process may still grab the port between this call and the
/// server's bind; [`Member`] retries its first start on `address already in
/// use`).
pub fn free_port() -> u16 {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let used = USED.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0 to find a free port");
        let port = listener.local_addr().expect("bound listener has no local address").port();
        let mut used = used.lock().expect("free port registry poisoned");
        if used.insert(port) {
            return port;
        }
    }
    panic!("could not find an unused free port in 100 attempts");
}

/// Spawns `cmd` from one long-lived helper thread.
///
/// The children get `PR_SET_PDEATHSIG(SIGKILL)`, which fires when the
/// *thread* that forked them exits; forking from a thread that lives as long
/// as the test process (rather than from a tokio worker or a test thread)
/// makes that mean "when the test process dies".
pub fn spawn_child(cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("ketch-e2e-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the process spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    sender.lock().expect("spawner channel poisoned").send((cmd, reply_tx)).expect("process spawner thread is gone");
    reply_rx.recv().expect("process spawner thread dropped the request")
}

/// Makes `cmd`'s child get `PR_SET_PDEATHSIG(SIGKILL)` (see [`spawn_child`]).
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Why a server did not become ready.
enum NotReady {
    Exited(ExitStatus),
    Timeout(String),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Exited(status) => write!(f, "process exited: {status}"),
            NotReady::Timeout(last) => {
                write!(f, "no successful Maintenance.Status within {READY_TIMEOUT:?}; last error: {last}")
            }
        }
    }
}

/// One single-node server process (reference etcd or ketch).
///
/// Owns a temporary directory holding the data dir (`data/`) and the log
/// file (`server.log`, stdout and stderr of every start appended). Dropping
/// the member SIGKILLs the process, waits for it and removes the directory.
pub struct Member {
    kind: Kind,
    name: String,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    extra_args: Vec<String>,
    /// Replaces the single-member `--initial-advertise-peer-urls` and
    /// `--initial-cluster` flags (members of a [`cluster::Cluster`]).
    peer_flags: Option<Vec<String>>,
    /// Environment variables of the next starts ([`Member::set_env`]).
    env: Vec<(String, String)>,
    /// How the process exited, once it exited by itself ([`Member::wait_exit`]).
    exited: Option<ExitStatus>,
    child: Option<Child>,
}

impl Member {
    /// Starts a reference etcd and waits until it is ready.
    pub async fn etcd() -> Member {
        Member::start(Kind::Etcd, &[]).await
    }

    /// Starts ketch and waits until it is ready.
    pub async fn ketch() -> Member {
        Member::start(Kind::Ketch, &[]).await
    }

    /// Starts the implementation under test ([`subject_kind`]).
    pub async fn subject() -> Member {
        Member::start(subject_kind(), &[]).await
    }

    /// Starts a member of `kind` with `extra_args` appended to the etcd-style
    /// flags (`--name`, `--data-dir`, `--listen-client-urls`, ...), and waits
    /// until `Maintenance.Status` answers.
    pub async fn start(kind: Kind, extra_args: &[&str]) -> Member {
        Member::start_with_peer_flags(kind, None, extra_args).await
    }

    /// Like [`Member::start`], with `peer_flags` in place of the
    /// single-member `--initial-advertise-peer-urls` and `--initial-cluster`
    /// flags. Two members started with the same advertised peer URL (one
    /// that need not be reachable, e.g. `http://127.0.0.1:1`) get the same
    /// member and cluster IDs: twins whose answers differ only in what the
    /// requests made differ.
    pub async fn start_with_peer_flags(kind: Kind, peer_flags: Option<Vec<String>>, extra_args: &[&str]) -> Member {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ketch-e2e-{}-", kind.as_str()))
            .tempdir()
            .expect("cannot create a temporary directory for the member");
        let mut member = Member {
            kind,
            name: "e".to_string(),
            dir,
            client_port: 0,
            peer_port: 0,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            peer_flags,
            env: Vec::new(),
            exited: None,
            child: None,
        };
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            member.client_port = free_port();
            member.peer_port = free_port();
            member.spawn();
            match member.wait_ready().await {
                Ok(()) => return member,
                Err(NotReady::Exited(status))
                    if attempt < ATTEMPTS && member.log_text().contains("address already in use") =>
                {
                    eprintln!("{} exited ({status}) on a port conflict, retrying with new ports", kind.as_str());
                    member.child = None;
                    // A fresh data dir: the failed start may have left one.
                    let _ = std::fs::remove_dir_all(member.data_dir());
                }
                Err(err) => member.fail_start(err),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    fn command(&self) -> Command {
        let program = match self.kind {
            Kind::Etcd => PathBuf::from(ETCD_BIN),
            Kind::Ketch => ketch_binary(),
        };
        let client = self.client_url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(program);
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer);
        match &self.peer_flags {
            Some(flags) => cmd.args(flags),
            None => cmd
                .arg("--initial-advertise-peer-urls")
                .arg(&peer)
                .arg("--initial-cluster")
                .arg(format!("{}={peer}", self.name)),
        };
        cmd.args(&self.extra_args);
        // Keep the environment from changing server behaviour.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("FAILPOINTS");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "member is already running");
        self.exited = None;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("cannot open the member's log file");
        let log_err = log.try_clone().expect("cannot duplicate the log file handle");
        let mut cmd = self.command();
        cmd.stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
        die_with_parent(&mut cmd);
        {
            let mut log =
                OpenOptions::new().append(true).open(self.log_path()).expect("cannot open the member's log file");
            let _ = writeln!(log, "=== ketch-e2e: starting {cmd:?}");
        }
        let child = spawn_child(cmd).unwrap_or_else(|e| panic!("cannot start {}: {e}", self.kind.as_str()));
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) -> Result<(), NotReady> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().expect("cannot poll the member's process")
            {
                return Err(NotReady::Exited(status));
            }
            match probe_status(&self.client_url()).await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(NotReady::Timeout(e)),
                Err(_) => {}
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    fn fail_start(&mut self, err: NotReady) -> ! {
        self.stop();
        panic!(
            "{} did not become ready on {} ({err}); last lines of {}:\n{}",
            self.kind.as_str(),
            self.client_url(),
            self.log_path().display(),
            self.log_tail(40)
        );
    }

    /// Which implementation this member runs.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `127.0.0.1:<client port>`, the form etcdctl prints in messages.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The peer port.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// The member's data directory (kept across [`Member::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The member's log file (stdout + stderr of every start).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The process id, if the member is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_text(&self) -> String {
        std::fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last `lines` lines of the log file.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the process is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(child) => match child.try_wait().expect("cannot poll the member's process") {
                None => true,
                Some(status) => {
                    eprintln!("{} on {} exited unexpectedly: {status}", self.kind.as_str(), self.client_url());
                    false
                }
            },
        }
    }

    /// Sets (`Some`) or removes (`None`) an environment variable of the
    /// process from its next start on (e.g. `FAILPOINTS`, which the harness
    /// otherwise keeps from reaching members).
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.env.push((key.to_string(), value.to_string()));
        }
    }

    /// Starts the member again on the same data dir and ports (killing it
    /// first if it is still running) without waiting until it is ready.
    pub fn respawn(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Waits up to `timeout` for the process to exit by itself; how it
    /// exited (reaped), or `None` if it still runs after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited {
                return Some(status);
            }
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("cannot poll the member's process") {
                self.child = None;
                self.exited = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Kills the process with SIGKILL and reaps it. No-op if not running.
    pub fn kill9(&mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the member again on the same data dir and ports (killing it
    /// first if it is still running) and waits until it is ready.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        // Ports are fixed now; a lingering listener would be a real bug, so
        // no retry with new ports here.
        if let Err(err) = self.wait_ready().await {
            self.fail_start(err);
        }
    }

    /// A connected channel to the member's client URL with a per-request
    /// timeout of [`RPC_TIMEOUT`].
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.client_url())
            .expect("client URL is a valid URI")
            .connect_timeout(Duration::from_secs(2))
            .timeout(RPC_TIMEOUT)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.client_url()))
    }

    /// A `KV` client on a fresh connection.
    pub async fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel().await)
    }

    /// A `Maintenance` client on a fresh connection.
    pub async fn maintenance(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel().await)
    }

    /// A connected channel without the per-request timeout of
    /// [`Member::channel`], for long-lived streams (Watch): a request
    /// timeout would also bound the stream.
    pub async fn stream_channel(&self) -> Channel {
        Endpoint::from_shared(self.client_url())
            .expect("client URL is a valid URI")
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.client_url()))
    }

    /// A `Watch` client on a fresh connection (no request timeout, see
    /// [`Member::stream_channel`]).
    pub async fn watch(&self) -> WatchClient<Channel> {
        WatchClient::new(self.stream_channel().await)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of the {} log ({}):\n{}",
                self.kind.as_str(),
                self.log_path().display(),
                self.log_tail(20)
            );
        }
    }
}

/// One readiness probe: connect and call `Maintenance.Status`.
async fn probe_status(url: &str) -> Result<(), String> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2));
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e}"))?;
    MaintenanceClient::new(channel).status(StatusRequest {}).await.map(|_| ()).map_err(|e| format!("status: {e}"))
}

/// Result of one etcdctl run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
    /// Exit code; -1 if killed by a signal (e.g. on timeout).
    pub code: i32,
}

/// `etcdctl --endpoints=<endpoint> <args>` with `ETCDCTL_API=3`, none of the
/// caller's other `ETCDCTL_*` variables, and every stream piped.
fn etcdctl_command(endpoint: &str, args: &[&str]) -> Command {
    ctl_command(std::path::Path::new(ETCDCTL_BIN), endpoint, args)
}

/// `<program> --endpoints=<endpoint> <args>` set up as [`etcdctl`] runs
/// etcdctl, for any etcdctl-compatible program (`ketchctl`).
pub fn ctl_command(program: &std::path::Path, endpoint: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `etcdctl --endpoints=<endpoint> <args>` with `ETCDCTL_API=3`,
/// feeding `stdin` (or nothing), bounded by [`ETCDCTL_TIMEOUT`].
pub fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = etcdctl_command(endpoint, args);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {ETCDCTL_BIN}: {e}"));
    let mut child_stdin = child.stdin.take().expect("etcdctl stdin is piped");
    let input = stdin.unwrap_or("").to_string();
    let writer = std::thread::spawn(move || {
        // etcdctl may exit without reading everything; ignore EPIPE.
        let _ = child_stdin.write_all(input.as_bytes());
    });
    let stdout = read_in_thread(child.stdout.take().expect("etcdctl stdout is piped"));
    let stderr = read_in_thread(child.stderr.take().expect("etcdctl stderr is piped"));
    let deadline = Instant::now() + ETCDCTL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot poll etcdctl") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().expect("cannot reap etcdctl");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = writer.join();
    Output {
        stdout: stdout.join().expect("stdout reader panicked"),
        stderr: stderr.join().expect("stderr reader panicked"),
        code: status.code().unwrap_or(-1),
    }
}

fn read_in_thread(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A long-running etcdctl process (e.g. `etcdctl watch`), started with
/// [`spawn_etcdctl`]: stdin stays open until [`EtcdctlProcess::close_stdin`],
/// stdout and stderr are collected in the background and can be inspected
/// while the process runs. Dropping it SIGKILLs and reaps the process.
pub struct EtcdctlProcess {
    child: Option<Child>,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::sync::Arc<Mutex<Vec<u8>>>,
    stderr: std::sync::Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    exit_code: Option<i32>,
}

/// Interval between polls of [`EtcdctlProcess::wait_for`].
pub const ETCDCTL_POLL: Duration = Duration::from_millis(5);

/// Starts `etcdctl --endpoints=<endpoint> <args>` (`ETCDCTL_API=3`) in the
/// background, with stdin, stdout and stderr piped. The process gets
/// `PR_SET_PDEATHSIG(SIGKILL)` like the servers, so it cannot outlive the
/// test process.
pub fn spawn_etcdctl(endpoint: &str, args: &[&str]) -> EtcdctlProcess {
    spawn_ctl_command(etcdctl_command(endpoint, args))
}

/// Starts a prepared command (see [`ctl_command`]) like [`spawn_etcdctl`].
pub fn spawn_ctl_command(mut cmd: Command) -> EtcdctlProcess {
    die_with_parent(&mut cmd);
    let program = cmd.get_program().to_owned();
    let mut child = spawn_child(cmd).unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let stdin = child.stdin.take();
    let stdout = std::sync::Arc::new(Mutex::new(Vec::new()));
    let stderr = std::sync::Arc::new(Mutex::new(Vec::new()));
    let readers = vec![
        collect_in_thread(child.stdout.take().expect("etcdctl stdout is piped"), stdout.clone()),
        collect_in_thread(child.stderr.take().expect("etcdctl stderr is piped"), stderr.clone()),
    ];
    EtcdctlProcess { child: Some(child), stdin, stdout, stderr, readers, exit_code: None }
}

fn collect_in_thread(
    mut r: impl Read + Send + 'static,
    sink: std::sync::Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => sink.lock().expect("output buffer poisoned").extend_from_slice(&buf[..n]),
            }
        }
    })
}

impl EtcdctlProcess {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Standard output so far (lossy UTF-8).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("output buffer poisoned")).into_owned()
    }

    /// Standard error so far (lossy UTF-8).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("output buffer poisoned")).into_owned()
    }

    /// Writes `text` to the process's stdin (e.g. `"watch k\n"` for
    /// `watch -i`). Panics if stdin was closed.
    pub fn write_stdin(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("etcdctl stdin was closed");
        stdin.write_all(text.as_bytes()).expect("cannot write to etcdctl stdin");
        stdin.flush().expect("cannot flush etcdctl stdin");
    }

    /// Closes stdin (the process sees end of file).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Polls every [`ETCDCTL_POLL`] until `cond(stdout, stderr)` holds or
    /// `timeout` passes; returns whether it held.
    pub fn wait_for(&self, timeout: Duration, mut cond: impl FnMut(&str, &str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(&self.stdout(), &self.stderr()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(ETCDCTL_POLL);
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its
    /// exit code (-1 if killed by a signal), or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        if let Some(code) = self.exit_code {
            return Some(code);
        }
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().expect("cannot poll etcdctl") {
                let code = status.code().unwrap_or(-1);
                self.exit_code = Some(code);
                return Some(code);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(ETCDCTL_POLL);
        }
    }

    /// Kills the process if it still runs (SIGKILL), reaps it and returns
    /// everything it printed. `code` is the exit code if it exited by
    /// itself, -1 if it had to be killed.
    pub fn finish(mut self) -> Output {
        self.stdin = None;
        let code = match self.wait_exit(Duration::ZERO) {
            Some(code) => code,
            None => {
                self.stop();
                -1
            }
        };
        self.child = None;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Output { stdout: self.stdout(), stderr: self.stderr(), code }
    }

    fn stop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdctlProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS` in
/// `/proc/<pid>/status`), or `None` if it cannot be read.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Header fields that legitimately differ between two servers and are
/// dropped before comparing. `revision` is kept.
pub const VOLATILE_HEADER_FIELDS: &[&str] = &["cluster_id", "member_id", "raft_term"];

/// Removes [`VOLATILE_HEADER_FIELDS`] from every object found under a
/// `"header"` key anywhere in `value` (etcdctl `-w json` output; nested txn
/// responses included).
pub fn normalize_json_headers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if key == "header"
                    && let serde_json::Value::Object(header) = child
                {
                    for field in VOLATILE_HEADER_FIELDS {
                        header.remove(*field);
                    }
                }
                normalize_json_headers(child);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(normalize_json_headers),
        _ => {}
    }
}

/// Parses etcdctl `-w json` output and normalises its headers.
pub fn parse_normalized_json(text: &str) -> serde_json::Value {
    let mut value: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("etcdctl output is not JSON ({e}): {text:?}"));
    normalize_json_headers(&mut value);
    value
}

/// Replaces every occurrence of `endpoint` (e.g. `127.0.0.1:2379`) in `text`
/// with `<endpoint>`.
pub fn normalize_endpoint(text: &str, endpoint: &str) -> String {
    text.replace(endpoint, "<endpoint>")
}

/// Normalises etcdctl text output (stdout or stderr) of a run against
/// `endpoint` so that runs against two servers can be compared byte for
/// byte:
///
/// - the endpoint address becomes `<endpoint>`;
/// - `took = 1.23ms` (endpoint health) becomes `took = <duration>`;
/// - the client library's JSON log lines on stderr (`{"level":"warn",
///   "ts":...,"target":"endpoint://client-<uuid>/...",...,"error":"rpc error:
///   code = ... desc = ..."}`) lose their timestamp and the random client id
///   in `target`; everything else in them (the gRPC code and message) stays.
pub fn normalize_etcdctl_text(text: &str, endpoint: &str) -> String {
    let text = normalize_endpoint(text, endpoint);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, newline) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, ""),
        };
        let body = normalize_log_line(body).unwrap_or_else(|| body.to_string());
        let body = match body.find("took = ") {
            Some(pos) => {
                let rest = &body[pos + "took = ".len()..];
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                format!("{}took = <duration>{}", &body[..pos], &rest[end..])
            }
            None => body,
        };
        out.push_str(&body);
        out.push_str(newline);
    }
    out
}

fn normalize_log_line(line: &str) -> Option<String> {
    if !line.starts_with('{') {
        return None;
    }
    let mut value: serde_json::Value = serde_json::from_str(line).ok()?;
    let map = value.as_object_mut()?;
    map.get("level")?;
    map.remove("ts");
    if let Some(serde_json::Value::String(target)) = map.get_mut("target")
        && let Some(start) = target.find("client-")
    {
        let end = target[start..].find('/').map_or(target.len(), |i| start + i);
        target.replace_range(start..end, "client-<id>");
    }
    Some(value.to_string())
}

/// Clears [`VOLATILE_HEADER_FIELDS`] in gRPC responses, recursively.
pub trait ClearHeaders {
    /// Zeroes `cluster_id`, `member_id` and `raft_term` of every header.
    fn clear_headers(&mut self);
}

impl ClearHeaders for ResponseHeader {
    fn clear_headers(&mut self) {
        self.cluster_id = 0;
        self.member_id = 0;
        self.raft_term = 0;
    }
}

impl<T: ClearHeaders> ClearHeaders for Option<T> {
    fn clear_headers(&mut self) {
        if let Some(inner) = self {
            inner.clear_headers();
        }
    }
}

macro_rules! clear_header_field {
    ($($ty:ty),*) => {$(
        impl ClearHeaders for $ty {
            fn clear_headers(&mut self) {
                self.header.clear_headers();
            }
        }
    )*};
}
clear_header_field!(RangeResponse, PutResponse, DeleteRangeResponse, CompactionResponse);

impl ClearHeaders for TxnResponse {
    fn clear_headers(&mut self) {
        self.header.clear_headers();
        for op in &mut self.responses {
            match &mut op.response {
                Some(Response::ResponseRange(r)) => r.clear_headers(),
                Some(Response::ResponsePut(r)) => r.clear_headers(),
                Some(Response::ResponseDeleteRange(r)) => r.clear_headers(),
                Some(Response::ResponseTxn(r)) => r.clear_headers(),
                None => {}
            }
        }
    }
}

/// `{:?}` of `value` with every list of small integers that looks like a
/// byte string (`[102, 111, 111]`) rewritten as `b"foo"`, for readable
/// failure messages about keys and values.
pub fn readable<T: Debug + ?Sized>(value: &T) -> String {
    readable_debug(&format!("{value:?}"))
}

/// The rewrite behind [`readable`], on an existing `Debug` string.
pub fn readable_debug(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('[') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find(']') {
            Some(end) => {
                let inner = &after[..end];
                let bytes: Option<Vec<u8>> = if inner.trim().is_empty() {
                    Some(Vec::new())
                } else {
                    inner.split(", ").map(|n| n.trim().parse::<u8>().ok()).collect()
                };
                match bytes {
                    // An empty list is ambiguous (`responses: []`); only keep
                    // the rewrite for non-empty byte lists.
                    Some(b) if !b.is_empty() => {
                        out.push_str("b\"");
                        out.push_str(&b.escape_ascii().to_string());
                        out.push('"');
                        rest = &after[end + 1..];
                    }
                    _ => {
                        out.push('[');
                        rest = after;
                    }
                }
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The seed of a randomized test: `KETCH_SEED` if set (to replay a run), else
/// fresh from the clock. Tests print it before they start.
pub fn seed() -> u64 {
    match std::env::var("KETCH_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|e| panic!("KETCH_SEED={s:?} is not a u64: {e}")),
        Err(_) => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock before 1970").as_nanos()
                as u64
        }
    }
}

/// Whether the environment variable `name` is set to something other than "" or "0".
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Like clientv3's `GetPrefixRangeEnd`: the first key after every key with
/// prefix `p` (`"\0"`, i.e. "to the end", if there is none).
pub fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Field-by-field differences between two JSON values (etcd's first), as
/// `path: etcd=… ketch=…` lines.
pub fn json_diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => json_diff(&p, va, vb, out),
                    (Some(va), None) => out.push(format!("{p}: etcd={va} ketch=<absent>")),
                    (None, Some(vb)) => out.push(format!("{p}: etcd=<absent> ketch={vb}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                json_diff(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ if a != b => out.push(format!("{path}: etcd={a} ketch={b}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_rewrites_byte_lists() {
        let s = readable_debug("Kv { key: [102, 111, 111], value: [], list: [1000, 2] }");
        assert_eq!(s, "Kv { key: b\"foo\", value: [], list: [1000, 2] }");
    }

    #[test]
    fn json_headers_are_normalized_recursively() {
        let mut v: serde_json::Value = serde_json::json!({
            "header": {"cluster_id": 1, "member_id": 2, "revision": 3, "raft_term": 4},
            "responses": [{"Response": {"ResponseRange": {
                "header": {"revision": 3, "raft_term": 9}, "kvs": []}}}]
        });
        normalize_json_headers(&mut v);
        assert_eq!(
            v,
            serde_json::json!({
                "header": {"revision": 3},
                "responses": [{"Response": {"ResponseRange": {
                    "header": {"revision": 3}, "kvs": []}}}]
            })
        );
    }

    #[test]
    fn etcdctl_text_is_normalized() {
        let stderr = concat!(
            r#"{"level":"warn","ts":"2026-11-27T18:56:33.689Z","caller":"clientv3/retry_interceptor.go:62","#,
            r#""msg":"retrying of unary invoker failed","target":"endpoint://client-4138ac48-e67f/127.0.0.1:23790","#,
            r#""attempt":0,"error":"rpc error: code = InvalidArgument desc = etcdserver: key not found"}"#,
            "\nError: etcdserver: key not found\n"
        );
        let got = normalize_etcdctl_text(stderr, "127.0.0.1:23790");
        assert!(!got.contains("ts\""), "{got}");
        assert!(got.contains(r#""target":"endpoint://client-<id>/<endpoint>""#), "{got}");
        assert!(got.contains("code = InvalidArgument"), "{got}");
        assert!(got.ends_with("\nError: etcdserver: key not found\n"), "{got}");
        assert_eq!(
            normalize_etcdctl_text(
                "127.0.0.1:1 is healthy: successfully committed proposal: took = 1.8ms\n",
                "127.0.0.1:1"
            ),
            "<endpoint> is healthy: successfully committed proposal: took = <duration>\n"
        );
    }

    #[test]
    fn endpoint_is_normalized() {
        assert_eq!(normalize_endpoint("127.0.0.1:4000 is healthy", "127.0.0.1:4000"), "<endpoint> is healthy");
    }
}
