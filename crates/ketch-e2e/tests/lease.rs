//! etcdctl `lease` compatibility: every test starts one reference etcd and
//! one ketch (see `KETCH_E2E_SUBJECT` in the library docs), runs the same
//! etcdctl 3.4 command lines against both, in the same order, and compares
//! exit code, stdout and stderr (JSON field by field).
//!
//! Lease IDs are chosen by each server, so a command line names leases by
//! placeholder: `{L0}`, `{L1}`, ... is replaced, per server, by the hex ID of
//! the first, second, ... lease ID that server has printed so far. What
//! legitimately differs is normalised before comparing, and nothing else:
//!
//! - **Lease IDs.** Every lease ID a server prints (16 hex digits in text
//!   output; `ID`, `id` and `lease` numbers in JSON; `"ID"` and `"Lease"`
//!   lines of `-w fields`) becomes `<lease#n>`, numbered per server in order
//!   of first appearance. IDs the test itself invents (never granted, e.g.
//!   `1234`) are registered up front and become `<given:1234>` on both
//!   sides, so a server that echoes the wrong ID is still caught.
//! - **Remaining TTL.** The remaining seconds of `lease timetolive`
//!   (`remaining(Ns)`, JSON `ttl`, and the `"TTL"` line of `-w fields` output
//!   that also has a `"GrantedTTL"` line) are measured on two clocks: the
//!   subject's value may differ from etcd's by exactly 1 and is then
//!   replaced by etcd's. Granted TTLs and keep-alive TTLs are exact.
//! - **Attached keys.** etcd 3.4 lists a lease's keys (`Lease.Keys()`) by
//!   iterating a Go map, i.e. in random order; `attached keys([...])` and
//!   JSON `keys` and runs of `"Key"` lines in `-w fields` are sorted on both
//!   sides (a genuine non-determinism of etcd, seen etcd-vs-etcd).
//! - **Headers and endpoint.** `cluster_id`, `member_id` and `raft_term`
//!   (in lease JSON they sit at the top level, not under `header`;
//!   `ClusterID`, `MemberID` and `RaftTerm` lines in `-w fields`), the
//!   endpoint address and the client library's log-line timestamp and client
//!   id (see [`normalize_etcdctl_text`]). Revisions are kept.
//!
//! `lease list` is compared in order: etcd 3.4 lists leases sorted by expiry
//! time (`leasesByExpiry`; with at most 12 leases Go's sort is stable), and
//! the tests keep expiries far apart, so the order is deterministic.
//!
//! etcdctl 3.4 cannot express a `lease("k")` txn compare: its parser panics
//! client-side (`panic: bad value` in `clientv3.mustInt64`), asserted below
//! as a premise; lease compares are covered over gRPC by
//! `lease_differential.rs`.

use std::collections::HashMap;
use std::time::Duration;

use ketch_e2e::{
    EtcdctlProcess, Member, Output, etcdctl, json_diff, normalize_etcdctl_text, normalize_json_headers, spawn_etcdctl,
    subject_kind,
};
use serde_json::Value;

/// A lease ID no test ever grants (servers choose large random-looking IDs).
const UNKNOWN: &str = "1234";

/// One server's lease IDs in order of first appearance.
#[derive(Default)]
struct IdMap {
    order: Vec<i64>,
    names: HashMap<i64, String>,
}

impl IdMap {
    /// Registers an ID the test invents, with the same name on both sides.
    fn given(&mut self, hex: &str) {
        let id = i64::from_str_radix(hex, 16).expect("given lease IDs are hex");
        self.names.insert(id, format!("<given:{hex}>"));
    }

    fn name(&mut self, id: i64) -> String {
        if let Some(name) = self.names.get(&id) {
            return name.clone();
        }
        let name = format!("<lease#{}>", self.order.len());
        self.order.push(id);
        self.names.insert(id, name.clone());
        name
    }

    /// `{Ln}` -> this server's n-th lease ID in hex.
    fn expand(&self, arg: &str) -> String {
        let mut out = arg.to_string();
        for (n, id) in self.order.iter().enumerate().rev() {
            out = out.replace(&format!("{{L{n}}}"), &format!("{id:x}"));
        }
        assert!(!out.contains("{L"), "placeholder in {arg:?} names a lease not seen yet ({} known)", self.order.len());
        out
    }
}

fn wants_json(args: &[&str]) -> bool {
    args.windows(2).any(|w| w == ["-w", "json"] || w == ["--write-out", "json"])
        || args.iter().any(|a| *a == "-w=json" || *a == "--write-out=json")
}

