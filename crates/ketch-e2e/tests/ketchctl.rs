//! ketchctl against etcdctl: the same command lines, run with the reference
//! etcdctl 3.4.23 and with our `ketchctl`, must print the same bytes on
//! stdout and stderr and exit with the same code.
//!
//! Each test starts two *twin* servers: members started with the same
//! (unreachable) advertised peer URL, so they have the same member and
//! cluster IDs and raft term. etcdctl talks to one twin, ketchctl to the
//! other, command by command in the same order, so revisions, headers and
//! protobuf bytes line up. The twins are reference etcds, so that the
//! client is what is compared; one test runs on twin Ketch servers
//! ([`subject_kind`]).
//!
//! Normalised before comparing, as they legitimately differ: each twin's
//! endpoint address; the client log lines' timestamps and client ids;
//! `took` durations; pkg/flags' log timestamps; lease IDs and added
//! member IDs (allocated from the clock), which each side's outputs map to
//! `<lease#N>` / `<member#N>`.

use ketch_e2e::ctl::{bare_ctl_command, run_to_end};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ketch_e2e::{
    ETCDCTL_BIN, EtcdctlProcess, Kind, Member, ctl_command, ketchctl_binary, normalize_etcdctl_text, spawn_ctl_command,
    subject_kind,
};

/// The advertised peer URL of every twin: never dialed by a lone member.
const TWIN_PEER_URL: &str = "http://127.0.0.1:1";
/// Bound on one command run.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a long-running command (watch, lock) may take to print what it should.
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(10);

type Out = ketch_e2e::ctl::CtlOutput;

/// Which side of a pair.
#[derive(Clone, Copy)]
enum Side {
    Etcdctl,
    Ketchctl,
}

/// IDs allocated differently on the two sides, and their placeholders.
#[derive(Default)]
struct Ids {
    /// `(etcdctl side, ketchctl side, placeholder)`.
    known: Vec<(u64, u64, String)>,
}

impl Ids {
    fn add(&mut self, etcdctl: u64, ketchctl: u64, kind: &str) {
        let name = format!("<{kind}#{}>", self.known.len() + 1);
        self.known.push((etcdctl, ketchctl, name));
    }

    fn normalize(&self, side: Side, text: &str) -> String {
        let mut text = text.to_string();
        for (e, k, name) in &self.known {
            let id = match side {
                Side::Etcdctl => *e,
                Side::Ketchctl => *k,
            };
            text = text.replace(&format!("{id:016x}"), name);
            text = text.replace(&format!("{id:x}"), name);
            text = text.replace(&id.to_string(), name);
        }
        text
    }
}

/// Two twin servers, and the differences found so far.
struct Twins {
    etcd: Member,
    ketch: Member,
    ids: Ids,
    mismatches: Vec<String>,
}

fn twin_flags() -> Vec<String> {
    vec![
        "--initial-advertise-peer-urls".into(),
        TWIN_PEER_URL.into(),
        "--initial-cluster".into(),
        format!("e={TWIN_PEER_URL}"),
    ]
}

/// `program --endpoints=<endpoint> <args>` with `env`, fed `stdin`.
fn run_program(program: &Path, endpoint: &str, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Out {
    run_to_end(ctl_command(program, endpoint, args), stdin, env, RUN_TIMEOUT)
}

/// `program <args>` alone (endpoints from `env`), as [`ctl_command`] sets
/// it up otherwise.
fn run_bare(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    run_to_end(bare_ctl_command(program, args), None, env, RUN_TIMEOUT)
}

/// Normalises what is not the client's to decide (see the module docs).
fn normalize_text(text: &str, endpoint: &str, ids: &Ids, side: Side) -> String {
    let text = normalize_etcdctl_text(text, endpoint);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        out.push_str(&normalize_line(line));
    }
    ids.normalize(side, &out)
}

fn normalize_line(line: &str) -> String {
    // pkg/flags (capnslog): `2026-11-27 22:35:32.096646 W | pkg/flags: ...`.
    let bytes = line.as_bytes();
    if bytes.len() > 27 && bytes[4] == b'-' && bytes[10] == b' ' && bytes[13] == b':' && bytes[19] == b'.' {
        return format!("<time>{}", &line[26..]);
    }
    // zap lines with a `took` (snapshot save).
    if line.starts_with('{')
        && let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str::<serde_json::Value>(line.trim_end())
        && map.contains_key("level")
    {
        map.remove("ts");
        map.remove("took");
        return format!("{}\n", serde_json::Value::Object(map));
    }
    // `took = 1.2ms` in a table or a fields line.
    let mut line = line.to_string();
    // The backend's size differs between twins (bbolt's page allocation).
    for marker in ["\"dbSize\":", "\"dbSizeInUse\":", "\"DBSize\" : "] {
        if let Some(pos) = line.find(marker) {
            let start = pos + marker.len();
            let end = line[start..].find(|c: char| !c.is_ascii_digit()).map_or(line.len(), |i| start + i);
            line.replace_range(start..end, "<size>");
        }
    }
    for unit in [" B,", " kB,", " MB,", " B |", " kB |", " MB |"] {
        if let Some(pos) = line.find(unit)
            && line.contains("3.4.23")
        {
            let start = line[..pos].rfind(' ').map_or(0, |i| i + 1);
            line.replace_range(start..pos + unit.len() - 1, "<size>");
        }
    }
    for marker in ["\"Took\" : ", "\"took\":\""] {
        if let Some(pos) = line.find(marker) {
            let start = pos + marker.len();
            let end = line[start..].find(['"', '\n', ' ']).map_or(line.len(), |i| start + i);
            line.replace_range(start..end, "<duration>");
        }
    }
    if line.starts_with("| ") && line.contains("s |") {
        // endpoint health's table: the TOOK column.
        let cells: Vec<String> = line
            .split('|')
            .map(|c| {
                let t = c.trim();
                let is_duration = t.ends_with('s') && t.chars().next().is_some_and(|ch| ch.is_ascii_digit());
                if is_duration { " <duration> ".to_string() } else { c.to_string() }
            })
            .collect();
        line = cells.join("|");
    }
    line
}

