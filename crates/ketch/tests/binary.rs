//! The `ketch` binary as an operator meets it: flags, bad input on the client
//! port, foreign and damaged data directories.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ketch_proto::etcdserverpb::kv_client::KvClient;
use ketch_proto::etcdserverpb::{PutRequest, RangeRequest};

const BIN: &str = env!("CARGO_BIN_EXE_ketch");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().expect("local addr").port()
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run ketch")
}

struct Server {
    child: Child,
    port: u16,
    data_dir: PathBuf,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        Self::start_with(data_dir, &[])
    }

    fn start_with(data_dir: &Path, extra: &[&str]) -> Server {
        let port = free_port();
        let child = Self::spawn_with(data_dir, port, extra);
        let server = Server { child, port, data_dir: data_dir.to_path_buf() };
        server.wait_ready();
        server
    }

    fn spawn(data_dir: &Path, port: u16) -> Child {
        Self::spawn_with(data_dir, port, &[])
    }

    fn spawn_with(data_dir: &Path, port: u16, extra: &[&str]) -> Child {
        let url = format!("http://127.0.0.1:{port}");
        // The log goes to a file: a pipe nobody reads would stall the server once full.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(data_dir))
            .expect("open the server log");
        Command::new(BIN)
            .args(extra)
            .args(["--data-dir", data_dir.to_str().expect("utf-8 path")])
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ketch")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http_get(self.port, "/health").is_some_and(|b| b.contains(r#"{"health":"true"}"#)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("ketch did not become healthy on port {}", self.port);
    }

    fn kill9(mut self) -> PathBuf {
        self.child.kill().expect("SIGKILL ketch");
        self.child.wait().expect("reap ketch");
        self.data_dir.clone()
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.with_extension("log")
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

async fn put(endpoint: &str, key: &str, value: &str) {
    let mut kv = KvClient::connect(endpoint.to_string()).await.expect("connect");
    kv.put(PutRequest { key: key.into(), value: value.into(), ..Default::default() }).await.expect("put");
}

async fn get(endpoint: &str, key: &str) -> Option<Vec<u8>> {
    let mut kv = KvClient::connect(endpoint.to_string()).await.expect("connect");
    let resp = kv.range(RangeRequest { key: key.into(), ..Default::default() }).await.expect("range").into_inner();
    resp.kvs.into_iter().next().map(|kv| kv.value)
}

/// Starts ketch expecting it to refuse; returns its stderr.
fn expect_refusal(data_dir: &Path) -> String {
    let port = free_port();
    let mut child = Server::spawn(data_dir, port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("poll ketch") {
            assert!(!status.success(), "ketch should refuse this data dir");
            return std::fs::read_to_string(log_path(data_dir)).expect("read the server log");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ketch kept running on a data dir it should refuse");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wal_segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir.join("member/wal"))
        .expect("wal dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

#[test]
fn version_and_flag_errors() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("etcd API Version: 3.4.23"));

    let out = run(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));

    let out = run(&["--max-txn-ops", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'lots'"));

    let out = run(&["--name", "a", "--initial-cluster", "b=http://localhost:2380"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("couldn't find local name \"a\""));
}

#[test]
fn etcd_environment_variables_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .env("ETCD_NAME", "from-env")
        .env("ETCD_INITIAL_ADVERTISE_PEER_URLS", "http://127.0.0.1:1")
        .env("ETCD_LISTEN_CLIENT_URLS", &url)
        .env("ETCD_ADVERTISE_CLIENT_URLS", &url)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ketch");
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(port, "/health").is_none() {
        assert!(Instant::now() < deadline, "ketch did not start from ETCD_* variables");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(dir.path().join("from-env.ketch/member/kv.redb").exists(), "data dir defaults to ${{name}}.ketch");
}

#[test]
fn garbage_and_half_open_connections_do_not_hurt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("d"));
    let mut held = Vec::new();
    for i in 0..50u32 {
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        match i % 3 {
            // Random bytes.
            0 => {
                let junk: Vec<u8> =
                    (0..4096u32).map(|j| (j.wrapping_mul(2654435761).wrapping_add(i) >> 7) as u8).collect();
                let _ = s.write_all(&junk);
            }
            // Half an HTTP/2 preface, then silence.
            1 => {
                let _ = s.write_all(b"PRI * HTTP/2.0\r\n");
            }
            // A valid preface and a frame header promising a body that never comes.
            _ => {
                let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x10\x00\x04\x00\x00\x00\x00\x00");
            }
        }
        held.push(s);
    }
    let health = http_get(server.port, "/health").expect("health answers");
    assert!(health.contains(r#"{"health":"true"}"#), "{health}");
    let ep = server.endpoint();
    rt().block_on(async {
        put(&ep, "k", "v").await;
        assert_eq!(get(&ep, "k").await.as_deref(), Some(&b"v"[..]));
    });
    drop(held);
}

#[test]
fn torn_wal_tail_is_repaired_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("d"));
    let ep = server.endpoint();
    rt().block_on(async {
        for i in 0..20 {
            put(&ep, &format!("k{i}"), &format!("v{i}")).await;
        }
    });
    let data_dir = server.kill9();
    // A crash in the middle of writing one more record.
    let last = wal_segments(&data_dir).pop().expect("a segment");
    let mut f = std::fs::OpenOptions::new().append(true).open(&last).expect("open segment");
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 1, 9]).expect("append torn record");
    drop(f);
    let server = Server::start(&data_dir);
    let ep = server.endpoint();
    rt().block_on(async {
        for i in 0..20 {
            assert_eq!(get(&ep, &format!("k{i}")).await, Some(format!("v{i}").into_bytes()));
        }
        put(&ep, "after", "repair").await;
    });
}

#[test]
fn damaged_wal_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("d"));
    let ep = server.endpoint();
    rt().block_on(async {
        for i in 0..20 {
            put(&ep, &format!("k{i}"), &"x".repeat(100)).await;
        }
    });
    let data_dir = server.kill9();
    let seg = wal_segments(&data_dir).pop().expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("read segment");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&seg, bytes).expect("write segment");
    let err = expect_refusal(&data_dir);
    assert!(err.contains("corrupt"), "stderr: {err}");
}