/// Replaces every 16-hex-digit token (etcdctl prints lease IDs `%016x`).
fn map_hex_ids(text: &str, ids: &mut IdMap) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_alphanumeric() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let token = &text[start..i];
            let is_id = token.len() == 16 && token.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            match u64::from_str_radix(token, 16) {
                Ok(id) if is_id => out.push_str(&ids.name(id as i64)),
                _ => out.push_str(token),
            }
        } else {
            let ch = text[i..].chars().next().expect("index is on a char boundary");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Sorts the list inside `attached keys([...])` (etcd's order is random).
fn sort_attached_keys(text: &str) -> String {
    const MARK: &str = "attached keys([";
    let Some(start) = text.find(MARK) else { return text.to_string() };
    let inner_start = start + MARK.len();
    let Some(len) = text[inner_start..].find("])") else { return text.to_string() };
    let mut keys: Vec<&str> = text[inner_start..inner_start + len].split(' ').collect();
    keys.sort_unstable();
    format!("{}{}{}", &text[..inner_start], keys.join(" "), &text[inner_start + len..])
}

/// `-w fields` lines: drop volatile header lines, map `"ID"` / `"Lease"`.
fn normalize_fields(text: &str, ids: &mut IdMap) -> String {
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        if ["\"ClusterID\" : ", "\"MemberID\" : ", "\"RaftTerm\" : "].iter().any(|p| body.starts_with(p)) {
            continue;
        }
        let mut mapped = None;
        for prefix in ["\"ID\" : ", "\"Lease\" : "] {
            if let Some(num) = body.strip_prefix(prefix)
                && let Ok(id) = num.parse::<i64>()
                && id != 0
            {
                mapped = Some(format!("{prefix}{}{}", ids.name(id), &line[body.len()..]));
            }
        }
        out.push_str(mapped.as_deref().unwrap_or(line));
    }
    out
}

/// Sorts each run of adjacent `"Key" : ...` lines (the attached keys of
/// `lease timetolive --keys -w fields`, in etcd's random order; `get -w
/// fields` never prints two `"Key"` lines in a row).
fn sort_key_lines(text: &str) -> String {
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    let is_key = |l: &str| l.starts_with("\"Key\" : ") && l.ends_with('\n');
    let mut i = 0;
    while i < lines.len() {
        let run = lines[i..].iter().take_while(|l| is_key(l)).count();
        lines[i..i + run].sort_unstable();
        i += run.max(1);
    }
    lines.concat()
}

fn normalize_text(text: &str, endpoint: &str, ids: &mut IdMap) -> String {
    let text = normalize_etcdctl_text(text, endpoint);
    let text = normalize_fields(&text, ids);
    let text = sort_key_lines(&text);
    let text = map_hex_ids(&text, ids);
    text.split_inclusive('\n').map(sort_attached_keys).collect()
}

/// Lease JSON: top-level and nested header fields, IDs, key order.
fn normalize_json(value: &mut Value, ids: &mut IdMap) {
    normalize_json_headers(value);
    if let Value::Object(map) = value {
        for field in ["cluster_id", "member_id", "raft_term"] {
            map.remove(field);
        }
        if map.contains_key("granted-ttl")
            && let Some(Value::Array(keys)) = map.get_mut("keys")
        {
            keys.sort_by_key(|k| k.to_string());
        }
    }
    map_json_ids(value, ids);
}

fn map_json_ids(value: &mut Value, ids: &mut IdMap) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if matches!(key.as_str(), "ID" | "id" | "lease")
                    && let Some(id) = child.as_i64()
                    && id != 0
                {
                    *child = Value::from(ids.name(id));
                } else {
                    map_json_ids(child, ids);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| map_json_ids(v, ids)),
        _ => {}
    }
}

/// The numbers after each occurrence of `mark` (`(byte offset, value)`).
fn numbers_after(text: &str, mark: &str) -> Vec<(usize, i64)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = text[from..].find(mark) {
        let start = from + pos + mark.len();
        let len = text[start..].bytes().take_while(u8::is_ascii_digit).count();
        if let Ok(n) = text[start..start + len].parse() {
            out.push((start, n));
        }
        from = start;
    }
    out
}

/// If the subject's remaining TTLs in `s` are each within 1 of etcd's in
/// `e` (same count, same positions), rewrites them to etcd's values.
fn reconcile_remaining_text(e: &str, s: &str) -> String {
    let mut s = s.to_string();
    let mut marks = vec!["remaining("];
    if s.contains("\"GrantedTTL\" : ") {
        marks.push("\"TTL\" : ");
    }
    for mark in marks {
        let (en, sn) = (numbers_after(e, mark), numbers_after(&s, mark));
        if en.len() != sn.len() {
            continue;
        }
        // Right to left, so earlier offsets stay valid.
        for ((_, ev), (pos, sv)) in en.iter().zip(&sn).rev() {
            if (ev - sv).abs() == 1 {
                let len = sv.to_string().len();
                s.replace_range(*pos..pos + len, &ev.to_string());
            }
        }
    }
    s
}