/// `haystack` with every `needle` replaced by `with`.
fn replace_bytes(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if !needle.is_empty() && haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// A table with a normalised column (took, db size): its widths follow the
/// values, so runs of spaces and dashes are collapsed.
fn normalize_took_table(text: String) -> String {
    if !text.contains("TOOK") && !text.contains("DB SIZE") {
        return text;
    }
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        if line.starts_with('+') || line.starts_with('|') {
            let mut last = ' ';
            for c in line.chars() {
                if (c == '-' || c == ' ') && c == last {
                    continue;
                }
                out.push(c);
                last = c;
            }
        } else {
            out.push_str(line);
        }
    }
    out
}

fn normalize_out(out: Out, endpoint: &str, ids: &Ids, side: Side) -> Out {
    let stdout = match String::from_utf8(out.stdout.clone()) {
        Ok(text) => normalize_took_table(normalize_text(&text, endpoint, ids, side)).into_bytes(),
        // Protobuf output: bytes; the endpoint (same length on both sides,
        // so lengths in the encoding agree) is blanked.
        Err(_) => replace_bytes(&out.stdout, endpoint.as_bytes(), &vec![b'_'; endpoint.len()]),
    };
    Out { stdout, stderr: normalize_text(&out.stderr, endpoint, ids, side), code: out.code }
}

/// Bytes for a failure message, cut at a readable length.
fn show(bytes: &[u8]) -> String {
    const SHOWN_MAX: usize = 1500;
    let text = String::from_utf8_lossy(bytes);
    let cut: String = text.chars().take(SHOWN_MAX).collect();
    let more = if text.chars().count() > SHOWN_MAX { "..." } else { "" };
    format!("{cut:?}{more}")
}

impl Twins {
    async fn start(kind: Kind) -> Twins {
        let (etcd, ketch) = tokio::join!(
            Member::start_with_peer_flags(kind, Some(twin_flags()), &[]),
            Member::start_with_peer_flags(kind, Some(twin_flags()), &[])
        );
        Twins { etcd, ketch, ids: Ids::default(), mismatches: Vec::new() }
    }

    fn run(&mut self, args: &[&str]) -> Out {
        self.run_with(args, None, &[])
    }

    fn run_stdin(&mut self, args: &[&str], stdin: &str) -> Out {
        self.run_with(args, Some(stdin), &[])
    }

