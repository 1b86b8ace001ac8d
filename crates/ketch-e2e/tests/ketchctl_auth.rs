//! ketchctl against etcdctl for authentication: `user`, `role`, `auth`,
//! `--user`/`--password` (with the password prompt), and `check perf`.
//!
//! As in `ketchctl.rs`, each test starts two *twin* reference etcd 3.4.23
//! servers (same member and cluster IDs); etcdctl talks to one, ketchctl to
//! the other, command by command in the same order, and stdout, stderr and
//! the exit code must be the same bytes after normalising what legitimately
//! differs (each twin's endpoint, the client log lines' timestamps and
//! client ids). The servers are etcd because Ketch has no authentication
//! yet; passwords are hashed with bcrypt cost 4 to keep the runs short.
//!
//! Passwords typed at the terminal come from stdin here: etcdctl (and
//! ketchctl) then run `stty` on a pipe, which complains on stderr the same
//! way on both sides.

use std::path::Path;
use std::time::Duration;

use ketch_e2e::ctl::run_to_end;
use ketch_e2e::{ETCDCTL_BIN, Kind, Member, ctl_command, ketchctl_binary, normalize_etcdctl_text};

/// The advertised peer URL of every twin: never dialed by a lone member.
const TWIN_PEER_URL: &str = "http://127.0.0.1:1";
/// Bound on one command run.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one `check perf` run (a minute of writes, then cleanup).
const PERF_TIMEOUT: Duration = Duration::from_secs(150);
/// Fast password hashing for the tests.
const SERVER_FLAGS: &[&str] = &["--bcrypt-cost", "4"];

type Out = ketch_e2e::ctl::CtlOutput;

fn twin_flags() -> Vec<String> {
    vec![
        "--initial-advertise-peer-urls".into(),
        TWIN_PEER_URL.into(),
        "--initial-cluster".into(),
        format!("e={TWIN_PEER_URL}"),
    ]
}