fn reconcile_remaining_json(e: &Value, s: &mut Value) {
    if s.get("granted-ttl").is_none() {
        return;
    }
    if let (Some(ev), Some(sv)) = (e.get("ttl").and_then(Value::as_i64), s.get("ttl").and_then(Value::as_i64))
        && (ev - sv).abs() == 1
    {
        s["ttl"] = Value::from(ev);
    }
}

struct Pair {
    etcd: Member,
    subject: Member,
    etcd_ids: IdMap,
    subject_ids: IdMap,
    mismatches: Vec<String>,
}

impl Pair {
    async fn start() -> Pair {
        let (etcd, subject) = tokio::join!(Member::etcd(), Member::subject());
        let mut pair =
            Pair { etcd, subject, etcd_ids: IdMap::default(), subject_ids: IdMap::default(), mismatches: Vec::new() };
        pair.etcd_ids.given(UNKNOWN);
        pair.subject_ids.given(UNKNOWN);
        pair
    }

    fn run(&mut self, args: &[&str]) -> Output {
        self.run_stdin(args, None)
    }

    /// Runs `etcdctl <args>` (placeholders expanded per server, with
    /// `stdin`, also expanded) against both servers at once, records any
    /// difference, and returns etcd's normalised output so the test can
    /// check its own premises.
    fn run_stdin(&mut self, args: &[&str], stdin: Option<&str>) -> Output {
        let (e_ep, s_ep) = (self.etcd.endpoint(), self.subject.endpoint());
        let e_args: Vec<String> = args.iter().map(|a| self.etcd_ids.expand(a)).collect();
        let s_args: Vec<String> = args.iter().map(|a| self.subject_ids.expand(a)).collect();
        let e_stdin = stdin.map(|s| self.etcd_ids.expand(s));
        let s_stdin = stdin.map(|s| self.subject_ids.expand(s));
        let (e, s) = std::thread::scope(|scope| {
            let e = scope.spawn(|| {
                let a: Vec<&str> = e_args.iter().map(String::as_str).collect();
                etcdctl(&e_ep, &a, e_stdin.as_deref())
            });
            let a: Vec<&str> = s_args.iter().map(String::as_str).collect();
            let s = etcdctl(&s_ep, &a, s_stdin.as_deref());
            (e.join().expect("etcdctl thread panicked"), s)
        });
        let label = match stdin {
            Some(text) => format!("`etcdctl {}` <<< {text:?}", args.join(" ")),
            None => format!("`etcdctl {}`", args.join(" ")),
        };
        self.compare(&label, wants_json(args), e, s)
    }

    /// Starts `etcdctl <args>` (placeholders expanded) in the background
    /// against both servers.
    fn spawn(&self, args: &[&str]) -> (EtcdctlProcess, EtcdctlProcess) {
        let expand = |ids: &IdMap| args.iter().map(|a| ids.expand(a)).collect::<Vec<String>>();
        let (e_args, s_args) = (expand(&self.etcd_ids), expand(&self.subject_ids));
        let e = spawn_etcdctl(&self.etcd.endpoint(), &e_args.iter().map(String::as_str).collect::<Vec<_>>());
        let s = spawn_etcdctl(&self.subject.endpoint(), &s_args.iter().map(String::as_str).collect::<Vec<_>>());
        (e, s)
    }