#[test]
fn etcd_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("etcd-data");
    if Path::new("/usr/bin/etcd").exists() {
        // Let the real etcd write its data dir.
        let (client, peer) = (free_port(), free_port());
        let (c, p) = (format!("http://127.0.0.1:{client}"), format!("http://127.0.0.1:{peer}"));
        let mut etcd = Command::new("/usr/bin/etcd")
            .args(["--name", "e", "--data-dir", data_dir.to_str().expect("utf-8")])
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &format!("e={p}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !data_dir.join("member/snap/db").exists() {
            assert!(Instant::now() < deadline, "etcd did not create its data dir");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = etcd.kill();
        let _ = etcd.wait();
    } else {
        // Without the reference binary, etcd's layout: member/snap/db (bbolt) and member/wal.
        std::fs::create_dir_all(data_dir.join("member/snap")).expect("mkdir");
        std::fs::write(data_dir.join("member/snap/db"), [0u8; 4096]).expect("write db");
    }
    let err = expect_refusal(&data_dir);
    assert!(err.contains("was written by etcd"), "stderr: {err}");
    assert!(!data_dir.join("member/kv.redb").exists(), "nothing of ours was written into etcd's dir");
}

/// Regression: after `kill -9` the backend rolls back to its last durable commit
/// and the WAL replays the rest; the member must not answer reads before the
/// replay is done (it once served the rolled-back state for a moment).
#[test]
fn restart_serves_only_after_the_log_is_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("d"));
    let ep = server.endpoint();
    rt().block_on(async {
        for i in 0..300 {
            put(&ep, &format!("k{i:03}"), "v").await;
        }
    });
    let data_dir = server.kill9();
    let server = Server::start(&data_dir);
    let ep = server.endpoint();
    rt().block_on(async {
        let mut kv = KvClient::connect(ep.clone()).await.expect("connect");
        let range =
            RangeRequest { key: b"k".to_vec(), range_end: b"l".to_vec(), count_only: true, ..Default::default() };
        let resp = kv.range(range).await.expect("range").into_inner();
        assert_eq!(resp.count, 300, "every acknowledged put is visible at the first read");
        assert_eq!(resp.header.map(|h| h.revision), Some(301));
    });
}