/// Runs `program --endpoints=<endpoint> <args>` with `env`, fed `stdin`,
/// killed after `timeout`.
fn run_program(
    program: &Path,
    endpoint: &str,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
    timeout: Duration,
) -> Out {
    run_to_end(ctl_command(program, endpoint, args), stdin, env, timeout)
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

fn normalize(out: Out, endpoint: &str) -> Out {
    let stdout = match String::from_utf8(out.stdout.clone()) {
        Ok(text) => normalize_etcdctl_text(&text, endpoint).into_bytes(),
        // Protobuf output: the endpoint (same length on both sides) blanked.
        Err(_) => replace_bytes(&out.stdout, endpoint.as_bytes(), &vec![b'_'; endpoint.len()]),
    };
    Out { stdout, stderr: normalize_etcdctl_text(&out.stderr, endpoint), code: out.code }
}

/// Bytes for a failure message, cut at a readable length.
fn show(bytes: &[u8]) -> String {
    const SHOWN_MAX: usize = 1500;
    let text = String::from_utf8_lossy(bytes);
    let cut: String = text.chars().take(SHOWN_MAX).collect();
    let more = if text.chars().count() > SHOWN_MAX { "..." } else { "" };
    format!("{cut:?}{more}")
}

/// Two twin etcd servers, and the differences found so far.
struct Twins {
    etcd: Member,
    ketch: Member,
    mismatches: Vec<String>,
}

impl Twins {
    async fn start(extra: &[&str]) -> Twins {
        let mut flags: Vec<&str> = SERVER_FLAGS.to_vec();
        flags.extend_from_slice(extra);
        let (etcd, ketch) = tokio::join!(
            Member::start_with_peer_flags(Kind::Etcd, Some(twin_flags()), &flags),
            Member::start_with_peer_flags(Kind::Etcd, Some(twin_flags()), &flags)
        );
        Twins { etcd, ketch, mismatches: Vec::new() }
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
        let (e, k) = self.run_raw(args, stdin, env, RUN_TIMEOUT);
        let e = normalize(e, &self.etcd.endpoint());
        let k = normalize(k, &self.ketch.endpoint());
        self.record(args, stdin, &e, &k);
        e
    }

    fn run_raw(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)], timeout: Duration) -> (Out, Out) {
        let (e_ep, k_ep) = (self.etcd.endpoint(), self.ketch.endpoint());
        let ketchctl = ketchctl_binary();
        std::thread::scope(|scope| {
            let e = scope.spawn(|| run_program(Path::new(ETCDCTL_BIN), &e_ep, args, stdin, env, timeout));
            let k = run_program(&ketchctl, &k_ep, args, stdin, env, timeout);
            (e.join().expect("etcdctl thread panicked"), k)
        })
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

    /// Runs `args` on both sides against an endpoint nobody listens on.
    fn run_dead(&mut self, args: &[&str]) {
        const DEAD: &str = "127.0.0.1:1";
        let (e, k) = std::thread::scope(|scope| {
            let e = scope.spawn(|| run_program(Path::new(ETCDCTL_BIN), DEAD, args, None, &[], RUN_TIMEOUT));
            (
                e.join().expect("etcdctl thread panicked"),
                run_program(&ketchctl_binary(), DEAD, args, None, &[], RUN_TIMEOUT),
            )
        });
        let (e, k) = (normalize(e, DEAD), normalize(k, DEAD));
        self.record(args, None, &e, &k);
    }

    /// Runs a command both sides must succeed with, printing `stdout`.
    fn expect(&mut self, args: &[&str], stdout: &str) {
        let out = self.run(args);
        assert_eq!((out.code, out.text().as_str()), (0, stdout), "premise: etcdctl {args:?} ({:?})", out.stderr);
    }

    /// Runs a command etcdctl must fail with `code` and `stderr_has`.
    fn expect_error(&mut self, args: &[&str], code: i32, stderr_has: &str) {
        let out = self.run(args);
        assert_eq!(out.code, code, "premise: etcdctl {args:?} exit code ({:?})", out.stderr);
        assert!(out.stderr.contains(stderr_has), "premise: etcdctl {args:?} stderr {:?}", out.stderr);
    }

    fn finish(self) {
        assert!(
            self.mismatches.is_empty(),
            "{} ketchctl mismatch(es) with etcdctl:\n\n{}",
            self.mismatches.len(),
            self.mismatches.join("\n\n")
        );
    }
}

fn with_format<'a>(args: &[&'a str], format: &'a str) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(["-w", format]);
    v
}

const FORMATS: [&str; 5] = ["simple", "json", "fields", "protobuf", "table"];