    /// Normalises and compares the outputs of one command on both servers,
    /// records any difference under `label`, and returns etcd's normalised
    /// output.
    fn compare(&mut self, label: &str, json: bool, e: Output, s: Output) -> Output {
        let (e_ep, s_ep) = (self.etcd.endpoint(), self.subject.endpoint());
        let mut diffs = Vec::new();
        if e.code != s.code {
            diffs.push(format!("exit code: etcd={} ketch={}", e.code, s.code));
        }
        let e_out = if json && !e.stdout.trim().is_empty() {
            let mut ev: Value = serde_json::from_str(e.stdout.trim())
                .unwrap_or_else(|err| panic!("etcd's stdout is not JSON ({err}): {:?}", e.stdout));
            normalize_json(&mut ev, &mut self.etcd_ids);
            match serde_json::from_str::<Value>(s.stdout.trim()) {
                Ok(mut sv) => {
                    normalize_json(&mut sv, &mut self.subject_ids);
                    reconcile_remaining_json(&ev, &mut sv);
                    let mut fields = Vec::new();
                    json_diff("$", &ev, &sv, &mut fields);
                    if !fields.is_empty() {
                        diffs.push(format!(
                            "json stdout differs:\n      {}\n    etcd:  {ev}\n    ketch: {sv}",
                            fields.join("\n      ")
                        ));
                    }
                }
                Err(err) => diffs.push(format!(
                    "ketch stdout is not JSON ({err}):\n    etcd:  {:?}\n    ketch: {:?}",
                    e.stdout, s.stdout
                )),
            }
            ev.to_string()
        } else {
            let eo = normalize_text(&e.stdout, &e_ep, &mut self.etcd_ids);
            let so = normalize_text(&s.stdout, &s_ep, &mut self.subject_ids);
            let so = reconcile_remaining_text(&eo, &so);
            if eo != so {
                diffs.push(format!("stdout differs:\n    etcd:  {eo:?}\n    ketch: {so:?}"));
            }
            eo
        };
        let ee = normalize_text(&e.stderr, &e_ep, &mut self.etcd_ids);
        let se = normalize_text(&s.stderr, &s_ep, &mut self.subject_ids);
        if ee != se {
            diffs.push(format!("stderr differs:\n    etcd:  {ee:?}\n    ketch: {se:?}"));
        }
        if !diffs.is_empty() {
            self.mismatches.push(format!("{label}:\n  {}", diffs.join("\n  ")));
        }
        Output { stdout: e_out, stderr: ee, code: e.code }
    }

    /// Asserts etcd's normalised output (a premise of the test, not a
    /// comparison).
    fn expect(&mut self, args: &[&str], stdout: &str) {
        let out = self.run(args);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, stdout),
            "premise: etcd's output of `etcdctl {}` (stderr {:?})",
            args.join(" "),
            out.stderr
        );
    }

    /// Like [`Pair::expect`] for `lease timetolive` output, with etcd's
    /// remaining TTL allowed to be up to 5 s below the one in `stdout` (a
    /// slow machine; the comparison with the subject is unaffected).
    fn expect_ttl(&mut self, args: &[&str], stdout: &str) {
        let out = self.run(args);
        let mut got = out.stdout.clone();
        let want = numbers_after(stdout, "remaining(");
        if let (Some(&(_, w)), Some(&(pos, g))) = (want.first(), numbers_after(&got, "remaining(").first())
            && (w - 5..=w).contains(&g)
        {
            got.replace_range(pos..pos + g.to_string().len(), &w.to_string());
        }
        assert_eq!(
            (out.code, got.as_str()),
            (0, stdout),
            "premise: etcd's output of `etcdctl {}` (stderr {:?})",
            args.join(" "),
            out.stderr
        );
    }

    /// Asserts that etcd fails with `message` on stderr (a premise).
    fn expect_err(&mut self, args: &[&str], message: &str) {
        let out = self.run(args);
        assert!(
            out.code != 0 && out.stderr.contains(message),
            "premise: `etcdctl {}` on etcd should fail with {message:?}, got {out:?}",
            args.join(" ")
        );
    }

    /// Runs `args` and returns etcd's normalised JSON (a premise source).
    fn json(&mut self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert_eq!(out.code, 0, "premise: `etcdctl {}` on etcd: {out:?}", args.join(" "));
        serde_json::from_str(&out.stdout).expect("normalised JSON")
    }

    fn finish(self) {
        assert!(
            self.mismatches.is_empty(),
            "{} etcdctl mismatch(es) between etcd and {} (first one first):\n\n{}",
            self.mismatches.len(),
            subject_kind().as_str(),
            self.mismatches.join("\n\n")
        );
    }
}