    /// Runs `args` with etcdctl on one twin and ketchctl on the other at
    /// once, records any difference, and returns etcdctl's normalised output.
    fn run_with(&mut self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Out {
        let (e, k) = self.run_raw(args, stdin, env);
        self.compare(args, stdin, e, k)
    }

    fn run_raw(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> (Out, Out) {
        let (e_ep, k_ep) = (self.etcd.endpoint(), self.ketch.endpoint());
        let ketchctl = ketchctl_binary();
        std::thread::scope(|scope| {
            let e = scope.spawn(|| run_program(Path::new(ETCDCTL_BIN), &e_ep, args, stdin, env));
            let k = run_program(&ketchctl, &k_ep, args, stdin, env);
            (e.join().expect("etcdctl thread panicked"), k)
        })
    }

    fn compare(&mut self, args: &[&str], stdin: Option<&str>, e: Out, k: Out) -> Out {
        let e = normalize_out(e, &self.etcd.endpoint(), &self.ids, Side::Etcdctl);
        let k = normalize_out(k, &self.ketch.endpoint(), &self.ids, Side::Ketchctl);
        self.record(args, stdin, &e, &k);
        e
    }

    fn record(&mut self, args: &[&str], stdin: Option<&str>, e: &Out, k: &Out) {
        let mut diffs = Vec::new();
        if e.code != k.code {
            diffs.push(format!("exit code: etcdctl={} ketchctl={}", e.code, k.code));
        }
        if e.stdout != k.stdout {
            diffs.push(format!(
                "stdout differs:\n    etcdctl:  {}\n    ketchctl: {}",
                show(&e.stdout),
                show(&k.stdout)
            ));
        }
        if e.stderr != k.stderr {
            diffs.push(format!(
                "stderr differs:\n    etcdctl:  {}\n    ketchctl: {}",
                show(e.stderr.as_bytes()),
                show(k.stderr.as_bytes())
            ));
        }
        if !diffs.is_empty() {
            let stdin_note = stdin.map_or(String::new(), |s| format!(" <<< {s:?}"));
            self.mismatches.push(format!("`{}`{stdin_note}:\n  {}", args.join(" "), diffs.join("\n  ")));
        }
    }

    /// Runs a command both sides must succeed with, printing `stdout`.
    fn expect(&mut self, args: &[&str], stdout: &str) {
        let out = self.run(args);
        assert_eq!((out.code, out.text().as_str()), (0, stdout), "premise: etcdctl {args:?} ({:?})", out.stderr);
    }

    /// `lease grant <ttl>` on both sides; the IDs are then normalised.
    fn grant(&mut self, ttl: &str) -> (String, String) {
        let (e, k) = self.run_raw(&["lease", "grant", ttl], None, &[]);
        let id_of = |o: &Out| -> String {
            let text = o.text();
            text.split_whitespace().nth(1).unwrap_or_else(|| panic!("no lease in {text:?} / {:?}", o.stderr)).into()
        };
        let (ei, ki) = (id_of(&e), id_of(&k));
        let parse = |s: &str| u64::from_str_radix(s, 16).unwrap_or_else(|_| panic!("bad lease id {s}"));
        self.ids.add(parse(&ei), parse(&ki), "lease");
        self.compare(&["lease", "grant", ttl], None, e, k);
        (ei, ki)
    }

    /// Runs a command that grants a lease (in any format); the new IDs are
    /// found in each side's lease list and then normalised.
    fn grant_as(&mut self, args: &[&str]) {
        let leases = |m: &Member| -> Vec<u64> {
            let out = run_program(Path::new(ETCDCTL_BIN), &m.endpoint(), &["lease", "list"], None, &[]);
            out.text().lines().skip(1).filter_map(|l| u64::from_str_radix(l, 16).ok()).collect()
        };
        let (eb, kb) = (leases(&self.etcd), leases(&self.ketch));
        let (e, k) = self.run_raw(args, None, &[]);
        let (ea, ka) = (leases(&self.etcd), leases(&self.ketch));
        let fresh = |before: &[u64], after: &[u64]| after.iter().copied().find(|id| !before.contains(id));
        if let (Some(ei), Some(ki)) = (fresh(&eb, &ea), fresh(&kb, &ka)) {
            self.ids.add(ei, ki, "lease");
        }
        self.compare(args, None, e, k);
    }

    /// Runs `args` with `{lease}` standing for each side's lease `ids`.
    fn run_lease(&mut self, args: &[&str], ids: &(String, String)) {
        let e_args: Vec<String> = args.iter().map(|a| a.replace("{lease}", &ids.0)).collect();
        let k_args: Vec<String> = args.iter().map(|a| a.replace("{lease}", &ids.1)).collect();
        let (e_ep, k_ep) = (self.etcd.endpoint(), self.ketch.endpoint());
        let ketchctl = ketchctl_binary();
        let e_refs: Vec<&str> = e_args.iter().map(String::as_str).collect();
        let k_refs: Vec<&str> = k_args.iter().map(String::as_str).collect();
        let (e, k) = std::thread::scope(|scope| {
            let e = scope.spawn(|| run_program(Path::new(ETCDCTL_BIN), &e_ep, &e_refs, None, &[]));
            let k = run_program(&ketchctl, &k_ep, &k_refs, None, &[]);
            (e.join().expect("etcdctl thread panicked"), k)
        });
        self.compare(args, None, e, k);
    }

    /// The store's current revision (the same on both twins).
    fn revision(&self) -> i64 {
        let out = run_program(Path::new(ETCDCTL_BIN), &self.etcd.endpoint(), &["get", "-w", "json", "x"], None, &[]);
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        value["header"]["revision"].as_i64().unwrap_or_else(|| panic!("no revision in {out:?}"))
    }

    /// Starts a long-running command on both sides.
    fn spawn(&self, args: &[&str]) -> (EtcdctlProcess, EtcdctlProcess) {
        let e = spawn_ctl_command(ctl_command(Path::new(ETCDCTL_BIN), &self.etcd.endpoint(), args));
        let k = spawn_ctl_command(ctl_command(&ketchctl_binary(), &self.ketch.endpoint(), args));
        (e, k)
    }

    /// Waits until both processes printed `stdout_has` on stdout, then
    /// stops them (SIGTERM, then SIGKILL) and compares everything.
    fn finish_spawned(&mut self, args: &[&str], procs: (EtcdctlProcess, EtcdctlProcess), stdout_has: &str) {
        let (mut e, mut k) = procs;
        for p in [&e, &k] {
            let printed = p.wait_for(OUTPUT_TIMEOUT, |out, _| out.contains(stdout_has));
            if !printed {
                self.mismatches.push(format!(
                    "`{}`: never printed {stdout_has:?}; stdout {:?}, stderr {:?}",
                    args.join(" "),
                    p.stdout(),
                    p.stderr()
                ));
            }
        }
        let (eo, ko) = (stop(&mut e), stop(&mut k));
        self.compare(args, None, eo, ko);
    }

    fn finish(self) {
        assert!(
            self.mismatches.is_empty(),
            "{} ketchctl mismatch(es) with etcdctl (twin {} servers):\n\n{}",
            self.mismatches.len(),
            self.etcd.kind().as_str(),
            self.mismatches.join("\n\n")
        );
    }
}

/// Sends SIGTERM, waits for the exit (SIGKILL after a while), returns output.
fn stop(p: &mut EtcdctlProcess) -> Out {
    if p.wait_exit(Duration::ZERO).is_none()
        && let Some(pid) = p.pid().and_then(|pid| i32::try_from(pid).ok())
    {
        // SAFETY: signals a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let code = p.wait_exit(Duration::from_secs(5));
    let (stdout, stderr) = (p.stdout(), p.stderr());
    Out { stdout: stdout.into_bytes(), stderr, code: code.unwrap_or(-1) }
}

fn with_format<'a>(args: &[&'a str], format: &'a str) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(["-w", format]);
    v
}

const FORMATS: [&str; 5] = ["simple", "json", "fields", "protobuf", "table"];

#[tokio::test]
async fn kv_commands_match_etcdctl() {
    let mut t = Twins::start(Kind::Etcd).await;
    t.expect(&["put", "foo", "bar"], "OK\n");
    for f in FORMATS {
        t.run(&with_format(&["put", "foo", "bar2", "--prev-kv"], f));
    }
    for (k, v) in [("a", "1"), ("a/1", "x"), ("a/2", "y"), ("ab", "2"), ("b", "3"), ("c", "x"), ("a/2", "y2")] {
        t.expect(&["put", k, v], "OK\n");
    }
    t.run(&["put", "foo", "--ignore-value"]);
    t.run(&["put", "foo", "x", "--ignore-value"]);
    t.run(&["put", "missing", "--ignore-value"]);
    t.run(&["put", "foo", "baz", "--ignore-lease", "--prev-kv", "-w", "json"]);
    t.run(&["put", "foo", "v", "--lease=1234"]);
    t.run(&["put", "foo", "v", "--lease=zz"]);
    t.run(&["put", "--", "-dash", "-val"]);
    t.run(&["put", "empty", ""]);
    t.run(&["put"]);
    t.run(&["put", "only-key"]);
    t.run_stdin(&["put", "fromstdin"], "value from\nstdin");
    t.run(&["put", "utf8-ключ", "значение", "--prev-kv"]);
    t.run(&["put", "quote\"d\tkey", "v\u{1}"]);
    t.run(&["put", "pct", "100%d %% %5.2f %", "--prev-kv", "-w", "protobuf"]);
    t.run(&["put", "pct", "\u{200b}\u{a0}é\u{7f}", "--prev-kv", "-w", "fields"]);
    let gets: &[&[&str]] = &[
        &["get", "a"],
        &["get", "nope"],
        &["get", "a", "--prefix"],
        &["get", "", "--prefix"],
        &["get", "b", "--from-key"],
        &["get", "", "--from-key", "--limit=2"],
        &["get", "a", "b"],
        &["get", "a", "b", "c"],
        &["get", "a", "--prefix", "--limit", "2"],
        &["get", "a", "--prefix", "--keys-only"],
        &["get", "a", "--prefix", "--print-value-only"],
        &["get", "a", "--prefix", "--hex"],
        &["get", "a", "--prefix", "--sort-by=value", "--order=descend"],
        &["get", "a", "--prefix", "--sort-by=CREATE", "--order=ASCEND"],
        &["get", "a", "--prefix", "--sort-by=version"],
        &["get", "a", "--prefix", "--sort-by=modify", "--order=descend"],
        &["get", "a", "--prefix", "--order=descend"],
        &["get", "a", "--consistency=s"],
        &["get", "a/2", "--rev=9"],
        &["get", "utf8-ключ"],
        &["get", "quote\"d\tkey"],
        &["get", "--", "-dash"],
    ];
    for args in gets {
        for f in FORMATS {
            t.run(&with_format(args, f));
        }
    }
    for args in [
        &["get"][..],
        &["get", "a", "b", "--prefix"],
        &["get", "a", "--prefix", "--from-key"],
        &["get", "a", "--consistency=x"],
        &["get", "a", "--sort-by=x"],
        &["get", "a", "--order=x"],
        &["get", "a", "--rev=1000"],
        &["get", "a", "--print-value-only", "-w", "json"],
        &["get", "a", "-w", "bogus"],
    ] {
        t.run(args);
    }
    for f in FORMATS {
        t.run(&with_format(&["put", "d1", "1"], f));
        t.run(&with_format(&["del", "d1", "--prev-kv"], f));
    }
    t.expect(&["put", "d/1", "1"], "OK\n");
    t.expect(&["put", "d/2", "2"], "OK\n");
    for args in [
        &["del", "d/", "--prefix", "--prev-kv"][..],
        &["del", "nope"],
        &["del"],
        &["del", "a", "b", "c"],
        &["del", "a", "b", "--prefix"],
        &["del", "a", "--prefix", "--from-key"],
        &["del", "c", "--from-key", "-w", "json"],
        &["del", "a/1", "a/3", "-w", "fields"],
        &["compaction", "5"],
        &["compaction", "5"],
        &["compaction", "6", "--physical"],
        &["compaction", "x"],
        &["compaction"],
        &["compaction", "1000"],
        &["get", "a", "--rev=2"],
    ] {
        t.run(args);
    }
    t.finish();
}

#[tokio::test]
async fn txn_matches_etcdctl() {
    let mut t = Twins::start(Kind::Etcd).await;
    t.expect(&["put", "k1", "v1"], "OK\n");
    t.expect(&["put", "k2", "v2"], "OK\n");
    let success =
        "mod(\"k1\") > \"0\"\nvalue(\"k2\") = \"v2\"\n\nput k3 v3\nget k1 --prefix\ndel k2 --prev-kv\n\nget k2\n\n";
    let failure = "ver(\"k1\") = \"5\"\nc(\"k2\") != \"0\"\n\nput k4 v4\n\nget k --prefix --keys-only\nput \"k 5\" 'quoted'\ndel k3\n\n";
    for f in FORMATS {
        t.run_stdin(&["txn", "-w", f], success);
        t.run_stdin(&["txn", "-w", f], failure);
        t.run_stdin(&["txn", "-i", "-w", f], success);
        t.run_stdin(&["txn", "--interactive", "-w", f], failure);
    }
    for input in [
        "",
        "\n\n",
        "\n\n\n",
        "\n\nget k1",
        "mod(\"k1\")>\"0\"\n\n\n\n",
        "nothing\n\n\n\n",
        "foo(\"k\") = \"1\"\n\n\n\n",
        "ver(\"k\") = \"x\"\n\n\n\n",
        "val(\"k1\") = v1\n\n\n\n",
        "\nget\n\n\n",
        "\nbogus k\n\n\n",
        "\nget k --bogus\n\n\n",
        "\nput k\n\n\n",
        "\nget k --prefix --from-key\n\n\n",
        "value(\"k1\") < \"v2\"\nversion(\"k1\") < \"9\"\ncreate(\"k1\") > \"1\"\n\nget k1\n\n\n",
        "val(\"k1\") = \"v1\"\n\nput k6 \"a \\\"quoted\\\" value\"\nget k6 -w json\n\n\n",
    ] {
        t.run_stdin(&["txn"], input);
        t.run_stdin(&["txn", "-i"], input);
    }
    t.run(&["txn", "extra"]);
    t.finish();
}

#[tokio::test]
async fn flags_environment_and_usage_match_etcdctl() {
    let mut t = Twins::start(Kind::Etcd).await;
    t.expect(&["put", "k", "v"], "OK\n");
    for args in [
        &["get", "k", "--bogus"][..],
        &["get", "k", "--bogus=1"],
        &["get", "k", "-x"],
        &["get", "k", "--limit"],
        &["get", "k", "--limit", "x"],
        &["get", "k", "--limit=0x10"],
        &["get", "k", "--prefix=maybe"],
        &["get", "k", "--prefix=true", "--prefix=false"],
        &["get", "k", "--prefix", "false"],
        &["-w", "json", "get", "k"],
        &["get", "-wjson", "k"],
        &["get", "k", "-w=fields"],
        &["get", "k", "-w"],
        &["get", "k", "--dial-timeout=xyz"],
        &["get", "k", "--command-timeout=5"],
        &["get", "k", "--keepalive-time=3s", "--keepalive-timeout=1m30s", "--dial-timeout=1.5s"],
        &["get", "k", "--hex=true", "--insecure-skip-tls-verify", "--insecure-transport=true"],
        &["bogus"],
        &["gett"],
        &["m"],
        &["lea"],
        &["lea", "gr"],
        &["lease"],
        &["lease", "bogus"],
        &["get", "--help"],
        &["put", "-h"],
        &["help"],
        &["help", "watch"],
        &["help", "lease", "grant"],
        &["help", "bogus"],
        &["--help"],
        &[],
        &["version"],
        &["version", "-w", "json"],
        &["endpoint", "status", "--help"],
        &["snapshot", "save", "--help"],
    ] {
        t.run(args);
    }
    t.run_with(&["get", "k"], None, &[("ETCDCTL_WRITE_OUT", "json")]);
    t.run_with(&["get", "k"], None, &[("ETCDCTL_HEX", "true")]);
    t.run_with(&["get", "k"], None, &[("ETCDCTL_FOO", "1")]);
    t.run_with(&["get", "k"], None, &[("ETCDCTL_PREFIX", "true")]);
    t.run_with(&["get", "k"], None, &[("ETCDCTL_DIAL_TIMEOUT", "xyz")]);
    t.run_with(&["get", "k", "-w", "simple"], None, &[("ETCDCTL_WRITE_OUT", "json")]);
    t.run_with(&["version"], None, &[("ETCDCTL_FOO", "1")]);
    // Endpoints from the environment alone.
    let (e_ep, k_ep) = (t.etcd.endpoint(), t.ketch.endpoint());
    for args in [&["get", "k", "-w", "json"][..], &["endpoint", "status", "-w", "fields"]] {
        let e = run_bare(Path::new(ETCDCTL_BIN), args, &[("ETCDCTL_ENDPOINTS", &e_ep), ("ETCDCTL_WRITE_OUT", "table")]);
        let k = run_bare(&ketchctl_binary(), args, &[("ETCDCTL_ENDPOINTS", &k_ep), ("ETCDCTL_WRITE_OUT", "table")]);
        t.compare(args, Some("ETCDCTL_ENDPOINTS"), e, k);
    }
    // Flags given twice append to --endpoints.
    let endpoint = format!("--endpoints={}", t.ketch.endpoint());
    let (_, k) = t.run_raw(&["get", "k", &endpoint], None, &[]);
    assert_eq!((k.code, k.text()), (0, "k\nv\n".to_string()), "{k:?}");
    // --debug: etcdctl's gRPC logging differs; its settings must not.
    let (e, k) = t.run_raw(&["get", "k", "--debug"], None, &[]);
    let settings = |o: &Out, ep: &str| -> Vec<String> {
        o.stderr.lines().filter(|l| l.starts_with("ETCDCTL_")).map(|l| l.replace(ep, "<endpoint>")).collect()
    };
    assert_eq!(settings(&e, &t.etcd.endpoint()), settings(&k, &t.ketch.endpoint()));
    assert_eq!((e.code, &e.stdout), (k.code, &k.stdout));
    // An endpoint nobody listens on: the request times out.
    let dead = "127.0.0.1:1";
    for args in [&["get", "k"][..], &["put", "k", "v"], &["endpoint", "status"], &["endpoint", "health"]] {
        let mut full = vec!["--command-timeout=1s", "--dial-timeout=200ms"];
        full.extend(args);
        let (e, k) = std::thread::scope(|scope| {
            let e = scope.spawn(|| run_program(Path::new(ETCDCTL_BIN), dead, &full, None, &[]));
            (e.join().expect("etcdctl thread panicked"), run_program(&ketchctl_binary(), dead, &full, None, &[]))
        });
        t.record(
            &full,
            None,
            &normalize_out(e, dead, &t.ids, Side::Etcdctl),
            &normalize_out(k, dead, &t.ids, Side::Ketchctl),
        );
    }
    // What ketchctl does not have fails clearly (etcdctl differs here).
    let ketchctl = ketchctl_binary();
    for (args, message) in [
        // TLS and DNS discovery: tests/ketchctl_tls.rs.
        (&["snapshot", "status", "x.db"][..], "`snapshot status` is not supported yet"),
        (&["snapshot", "restore", "x.db"], "`snapshot restore` is not supported yet"),
        (&["defrag", "--data-dir=/x"], "(defrag --data-dir) is not supported yet"),
        (&["check", "datascale"], "`check datascale` is not supported yet"),
        (&["make-mirror", "127.0.0.1:1"], "`make-mirror` is not supported yet"),
    ] {
        let out = run_program(&ketchctl, &t.ketch.endpoint(), args, None, &[]);
        assert!(
            out.code == 4 && out.stderr.starts_with("Error: ") && out.stderr.contains(message),
            "ketchctl {args:?}: {out:?}"
        );
    }
    t.finish();
}

#[tokio::test]
async fn lease_commands_match_etcdctl() {
    let mut t = Twins::start(Kind::Etcd).await;
    for f in ["simple", "json", "fields", "protobuf", "table"] {
        t.grant_as(&["lease", "grant", "100", "-w", f]);
    }
    let l = t.grant("100");
    t.run_lease(&["put", "--lease={lease}", "lk", "v"], &l);
    for f in ["simple", "json", "fields", "protobuf", "table"] {
        t.run_lease(&["lease", "timetolive", "{lease}", "--keys", "-w", f], &l);
        t.run_lease(&["lease", "timetolive", "{lease}", "-w", f], &l);
        t.run_lease(&["lease", "keep-alive", "--once", "{lease}", "-w", f], &l);
    }
    t.run_lease(&["put", "lk", "v2", "--ignore-lease", "--prev-kv", "-w", "json"], &l);
    t.run_lease(&["put", "lk", "--ignore-value", "--lease={lease}"], &l);
    t.run(&["lease", "timetolive", "1234"]);
    t.run(&["lease", "timetolive", "1234", "-w", "json"]);
    t.run(&["lease", "keep-alive", "--once", "1234"]);
    t.run(&["lease", "revoke", "1234"]);
    t.run(&["lease", "grant"]);
    t.run(&["lease", "grant", "x"]);
    t.run(&["lease", "revoke"]);
    t.run(&["lease", "revoke", "zz"]);
    t.run(&["lease", "timetolive"]);
    t.run(&["lease", "keep-alive"]);
    t.run(&["lease", "keep-alive", "ffffffffffffffffff"]);
    t.run(&["lease", "keep-alive", "1234"]);
    t.run(&["lease", "keep-alive", "1234", "-w", "json"]);
    // Revoke every lease so `lease list` is comparable.
    let (_, ketch_list) = t.run_raw(&["lease", "list"], None, &[]);
    let (etcd_list, _) = t.run_raw(&["lease", "list"], None, &[]);
    let ids = |o: &Out| o.text().lines().skip(1).map(str::to_string).collect::<Vec<_>>();
    let (eids, kids) = (ids(&etcd_list), ids(&ketch_list));
    assert_eq!(eids.len(), kids.len(), "lease lists: {etcd_list:?} / {ketch_list:?}");
    for (e, k) in eids.iter().zip(&kids) {
        if *e != l.0 {
            let pair = (e.clone(), k.clone());
            t.run_lease(&["lease", "revoke", "{lease}"], &pair);
        }
    }
    for f in ["simple", "json", "fields", "protobuf", "table"] {
        t.run(&["lease", "list", "-w", f]);
    }
    for f in ["json", "fields", "protobuf"] {
        let l = t.grant("100");
        t.run_lease(&["lease", "revoke", "{lease}", "-w", f], &l);
    }
    t.run_lease(&["lease", "revoke", "{lease}"], &l);
    t.run_lease(&["lease", "timetolive", "{lease}"], &l);
    t.run_lease(&["get", "lk"], &l);
    // keep-alive until the lease is revoked: renewals at once and every
    // TTL/3, then "expired or revoked." and exit 0.
    let l = t.grant("3");
    let (e, k) = (l.0.clone(), l.1.clone());
    let eproc =
        spawn_ctl_command(ctl_command(Path::new(ETCDCTL_BIN), &t.etcd.endpoint(), &["lease", "keep-alive", &e]));
    let kproc = spawn_ctl_command(ctl_command(&ketchctl_binary(), &t.ketch.endpoint(), &["lease", "keep-alive", &k]));
    for p in [&eproc, &kproc] {
        assert!(p.wait_for(OUTPUT_TIMEOUT, |out, _| out.contains("keepalived")), "{:?}", p.stdout());
    }
    t.run_lease(&["lease", "revoke", "{lease}"], &l);
    let mut outs = Vec::new();
    for mut p in [eproc, kproc] {
        let code = p.wait_exit(OUTPUT_TIMEOUT);
        let text = p.stdout();
        let last = text.lines().last().unwrap_or_default().to_string();
        outs.push((code, last, p.stderr()));
    }
    let norm = |side: Side, s: &str| t.ids.normalize(side, s);
    assert_eq!(
        (outs[0].0, norm(Side::Etcdctl, &outs[0].1), &outs[0].2),
        (outs[1].0, norm(Side::Ketchctl, &outs[1].1), &outs[1].2),
        "keep-alive until revoked"
    );
    assert_eq!(outs[0].0, Some(0));
    t.finish();
}

/// Writes the same changes on both twins.
fn writes(t: &mut Twins) {
    t.expect(&["put", "w/a", "1"], "OK\n");
    t.expect(&["put", "w/b", "2"], "OK\n");
    t.expect(&["put", "w/a", "3"], "OK\n");
    t.expect(&["del", "w/a"], "1\n");
    t.expect(&["put", "x", "outside"], "OK\n");
}

#[tokio::test]
async fn watch_matches_etcdctl() {
    let mut t = Twins::start(Kind::Etcd).await;
    t.expect(&["put", "w/old", "0"], "OK\n");
    // The changes are made before the watches start, so every watch gets
    // them as history. Live events would arrive one response per revision
    // or batched depending on when each watch was set up, which shows in
    // the protobuf output.
    writes(&mut t);
    let cases: &[&[&str]] = &[
        &["watch", "w/", "--prefix", "--rev=3"],
        &["watch", "w/a", "--prev-kv", "-w", "json", "--rev", "3"],
        &["watch", "--rev=3", "w/", "--prefix", "-w", "fields", "--prev-kv"],
        &["watch", "w/a", "w/c", "-w", "protobuf", "--rev=3"],
        &["watch", "w/a", "--hex", "--rev=3"],
    ];
    let mut running = Vec::new();
    for args in cases {
        running.push((args, t.spawn(args)));
    }
    for (args, procs) in running {
        let last = match args.iter().position(|a| *a == "-w").map(|i| args[i + 1]) {
            // History is sent in one response at the current revision (7,
            // after the put outside the range).
            Some("json") => "\"revision\":7",
            Some("fields") => "\"Revision\" : 7",
            Some("protobuf") => "w/a",
            _ if args.contains(&"--hex") => "\\x33",
            _ => "DELETE",
        };
        t.finish_spawned(args, procs, last);
    }
    // History from a revision, and a compacted one.
    let procs = t.spawn(&["watch", "--rev=2", "w/", "--prefix"]);
    t.finish_spawned(&["watch", "--rev=2", "w/", "--prefix"], procs, "DELETE");
    t.expect(&["compaction", "4"], "compacted revision 4\n");
    for args in [&["watch", "--rev=2", "w/a"][..], &["watch", "--rev=2", "w/a", "-w", "json"]] {
        let procs = t.spawn(args);
        let (mut e, mut k) = procs;
        let (eo, ko) = (wait_exit(&mut e), wait_exit(&mut k));
        t.compare(args, None, eo, ko);
    }
    for args in [
        &["watch"][..],
        &["watch", "--prefix"],
        &["watch", "a", "--"],
        &["watch", "a", "b", "--prefix"],
        &["watch", "a", "--rev=x"],
    ] {
        t.run(args);
    }
    t.run_with(&["watch"], None, &[("ETCDCTL_WATCH_RANGE_END", "z")]);
    t.run_with(&["watch", "k"], None, &[("ETCDCTL_WATCH_KEY", "k")]);
    // Interactive: watch commands, progress, and bad lines, from stdin.
    let args = ["watch", "-i", "-w", "json"];
    let (mut e, mut k) = t.spawn(&args);
    for p in [&mut e, &mut k] {
        p.write_stdin("watch w/b --rev=8\n");
    }
    t.expect(&["put", "w/b", "i1"], "OK\n");
    for p in [&e, &k] {
        p.wait_for(OUTPUT_TIMEOUT, |out, _| out.contains("aTE="));
    }
    for p in [&mut e, &mut k] {
        p.write_stdin("progress\n");
    }
    for p in [&e, &k] {
        p.wait_for(OUTPUT_TIMEOUT, |out, _| out.contains("progress notify"));
    }
    for p in [&mut e, &mut k] {
        p.write_stdin("bogus\n\nwatch\nwatch a b --prefix\n");
        p.close_stdin();
    }
    let (eo, ko) = (wait_exit(&mut e), wait_exit(&mut k));
    t.compare(&args, Some("watch w/b; progress; bad lines"), eo, ko);
    // watch ... -- <command>: run for each event with ETCD_WATCH_* set.
    let args = [
        "watch",
        "w/e",
        "--rev=9",
        "--",
        "sh",
        "-c",
        "echo \"$ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_KEY=$ETCD_WATCH_VALUE\"",
    ];
    let procs = t.spawn(&args);
    t.expect(&["put", "w/e", "ev"], "OK\n");
    t.finish_spawned(&args, procs, "=\"ev\"");
    t.finish();
}

/// Waits for a process to exit by itself and returns its output.
fn wait_exit(p: &mut EtcdctlProcess) -> Out {
    let code = p.wait_exit(OUTPUT_TIMEOUT).unwrap_or(-1);
    Out { stdout: p.stdout().into_bytes(), stderr: p.stderr(), code }
}

#[tokio::test]
async fn cluster_and_maintenance_match_etcdctl() {
    let mut t = Twins::start(Kind::Etcd).await;
    t.expect(&["put", "k", "v"], "OK\n");
    for f in FORMATS {
        for args in [
            &["member", "list"][..],
            &["endpoint", "status"],
            &["endpoint", "status", "--cluster"],
            &["endpoint", "hashkv"],
            &["endpoint", "hashkv", "--cluster", "--rev=2"],
            &["endpoint", "health"],
            &["endpoint", "health", "--cluster"],
            &["alarm", "list"],
            &["move-leader", "58a88bf978398f80"],
        ] {
            if f == "fields" && args[0] == "alarm" {
                // etcdctl dereferences the missing header and panics.
                continue;
            }
            t.run(&with_format(args, f));
        }
    }
    for args in [
        &["alarm", "disarm"][..],
        &["alarm", "disarm", "-w", "json"],
        &["alarm", "list", "x"],
        &["move-leader"],
        &["move-leader", "zz"],
        &["move-leader", "1234"],
        &["member", "add", "x"],
        &["member", "add", "x", "http://a"],
        &["member", "add", "--peer-urls=http://a"],
        &["member", "remove"],
        &["member", "remove", "zz"],
        &["member", "remove", "1234"],
        &["member", "update", "1234"],
        &["member", "update", "1234", "--peer-urls=http://127.0.0.1:9"],
        &["member", "promote", "1234"],
        &["defrag"],
        &["defrag", "--cluster"],
        &["snapshot", "save"],
    ] {
        t.run(args);
    }
    // Adding a learner: its ID is drawn from the clock, normalised.
    for (n, f) in ["simple", "json", "protobuf", "fields", "table"].iter().enumerate() {
        let url = format!("--peer-urls=http://127.0.0.1:{}", 6001 + n);
        let (e, k) = t.run_raw(&["member", "add", &format!("new{n}"), "--learner", &url, "-w", f], None, &[]);
        let new_id = |side: &Member| -> Option<u64> {
            let out = run_program(Path::new(ETCDCTL_BIN), &side.endpoint(), &["member", "list"], None, &[]);
            let text = out.text();
            let line = text.lines().find(|l| l.contains("unstarted"))?;
            u64::from_str_radix(line.split(',').next()?, 16).ok()
        };
        let (Some(eid), Some(kid)) = (new_id(&t.etcd), new_id(&t.ketch)) else {
            t.compare(&["member", "add"], None, e, k);
            continue;
        };
        t.ids.add(eid, kid, "member");
        t.compare(&["member", "add", "-w", f], None, e, k);
        let (es, ks) = (format!("{eid:x}"), format!("{kid:x}"));
        let ids = (es, ks);
        t.run_lease(
            &["member", "update", "{lease}", &format!("--peer-urls=http://127.0.0.1:{}", 7001 + n), "-w", f],
            &ids,
        );
        t.run_lease(&["member", "promote", "{lease}", "-w", f], &ids);
        t.run_lease(&["member", "remove", "{lease}", "-w", f], &ids);
        if *f == "fields" || *f == "table" {
            // Not supported by etcdctl: nothing was printed, remove it.
            t.run_lease(&["member", "remove", "{lease}"], &ids);
        }
    }
    // Snapshot: the same stdout and log lines; the file is etcd's backend.
    let (e_size, k_size) = snapshot_save(&mut t);
    assert!(k_size > 0 && k_size == e_size, "snapshot sizes {e_size} / {k_size}");
    t.run(&["snapshot", "save", "/nonexistent-dir/x.db"]);
    // lock and elect: held until SIGTERM, or around a command.
    t.run(&["lock"]);
    t.run(&["lock", "l1", "echo", "locked"]);
    t.run(&["lock", "l1", "--ttl=5", "--", "sh", "-c", "exit 3"]);
    t.run(&["elect"]);
    t.run(&["elect", "e1"]);
    t.run(&["elect", "-l", "e1", "p"]);
    let procs = t.spawn(&["elect", "e1", "proposal"]);
    let (mut e, mut k) = procs;
    for p in [&e, &k] {
        assert!(p.wait_for(OUTPUT_TIMEOUT, |out, _| out.contains("proposal")), "elect: {:?}", p.stderr());
    }
    let leased = |o: Out| Out { stdout: strip_lease_hex(&o.text()).into_bytes(), ..o };
    let (eo, ko) = (leased(stop(&mut e)), leased(stop(&mut k)));
    t.compare(&["elect", "e1", "proposal"], None, eo, ko);
    let (mut e, mut k) = t.spawn(&["lock", "l2"]);
    for p in [&e, &k] {
        assert!(p.wait_for(OUTPUT_TIMEOUT, |out, _| out.contains("l2/")), "lock: {:?}", p.stderr());
    }
    let (eo, ko) = (leased(stop(&mut e)), leased(stop(&mut k)));
    t.compare(&["lock", "l2"], None, eo, ko);
    t.run(&["get", "l2", "--prefix"]);
    t.finish();
}

/// `snapshot save <file>` on both sides; returns the sizes of the files.
fn snapshot_save(t: &mut Twins) -> (u64, u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ep, kp) = (dir.path().join("etcdctl.db"), dir.path().join("ketchctl.db"));
    let (ep_s, kp_s) = (ep.display().to_string(), kp.display().to_string());
    let e = run_program(Path::new(ETCDCTL_BIN), &t.etcd.endpoint(), &["snapshot", "save", &ep_s], None, &[]);
    let k = run_program(&ketchctl_binary(), &t.ketch.endpoint(), &["snapshot", "save", &kp_s], None, &[]);
    // etcdctl logs from two goroutines: the log lines' order may vary.
    let path_free = |o: Out, p: &str| {
        let stderr = o.stderr.replace(p, "<path>");
        let (mut logs, rest): (Vec<&str>, Vec<&str>) = stderr.lines().partition(|l| l.starts_with('{'));
        logs.sort_unstable();
        let stderr: String = logs.iter().chain(rest.iter()).map(|l| format!("{l}\n")).collect();
        Out { stdout: o.text().replace(p, "<path>").into_bytes(), stderr, code: o.code }
    };
    t.compare(&["snapshot", "save", "<path>"], None, path_free(e, &ep_s), path_free(k, &kp_s));
    let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    (size(&ep), size(&kp))
}