#[tokio::test]
async fn user_commands_match_etcdctl() {
    let mut t = Twins::start(&[]).await;
    t.expect(&["user", "add", "root:rootpw"], "User root created\n");
    // Every output format of each change (the table format fails after the
    // change was made, as in etcdctl).
    for (i, f) in FORMATS.iter().enumerate() {
        let spec = format!("u{i}:pw{i}");
        t.run(&with_format(&["user", "add", &spec], f));
        let user = format!("u{i}");
        t.run(&with_format(&["user", "passwd", &user, "--interactive=false"], f)[..]);
        t.run(&with_format(&["user", "get", &user], f));
        t.run(&with_format(&["user", "list"], f));
    }
    // Passwords: from the flag, from stdin, prompted (twice), none.
    t.expect(&["user", "add", "flagged", "--new-user-password=secret"], "User flagged created\n");
    t.expect(&["user", "add", "flagged2:ignored", "--new-user-password=secret"], "User flagged2:ignored created\n");
    t.run_stdin(&["user", "add", "scanned", "--interactive=false"], "  word1 word2\n");
    t.run_stdin(&["user", "add", "empty-stdin", "--interactive=false"], "");
    t.run_stdin(&["user", "add", "prompted"], "pw\npw\n");
    t.run_stdin(&["user", "add", "different"], "pw1\npw2\n");
    t.run_stdin(&["user", "add", "empty-prompt"], "\n");
    t.run_stdin(&["user", "add", "eof-prompt"], "");
    t.expect(&["user", "add", "nopw", "--no-password"], "User nopw created\n");
    t.run(&["user", "add", "nopw2:x", "--no-password"]);
    t.run_stdin(&["user", "passwd", "prompted"], "new\nnew\n");
    t.run_stdin(&["user", "passwd", "prompted"], "new\nother\n");
    t.run_stdin(&["user", "passwd", "prompted", "--interactive=false"], "newer\n");
    // Errors: bad arguments, a duplicate, unknown users and roles.
    t.expect_error(&["user", "add", "root:again"], 1, "Error: etcdserver: user name already exists");
    t.run(&["user", "add", ":nameless"]);
    t.run(&["user", "add"]);
    t.run(&["user", "add", "a", "b"]);
    t.run(&["user", "delete"]);
    t.run(&["user", "get"]);
    t.run(&["user", "list", "extra"]);
    t.run(&["user", "passwd"]);
    t.run(&["user", "grant-role", "root"]);
    t.run(&["user", "revoke-role", "root"]);
    t.expect_error(&["user", "get", "nobody"], 1, "Error: etcdserver: user name not found");
    t.run_stdin(&["user", "passwd", "nobody", "--interactive=false"], "x\n");
    t.run(&["user", "delete", "nobody"]);
    t.run(&["user", "grant-role", "root", "no-such-role"]);
    t.run(&["user", "grant-role", "nobody", "root"]);
    t.run(&["user", "revoke-role", "root", "never-granted"]);
    // Roles granted and shown in detail, in every format.
    t.expect(&["role", "add", "reader"], "Role reader created\n");
    t.expect(&["role", "grant-permission", "reader", "read", "k"], "Role reader updated\n");
    t.expect(&["role", "grant-permission", "reader", "readwrite", "--prefix", "p/"], "Role reader updated\n");
    t.expect(&["role", "add", "empty"], "Role empty created\n");
    for f in FORMATS {
        t.run(&with_format(&["user", "grant-role", "u0", "reader"], f));
        t.run(&with_format(&["user", "get", "u0", "--detail"], f));
        t.run(&with_format(&["user", "revoke-role", "u0", "reader"], f));
    }
    t.run(&["user", "grant-role", "u1", "reader"]);
    t.run(&["user", "grant-role", "u1", "empty"]);
    t.run(&["user", "get", "u1"]);
    t.run(&["user", "get", "u1", "--detail"]);
    t.run(&["user", "get", "u1", "--detail", "-w", "json"]);
    t.run(&["user", "get", "root", "--detail"]);
    t.run(&["user", "get", "nobody", "--detail"]);
    for (i, f) in FORMATS.iter().enumerate() {
        t.run(&with_format(&["user", "delete", &format!("u{i}")], f));
    }
    t.run(&["user", "list"]);
    t.finish();
}

