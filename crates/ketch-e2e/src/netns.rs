//! A real network for end-to-end tests: one Linux network namespace per host,
//! joined by a bridge, with packet-level faults.
//!
//! # Approach
//!
//! [`Net::new`] creates a namespace holding a Linux bridge (the "switch") and
//! a veth pair from the test's own (root) namespace to it: the test process is
//! the *client* host at `10.A.B.1` and reaches every host directly, through
//! the switch. [`Net::add_host`] creates a namespace per host with a veth
//! `eth0` at `10.A.B.(10 + i)`, plugged into the switch. A process started
//! with [`Net::command`] (`ip netns exec <ns> ...`) sees only `lo` and that
//! `eth0`, so a server in it can listen on fixed ports (2379, 2380) and every
//! packet between two hosts crosses the switch.
//!
//! Faults are real packet drops and delays, not a proxy:
//!
//! - [`Net::partition`], [`Net::one_way`] and the loss of [`Net::netem`] are
//!   one nftables table in the switch's namespace (`bridge` family, `forward`
//!   hook): a rule per blocked (source, destination) pair drops the frame,
//!   and `numgen random` drops a host's outbound frames with a probability.
//!   Dropping in the switch, rather than in a sender's `output` hook, keeps
//!   the failure silent as on a real network (a local `drop` would make the
//!   sender's `send`/`connect` fail at once with `EPERM`). Every change
//!   rewrites the whole table in one atomic `nft -f` transaction.
//! - The delay of [`Net::netem`] is `tc qdisc netem` on the host's `eth0`
//!   (its egress) when the kernel has netem. Kernels without
//!   `CONFIG_NET_SCH_NETEM` (such as the one this suite was written on) get
//!   the same effect from userspace: an `iptables` `NFQUEUE` rule on the
//!   host's egress hands every packet to a thread of this process, which
//!   accepts it (raw `nfnetlink_queue`) once its delay, plus a random
//!   jitter, has passed, so packets are also reordered. [`Net::delay_mechanism`]
//!   says which one is in use; `KETCH_E2E_DELAY=nfqueue` forces the
//!   fallback where netem exists.
//! - Faults touch only traffic between the hosts added with
//!   [`Net::add_host`] (partitions) or leaving a host (loss, delay); the
//!   client in the root namespace is never partitioned.
//!
//! Names are unique per test run and `Net` instance (`ketch-e2e-<pid>-<n>-*`
//! namespaces, a `10.A.B.0/24` not in use in the root namespace), so tests
//! may run in parallel. Dropping a [`Net`] deletes its namespaces (and with
//! them the veths, the bridge, the rules and the qdiscs) and stops the delay
//! threads; it runs during a panic's unwinding too. Processes started in a
//! namespace keep it alive after its name is gone, so kill them first (a
//! [`crate::net_cluster::NetCluster`] does). Namespaces left behind by a
//! test process that was killed outright are removed by the next
//! [`Net::new`] once that process is gone.
//!
//! Needs root (`CAP_NET_ADMIN`, `CAP_SYS_ADMIN` for `setns`), `ip` and `tc`
//! (iproute2), `nft` (nftables) and, without netem, `iptables`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Prefix of every namespace this module creates.
const NS_PREFIX: &str = "ketch-e2e-";
/// Name of the nftables table (in the switch's namespace).
const TABLE: &str = "ketch_e2e";

/// How [`Net::netem`] delays packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayMechanism {
    /// `tc qdisc netem` on the host's egress.
    Netem,
    /// `iptables -j NFQUEUE` and a userspace thread that releases each packet
    /// after its delay (the kernel has no netem).
    NfQueue,
}

/// One host: a namespace with `eth0` on the switch.
#[derive(Clone, Debug)]
pub struct Host {
    /// The name given to [`Net::add_host`].
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its address.
    pub addr: Ipv4Addr,
}