/// Replaces hex lease IDs ending lock and election keys by `<lease>`.
fn strip_lease_hex(text: &str) -> String {
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        match line.rfind('/') {
            Some(i)
                if line[i + 1..].trim_end().len() >= 10
                    && line[i + 1..].trim_end().chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                out.push_str(&line[..=i]);
                out.push_str("<lease>\n");
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// The same comparisons against twin servers of the implementation under
/// test (Ketch): what ketchctl prints there is what etcdctl prints there.
#[tokio::test]
async fn against_ketch_servers() {
    let mut t = Twins::start(subject_kind()).await;
    t.expect(&["put", "k", "v"], "OK\n");
    for f in FORMATS {
        for args in [
            &["put", "k", "v2", "--prev-kv"][..],
            &["get", "k"],
            &["get", "", "--prefix"],
            &["del", "nope"],
            &["member", "list"],
            &["endpoint", "status"],
            &["endpoint", "hashkv"],
            &["alarm", "list"],
        ] {
            if f == "fields" && args[0] == "alarm" {
                continue;
            }
            t.run(&with_format(args, f));
        }
        t.run_stdin(&["txn", "-w", f], "value(\"k\") = \"v2\"\n\nput k v3\n\nget k\n\n");
    }
    let l = t.grant("60");
    t.run_lease(&["put", "--lease={lease}", "lk", "v"], &l);
    t.run_lease(&["lease", "timetolive", "{lease}", "--keys"], &l);
    t.run_lease(&["lease", "keep-alive", "--once", "{lease}"], &l);
    t.run_lease(&["lease", "revoke", "{lease}"], &l);
    for args in [
        &["lease", "revoke", "1234"][..],
        &["compaction", "3"],
        &["compaction", "3"],
        &["get", "k", "--rev=2"],
        &["endpoint", "health"],
        &["defrag"],
        &["member", "add", "x", "--peer-urls=http://127.0.0.1:9"],
        &["move-leader", "1234"],
    ] {
        t.run(args);
    }
    snapshot_save(&mut t);
    let from = format!("--rev={}", t.revision() + 1);
    let args = ["watch", "w", "--prev-kv", &from];
    let procs = t.spawn(&args);
    t.expect(&["put", "w", "1"], "OK\n");
    t.expect(&["del", "w"], "1\n");
    t.finish_spawned(&args, procs, "DELETE\nw\n1\nw\n\n");
    t.finish();
}

/// `watch --progress-notify` is etcdctl 3.5's (3.4 refuses the flag):
/// ketchctl prints the server's progress notifications as 3.5 does.
#[tokio::test]
async fn watch_progress_notify_extension() {
    let etcd = Member::start(Kind::Etcd, &["--experimental-watch-progress-notify-interval", "200ms"]).await;
    let refused =
        run_program(Path::new(ETCDCTL_BIN), &etcd.endpoint(), &["watch", "k", "--progress-notify"], None, &[]);
    assert!(refused.stderr.contains("unknown flag: --progress-notify"), "{refused:?}");
    let mut watch = spawn_ctl_command(ctl_command(
        &ketchctl_binary(),
        &etcd.endpoint(),
        &["watch", "k", "--progress-notify", "-w", "json"],
    ));
    let notified = watch.wait_for(OUTPUT_TIMEOUT, |out, _| out.matches("progress notify: 1\n").count() >= 2);
    let out = stop(&mut watch);
    assert!(notified, "no progress notifications: {out:?}");
    assert!(out.text().contains("\"Events\":[],\"CompactRevision\":0,\"Canceled\":false"), "{out:?}");
}