#[tokio::test]
async fn role_commands_match_etcdctl() {
    let mut t = Twins::start(&[]).await;
    for (i, f) in FORMATS.iter().enumerate() {
        let role = format!("r{i}");
        t.run(&with_format(&["role", "add", &role], f));
        t.run(&with_format(&["role", "grant-permission", &role, "read", "foo"], f));
        t.run(&with_format(&["role", "get", &role], f));
        t.run(&with_format(&["role", "list"], f));
        t.run(&with_format(&["role", "revoke-permission", &role, "foo"], f));
    }
    // Every kind of permission, shown in every format.
    let grants: &[&[&str]] = &[
        &["read", "foo"],
        &["write", "foo", "bar"],
        &["readwrite", "--prefix", "p/"],
        &["READWRITE", "--from-key", "z"],
        &["Read", "--prefix", ""],
        &["write", "--from-key", ""],
        &["read", ""],
        &["write", "a\u{1}b", "c"],
        &["read", "--prefix", "\u{7f}"],
    ];
    t.expect(&["role", "add", "all"], "Role all created\n");
    for g in grants {
        let mut args = vec!["role", "grant-permission", "all"];
        args.extend_from_slice(g);
        t.run(&args);
    }
    for f in FORMATS {
        t.run(&with_format(&["role", "get", "all"], f));
    }
    // Argument errors (no request is made).
    t.run(&["role", "grant-permission", "all", "rw", "foo"]);
    t.run(&["role", "grant-permission", "all", "read"]);
    t.run(&["role", "grant-permission", "all", "read", "a", "b", "--prefix"]);
    t.run(&["role", "grant-permission", "all", "read", "a", "b", "--from-key"]);
    t.run(&["role", "grant-permission", "all", "read", "a", "--from-key", "--prefix"]);
    t.run(&["role", "grant-permission", "all", "read", "", "--from-key", "--prefix"]);
    t.run(&["role", "revoke-permission", "all"]);
    t.run(&["role", "add"]);
    t.run(&["role", "get"]);
    t.run(&["role", "delete"]);
    t.run(&["role", "list", "extra"]);
    // Revocations of each kind, and of what was never granted.
    let revokes: &[&[&str]] = &[
        &["foo"],
        &["foo"],
        &["foo", "bar"],
        &["--prefix", "p/"],
        &["--from-key", "z"],
        &["--prefix", ""],
        &["--from-key", ""],
        &[""],
        &["nothing", "here"],
    ];
    for r in revokes {
        let mut args = vec!["role", "revoke-permission", "all"];
        args.extend_from_slice(r);
        t.run(&args);
    }
    t.run(&["role", "get", "all"]);
    // Server errors.
    t.expect_error(&["role", "add", "all"], 1, "Error: etcdserver: role name already exists");
    t.expect_error(&["role", "get", "none"], 1, "Error: etcdserver: role name not found");
    t.run(&["role", "delete", "none"]);
    t.run(&["role", "grant-permission", "none", "read", "k"]);
    t.run(&["role", "revoke-permission", "none", "k"]);
    for (i, f) in FORMATS.iter().enumerate() {
        t.run(&with_format(&["role", "delete", &format!("r{i}")], f));
    }
    t.run(&["role", "list", "-w", "fields"]);
    t.finish();
}

