//! DNS for the SRV discovery tests: a network namespace of its own, whose
//! resolver is a dnsmasq serving the records a test asks for.
//!
//! etcdctl (Go) and ketchctl read `/etc/resolv.conf`. `ip netns exec <ns>`
//! bind-mounts `/etc/netns/<ns>/resolv.conf` over it for the program it
//! runs, so a [`Netns`] writes `nameserver 127.0.0.1` there, brings its
//! `lo` up, and every process of the test (dnsmasq, etcd, etcdctl,
//! ketchctl) runs inside it with `ip netns exec`
//! ([`crate::tls::in_netns`]): the machine's own DNS is never touched.
//!
//! [`Dnsmasq`] runs `dnsmasq` in the foreground on `127.0.0.1:53` of the
//! namespace, with no configuration file, no upstream server, no
//! `/etc/hosts`, and only the records given (`--srv-host`,
//! `--host-record`); names under its `--local` domain that it does not
//! know are answered NXDOMAIN, names elsewhere are refused.
//!
//! Needs root (`ip netns`), `ip` and `dnsmasq` (`scripts/test` installs
//! it). Names are `ketchsrv-<pid>-<n>`; dropping a [`Netns`] deletes the
//! namespace and `/etc/netns/<name>`, and one left by a killed test
//! process is removed by the next [`Netns::new`] once that process is
//! gone. Drop the processes in a namespace before the namespace (declare
//! the [`Netns`] first).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::tls::in_netns;
use crate::{die_with_parent, spawn_child};

/// Prefix of the namespaces made here (not `ketch-e2e-`: another module
/// owns those names).
const PREFIX: &str = "ketchsrv-";
/// Where `dnsmasq` is installed on Debian.
pub const DNSMASQ_BIN: &str = "/usr/sbin/dnsmasq";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A network namespace with `lo` up and `127.0.0.1` as its resolver.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace (panics with the reason if it cannot).
    pub fn new() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let name = format!("{PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("cannot create network namespace {name}: {e}"));
        let netns = Netns { name };
        ip(&["-n", &netns.name, "link", "set", "lo", "up"]).unwrap_or_else(|e| panic!("{e}"));
        let etc = netns.etc_dir();
        std::fs::create_dir_all(&etc).unwrap_or_else(|e| panic!("cannot create {}: {e}", etc.display()));
        std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n")
            .unwrap_or_else(|e| panic!("cannot write {}/resolv.conf: {e}", etc.display()));
        netns
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn etc_dir(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }
}

impl Default for Netns {
    fn default() -> Netns {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!("cannot delete network namespace {}: {e}", self.name);
        }
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}

/// Deletes the namespaces (and `/etc/netns` directories) of test processes
/// that are gone.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/etc/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next()) else { continue };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let _ = ip(&["netns", "delete", &name]);
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// One SRV record: `<service>` (e.g. `_etcd-client-ssl._tcp.example.test`)
/// names `<target>:<port>`.
#[derive(Clone, Debug)]
pub struct SrvRecord {
    pub service: String,
    pub target: String,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

impl SrvRecord {
    /// A record with priority and weight 0.
    pub fn new(service: &str, target: &str, port: u16) -> SrvRecord {
        SrvRecord { service: service.into(), target: target.into(), port, priority: 0, weight: 0 }
    }
}

/// dnsmasq serving fixed records in a [`Netns`] (see the module docs).
/// Killed on drop.
pub struct Dnsmasq {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq in `netns`, authoritative for `local_domain`, with
    /// `srv` records and `hosts` (`(name, IPv4 address)`), and waits until
    /// it serves.
    pub fn start(netns: &Netns, local_domain: &str, srv: &[SrvRecord], hosts: &[(&str, &str)]) -> Dnsmasq {
        let dir = tempfile::Builder::new().prefix("ketch-e2e-dnsmasq-").tempdir().expect("cannot create a directory");
        let mut args: Vec<String> = [
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--port=53",
            "--user=root",
            "--group=root",
            "--pid-file=",
            "--log-facility=-",
            "--log-queries",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--local=/{local_domain}/"));
        for r in srv {
            args.push(format!("--srv-host={},{},{},{},{}", r.service, r.target, r.port, r.priority, r.weight));
        }
        for (name, address) in hosts {
            args.push(format!("--host-record={name},{address}"));
        }
        let mut cmd = in_netns(Some(netns.name()), Path::new(DNSMASQ_BIN), &args);
        let log = OpenOptions::new().create(true).append(true).open(dir.path().join("dnsmasq.log")).expect("log");
        let log_err = log.try_clone().expect("cannot duplicate the log handle");
        cmd.stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
        die_with_parent(&mut cmd);
        let child = spawn_child(cmd).unwrap_or_else(|e| panic!("cannot start dnsmasq: {e}"));
        let mut dnsmasq = Dnsmasq { child: Some(child), dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if dnsmasq.log().contains("started, version") {
                return dnsmasq;
            }
            let exited = dnsmasq.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                let log = dnsmasq.log();
                dnsmasq.stop();
                panic!("dnsmasq did not start ({exited:?}):\n{log}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What dnsmasq logged (with `--log-queries`: every query).
    pub fn log(&self) -> String {
        std::fs::read(self.dir.path().join("dnsmasq.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- dnsmasq log:\n{}", self.log());
        }
    }
}
