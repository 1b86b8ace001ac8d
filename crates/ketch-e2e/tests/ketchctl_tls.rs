//! ketchctl against etcdctl 3.4.23 with TLS and DNS SRV discovery: the same
//! command lines, etcdctl on one real etcd, ketchctl on its twin (same
//! member and cluster IDs), must print the same bytes and exit with the
//! same code. Ketch has no TLS yet, so both twins are real etcds serving
//! clients over TLS ([`TlsEtcd`]), with certificates made at test time
//! ([`Pki`]).
//!
//! Covered: TLS and mutual TLS (flags, `ETCDCTL_*` variables, `https://`
//! endpoints), `--insecure-skip-tls-verify` and `--insecure-transport`, the
//! failures (unknown CA, no client certificate, TLS to a plain server and
//! plain to a TLS server, unreadable or mismatched certificate files), and
//! `--discovery-srv` against dnsmasq in a network namespace of the test's
//! own ([`Netns`]), where etcd, dnsmasq, etcdctl and ketchctl all run.
//!
//! Normalised before comparing: each twin's endpoint (and port, and for
//! discovery its domain), log timestamps and client ids, `took` durations
//! and the database size.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ketch_e2e::ctl::run_to_end;
use ketch_e2e::dns::{Dnsmasq, Netns, SrvRecord};
use ketch_e2e::tls::{ClientAuth, Pki, TlsEtcd, in_netns};
use ketch_e2e::{ETCDCTL_BIN, Kind, Member, ketchctl_binary, normalize_etcdctl_text};

/// The advertised peer URL of every twin: never dialed by a lone member.
const TWIN_PEER_URL: &str = "http://127.0.0.1:1";
/// Bound on one command run.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// `--command-timeout` of the commands expected to fail (etcdctl waits for
/// all of it).
const FAIL_FAST: &str = "--command-timeout=2s";

fn twin_flags() -> Vec<String> {
    vec![
        "--initial-advertise-peer-urls".into(),
        TWIN_PEER_URL.into(),
        "--initial-cluster".into(),
        format!("e={TWIN_PEER_URL}"),
    ]
}

/// One command's result.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Out {
    stdout: String,
    stderr: String,
    code: i32,
}

/// `program args` with `ETCDCTL_API=3`, none of the caller's `ETCDCTL_*`,
/// `env`, in `netns` if given.
fn run(program: &Path, netns: Option<&str>, args: &[String], env: &[(&str, String)]) -> Out {
    let mut cmd: Command = in_netns(netns, program, args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("ETCDCTL_API", "3").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_to_end(cmd, None, &[], RUN_TIMEOUT);
    Out { stdout: out.text(), stderr: out.stderr, code: out.code }
}

/// What differs legitimately between the two sides: each side's
/// `(text, placeholder)` pairs.
struct Side {
    replacements: Vec<(String, String)>,
}

impl Side {
    fn normalize(&self, text: &str) -> String {
        let mut text = normalize_etcdctl_text(text, "\u{0}");
        for (from, to) in &self.replacements {
            text = text.replace(from.as_str(), to);
        }
        let mut out = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            let mut line = line.to_string();
            // endpoint status: the database size differs between twins.
            if line.contains("3.4.23") {
                for unit in [" B,", " kB,", " MB,"] {
                    if let Some(pos) = line.find(unit) {
                        let start = line[..pos].rfind(' ').map_or(0, |i| i + 1);
                        line.replace_range(start..pos + unit.len() - 1, "<size>");
                    }
                }
            }
            for marker in ["\"dbSize\":", "\"dbSizeInUse\":"] {
                if let Some(pos) = line.find(marker) {
                    let start = pos + marker.len();
                    let end = line[start..].find(|c: char| !c.is_ascii_digit()).map_or(line.len(), |i| start + i);
                    line.replace_range(start..end, "<size>");
                }
            }
            if let Some(pos) = line.find("\"took\":\"") {
                let start = pos + "\"took\":\"".len();
                let end = line[start..].find('"').map_or(line.len(), |i| start + i);
                line.replace_range(start..end, "<duration>");
            }
            out.push_str(&line);
        }
        out
    }
}

/// etcdctl on one side, ketchctl on the other, and the differences found.
struct Pair {
    netns: Option<String>,
    etcdctl: Side,
    ketchctl: Side,
    mismatches: Vec<String>,
    runs: usize,
}