#[tokio::test]
async fn auth_enable_and_authenticated_requests_match_etcdctl() {
    let mut t = Twins::start(&[]).await;
    // Credentials while authentication is off: logged, then ignored.
    t.expect(&["--user", "root:rootpw", "put", "k", "v"], "OK\n");
    t.expect_error(&["auth", "enable"], 1, "Error: etcdserver: root user does not exist");
    t.run(&["auth", "enable", "extra"]);
    t.run(&["auth", "disable", "extra"]);
    t.expect(&["user", "add", "root:rootpw"], "User root created\n");
    // etcdctl adds role root and grants it when the server asks for it.
    t.expect(&["auth", "enable", "-w", "json"], "Authentication Enabled\n");
    t.run(&["auth", "enable"]);
    // Without a token.
    t.expect_error(&["get", "k"], 1, "Error: etcdserver: user name is empty");
    t.run(&["user", "list"]);
    // Wrong or unknown credentials: the connection fails.
    t.expect_error(&["--user", "root:wrong", "get", "k"], 2, "authentication failed, invalid user ID or password");
    t.run(&["--user", "nobody:pw", "get", "k"]);
    t.run(&["--user", "root:rootpw", "--password", "rootpw", "get", "k"]);
    t.run_dead(&["--user", "root:rootpw", "get", "k"]);
    // Right ones, in each way they can be given.
    t.expect(&["--user", "root:rootpw", "get", "k"], "k\nv\n");
    t.expect(&["--user", "root", "--password", "rootpw", "get", "k"], "k\nv\n");
    t.run_stdin(&["--user", "root", "get", "k"], "rootpw\n");
    t.run_stdin(&["--user", "root", "get", "k"], "wrong\n");
    t.run_stdin(&["--user", "root", "get", "k"], "");
    t.run_stdin(&["--user", "root", "get", "k", "-w", "bogus"], "rootpw\n");
    t.run_with(&["get", "k"], None, &[("ETCDCTL_USER", "root:rootpw")]);
    t.run_with(&["get", "k"], None, &[("ETCDCTL_USER", "root"), ("ETCDCTL_PASSWORD", "rootpw")]);
    // A user whose role allows reading one prefix.
    let root = ["--user", "root:rootpw"];
    let as_root =
        |args: &[&'static str]| -> Vec<&'static str> { root.iter().copied().chain(args.iter().copied()).collect() };
    t.expect(&as_root(&["user", "add", "alice:alicepw"]), "User alice created\n");
    t.expect(&as_root(&["role", "add", "reader"]), "Role reader created\n");
    t.expect(&as_root(&["role", "grant-permission", "reader", "read", "--prefix", "pub/"]), "Role reader updated\n");
    t.expect(&as_root(&["user", "grant-role", "alice", "reader"]), "Role reader is granted to user alice\n");
    t.expect(&as_root(&["put", "pub/a", "1"]), "OK\n");
    let alice = ["--user", "alice:alicepw"];
    let as_alice =
        |args: &[&'static str]| -> Vec<&'static str> { alice.iter().copied().chain(args.iter().copied()).collect() };
    t.expect(&as_alice(&["get", "pub/", "--prefix"]), "pub/a\n1\n");
    t.expect_error(&as_alice(&["put", "pub/a", "2"]), 1, "Error: etcdserver: permission denied");
    t.run(&as_alice(&["get", "k"]));
    t.run(&as_alice(&["user", "list"]));
    t.run(&as_alice(&["role", "get", "reader"]));
    t.run(&as_alice(&["auth", "disable"]));
    t.run(&as_alice(&["user", "get", "alice"]));
    for f in FORMATS {
        t.run(&as_root(&with_format(&["user", "get", "alice", "--detail"], f)));
        t.run(&as_root(&with_format(&["role", "list"], f)));
    }
    // A changed password takes effect at once.
    t.run_stdin(&as_root(&["user", "passwd", "alice", "--interactive=false"]), "newpw\n");
    t.run(&as_alice(&["get", "pub/a"]));
    t.run(&["--user", "alice:newpw", "get", "pub/a"]);
    // Only root may turn authentication off.
    t.expect_error(&["auth", "disable"], 1, "Error: etcdserver: user name is empty");
    t.expect(&as_root(&["auth", "disable", "-w", "protobuf"]), "Authentication Disabled\n");
    t.run(&["--user", "alice:newpw", "get", "pub/a"]);
    t.expect(&["get", "k"], "k\nv\n");
    t.finish();
}

/// `check perf`'s output without its progress bar, digit runs masked as
/// `#`, and whether the bar reached its final state (` 60 / 60  100.00%
/// 1m0s`).
fn perf_shape(out: &Out) -> (Vec<String>, bool) {
    let (rest, finished) = strip_progress(&out.text());
    let lines = rest
        .lines()
        .map(|line| {
            let mut masked = String::new();
            for c in line.chars() {
                if !c.is_ascii_digit() {
                    masked.push(c);
                } else if !masked.ends_with('#') {
                    masked.push('#');
                }
            }
            masked
        })
        .collect();
    (lines, finished)
}

/// Removes pb's redraws (`\r 12 / 60   20.00% 00m47s`; the final one ends
/// its line) wherever they fall: etcdctl draws the bar from a goroutine of
/// its own, so its last redraws can land among the lines printed after the
/// writes.
fn strip_progress(text: &str) -> (String, bool) {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut finished = false;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\r'
            && let Some((len, done)) = progress_at(&b[i + 1..])
        {
            i += 1 + len;
            if done {
                finished = true;
                if b.get(i) == Some(&b'\n') {
                    i += 1;
                }
            }
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    (String::from_utf8_lossy(&out).into_owned(), finished)
}

/// The length of one progress bar drawing at the start of `b`, and whether
/// it is the final one (all steps done, with the time taken).
fn progress_at(b: &[u8]) -> Option<(usize, bool)> {
    fn digits(b: &[u8], i: &mut usize) -> Option<u64> {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        std::str::from_utf8(&b[start..*i]).ok()?.parse().ok()
    }
    fn lit(b: &[u8], i: &mut usize, s: &[u8]) -> Option<()> {
        b[*i..].starts_with(s).then(|| *i += s.len())
    }
    let mut i = 0;
    lit(b, &mut i, b" ")?;
    let current = digits(b, &mut i)?;
    lit(b, &mut i, b" / ")?;
    let total = digits(b, &mut i)?;
    lit(b, &mut i, b" ")?;
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    digits(b, &mut i)?;
    lit(b, &mut i, b".")?;
    digits(b, &mut i)?;
    lit(b, &mut i, b"%")?;
    // The time left (`00m47s`) or taken (`1m0s`), if any.
    let before_time = i;
    let time = (|| {
        lit(b, &mut i, b" ")?;
        digits(b, &mut i)?;
        if lit(b, &mut i, b"m").is_some() {
            digits(b, &mut i)?;
        }
        lit(b, &mut i, b"s")
    })();
    if time.is_none() {
        i = before_time;
    }
    Some((i, current == total && time.is_some()))
}

/// Whether a `check perf` output judges its own numbers by etcdctl's
/// rules (throughput above 90 % of 150 writes/s, slowest at most 0.5 s,
/// standard deviation at most 0.1 s) and exits accordingly.
fn perf_self_consistent(out: &Out) -> Result<(), String> {
    let text = out.text();
    let number = |line: &str| -> Option<f64> {
        line.split([' ', 's']).filter_map(|w| w.trim_end_matches(':').parse::<f64>().ok()).next_back()
    };
    let mut ok = true;
    let mut seen = 0;
    for line in text.lines() {
        if line.contains("Throughput") {
            seen += 1;
            let rps = number(line).ok_or(format!("no number in {line:?}"))?;
            let pass = (rps - 1.0) / 150.0 > 0.9;
            if pass != line.starts_with("PASS") && (rps - 1.0 - 135.0).abs() > 1.0 {
                return Err(format!("throughput verdict against etcdctl's rule: {line:?}"));
            }
            ok &= line.starts_with("PASS");
        } else if line.contains("Slowest request") {
            seen += 1;
            let slowest = number(line).ok_or(format!("no number in {line:?}"))?;
            if (slowest <= 0.5) != line.starts_with("PASS") {
                return Err(format!("slowest verdict against etcdctl's rule: {line:?}"));
            }
            ok &= line.starts_with("PASS");
        } else if line.contains("Stddev") {
            seen += 1;
            let stddev = number(line).ok_or(format!("no number in {line:?}"))?;
            if (stddev <= 0.1) != line.starts_with("PASS") {
                return Err(format!("stddev verdict against etcdctl's rule: {line:?}"));
            }
            ok &= line.starts_with("PASS");
        } else if line.starts_with("FAIL: too many errors") {
            ok = false;
        }
    }
    if seen != 3 {
        return Err(format!("expected 3 verdict lines, saw {seen}"));
    }
    let last = text.lines().last().unwrap_or_default();
    let expected = if ok { ("PASS", 0) } else { ("FAIL", 1) };
    if (last, out.code) != expected {
        return Err(format!("final line {last:?} with exit code {} (expected {expected:?})", out.code));
    }
    Ok(())
}

#[test]
fn progress_redraws_are_stripped_wherever_they_fall() {
    let text = "\r 0 / 60    0.00%\r 10 / 60   16.67% 00m49s\r 59 / 60   98.33%Compacting with revision 9002\n\r 60 / 60  100.00% 1m0s\nPASS\n";
    let (rest, finished) = strip_progress(text);
    assert_eq!(rest, "Compacting with revision 9002\nPASS\n");
    assert!(finished);
    let (rest, finished) = strip_progress("\r 3 / 60    5.00% 00m56s\nFAIL\n");
    assert_eq!((rest.as_str(), finished), ("\nFAIL\n", false));
    let out = Out {
        stdout: b"\r 60 / 60  100.00% 1m0s\nPASS: Throughput is 150 writes/s\n".to_vec(),
        stderr: String::new(),
        code: 0,
    };
    assert_eq!(perf_shape(&out), (vec!["PASS: Throughput is # writes/s".to_string()], true));
}

#[tokio::test]
async fn check_perf_matches_etcdctl() {
    let mut t = Twins::start(&[]).await;
    // Quick refusals first.
    t.run(&["check", "perf", "--load", "huge"]);
    t.expect(&["put", "/etcdctl-check-perf/x", "v"], "OK\n");
    t.expect_error(&["check", "perf"], 3, "has keys. Delete with etcdctl del --prefix /etcdctl-check-perf/ first");
    t.run(&["check", "perf", "--prefix", "/etcdctl-check-perf/x"]);
    t.expect(&["del", "/etcdctl-check-perf/x"], "1\n");
    // The minute of writes, on both twins at once.
    let args = ["check", "perf", "--load=s", "--auto-compact", "--auto-defrag", "--prefix", "/perf/"];
    let (e, k) = t.run_raw(&args, None, &[], PERF_TIMEOUT);
    let e = normalize(e, &t.etcd.endpoint());
    let k = normalize(k, &t.ketch.endpoint());
    if let Err(why) = perf_self_consistent(&e) {
        panic!("premise: etcdctl's check perf output: {why}\n{}\n{}", e.text(), e.stderr);
    }
    if let Err(why) = perf_self_consistent(&k) {
        t.mismatches.push(format!("ketchctl check perf: {why}:\n{}\n{}", k.text(), k.stderr));
    }
    let ((e_shape, e_finished), (k_shape, k_finished)) = (perf_shape(&e), perf_shape(&k));
    eprintln!("check perf, etcdctl:  {e_shape:?}\ncheck perf, ketchctl: {k_shape:?}");
    assert!(e_finished, "premise: etcdctl's progress bar finished: {:?}", e.text());
    if !k_finished {
        t.mismatches.push(format!("ketchctl's progress bar never reached its final state: {:?}", k.text()));
    }
    let both_pass = e.code == 0 && k.code == 0;
    if both_pass {
        if e_shape != k_shape || e.stderr != k.stderr {
            t.mismatches.push(format!(
                "check perf output shapes differ:\n  etcdctl:  {e_shape:?} {:?}\n  ketchctl: {k_shape:?} {:?}",
                e.stderr, k.stderr
            ));
        }
    } else {
        // A loaded machine can fail one side's latency limits: each side
        // then only has to judge its own numbers by etcdctl's rules (above).
        eprintln!("check perf did not pass on both sides (etcdctl {}, ketchctl {})", e.code, k.code);
        let before_verdict =
            |s: &[String]| s.iter().take_while(|l| !l.contains("Throughput")).cloned().collect::<Vec<_>>();
        if before_verdict(&e_shape) != before_verdict(&k_shape) {
            t.mismatches.push(format!("check perf cleanup lines differ:\n  {e_shape:?}\n  {k_shape:?}"));
        }
    }
    // Everything written was deleted again, on both sides.
    for m in [&t.etcd, &t.ketch] {
        let args = ["get", "/perf/", "--prefix", "--keys-only", "-w", "json"];
        let out = run_program(Path::new(ETCDCTL_BIN), &m.endpoint(), &args, None, &[], RUN_TIMEOUT);
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(value["count"].as_i64().unwrap_or(0), 0, "keys left under /perf/: {}", out.text());
        assert!(value["header"].is_object(), "no answer: {out:?}");
    }
    t.finish();
}