#[tokio::test]
async fn lease_grant_list_revoke() {
    let mut p = Pair::start().await;
    p.expect(&["lease", "grant", "100"], "lease <lease#0> granted with TTL(100s)\n");
    // Below the minimum TTL (1.5 election timeouts = 1.5 s, rounded up to
    // 2 s with etcd's default flags): raised. Revoked right away so it
    // cannot expire during the test.
    p.expect(&["lease", "grant", "1"], "lease <lease#1> granted with TTL(2s)\n");
    p.expect(&["lease", "revoke", "{L1}"], "lease <lease#1> revoked\n");
    p.expect(&["lease", "grant", "0"], "lease <lease#2> granted with TTL(2s)\n");
    p.expect(&["lease", "revoke", "{L2}"], "lease <lease#2> revoked\n");
    p.expect_err(&["lease", "grant", "9000000001"], "too large lease TTL");
    p.expect_err(&["lease", "grant", "9223372036854775807", "-w", "json"], "too large lease TTL");
    p.expect(&["lease", "grant", "9000000000"], "lease <lease#3> granted with TTL(9000000000s)\n");
    let granted = p.json(&["lease", "grant", "300", "-w", "json"]);
    assert_eq!(granted["ID"], "<lease#4>", "premise: {granted}");
    assert_eq!(granted["TTL"], 300, "premise: {granted}");
    p.run(&["lease", "grant", "50", "-w", "fields"]); // <lease#5>
    p.expect(&["lease", "grant", "200"], "lease <lease#6> granted with TTL(200s)\n");
    // Client-side errors (no request, or the grant is sent and then the
    // printer fails): compared all the same.
    p.run(&["lease", "grant", "abc"]);
    p.run(&["lease", "grant"]);
    // The grant is sent, then the printer fails: the ID is not printed, so
    // the lease gets its name (<lease#7>) when `lease list` first shows it.
    p.run(&["lease", "grant", "400", "-w", "table"]);
    // Expiry order: #5 (50 s), #0 (100 s), #6 (200 s), #4 (300 s),
    // #7 (400 s), #3 (9e9 s).
    p.expect(&["lease", "list"], "found 6 leases\n<lease#5>\n<lease#0>\n<lease#6>\n<lease#4>\n<lease#7>\n<lease#3>\n");
    p.run(&["lease", "list", "-w", "json"]);
    p.run(&["lease", "list", "-w", "fields"]);
    p.expect(&["lease", "revoke", "{L0}"], "lease <lease#0> revoked\n");
    p.expect_err(&["lease", "revoke", "{L0}"], "requested lease not found");
    p.expect_err(&["lease", "revoke", UNKNOWN], "requested lease not found");
    p.expect_err(&["lease", "revoke", UNKNOWN, "-w", "json"], "requested lease not found");
    p.run(&["lease", "revoke", "{L4}", "-w", "json"]);
    p.run(&["lease", "revoke", "{L5}", "-w", "fields"]);
    p.run(&["lease", "revoke", "zz"]);
    p.run(&["lease", "revoke"]);
    p.expect(&["lease", "list"], "found 3 leases\n<lease#6>\n<lease#7>\n<lease#3>\n");
    p.run(&["lease", "list", "-w", "json"]);
    for id in ["{L6}", "{L7}", "{L3}"] {
        p.expect(
            &["lease", "revoke", id],
            &format!("lease {} revoked\n", id.replace("{L", "<lease#").replace('}', ">")),
        );
    }
    p.expect(&["lease", "list"], "found 0 leases\n");
    p.run(&["lease", "list", "-w", "json"]);
    p.finish();
}

#[tokio::test]
async fn lease_timetolive_and_keep_alive() {
    let mut p = Pair::start().await;
    p.expect(&["lease", "grant", "300"], "lease <lease#0> granted with TTL(300s)\n");
    p.expect(&["lease", "grant", "600"], "lease <lease#1> granted with TTL(600s)\n");
    p.expect_ttl(&["lease", "timetolive", "{L0}"], "lease <lease#0> granted with TTL(300s), remaining(299s)\n");
    p.expect_ttl(
        &["lease", "timetolive", "{L0}", "--keys"],
        "lease <lease#0> granted with TTL(300s), remaining(299s), attached keys([])\n",
    );
    for (k, l) in [("a", "{L0}"), ("b", "{L0}"), ("c/x", "{L0}"), ("d", "{L1}")] {
        let flag = format!("--lease={l}");
        p.expect(&["put", k, "v", &flag], "OK\n");
    }
    p.expect_ttl(
        &["lease", "timetolive", "{L0}", "--keys"],
        "lease <lease#0> granted with TTL(300s), remaining(299s), attached keys([a b c/x])\n",
    );
    p.run(&["lease", "timetolive", "{L0}", "-w", "json"]);
    p.run(&["lease", "timetolive", "{L0}", "--keys", "-w", "json"]);
    p.run(&["lease", "timetolive", "{L0}", "-w", "fields"]);
    p.run(&["lease", "timetolive", "{L0}", "--keys", "-w", "fields"]);
    p.run(&["lease", "timetolive", "{L1}", "--keys"]);
    // Unknown lease: an answer with TTL -1, printed as "already expired".
    p.expect(&["lease", "timetolive", UNKNOWN], "lease <given:1234> already expired\n");
    p.run(&["lease", "timetolive", UNKNOWN, "--keys"]);
    p.run(&["lease", "timetolive", UNKNOWN, "-w", "json"]);
    p.run(&["lease", "timetolive", UNKNOWN, "--keys", "-w", "json"]);
    p.run(&["lease", "timetolive", "zz"]);
    p.run(&["lease", "timetolive"]);

    p.expect(&["lease", "keep-alive", "--once", "{L0}"], "lease <lease#0> keepalived with TTL(300)\n");
    p.run(&["lease", "keep-alive", "--once", "{L0}", "-w", "json"]);
    p.run(&["lease", "keep-alive", "--once", "{L1}", "-w", "fields"]);
    p.expect_err(&["lease", "keep-alive", "--once", UNKNOWN], "requested lease not found");
    p.run(&["lease", "keep-alive", "--once"]);
    p.run(&["lease", "timetolive", "{L0}", "--keys", "-w", "json"]);
    // After its keep-alive #0 still expires (300 s from now) before #1.
    p.expect(&["lease", "list"], "found 2 leases\n<lease#0>\n<lease#1>\n");

    p.expect(&["lease", "revoke", "{L1}"], "lease <lease#1> revoked\n");
    p.expect_err(&["lease", "keep-alive", "--once", "{L1}"], "requested lease not found");
    p.run(&["lease", "keep-alive", "--once", "{L1}", "-w", "json"]);
    p.expect(&["lease", "timetolive", "{L1}"], "lease <lease#1> already expired\n");
    p.run(&["lease", "timetolive", "{L1}", "--keys", "-w", "json"]);
    p.run(&["get", "", "--from-key", "-w", "json"]);
    p.finish();
}