impl Pair {
    fn new(netns: Option<&str>, etcdctl: Vec<(String, String)>, ketchctl: Vec<(String, String)>) -> Pair {
        Pair {
            netns: netns.map(str::to_string),
            etcdctl: Side { replacements: etcdctl },
            ketchctl: Side { replacements: ketchctl },
            mismatches: Vec::new(),
            runs: 0,
        }
    }

    /// Runs `etcdctl <e_args> <args>` and `ketchctl <k_args> <args>` at
    /// once, with `env`; records a difference; returns etcdctl's output.
    fn compare(&mut self, e_args: &[String], k_args: &[String], args: &[&str], env: &[(&str, String)]) -> Out {
        let with = |prefix: &[String]| prefix.iter().cloned().chain(args.iter().map(|a| a.to_string())).collect();
        let (e_line, k_line): (Vec<String>, Vec<String>) = (with(e_args), with(k_args));
        let ketchctl = ketchctl_binary();
        let netns = self.netns.clone();
        let (e, k) = std::thread::scope(|scope| {
            let e = scope.spawn(|| run(Path::new(ETCDCTL_BIN), netns.as_deref(), &e_line, env));
            let k = run(&ketchctl, netns.as_deref(), &k_line, env);
            (e.join().expect("etcdctl thread panicked"), k)
        });
        let normalize = |side: &Side, o: &Out| Out {
            stdout: side.normalize(&o.stdout),
            stderr: side.normalize(&o.stderr),
            code: o.code,
        };
        let (e, k) = (normalize(&self.etcdctl, &e), normalize(&self.ketchctl, &k));
        self.runs += 1;
        if e != k {
            self.mismatches.push(format!(
                "`{}` (env {env:?}):\n  etcdctl  (exit {}): stdout {:?}\n                      stderr {:?}\n  ketchctl (exit {}): stdout {:?}\n                      stderr {:?}",
                args.join(" "),
                e.code,
                e.stdout,
                e.stderr,
                k.code,
                k.stdout,
                k.stderr
            ));
        }
        e
    }