/// Faults in force; [`Net::apply`] turns them into rules.
#[derive(Default)]
struct Faults {
    /// Directed (from, to) host pairs whose packets are dropped.
    blocked: BTreeSet<(usize, usize)>,
    /// Per host: outbound packets dropped, per mille.
    loss: BTreeMap<usize, u32>,
    /// Per host: the delay in force (mean, jitter) and its NFQUEUE thread.
    delay: BTreeMap<usize, Delay>,
}

struct Delay {
    queue: Option<Arc<QueueThread>>,
}

/// A bridged set of network namespaces; see the module documentation.
pub struct Net {
    tag: String,
    subnet: (u8, u8),
    bridge_ns: String,
    client_if: String,
    hosts: Vec<Host>,
    faults: Mutex<Faults>,
    mechanism: DelayMechanism,
}

impl Net {
    /// Creates the switch and the client's link to it. Fails (with what is
    /// missing) if this process is not root or a tool is absent.
    pub fn new() -> Result<Net, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root (run the test as root)".into());
        }
        for tool in ["ip", "tc", "nft"] {
            if !on_path(tool) {
                return Err(format!("`{tool}` is not installed (scripts/test installs iproute2 and nftables)"));
            }
        }
        remove_stale_namespaces();
        static NETS: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = NETS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{NS_PREFIX}{pid}-{n}");
        let subnet = pick_subnet(pid, n)?;
        let mut net = Net {
            bridge_ns: format!("{tag}-sw"),
            // Interface names are at most 15 bytes: "k" + 8 hex digits + "c" + n.
            client_if: format!("k{pid:x}c{}", n % 10_000),
            tag,
            subnet,
            hosts: Vec::new(),
            faults: Mutex::new(Faults::default()),
            mechanism: DelayMechanism::Netem,
        };
        // From here on, Drop cleans up whatever was created.
        net.create_switch()?;
        net.mechanism = net.probe_delay_mechanism()?;
        Ok(net)
    }

    fn create_switch(&self) -> Result<(), String> {
        let a = self.client_addr();
        run(&["ip", "netns", "add", &self.bridge_ns])?;
        run(&["ip", "-n", &self.bridge_ns, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &self.bridge_ns, "link", "set", "br0", "up"])?;
        run(&["ip", "link", "add", &self.client_if, "type", "veth", "peer", "name", "pc", "netns", &self.bridge_ns])?;
        run(&["ip", "-n", &self.bridge_ns, "link", "set", "pc", "master", "br0", "up"])?;
        run(&["ip", "addr", "add", &format!("{a}/24"), "dev", &self.client_if])?;
        run(&["ip", "link", "set", &self.client_if, "up"])?;
        self.apply_rules(&Faults::default())
    }

    /// Netem if the kernel has it (tried on the client's veth), else NFQUEUE
    /// (which needs iptables).
    fn probe_delay_mechanism(&self) -> Result<DelayMechanism, String> {
        if std::env::var("KETCH_E2E_DELAY").as_deref() != Ok("nfqueue") {
            let probe = ["tc", "-n", &self.bridge_ns, "qdisc", "add", "dev", "pc", "root", "netem", "delay", "0ms"];
            if run(&probe).is_ok() {
                run(&["tc", "-n", &self.bridge_ns, "qdisc", "del", "dev", "pc", "root"])?;
                return Ok(DelayMechanism::Netem);
            }
        }
        if !on_path("iptables") {
            return Err("the kernel has no netem and `iptables` (for the NFQUEUE fallback) is not installed".into());
        }
        Ok(DelayMechanism::NfQueue)
    }

    /// How [`Net::netem`] delays packets here.
    pub fn delay_mechanism(&self) -> DelayMechanism {
        self.mechanism
    }

    /// Adds a host named `name` (its namespace `<tag>-<name>`) at the next
    /// address, plugged into the switch; returns its index.
    pub fn add_host(&mut self, name: &str) -> Result<usize, String> {
        let i = self.hosts.len();
        if i >= 200 {
            return Err("at most 200 hosts per Net".into());
        }
        let ns = format!("{}-{name}", self.tag);
        let addr = Ipv4Addr::new(10, self.subnet.0, self.subnet.1, 10 + i as u8);
        run(&["ip", "netns", "add", &ns])?;
        // Record it before anything else can fail, so that Drop deletes it.
        self.hosts.push(Host { name: name.to_string(), ns: ns.clone(), addr });
        let port = format!("p{i}");
        run(&[
            "ip",
            "-n",
            &ns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.bridge_ns,
        ])?;
        run(&["ip", "-n", &self.bridge_ns, "link", "set", &port, "master", "br0", "up"])?;
        run(&["ip", "-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        Ok(i)
    }

    /// The hosts, in index order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].addr
    }

    /// Host `i`'s namespace.
    pub fn ns(&self, i: usize) -> &str {
        &self.hosts[i].ns
    }

    /// The client's (this process's) address on the switch.
    pub fn client_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet.0, self.subnet.1, 1)
    }

    /// The unique tag in every name of this network (`ketch-e2e-<pid>-<n>`).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// A command running `program` in host `i`'s namespace (`ip netns exec`;
    /// the process id is `program`'s, as `ip` execs it).
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.arg("netns").arg("exec").arg(&self.hosts[i].ns).arg(program);
        cmd
    }

    /// Runs `args` in host `i`'s namespace and returns its stdout; `Err` with
    /// its stderr if it fails.
    pub fn exec(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", &self.hosts[i].ns];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Splits the hosts: two hosts listed in `groups` exchange packets only
    /// if some group holds both (so a host in two groups is a bridge between
    /// them); a host in no group keeps talking to everyone. Replaces any
    /// earlier partition or one-way fault.
    pub fn partition(&self, groups: &[&[usize]]) -> Result<(), String> {
        let listed: BTreeSet<usize> = groups.iter().flat_map(|g| g.iter().copied()).collect();
        for &h in &listed {
            self.check_host(h)?;
        }
        let mut faults = self.lock();
        faults.blocked.clear();
        for &a in &listed {
            for &b in &listed {
                if a != b && !groups.iter().any(|g| g.contains(&a) && g.contains(&b)) {
                    faults.blocked.insert((a, b));
                }
            }
        }
        self.apply_rules(&faults)
    }

    /// Drops every packet host `from` sends to the other hosts (it still
    /// receives theirs). Adds to the faults in force.
    pub fn one_way(&self, from: usize) -> Result<(), String> {
        self.check_host(from)?;
        let mut faults = self.lock();
        for to in 0..self.hosts.len() {
            if to != from {
                faults.blocked.insert((from, to));
            }
        }
        self.apply_rules(&faults)
    }

    /// Degrades host `i`'s outbound packets (to everyone, the client
    /// included): each is delayed by `delay` ± `jitter` (uniform; reorders
    /// packets when `jitter` > 0) and lost with probability `loss` (0.0 to
    /// 1.0). Replaces an earlier `netem` of host `i`.
    pub fn netem(&self, i: usize, delay: Duration, jitter: Duration, loss: f64) -> Result<(), String> {
        self.check_host(i)?;
        if !(0.0..=1.0).contains(&loss) {
            return Err(format!("loss must be a probability, not {loss}"));
        }
        let mut faults = self.lock();
        if let Some(old) = faults.delay.remove(&i) {
            self.clear_delay(i, old)?;
        }
        if delay > Duration::ZERO || jitter > Duration::ZERO {
            let d = self.start_delay(i, delay, jitter)?;
            faults.delay.insert(i, d);
        }
        let per_mille = (loss * 1000.0).round() as u32;
        if per_mille > 0 {
            faults.loss.insert(i, per_mille);
        } else {
            faults.loss.remove(&i);
        }
        self.apply_rules(&faults)
    }

    /// Removes every fault: partitions, one-way drops, loss and delays.
    pub fn heal(&self) -> Result<(), String> {
        let mut faults = self.lock();
        faults.blocked.clear();
        faults.loss.clear();
        let mut first_error = self.apply_rules(&faults).err();
        for (i, d) in std::mem::take(&mut faults.delay) {
            if let Err(e) = self.clear_delay(i, d) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The faults in force, one line (for logs and failure messages).
    pub fn describe(&self) -> String {
        let faults = self.lock();
        let name = |i: &usize| self.hosts.get(*i).map_or("?", |h| h.name.as_str()).to_string();
        let blocked: Vec<String> = faults.blocked.iter().map(|(a, b)| format!("{}->{}", name(a), name(b))).collect();
        let loss: Vec<String> = faults.loss.iter().map(|(h, l)| format!("{}:{}‰", name(h), l)).collect();
        let delay: Vec<String> = faults.delay.keys().map(name).collect();
        format!("blocked [{}], loss [{}], delayed [{}]", blocked.join(" "), loss.join(" "), delay.join(" "))
    }

    /// The switch's nftables rules as `nft list` prints them, with counters.
    pub fn rules(&self) -> Result<String, String> {
        run(&["ip", "netns", "exec", &self.bridge_ns, "nft", "list", "table", "bridge", TABLE])
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_host(&self, i: usize) -> Result<(), String> {
        if i < self.hosts.len() { Ok(()) } else { Err(format!("no host {i} (there are {})", self.hosts.len())) }
    }

    /// Rewrites the switch's table from `faults`, atomically.
    fn apply_rules(&self, faults: &Faults) -> Result<(), String> {
        let mut script = format!(
            "add table bridge {TABLE}\ndelete table bridge {TABLE}\ntable bridge {TABLE} {{\n  chain filter {{\n    \
             type filter hook forward priority 0; policy accept;\n"
        );
        for &(a, b) in &faults.blocked {
            script.push_str(&format!("    ip saddr {} ip daddr {} counter drop\n", self.addr(a), self.addr(b)));
        }
        for (&h, &per_mille) in &faults.loss {
            let addr = self.addr(h);
            if per_mille >= 1000 {
                script.push_str(&format!("    ip saddr {addr} counter drop\n"));
            } else {
                script.push_str(&format!("    ip saddr {addr} numgen random mod 1000 < {per_mille} counter drop\n"));
            }
        }
        script.push_str("  }\n}\n");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.bridge_ns, "nft", "-f", "-"]);
        run_with_input(cmd, &script).map(|_| ()).map_err(|e| format!("{e}\nscript:\n{script}"))
    }

    fn start_delay(&self, i: usize, delay: Duration, jitter: Duration) -> Result<Delay, String> {
        let ns = self.hosts[i].ns.clone();
        match self.mechanism {
            DelayMechanism::Netem => {
                let d = format!("{}us", delay.as_micros());
                let j = format!("{}us", jitter.as_micros());
                run(&["tc", "-n", &ns, "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &d, &j])?;
                Ok(Delay { queue: None })
            }
            DelayMechanism::NfQueue => {
                let queue = QueueThread::start(&ns, QUEUE_NUM, delay, jitter)?;
                // Only once the thread is bound does the rule go in (with
                // --queue-bypass, packets pass while nobody listens).
                let rule = nfqueue_rule("-A");
                let mut args = vec!["ip", "netns", "exec", &ns];
                args.extend(rule.iter().map(String::as_str));
                if let Err(e) = run(&args) {
                    queue.stop();
                    return Err(e);
                }
                Ok(Delay { queue: Some(queue) })
            }
        }
    }

    fn clear_delay(&self, i: usize, delay: Delay) -> Result<(), String> {
        let ns = &self.hosts[i].ns;
        match delay.queue {
            None => run(&["tc", "-n", ns, "qdisc", "del", "dev", "eth0", "root"]).map(|_| ()),
            Some(queue) => {
                let rule = nfqueue_rule("-D");
                let mut args = vec!["ip", "netns", "exec", ns.as_str()];
                args.extend(rule.iter().map(String::as_str));
                let removed = run(&args).map(|_| ());
                // Releases what is still queued.
                queue.stop();
                removed
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let delays = std::mem::take(&mut self.lock().delay);
        for (_, d) in delays {
            if let Some(q) = d.queue {
                q.stop();
            }
        }
        for host in &self.hosts {
            if let Err(e) = run(&["ip", "netns", "del", &host.ns]) {
                eprintln!("netns cleanup: {e}");
            }
        }
        // Deleting the switch's namespace deletes the client veth's peer, and
        // with it the client veth; delete it explicitly too in case.
        if let Err(e) = run(&["ip", "netns", "del", &self.bridge_ns]) {
            eprintln!("netns cleanup: {e}");
        }
        let _ = run(&["ip", "link", "del", &self.client_if]);
    }
}

/// The NFQUEUE number used in every host namespace (queues are per namespace).
const QUEUE_NUM: u16 = 7;

/// `iptables` arguments adding (`-A`) or deleting (`-D`) the rule that
/// queues the host's egress for the delay thread.
fn nfqueue_rule(action: &str) -> Vec<String> {
    [
        "iptables",
        "-w",
        "-t",
        "mangle",
        action,
        "POSTROUTING",
        "-o",
        "eth0",
        "-j",
        "NFQUEUE",
        "--queue-num",
        &QUEUE_NUM.to_string(),
        "--queue-bypass",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Whether `tool` is an executable on `PATH`.
fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
}

/// Runs `args` (program first), bounded by 20 s; its stdout, or `Err` with
/// the command and its stderr.
fn run(args: &[&str]) -> Result<String, String> {
    let (program, rest) = args.split_first().ok_or("empty command")?;
    let mut cmd = Command::new(program);
    cmd.args(rest);
    run_with_input(cmd, "")
}

fn run_with_input(mut cmd: Command, input: &str) -> Result<String, String> {
    use std::io::Write;
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().map_err(|e| format!("{shown}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(|e| format!("{shown}: writing stdin: {e}"))?;
    }
    let output: Output = child.wait_with_output().map_err(|e| format!("{shown}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("{shown} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// Deletes namespaces `ketch-e2e-<pid>-*` whose process is gone.
fn remove_stale_namespaces() {
    let Ok(list) = run(&["ip", "netns", "list"]) else { return };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix(NS_PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("netns: removing {name}, left behind by process {pid}");
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// A `10.A.B.0/24` derived from the process id and instance number that no
/// address or route of the root namespace uses.
fn pick_subnet(pid: u32, n: u32) -> Result<(u8, u8), String> {
    let addrs = run(&["ip", "-4", "-o", "addr", "show"])?;
    let routes = run(&["ip", "-4", "route", "show", "table", "all"])?;
    // 10.200.0.0 - 10.254.255.0: 55 * 256 subnets, rarely used by anything else.
    let slots = 55 * 256;
    let start = (pid.wrapping_mul(2_654_435_761) ^ n.wrapping_mul(40_503)) % slots;
    for k in 0..slots {
        let s = (start + k) % slots;
        let (a, b) = (200 + (s / 256) as u8, (s % 256) as u8);
        let prefix = format!("10.{a}.{b}.");
        if !addrs.contains(&prefix) && !routes.contains(&prefix) {
            return Ok((a, b));
        }
    }
    Err("no free 10.x.y.0/24 subnet".into())
}

// ---- The NFQUEUE delay thread: raw nfnetlink_queue over a netlink socket. ----

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NF_ACCEPT: u32 = 1;
const NLMSG_ERROR: u16 = 2;

/// A thread in a host's namespace that accepts each queued packet after its
/// delay. Stopping it accepts everything still held.
struct QueueThread {
    stop: AtomicBool,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl QueueThread {
    fn start(ns: &str, queue: u16, delay: Duration, jitter: Duration) -> Result<Arc<QueueThread>, String> {
        let this = Arc::new(QueueThread { stop: AtomicBool::new(false), handle: Mutex::new(None) });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let ns_path = format!("/var/run/netns/{ns}");
        let me = Arc::clone(&this);
        let handle = std::thread::Builder::new()
            .name(format!("netns-delay-{ns}"))
            .spawn(move || {
                let socket = match NlSocket::open_in(&ns_path, queue) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                socket.serve(&me.stop, queue, delay, jitter);
            })
            .map_err(|e| format!("cannot start the delay thread: {e}"))?;
        *this.handle.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(this),
            Ok(Err(e)) => {
                this.stop();
                Err(e)
            }
            Err(_) => {
                this.stop();
                Err(format!("the delay thread for {ns} did not start"))
            }
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
    }
}

struct NlSocket {
    fd: libc::c_int,
    seq: u32,
}

impl Drop for NlSocket {
    fn drop(&mut self) {
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(self.fd) };
    }
}

impl NlSocket {
    /// Moves the calling thread into the namespace at `ns_path`, opens a
    /// netfilter netlink socket there and binds it to queue `queue`.
    fn open_in(ns_path: &str, queue: u16) -> Result<NlSocket, String> {
        let path = std::ffi::CString::new(ns_path).map_err(|e| e.to_string())?;
        // SAFETY: plain syscalls on a valid C string and the fds they return.
        unsafe {
            let nsfd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if nsfd < 0 {
                return Err(format!("open {ns_path}: {}", std::io::Error::last_os_error()));
            }
            let rc = libc::setns(nsfd, libc::CLONE_NEWNET);
            let err = std::io::Error::last_os_error();
            libc::close(nsfd);
            if rc != 0 {
                return Err(format!("setns {ns_path}: {err}"));
            }
            let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER);
            if fd < 0 {
                return Err(format!("netlink socket: {}", std::io::Error::last_os_error()));
            }
            let mut sock = NlSocket { fd, seq: 0 };
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            let rc = libc::bind(
                fd,
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            );
            if rc != 0 {
                return Err(format!("netlink bind: {}", std::io::Error::last_os_error()));
            }
            // A large receive buffer: packets arrive in bursts.
            let size: libc::c_int = 8 << 20;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
            let mut cmd = Vec::new();
            push_attr(&mut cmd, NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0]);
            sock.request(NFQNL_MSG_CONFIG, queue, &cmd)?;
            let mut params = Vec::new();
            let mut p = 0u32.to_be_bytes().to_vec();
            p.push(NFQNL_COPY_META);
            push_attr(&mut params, NFQA_CFG_PARAMS, &p);
            push_attr(&mut params, NFQA_CFG_QUEUE_MAXLEN, &65_536u32.to_be_bytes());
            sock.request(NFQNL_MSG_CONFIG, queue, &params)?;
            Ok(sock)
        }
    }

    fn send(&mut self, msg_type: u16, queue: u16, attrs: &[u8], ack: bool) -> Result<(), String> {
        self.seq += 1;
        let len = 16 + 4 + attrs.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | msg_type).to_ne_bytes());
        let flags = libc::NLM_F_REQUEST as u16 | if ack { libc::NLM_F_ACK as u16 } else { 0 };
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version, res_id (big endian).
        msg.push(libc::AF_UNSPEC as u8);
        msg.push(0);
        msg.extend_from_slice(&queue.to_be_bytes());
        msg.extend_from_slice(attrs);
        // SAFETY: sending our own buffer on our own socket.
        let sent = unsafe { libc::send(self.fd, msg.as_ptr() as *const libc::c_void, msg.len(), 0) };
        if sent < 0 {
            return Err(format!("netlink send: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Sends a config request and waits for its acknowledgement.
    fn request(&mut self, msg_type: u16, queue: u16, attrs: &[u8]) -> Result<(), String> {
        self.send(msg_type, queue, attrs, true)?;
        let mut buf = vec![0u8; 8192];
        // SAFETY: receiving into our own buffer.
        let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 0 {
            return Err(format!("netlink recv: {}", std::io::Error::last_os_error()));
        }
        let buf = &buf[..n as usize];
        if buf.len() >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
            let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            if code != 0 {
                return Err(format!("nfqueue config: {}", std::io::Error::from_raw_os_error(-code)));
            }
        }
        Ok(())
    }

    /// Holds every packet of the queue for `delay` ± `jitter`, until `stop`.
    fn serve(mut self, stop: &AtomicBool, queue: u16, delay: Duration, jitter: Duration) {
        use rand::Rng;
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        use std::time::Instant;
        let mut rng = rand::rng();
        let mut held: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            let now = Instant::now();
            while let Some(Reverse((at, id))) = held.peek().copied() {
                if at > now && !stopping {
                    break;
                }
                held.pop();
                self.accept(queue, id);
            }
            if stopping {
                return;
            }
            let wait = held.peek().map_or(Duration::from_millis(20), |Reverse((at, _))| {
                at.saturating_duration_since(now).min(Duration::from_millis(20))
            });
            let mut pfd = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as libc::c_int) };
            if ready <= 0 {
                continue;
            }
            loop {
                // SAFETY: receiving into our own buffer, without blocking.
                let n = unsafe {
                    libc::recv(self.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), libc::MSG_DONTWAIT)
                };
                if n <= 0 {
                    break;
                }
                for id in packet_ids(&buf[..n as usize]) {
                    let spread = jitter.as_micros() as i64;
                    let offset = if spread > 0 { rng.random_range(-spread..=spread) } else { 0 };
                    let micros = (delay.as_micros() as i64 + offset).max(0) as u64;
                    held.push(Reverse((Instant::now() + Duration::from_micros(micros), id)));
                }
            }
        }
    }

    fn accept(&mut self, queue: u16, id: u32) {
        let mut attrs = Vec::new();
        let mut hdr = NF_ACCEPT.to_be_bytes().to_vec();
        hdr.extend_from_slice(&id.to_be_bytes());
        push_attr(&mut attrs, NFQA_VERDICT_HDR, &hdr);
        // A failed verdict leaves the packet queued until the socket closes
        // (then the kernel drops it): a lost packet, which TCP survives.
        let _ = self.send(NFQNL_MSG_VERDICT, queue, &attrs, false);
    }
}

/// Appends a netlink attribute (4-byte aligned).
fn push_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// The packet ids of the `NFQNL_MSG_PACKET` messages in one netlink read.
fn packet_ids(mut buf: &[u8]) -> Vec<u32> {
    let mut ids = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < 16 || len > buf.len() {
            break;
        }
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET && len >= 20 {
            let mut attrs = &buf[20..len];
            while attrs.len() >= 4 {
                let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                let akind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
                if alen < 4 || alen > attrs.len() {
                    break;
                }
                if akind == NFQA_PACKET_HDR && alen >= 8 {
                    ids.push(u32::from_be_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]));
                }
                let step = (alen + 3) & !3;
                attrs = &attrs[step.min(attrs.len())..];
            }
        }
        let step = (len + 3) & !3;
        buf = &buf[step.min(buf.len())..];
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_are_parsed_from_netlink_messages() {
        let mut attrs = Vec::new();
        let mut hdr = 0x0102_0304u32.to_be_bytes().to_vec();
        hdr.extend_from_slice(&[0x08, 0x00, 3]);
        push_attr(&mut attrs, NFQA_PACKET_HDR, &hdr);
        push_attr(&mut attrs, 9, &[1, 2, 3, 4, 5]);
        let mut msg = Vec::new();
        let len = 20 + attrs.len();
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&[0; 4]);
        msg.extend_from_slice(&attrs);
        let mut two = msg.clone();
        two.extend_from_slice(&msg);
        assert_eq!(packet_ids(&two), vec![0x0102_0304, 0x0102_0304]);
        assert_eq!(packet_ids(&two[..7]), Vec::<u32>::new());
    }
}