/// A member that has taken a snapshot (the backend durably holds the state, the
/// WAL keeps a marker and only what follows it) restarts from it after kill -9,
/// with nothing lost, and keeps going.
#[test]
fn restart_from_a_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--snapshot-count", "100"];
    let server = Server::start_with(&dir.path().join("d"), &args);
    let ep = server.endpoint();
    rt().block_on(async {
        for i in 0..400 {
            put(&ep, &format!("k{i:03}"), &format!("v{i}")).await;
        }
    });
    // The backend's durable commit (and so the snapshot) follows within a second of quiet.
    std::thread::sleep(Duration::from_millis(1500));
    rt().block_on(async {
        for i in 400..450 {
            put(&ep, &format!("k{i:03}"), &format!("v{i}")).await;
        }
    });
    let data_dir = server.kill9();
    let log = std::fs::read_to_string(log_path(&data_dir)).expect("read the server log");
    assert!(log.contains("snapshot taken"), "the premise: a snapshot was taken before the crash");
    let server = Server::start_with(&data_dir, &args);
    let ep = server.endpoint();
    rt().block_on(async {
        let mut kv = KvClient::connect(ep.clone()).await.expect("connect");
        let range = RangeRequest { key: b"k".to_vec(), range_end: b"l".to_vec(), ..Default::default() };
        let resp = kv.range(range).await.expect("range").into_inner();
        assert_eq!(resp.count, 450);
        assert_eq!(resp.kvs[449].value, b"v449");
        assert_eq!(resp.header.map(|h| h.revision), Some(451));
        put(&ep, "after", "restart").await;
    });
}

/// Waits until `path` contains `needle`; false after `timeout`.
fn log_contains(path: &Path, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_peer_from_another_cluster_is_refused() {
    // Two members that name each other, but with different cluster tokens:
    // different cluster IDs, so neither accepts the other's raft traffic and
    // no leader (hence no client service) ever appears.
    let dir = tempfile::tempdir().expect("temp dir");
    let (pa, pb) = (free_port(), free_port());
    let cluster = format!("a=http://127.0.0.1:{pa},b=http://127.0.0.1:{pb}");
    let mut children = Vec::new();
    for (name, peer, token) in [("a", pa, "one"), ("b", pb, "two")] {
        let data_dir = dir.path().join(name);
        let peer_url = format!("http://127.0.0.1:{peer}");
        let args = [
            "--name",
            name,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &cluster,
            "--initial-cluster-token",
            token,
            "--heartbeat-interval",
            "20",
            "--election-timeout",
            "200",
        ];
        children.push((Server::spawn_with(&data_dir, free_port(), &args), data_dir));
    }
    for (_, data_dir) in &children {
        let log = log_path(data_dir);
        assert!(
            log_contains(&log, "request cluster ID mismatch", Duration::from_secs(20)),
            "{} never refused the other cluster's member:\n{}",
            log.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(log_contains(&log, "peer refused this member", Duration::from_secs(10)));
    }
    for (mut child, _) in children {
        assert!(child.try_wait().expect("poll").is_none(), "a refused peer must not stop the member");
        let _ = child.kill();
        let _ = child.wait();
    }
}