    fn finish(self) {
        assert!(
            self.mismatches.is_empty(),
            "{} of {} command lines differ:\n{}",
            self.mismatches.len(),
            self.runs,
            self.mismatches.join("\n\n")
        );
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Twins serving TLS, and the pair of ctls aimed at them.
struct TlsTwins {
    etcd: TlsEtcd,
    ketch: TlsEtcd,
    pair: Pair,
}

impl TlsTwins {
    fn start(pki: &Pki, auth: ClientAuth) -> TlsTwins {
        let flags = twin_flags();
        let etcd = TlsEtcd::start(pki, auth, "127.0.0.1", Some(&flags), None);
        let ketch = TlsEtcd::start(pki, auth, "127.0.0.1", Some(&flags), None);
        let pair = Pair::new(
            None,
            vec![(etcd.endpoint(), "<endpoint>".into())],
            vec![(ketch.endpoint(), "<endpoint>".into())],
        );
        TlsTwins { etcd, ketch, pair }
    }

    /// Both sides with `--endpoints=<scheme><own endpoint>` and `args`.
    fn run_scheme(&mut self, scheme: &str, args: &[&str], env: &[(&str, String)]) -> Out {
        let e = vec![format!("--endpoints={scheme}{}", self.etcd.endpoint())];
        let k = vec![format!("--endpoints={scheme}{}", self.ketch.endpoint())];
        self.pair.compare(&e, &k, args, env)
    }

    fn run(&mut self, args: &[&str]) -> Out {
        self.run_scheme("", args, &[])
    }
}

#[test]
fn mutual_tls_matches_etcdctl() {
    let pki = Pki::new(&[]);
    let mut t = TlsTwins::start(&pki, ClientAuth::Required);
    let (ca, other_ca, cert, key) =
        (pki.arg("ca.pem"), pki.arg("other-ca.pem"), pki.arg("client.pem"), pki.arg("client-key.pem"));
    let tls: Vec<&str> = vec!["--cacert", &ca, "--cert", &cert, "--key", &key];
    let with = |extra: &[&str]| -> Vec<String> { tls.iter().chain(extra).map(|s| s.to_string()).collect() };
    let ctl = |t: &mut TlsTwins, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        t.run(&args)
    };

    let put = ctl(&mut t, with(&["put", "k", "v1"]));
    assert_eq!((put.stdout.as_str(), put.code), ("OK\n", 0), "mutual TLS put failed: {put:?}");
    ctl(&mut t, with(&["get", "k"]));
    ctl(&mut t, with(&["get", "k", "-w", "json"]));
    ctl(&mut t, with(&["endpoint", "health"]));
    ctl(&mut t, with(&["endpoint", "status"]));
    ctl(&mut t, with(&["endpoint", "status", "-w", "json"]));
    ctl(&mut t, with(&["member", "list"]));
    ctl(&mut t, with(&["del", "k"]));
    // https:// endpoints, and the flags from ETCDCTL_* variables.
    let env = [("ETCDCTL_CACERT", ca.clone()), ("ETCDCTL_CERT", cert.clone()), ("ETCDCTL_KEY", key.clone())];
    t.run_scheme("https://", &["put", "k2", "v2"], &env);
    let got = t.run_scheme("https://", &["get", "k2", "--print-value-only"], &env);
    assert_eq!(got.stdout, "v2\n", "{got:?}");
    // Not verified: the wrong CA does not matter.
    ctl(
        &mut t,
        strings(&["--cacert", &other_ca, "--cert", &cert, "--key", &key, "--insecure-skip-tls-verify", "get", "k2"]),
    );

    // Failures: the server's certificate from an unknown CA.
    let unknown_ca = strings(&["--cacert", &other_ca, "--cert", &cert, "--key", &key, FAIL_FAST]);
    for command in [&["get", "k2"][..], &["put", "k3", "v"], &["endpoint", "health"], &["endpoint", "status"]] {
        let out = ctl(
            &mut t,
            unknown_ca.iter().map(String::as_str).chain(command.iter().copied()).map(str::to_string).collect(),
        );
        assert_ne!(out.code, 0, "{command:?} with an unknown CA: {out:?}");
    }
    // No client certificate for a server that wants one.
    for command in [&["get", "k2"][..], &["put", "k3", "v"], &["endpoint", "health"]] {
        ctl(&mut t, ["--cacert", &ca, FAIL_FAST].iter().chain(command).map(|s| s.to_string()).collect());
    }
    // Plain HTTP/2 to a TLS server; https:// with no TLS flag (the
    // system's roots; --insecure-skip-tls-verify alone does not apply).
    ctl(&mut t, strings(&[FAIL_FAST, "get", "k2"]));
    t.run_scheme("https://", &[FAIL_FAST, "--insecure-skip-tls-verify", "endpoint", "status"], &[]);
    t.run_scheme("https://", &[FAIL_FAST, "get", "k2"], &[]);

    // Files that cannot be used, before any connection.
    let dir = pki.arg("");
    for args in [
        vec!["--cacert", "/nonexistent/ca.pem", "get", "k"],
        vec!["--cacert", &ca, "--cert", "/nonexistent/c.pem", "--key", &key, "get", "k"],
        vec!["--cacert", &ca, "--cert", &cert, "--key", "/nonexistent/k.pem", "get", "k"],
        vec!["--cacert", &dir, "get", "k"],
        vec!["--cacert", &ca, "--cert", &cert, "get", "k"],
        vec!["--key", &key, "get", "k"],
        vec!["--cacert", &ca, "--cert", &cert, "--key", &pki.arg("server-key.pem"), "get", "k"],
        vec!["--cacert", &ca, "--cert", &key, "--key", &key, "get", "k"],
        vec!["--cacert", &ca, "--cert", &cert, "--key", &cert, "get", "k"],
        vec!["--cacert", &ca, "--cert", &cert, "--key", &ca, "get", "k"],
        vec!["--cacert", &key, "get", "k"],
        vec!["--cert=", "get", "k"],
        vec!["--key=", "get", "k"],
        vec!["--cacert=", "-w", "bogus", "get", "k"],
    ] {
        let out = t.run(&args);
        assert_ne!(out.code, 0, "{args:?}: {out:?}");
    }
    t.pair.finish();
}

#[test]
fn server_tls_matches_etcdctl() {
    let pki = Pki::new(&[]);
    let mut t = TlsTwins::start(&pki, ClientAuth::None);
    let (ca, other_ca) = (pki.arg("ca.pem"), pki.arg("other-ca.pem"));
    let put = t.run(&["--cacert", &ca, "put", "k", "v"]);
    assert_eq!(put.stdout, "OK\n", "{put:?}");
    t.run(&["--cacert", &ca, "get", "k", "-w", "json"]);
    t.run_scheme("https://", &["--cacert", &ca, "endpoint", "status"], &[]);
    t.run(&["--insecure-transport=false", "--insecure-skip-tls-verify", "get", "k"]);
    t.run(&["--cacert", &other_ca, "--insecure-skip-tls-verify", "endpoint", "health"]);
    let env =
        [("ETCDCTL_INSECURE_SKIP_TLS_VERIFY", "true".to_string()), ("ETCDCTL_INSECURE_TRANSPORT", "false".into())];
    t.run_scheme("", &["get", "k", "--print-value-only"], &env);
    // TLS without a CA: the system's roots do not know ours.
    t.run(&["--insecure-transport=false", FAIL_FAST, "get", "k"]);
    t.run(&["--insecure-transport=false", FAIL_FAST, "endpoint", "status"]);
    t.run(&["--cacert", &other_ca, FAIL_FAST, "endpoint", "status"]);
    // http:// given explicitly stays plain, even with TLS flags.
    t.run_scheme("http://", &["--cacert", &ca, FAIL_FAST, "get", "k"], &[]);
    t.pair.finish();
}

#[tokio::test]
async fn tls_to_a_plain_server_matches_etcdctl() {
    let pki = Pki::new(&[]);
    let (etcd, ketch) = tokio::join!(
        Member::start_with_peer_flags(Kind::Etcd, Some(twin_flags()), &[]),
        Member::start_with_peer_flags(Kind::Etcd, Some(twin_flags()), &[])
    );
    let mut pair =
        Pair::new(None, vec![(etcd.endpoint(), "<endpoint>".into())], vec![(ketch.endpoint(), "<endpoint>".into())]);
    let ca = pki.arg("ca.pem");
    let e = vec![format!("--endpoints={}", etcd.endpoint())];
    let k = vec![format!("--endpoints={}", ketch.endpoint())];
    for args in [
        &["--cacert", &ca, FAIL_FAST, "get", "k"][..],
        &["--cacert", &ca, FAIL_FAST, "put", "k", "v"],
        // Not `endpoint status`: etcdctl's log line then has the handshake's
        // error, `EOF` or a `connection reset by peer` with a random port.
        &["--cacert", &ca, FAIL_FAST, "endpoint", "health"],
    ] {
        let out = pair.compare(&e, &k, args, &[]);
        assert_ne!(out.code, 0, "{args:?}: {out:?}");
    }
    // An http:// first endpoint makes it plain, TLS flags or not.
    let e_http = vec![format!("--endpoints=http://{}", etcd.endpoint())];
    let k_http = vec![format!("--endpoints=http://{}", ketch.endpoint())];
    let put = pair.compare(&e_http, &k_http, &["--cacert", &ca, "put", "k", "v"], &[]);
    assert_eq!(put.stdout, "OK\n", "{put:?}");
    pair.finish();
}

/// The SRV records of one side of the discovery test: domain `<d>`.
fn records(d: &str, port: u16) -> Vec<SrvRecord> {
    vec![
        SrvRecord::new(&format!("_etcd-client-ssl._tcp.{d}"), &format!("n1.{d}"), port),
        // A target the certificate does not name (but the domain it does).
        SrvRecord::new(&format!("_etcd-client-ssl-other._tcp.{d}"), &format!("n2.{d}"), port),
        // Plain records only.
        SrvRecord::new(&format!("_etcd-client-plain._tcp.{d}"), &format!("n1.{d}"), port),
    ]
}

#[test]
fn discovery_srv_matches_etcdctl() {
    let netns = Netns::new();
    let ns = netns.name().to_string();
    // Side etcdctl: domain a.test; side ketchctl: b.test.
    let pki = Pki::new(&["n1.a.test", "n1.b.test", "a.test", "b.test"]);
    let flags = twin_flags();
    let etcd = TlsEtcd::start(&pki, ClientAuth::Required, "n1.a.test", Some(&flags), Some(&ns));
    let ketch = TlsEtcd::start(&pki, ClientAuth::Required, "n1.b.test", Some(&flags), Some(&ns));
    let mut srv = records("a.test", etcd.client_port());
    srv.extend(records("b.test", ketch.client_port()));
    let hosts = [
        ("n1.a.test", "127.0.0.1"),
        ("n2.a.test", "127.0.0.1"),
        ("n1.b.test", "127.0.0.1"),
        ("n2.b.test", "127.0.0.1"),
    ];
    let dnsmasq = Dnsmasq::start(&netns, "test", &srv, &hosts);
    let side = |domain: &str, port: u16| {
        vec![(format!(":{port}"), ":<port>".to_string()), (domain.to_string(), "<domain>".to_string())]
    };
    let mut pair = Pair::new(Some(&ns), side("a.test", etcd.client_port()), side("b.test", ketch.client_port()));
    let (ca, cert, key) = (pki.arg("ca.pem"), pki.arg("client.pem"), pki.arg("client-key.pem"));
    let tls = strings(&["--cacert", &ca, "--cert", &cert, "--key", &key]);
    let e = |extra: &[&str]| [strings(&["--discovery-srv", "a.test"]), tls.clone(), strings(extra)].concat();
    let k = |extra: &[&str]| [strings(&["--discovery-srv", "b.test"]), tls.clone(), strings(extra)].concat();

    let put = pair.compare(&e(&[]), &k(&[]), &["put", "k", "v"], &[]);
    assert_eq!((put.stdout.as_str(), put.code), ("OK\n", 0), "put through SRV discovery: {put:?}");
    pair.compare(&e(&[]), &k(&[]), &["get", "k", "-w", "json"], &[]);
    pair.compare(&e(&[]), &k(&[]), &["member", "list"], &[]);
    pair.compare(&e(&[]), &k(&[]), &["endpoint", "health", "--cluster"], &[]);
    pair.compare(&e(&[]), &k(&[]), &["endpoint", "status", "--cluster", "-w", "json"], &[]);
    // Without --cluster, endpoint commands use --endpoints (etcdctl 3.4).
    pair.compare(&e(&[FAIL_FAST]), &k(&[FAIL_FAST]), &["endpoint", "health"], &[]);
    // The domain from the environment (each side its own).
    let line = [tls.clone(), strings(&["get", "k", "--print-value-only"])].concat();
    let out_e = run(Path::new(ETCDCTL_BIN), Some(&ns), &line, &[("ETCDCTL_DISCOVERY_SRV", "a.test".into())]);
    let out_k = run(&ketchctl_binary(), Some(&ns), &line, &[("ETCDCTL_DISCOVERY_SRV", "b.test".into())]);
    assert_eq!((out_e.stdout.as_str(), out_e.code), ("v\n", 0), "etcdctl with ETCDCTL_DISCOVERY_SRV: {out_e:?}");
    assert_eq!(out_k, out_e, "ketchctl with ETCDCTL_DISCOVERY_SRV");

    // The certificate names the domain, not this target: only with
    // --insecure-discovery=false (which checks the domain) does it work.
    pair.compare(
        &e(&["--discovery-srv-name", "other", FAIL_FAST]),
        &k(&["--discovery-srv-name", "other", FAIL_FAST]),
        &["get", "k"],
        &[],
    );
    let secure = ["--discovery-srv-name", "other", "--insecure-discovery=false"];
    let got = pair.compare(&e(&secure), &k(&secure), &["get", "k", "--print-value-only"], &[]);
    assert_eq!(got.stdout, "v\n", "{got:?}");
    // Only plain records: dropped with --insecure-discovery=false
    // (--endpoints then), used as they are without.
    for extra in [
        &["--discovery-srv-name", "plain", FAIL_FAST][..],
        &["--discovery-srv-name", "plain", "--insecure-discovery=false", FAIL_FAST],
    ] {
        pair.compare(&e(extra), &k(extra), &["get", "k"], &[]);
    }
    // Lookups that fail: no such records, and a domain the server refuses
    // (not `.invalid`, which the client library answers itself).
    pair.compare(
        &e(&["--discovery-srv-name", "missing"]),
        &k(&["--discovery-srv-name", "missing"]),
        &["get", "k"],
        &[],
    );
    let nowhere = [strings(&["--discovery-srv", "nowhere.example.org"]), tls.clone()].concat();
    let out = pair.compare(&nowhere, &nowhere, &["get", "k"], &[]);
    assert!(out.stderr.contains("dns lookup errors"), "{out:?}");
    // ketchctl asked the namespace's DNS server.
    assert!(dnsmasq.log().contains("_etcd-client-ssl._tcp.b.test"), "no SRV query from ketchctl:\n{}", dnsmasq.log());
    pair.finish();
    drop((etcd, ketch, dnsmasq));
    drop(netns);
}