#[tokio::test]
async fn put_and_get_with_leases() {
    let mut p = Pair::start().await;
    p.expect(&["lease", "grant", "300"], "lease <lease#0> granted with TTL(300s)\n");
    p.expect(&["lease", "grant", "600"], "lease <lease#1> granted with TTL(600s)\n");
    p.expect(&["put", "k1", "v1", "--lease={L0}"], "OK\n");
    p.run(&["put", "k2", "v2", "--lease={L0}", "--prev-kv", "-w", "json"]);
    p.run(&["get", "k1", "-w", "json"]);
    p.run(&["get", "k", "--prefix", "-w", "fields"]);
    p.expect_err(&["put", "k3", "v3", "--lease=1234"], "requested lease not found");
    p.run(&["put", "k3", "v3", "--lease=1234", "-w", "json"]);
    p.run(&["put", "k3", "v3", "--lease=zz"]);
    // Move k1 to #1, keep it there with --ignore-lease, then detach it.
    p.expect(&["put", "k1", "v1b", "--lease={L1}", "--prev-kv"], "OK\nk1\nv1\n");
    p.run(&["lease", "timetolive", "{L0}", "--keys"]);
    p.run(&["lease", "timetolive", "{L1}", "--keys"]);
    p.expect(&["put", "k1", "v1c", "--ignore-lease"], "OK\n");
    p.run(&["get", "k1", "-w", "json"]);
    p.expect_err(&["put", "k1", "v", "--lease={L0}", "--ignore-lease"], "lease is provided");
    p.expect_err(&["put", "nokey", "v", "--ignore-lease"], "key not found");
    p.expect(&["put", "k1", "v1d"], "OK\n");
    p.run(&["get", "k", "--prefix", "-w", "json"]);
    p.run(&["lease", "timetolive", "{L1}", "--keys", "-w", "json"]);
    // Deleting a key detaches it.
    p.expect(&["del", "k2"], "1\n");
    p.run(&["lease", "timetolive", "{L0}", "--keys", "-w", "json"]);
    // Revoked lease: puts fail.
    p.expect(&["lease", "revoke", "{L0}"], "lease <lease#0> revoked\n");
    p.expect_err(&["put", "k4", "v", "--lease={L0}"], "requested lease not found");
    p.run(&["get", "", "--from-key", "-w", "json"]);
    p.finish();
}

#[tokio::test]
async fn revoke_deletes_attached_keys_in_one_revision() {
    let mut p = Pair::start().await;
    p.expect(&["put", "other", "o"], "OK\n"); // rev 2
    p.expect(&["lease", "grant", "300"], "lease <lease#0> granted with TTL(300s)\n");
    p.expect(&["lease", "grant", "300"], "lease <lease#1> granted with TTL(300s)\n");
    for k in ["r/c", "r/a", "r/b"] {
        p.expect(&["put", k, k, "--lease={L0}"], "OK\n"); // revs 3, 4, 5
    }
    p.expect(&["put", "r/d", "unleased"], "OK\n"); // rev 6
    let before = p.json(&["get", "r/", "--prefix", "-w", "json"]);
    assert_eq!((before["header"]["revision"].as_i64(), before["count"].as_i64()), (Some(6), Some(4)), "{before}");
    // A revoke without keys does not create a revision.
    let revoked = p.json(&["lease", "revoke", "{L1}", "-w", "json"]);
    assert_eq!(revoked["header"]["revision"], 6, "premise: {revoked}");
    // Three keys, one revision: 7.
    let revoked = p.json(&["lease", "revoke", "{L0}", "-w", "json"]);
    assert_eq!(revoked["header"]["revision"], 7, "premise: {revoked}");
    let after = p.json(&["get", "r/", "--prefix", "-w", "json"]);
    assert_eq!((after["header"]["revision"].as_i64(), after["count"].as_i64()), (Some(7), Some(1)), "{after}");
    p.run(&["get", "r/", "--prefix", "--rev=6", "-w", "json"]);
    p.run(&["get", "r/", "--prefix", "--rev=7", "-w", "json"]);
    // The next write is revision 8.
    let put = p.json(&["put", "after", "x", "-w", "json"]);
    assert_eq!(put["header"]["revision"], 8, "premise: {put}");
    p.run(&["get", "", "--from-key", "-w", "json"]);
    p.run(&["get", "r/a", "--rev=5", "-w", "json"]);
    p.finish();
}

#[tokio::test]
async fn txn_with_leases() {
    let mut p = Pair::start().await;
    p.expect(&["lease", "grant", "300"], "lease <lease#0> granted with TTL(300s)\n");
    p.expect(&["put", "k", "v"], "OK\n");
    // Sections: compares, success ops, failure ops, each ended by a blank line.
    let scripts = [
        "\nput t/a 1 --lease={L0}\nget t/a\n\n\n",
        "value(\"k\") = \"v\"\n\nput t/b 1 --lease={L0}\nput t/c 1\n\nput t/x 1\n\n",
        "value(\"k\") = \"nope\"\n\nput t/y 1\n\nput t/d 1 --lease={L0} --prev-kv\nget t/ --prefix\n\n",
        // Unknown lease inside a txn: the whole txn fails.
        "\nput t/e 1 --lease=1234\nput t/f 1\n\n\n",
        "value(\"k\") = \"nope\"\n\n\nput t/g 1 --lease=1234\n\n",
        // A lease on the branch not taken does not matter.
        "value(\"k\") = \"v\"\n\nput t/h 1\n\nput t/i 1 --lease=1234\n\n",
        "\nput t/a 2 --ignore-lease\n\n\n",
        "\nput t/a 3 --ignore-lease --lease={L0}\n\n\n",
    ];
    for script in scripts {
        p.run_stdin(&["txn", "-i=false"], Some(script));
        p.run_stdin(&["txn", "-i=false", "-w", "json"], Some(script));
    }
    p.run(&["get", "t/", "--prefix", "-w", "json"]);
    p.run(&["lease", "timetolive", "{L0}", "--keys", "-w", "json"]);
    let revoked = p.json(&["lease", "revoke", "{L0}", "-w", "json"]);
    p.run(&["get", "t/", "--prefix", "-w", "json"]);
    let rev = revoked["header"]["revision"].as_i64().expect("revision");
    p.run(&["get", "t/", "--prefix", &format!("--rev={}", rev - 1), "-w", "json"]);

    // Premise: etcdctl 3.4 cannot send a lease compare at all (client-side
    // panic, so nothing to compare); see the module docs.
    let out = etcdctl(&p.etcd.endpoint(), &["txn", "-i=false"], Some("lease(\"k\") = \"1234\"\n\nput a 1\n\n\n"));
    assert!(out.code != 0 && out.stderr.contains("panic: bad value"), "premise: etcdctl lease compare: {out:?}");
    p.finish();
}

/// Collapses runs of identical `keepalived with TTL(...)` lines: how many
/// keep-alives a streaming `lease keep-alive` prints before the lease is
/// revoked depends on timing (one every TTL/3 s).
fn collapse_keepalived(text: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for line in text.split_inclusive('\n') {
        if line.contains(" keepalived with TTL(") && out.last() == Some(&line) {
            continue;
        }
        out.push(line);
    }
    out.concat()
}

/// Streaming `lease keep-alive` (no `--once`): keep-alives until the lease
/// is revoked, then "expired or revoked." and exit code 0.
#[tokio::test]
async fn lease_keep_alive_stream_command() {
    let mut p = Pair::start().await;
    p.expect(&["lease", "grant", "3"], "lease <lease#0> granted with TTL(3s)\n");
    let (e, s) = p.spawn(&["lease", "keep-alive", "{L0}"]);
    let started = |out: &str, _: &str| out.contains("keepalived");
    assert!(e.wait_for(Duration::from_secs(10), started), "premise: etcd keep-alive: {:?}", e.stdout());
    s.wait_for(Duration::from_secs(10), started);
    // A few more keep-alives (one per second) on both.
    std::thread::sleep(Duration::from_millis(2500));
    p.expect(&["lease", "revoke", "{L0}"], "lease <lease#0> revoked\n");
    let (mut e, mut s) = (e, s);
    let _ = (e.wait_exit(Duration::from_secs(10)), s.wait_exit(Duration::from_secs(10)));
    let collapse = |o: Output| Output { stdout: collapse_keepalived(&o.stdout), ..o };
    let (e, s) = (collapse(e.finish()), collapse(s.finish()));
    let out = p.compare("`etcdctl lease keep-alive {L0}` (revoked after ~3 s)", false, e, s);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "lease <lease#0> keepalived with TTL(3)\nlease <lease#0> expired or revoked.\n"),
        "premise: {out:?}"
    );
    // Unknown lease: the first answer says so.
    let (e, s) = p.spawn(&["lease", "keep-alive", UNKNOWN]);
    let (mut e, mut s) = (e, s);
    let _ = (e.wait_exit(Duration::from_secs(10)), s.wait_exit(Duration::from_secs(10)));
    let out = p.compare("`etcdctl lease keep-alive 1234`", false, e.finish(), s.finish());
    assert_eq!((out.code, out.stdout.as_str()), (0, "lease <given:1234> expired or revoked.\n"), "premise: {out:?}");
    p.finish();
}

#[cfg(test)]
mod normalisation_tests {
    use super::*;

    #[test]
    fn ids_are_numbered_in_order_of_appearance() {
        let mut ids = IdMap::default();
        ids.given(UNKNOWN);
        let t = normalize_text(
            "lease 390da21e83f0a805 granted\nlease 0000000000001234 already expired\n390da21e83f0a807 390da21e83f0a805\n",
            "127.0.0.1:1",
            &mut ids,
        );
        assert_eq!(t, "lease <lease#0> granted\nlease <given:1234> already expired\n<lease#1> <lease#0>\n");
        assert_eq!(ids.expand("--lease={L1}"), "--lease=390da21e83f0a807");
        let mut v: Value = serde_json::from_str(
            r#"{"cluster_id":1,"member_id":2,"revision":3,"raft_term":4,"id":4111120286805436421,"ttl":5,"granted-ttl":6,"keys":["Yg==","YQ=="]}"#,
        )
        .expect("json");
        normalize_json(&mut v, &mut ids);
        assert_eq!(
            v,
            serde_json::json!({"revision":3,"id":"<lease#0>","ttl":5,"granted-ttl":6,"keys":["YQ==","Yg=="]})
        );
    }

    #[test]
    fn remaining_ttl_may_differ_by_one_only() {
        let e = "lease x granted with TTL(300s), remaining(299s)\n";
        assert_eq!(reconcile_remaining_text(e, "lease x granted with TTL(300s), remaining(300s)\n"), e);
        assert_ne!(reconcile_remaining_text(e, "lease x granted with TTL(300s), remaining(297s)\n"), e);
        assert_ne!(reconcile_remaining_text(e, "lease x granted with TTL(301s), remaining(298s)\n"), e);
        let f = "\"ID\" : x\n\"TTL\" : 10\n\"GrantedTTL\" : 11\n";
        assert_eq!(reconcile_remaining_text(f, "\"ID\" : x\n\"TTL\" : 9\n\"GrantedTTL\" : 11\n"), f);
        // Keep-alive fields (no GrantedTTL): the TTL is exact.
        let k = "\"ID\" : x\n\"TTL\" : 10\n";
        assert_ne!(reconcile_remaining_text(k, "\"ID\" : x\n\"TTL\" : 9\n"), k);
    }

    #[test]
    fn attached_keys_are_sorted() {
        assert_eq!(sort_attached_keys("x, attached keys([b c a])\n"), "x, attached keys([a b c])\n");
        assert_eq!(
            sort_key_lines("\"TTL\" : 1\n\"Key\" : \"b\"\n\"Key\" : \"a\"\n"),
            "\"TTL\" : 1\n\"Key\" : \"a\"\n\"Key\" : \"b\"\n"
        );
    }
}
