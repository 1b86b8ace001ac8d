//! `etcdctl watch` (3.4.23) against one reference etcd and one subject (ketch,
//! see `KETCH_E2E_SUBJECT` in the library docs): the same writes go to both
//! servers in the same order, so revisions line up, and the output of the same
//! `etcdctl watch` command line is compared.
//!
//! `etcdctl watch` runs until it is killed (or the server cancels the watch):
//! each one is a background [`EtcdctlProcess`]; after every write the test
//! waits until etcd's watch has printed exactly the text the write must
//! produce (asserted: a premise of the test, not a comparison), then until the
//! subject's watch has printed as much (bounded), and at the end kills both and
//! compares everything they printed.
//!
//! Synchronisation without sleeps: a watch started with `--rev=<current + 1>`
//! cannot miss a write, whenever the server registers it. A watch without
//! `--rev` (start revision 0, "from now") is *armed* instead: the test puts
//! `__armN__` values to a watched key on both servers until both watches have
//! printed the latest one, then compares only what follows it (the arm writes
//! are identical on both sides, so revisions still line up).
//!
//! Compared, after [`normalize_etcdctl_text`] (endpoint address; timestamps
//! and client ids of the client library's log lines):
//! - stdout byte for byte, except with `-w json`, where every line (one per
//!   watch response) is parsed and compared field by field after dropping
//!   `cluster_id`, `member_id` and `raft_term` from its `Header` (etcdctl
//!   prints clientv3's `WatchResponse` struct, so the key is `Header`, not
//!   `header`). A historical replay (`--rev` in the past) in JSON is
//!   compared with the events of all lines concatenated, because how a server
//!   batches catch-up events into responses (and so their header revisions)
//!   is not part of the contract;
//! - stderr byte for byte, and the exit code when the process exits by itself
//!   (compaction, empty range, end of stdin in `-i` mode).
//!
//! etcdctl 3.4.23 has no `watch --progress-notify` flag (added in 3.5): the
//! test checks that both runs fail alike, and covers progress notifications
//! with the interactive `progress` command and, over gRPC, with the servers'
//! `--experimental-watch-progress-notify-interval`.

use std::time::{Duration, Instant};

use ketch_e2e::{
    EtcdctlProcess, Member, Output, etcdctl, json_diff, normalize_etcdctl_text, spawn_etcdctl, subject_kind,
};
use ketch_proto::etcdserverpb::{
    PutRequest, WatchCreateRequest, WatchRequest, WatchResponse, watch_request::RequestUnion,
};
use serde_json::Value;

/// How long etcd may take to print what a write must produce.
const ETCD_WAIT: Duration = Duration::from_secs(10);
/// How long the subject may take to print as much as etcd did.
const SUBJECT_WAIT: Duration = Duration::from_secs(5);
/// One arming round: how long to wait for the arm value before writing the
/// next one.
const ARM_ROUND: Duration = Duration::from_millis(300);
/// Bound on arming a watch.
const ARM_TOTAL: Duration = Duration::from_secs(8);

/// Parses one `etcdctl watch -w json` line and drops the volatile fields of
/// its `Header` (clientv3's struct field name) or `header`.
fn parse_watch_json_line(line: &str) -> Result<Value, String> {
    let mut v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line:?}"))?;
    ketch_e2e::normalize_json_headers(&mut v);
    if let Some(Value::Object(h)) = v.get_mut("Header") {
        for f in ketch_e2e::VOLATILE_HEADER_FIELDS {
            h.remove(*f);
        }
    }
    Ok(v)
}

/// How the stdout of one watch is compared.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Byte for byte.
    Text,
    /// One JSON response per line, line by line.
    Json,
    /// One JSON response per line; events of all lines concatenated, headers
    /// dropped, other fields compared per line.
    JsonFlat,
}

struct Pair {
    etcd: Member,
    subject: Member,
    mismatches: Vec<String>,
    /// The subject stopped keeping up once: later waits on it are skipped.
    subject_stuck: bool,
}

impl Pair {
    async fn start() -> Pair {
        Pair::start_with(&[]).await
    }

    async fn start_with(args: &[&str]) -> Pair {
        let (etcd, subject) =
            tokio::join!(Member::start(ketch_e2e::Kind::Etcd, args), Member::start(subject_kind(), args));
        Pair { etcd, subject, mismatches: Vec::new(), subject_stuck: false }
    }

    /// Runs a one-shot etcdctl command on both servers (etcd first), records
    /// any difference in the normalised outputs and returns etcd's.
    fn ctl(&mut self, args: &[&str], stdin: Option<&str>) -> Output {
        let (e_ep, s_ep) = (self.etcd.endpoint(), self.subject.endpoint());
        let e = etcdctl(&e_ep, args, stdin);
        let s = etcdctl(&s_ep, args, stdin);
        let norm = |o: Output, ep: &str| Output {
            stdout: normalize_etcdctl_text(&o.stdout, ep),
            stderr: normalize_etcdctl_text(&o.stderr, ep),
            code: o.code,
        };
        let (e, s) = (norm(e, &e_ep), norm(s, &s_ep));
        let json = args.windows(2).any(|w| w == ["-w", "json"]);
        let same = if json && e.code == 0 && e.code == s.code && e.stderr == s.stderr {
            compare_json_lines(&e.stdout, &s.stdout, false).is_empty()
        } else {
            e == s
        };
        if !same {
            self.mismatches.push(format!(
                "`etcdctl {}` (stdin {stdin:?}):\n    etcd:    {e:?}\n    subject: {s:?}",
                args.join(" ")
            ));
        }
        e
    }

    /// `etcdctl put k v` on both servers (premise: etcd says OK).
    fn put(&mut self, key: &str, value: &str) {
        let out = self.ctl(&["put", key, value], None);
        assert_eq!((out.code, out.stdout.as_str()), (0, "OK\n"), "premise: put {key} {value} on etcd: {out:?}");
    }

    /// `etcdctl del <args>` on both servers; returns etcd's stdout.
    fn del(&mut self, args: &[&str]) -> String {
        let mut all = vec!["del"];
        all.extend_from_slice(args);
        let out = self.ctl(&all, None);
        assert_eq!(out.code, 0, "premise: del {args:?} on etcd: {out:?}");
        out.stdout
    }

    /// `etcdctl txn -i=false` with `script` (compares, blank line, success
    /// ops, blank line, failure ops, blank line) on both servers.
    fn txn(&mut self, script: &str) {
        let out = self.ctl(&["txn", "-i=false"], Some(script));
        assert_eq!(out.code, 0, "premise: txn {script:?} on etcd: {out:?}");
    }

    /// The current revision of etcd (premise: the subject's is the same).
    fn revision(&mut self) -> i64 {
        let out = self.ctl(&["get", "__no_such_key__", "-w", "json"], None);
        let v: Value = serde_json::from_str(out.stdout.trim()).expect("get -w json output is JSON");
        v["header"]["revision"].as_i64().expect("header.revision")
    }

    /// Starts `etcdctl <args>` on both servers.
    fn watch(&self, args: &[&str], mode: Mode) -> Watch {
        Watch {
            args: args.iter().map(|s| s.to_string()).collect(),
            mode,
            e: spawn_etcdctl(&self.etcd.endpoint(), args),
            s: spawn_etcdctl(&self.subject.endpoint(), args),
            e_ep: self.etcd.endpoint(),
            s_ep: self.subject.endpoint(),
            cut: (0, 0),
            expected: String::new(),
            arm_value: None,
        }
    }

    fn finish(self) {
        assert!(
            self.mismatches.is_empty(),
            "{} watch mismatch(es) between etcd and {} (first one first):\n\n{}",
            self.mismatches.len(),
            subject_kind().as_str(),
            self.mismatches.join("\n\n")
        );
    }
}

/// The same `etcdctl watch` command running against both servers.
struct Watch {
    args: Vec<String>,
    mode: Mode,
    e: EtcdctlProcess,
    s: EtcdctlProcess,
    e_ep: String,
    s_ep: String,
    /// Bytes of stdout (etcd, subject) that belong to the arming and are not
    /// compared.
    cut: (usize, usize),
    /// What etcd must have printed after the cut so far.
    expected: String,
    /// The value of the write that armed the watch.
    arm_value: Option<String>,
}

impl Watch {
    fn name(&self) -> String {
        format!("`etcdctl {}`", self.args.join(" "))
    }

    /// Arms a watch started without `--rev` (see the module docs): puts
    /// `__armN__` to `key` on both servers until both watches printed it.
    fn arm(&mut self, pair: &mut Pair, key: &str) {
        let start = Instant::now();
        for n in 1.. {
            let value = format!("__arm{n}__");
            pair.put(key, &value);
            let line = format!("\n{value}\n");
            let ok_e = self.e.wait_for(ARM_ROUND, |out, _| out.contains(&line));
            let ok_s = self.s.wait_for(if ok_e { ARM_ROUND } else { Duration::ZERO }, |out, _| out.contains(&line));
            if ok_e && ok_s {
                let cut = |out: String| out.rfind(&line).expect("arm value was printed") + line.len();
                self.cut = (cut(self.e.stdout()), cut(self.s.stdout()));
                self.arm_value = Some(value);
                return;
            }
            if start.elapsed() > ARM_TOTAL {
                assert!(ok_e, "premise: etcd's {} never printed an arm value: {:?}", self.name(), self.e.stdout());
                pair.mismatches.push(format!(
                    "{}: the subject's watch never printed the arm write {value:?} within {ARM_TOTAL:?}; \
                     stdout {:?}, stderr {:?}",
                    self.name(),
                    self.s.stdout(),
                    self.s.stderr()
                ));
                pair.subject_stuck = true;
                self.cut = (self.e.stdout().len(), self.s.stdout().len());
                return;
            }
        }
    }

    fn e_out(&self) -> String {
        self.e.stdout().get(self.cut.0..).unwrap_or_default().to_string()
    }

    /// Expects etcd to print `text` next (after what was expected so far),
    /// and waits until the subject printed as many bytes.
    fn expect(&mut self, pair: &mut Pair, text: &str) {
        self.expected.push_str(text);
        let want = self.expected.len();
        let cut = self.cut;
        let ok = self.e.wait_for(ETCD_WAIT, |out, _| out.len() >= cut.0 + want);
        let got = self.e_out();
        assert!(
            ok && got == self.expected,
            "premise: etcd's {} printed {got:?}, expected {:?} (stderr {:?})",
            self.name(),
            self.expected,
            self.e.stderr()
        );
        self.wait_subject(pair, |out, _| out.len() >= cut.1 + want);
    }

    /// Expects etcd to print `lines` more JSON lines (one per response), and
    /// waits until the subject printed as many lines.
    fn expect_json_lines(&mut self, pair: &mut Pair, lines: usize) {
        let want = self.expected.len() + lines;
        self.expected.push_str(&"\n".repeat(lines));
        let (ce, cs) = self.cut;
        let count = |out: &str, cut: usize| out.get(cut..).unwrap_or_default().matches('\n').count();
        let ok = self.e.wait_for(ETCD_WAIT, |out, _| count(out, ce) >= want);
        assert!(
            ok,
            "premise: etcd's {} printed {:?}, expected {want} lines (stderr {:?})",
            self.name(),
            self.e_out(),
            self.e.stderr()
        );
        self.wait_subject(pair, |out, _| count(out, cs) >= want);
    }

    fn wait_subject(&mut self, pair: &mut Pair, cond: impl FnMut(&str, &str) -> bool) {
        if pair.subject_stuck {
            return;
        }
        if !self.s.wait_for(SUBJECT_WAIT, cond) {
            pair.mismatches.push(format!(
                "{}: the subject did not print as much as etcd within {SUBJECT_WAIT:?}\n    etcd stdout:    {:?}\n    \
                 subject stdout: {:?}\n    subject stderr: {:?}",
                self.name(),
                self.e.stdout(),
                self.s.stdout(),
                self.s.stderr()
            ));
            pair.subject_stuck = true;
        }
    }

    /// Waits for both processes to exit by themselves (etcd: premise).
    fn expect_exit(&mut self, pair: &mut Pair) {
        let code = self.e.wait_exit(ETCD_WAIT);
        assert!(
            code.is_some(),
            "premise: etcd's {} did not exit: {:?} {:?}",
            self.name(),
            self.e.stdout(),
            self.e.stderr()
        );
        if !pair.subject_stuck && self.s.wait_exit(SUBJECT_WAIT).is_none() {
            pair.mismatches.push(format!(
                "{}: etcd's run exited ({code:?}), the subject's did not within {SUBJECT_WAIT:?}\n    etcd:    {:?} {:?}\n    \
                 subject: {:?} {:?}",
                self.name(),
                self.e.stdout(),
                self.e.stderr(),
                self.s.stdout(),
                self.s.stderr()
            ));
        }
    }

    /// Kills both processes (unless they exited) and compares their output.
    fn finish(self, pair: &mut Pair) {
        let name = self.name();
        let (mode, cut) = (self.mode, self.cut);
        let (e_ep, s_ep) = (self.e_ep.clone(), self.s_ep.clone());
        let (e, s) = (self.e.finish(), self.s.finish());
        let tail = |t: &str, c: usize| t.get(c..).unwrap_or_default().to_string();
        let (e_out, s_out) = (
            normalize_etcdctl_text(&tail(&e.stdout, cut.0), &e_ep),
            normalize_etcdctl_text(&tail(&s.stdout, cut.1), &s_ep),
        );
        let (e_err, s_err) = (normalize_etcdctl_text(&e.stderr, &e_ep), normalize_etcdctl_text(&s.stderr, &s_ep));
        let mut diffs = Vec::new();
        if e.code != s.code {
            diffs.push(format!("exit code (-1 = killed at the end): etcd={} subject={}", e.code, s.code));
        }
        match mode {
            Mode::Text => {
                if e_out != s_out {
                    diffs.push(format!("stdout differs:\n    etcd:    {e_out:?}\n    subject: {s_out:?}"));
                }
            }
            Mode::Json | Mode::JsonFlat => diffs.extend(compare_json_lines(&e_out, &s_out, mode == Mode::JsonFlat)),
        }
        if e_err != s_err {
            diffs.push(format!("stderr differs:\n    etcd:    {e_err:?}\n    subject: {s_err:?}"));
        }
        if !diffs.is_empty() {
            pair.mismatches.push(format!("{name}:\n  {}", diffs.join("\n  ")));
        }
    }
}

/// Compares `etcdctl watch -w json` outputs line by line, or, with `flat`,
/// as one concatenated event list plus the non-event fields of every line.
fn compare_json_lines(e_out: &str, s_out: &str, flat: bool) -> Vec<String> {
    let parse = |text: &str| -> Result<Vec<Value>, String> { text.lines().map(parse_watch_json_line).collect() };
    let e = parse(e_out).unwrap_or_else(|err| panic!("premise: etcd's watch JSON: {err}"));
    let s = match parse(s_out) {
        Ok(s) => s,
        Err(err) => return vec![format!("subject stdout: {err}\n    etcd:    {e_out:?}\n    subject: {s_out:?}")],
    };
    let (e, s) = if flat { (flatten(e), flatten(s)) } else { (Value::Array(e), Value::Array(s)) };
    let mut fields = Vec::new();
    json_diff("$", &e, &s, &mut fields);
    if fields.is_empty() {
        Vec::new()
    } else {
        vec![format!("json stdout differs:\n      {}\n    etcd:    {e}\n    subject: {s}", fields.join("\n      "))]
    }
}

/// `{"events": [all events], "other": [each line without Header and Events]}`.
fn flatten(lines: Vec<Value>) -> Value {
    let mut events = Vec::new();
    let mut other = Vec::new();
    for mut line in lines {
        if let Value::Object(map) = &mut line {
            if let Some(Value::Array(evs)) = map.remove("Events") {
                events.extend(evs);
            }
            map.remove("Header");
        }
        other.push(line);
    }
    // Several lines of one replay are one line elsewhere: compare the set
    // of distinct non-event shapes.
    other.dedup();
    serde_json::json!({ "events": events, "other": other })
}

fn put_ev(key: &str, value: &str) -> String {
    format!("PUT\n{key}\n{value}\n")
}

fn put_prev(key: &str, prev: &str, value: &str) -> String {
    format!("PUT\n{key}\n{prev}\n{key}\n{value}\n")
}

fn del_ev(key: &str) -> String {
    format!("DELETE\n{key}\n\n")
}

fn del_prev(key: &str, prev: &str) -> String {
    format!("DELETE\n{key}\n{prev}\n{key}\n\n")
}

#[tokio::test]
async fn watch_single_key() {
    let mut p = Pair::start().await;
    p.put("other", "x");
    let mut w = p.watch(&["watch", "k"], Mode::Text);
    w.arm(&mut p, "k");
    p.put("k", "v1");
    w.expect(&mut p, &put_ev("k", "v1"));
    // Writes to other keys (prefixes, extensions of `k`) are not seen.
    p.put("k2", "x");
    p.put("k/sub", "y");
    p.put("kk", "z");
    p.put("k", "v2");
    w.expect(&mut p, &put_ev("k", "v2"));
    assert_eq!(p.del(&["k"]), "1\n");
    w.expect(&mut p, &del_ev("k"));
    // Deleting a missing key writes nothing.
    assert_eq!(p.del(&["k"]), "0\n");
    p.put("k", "");
    w.expect(&mut p, &put_ev("k", ""));
    p.txn("\nput k2 t2\nput k t1\nput kk t3\n\n\n");
    w.expect(&mut p, &put_ev("k", "t1"));
    // A range delete over k, k/sub, k2.
    assert_eq!(p.del(&["k", "k3"]), "3\n");
    w.expect(&mut p, &del_ev("k"));
    p.put("k", "multi\nline");
    w.expect(&mut p, &put_ev("k", "multi\nline"));
    w.finish(&mut p);
    p.finish();
}

#[tokio::test]
async fn watch_prefix_and_range() {
    let mut p = Pair::start().await;
    p.put("p/old", "o");
    let mut w = p.watch(&["watch", "--prefix", "p/"], Mode::Text);
    w.arm(&mut p, "p/arm");
    let rev = p.revision();
    let from = format!("--rev={}", rev + 1);
    // A range [a, c) watch, started at the next revision.
    let mut r = p.watch(&["watch", &from, "a", "c"], Mode::Text);
    p.put("p/a", "1");
    w.expect(&mut p, &put_ev("p/a", "1"));
    p.put("a", "r1");
    r.expect(&mut p, &put_ev("a", "r1"));
    for (k, v) in [("p", "no"), ("p0", "no"), ("q/x", "no"), ("c", "no"), ("0", "no")] {
        p.put(k, v);
    }
    p.put("p/b", "2");
    w.expect(&mut p, &put_ev("p/b", "2"));
    p.put("p/a/deep", "3");
    w.expect(&mut p, &put_ev("p/a/deep", "3"));
    p.put("bzz", "r2");
    r.expect(&mut p, &put_ev("bzz", "r2"));
    // One revision, several keys: events in request order.
    p.txn("\nput p/d 4\nput q 5\nput p/c 6\nput b 7\n\n\n");
    w.expect(&mut p, &(put_ev("p/d", "4") + &put_ev("p/c", "6")));
    r.expect(&mut p, &put_ev("b", "7"));
    // Prefix delete: one DELETE per key, in key order.
    assert_eq!(p.del(&["--prefix", "p/"]), "7\n");
    w.expect(&mut p, &["p/a", "p/a/deep", "p/arm", "p/b", "p/c", "p/d", "p/old"].map(del_ev).concat());
    assert_eq!(p.del(&["a", "bzz"]), "2\n");
    r.expect(&mut p, &(del_ev("a") + &del_ev("b")));
    p.put("p/", "prefix itself");
    w.expect(&mut p, &put_ev("p/", "prefix itself"));
    w.finish(&mut p);
    r.finish(&mut p);
    p.finish();
}

#[tokio::test]
async fn watch_prev_kv() {
    let mut p = Pair::start().await;
    let mut w = p.watch(&["watch", "--prev-kv", "k"], Mode::Text);
    w.arm(&mut p, "k");
    let arm = w.arm_value.clone().unwrap_or_default();
    let from = format!("--rev={}", p.revision() + 1);
    let mut pw = p.watch(&["watch", "--prev-kv", "--prefix", &from, "d/"], Mode::Text);
    p.put("k", "v1");
    w.expect(&mut p, &put_prev("k", &arm, "v1"));
    p.put("k", "v2");
    w.expect(&mut p, &put_prev("k", "v1", "v2"));
    assert_eq!(p.del(&["k"]), "1\n");
    w.expect(&mut p, &del_prev("k", "v2"));
    // Created again: no previous pair.
    p.put("k", "v3");
    w.expect(&mut p, &put_ev("k", "v3"));
    p.put("d/1", "a");
    pw.expect(&mut p, &put_ev("d/1", "a"));
    p.put("d/2", "b");
    pw.expect(&mut p, &put_ev("d/2", "b"));
    p.put("d/1", "a2");
    pw.expect(&mut p, &put_prev("d/1", "a", "a2"));
    assert_eq!(p.del(&["--prefix", "d/"]), "2\n");
    pw.expect(&mut p, &(del_prev("d/1", "a2") + &del_prev("d/2", "b")));
    w.finish(&mut p);
    pw.finish(&mut p);
    p.finish();
}

/// Writes revisions 2..=7 for the history tests:
/// 2 put a=1, 3 put b=2, 4 put a=3, 5 del a, 6 put c=4, 7 put a=5.
fn history(p: &mut Pair) {
    p.put("a", "1");
    p.put("b", "2");
    p.put("a", "3");
    assert_eq!(p.del(&["a"]), "1\n");
    p.put("c", "4");
    p.put("a", "5");
}

#[tokio::test]
async fn watch_historical_revisions() {
    let mut p = Pair::start().await;
    history(&mut p);
    assert_eq!(p.revision(), 7, "premise");
    // (args, replayed output, output of the later writes 8..=10:
    //  8 put b=6, 9 put d=7, 10 put a=8)
    let all_history =
        [put_ev("a", "1"), put_ev("b", "2"), put_ev("a", "3"), del_ev("a"), put_ev("c", "4"), put_ev("a", "5")];
    let later = [put_ev("b", "6"), put_ev("d", "7"), put_ev("a", "8")];
    let cases: Vec<(Vec<&str>, String, String)> = vec![
        (vec!["--rev=1", "--prefix", ""], all_history.concat(), later.concat()),
        (vec!["--rev=2", "--prefix", ""], all_history.concat(), later.concat()),
        (vec!["--rev=4", "a"], [put_ev("a", "3"), del_ev("a"), put_ev("a", "5")].concat(), later[2].clone()),
        (vec!["--rev=5", "--prefix", ""], all_history[3..].concat(), later.concat()),
        (vec!["--rev=7", "a"], put_ev("a", "5"), later[2].clone()),
        (vec!["--rev=3", "b", "d"], [put_ev("b", "2"), put_ev("c", "4")].concat(), later[0].clone()),
        // Future revisions: nothing replayed, events from that revision on.
        (vec!["--rev=8", "--prefix", ""], String::new(), later.concat()),
        (vec!["--rev=9", "--prefix", ""], String::new(), later[1..].concat()),
        (vec!["--rev=100", "--prefix", ""], String::new(), String::new()),
        (
            vec!["--rev=2", "--prev-kv", "a"],
            [put_ev("a", "1"), put_prev("a", "1", "3"), del_prev("a", "3"), put_ev("a", "5")].concat(),
            put_prev("a", "5", "8"),
        ),
    ];
    let mut watches = Vec::new();
    for (args, replay, live) in &cases {
        let mut all = vec!["watch"];
        all.extend_from_slice(args);
        let mut w = p.watch(&all, Mode::Text);
        if !replay.is_empty() {
            w.expect(&mut p, replay);
        }
        watches.push((w, live));
    }
    p.put("b", "6");
    p.put("d", "7");
    p.put("a", "8");
    for (w, live) in &mut watches {
        if !live.is_empty() {
            w.expect(&mut p, live);
        }
    }
    for (w, _) in watches {
        w.finish(&mut p);
    }
    p.finish();
}

#[tokio::test]
async fn watch_json() {
    let mut p = Pair::start().await;
    history(&mut p);
    // Live watches at the next revision: one response per write, compared
    // line by line, headers (revision) included.
    let mut k = p.watch(&["watch", "--rev=8", "k", "-w", "json"], Mode::Json);
    let mut pk = p.watch(&["watch", "--rev=8", "--prev-kv", "--prefix", "k", "-w", "json"], Mode::Json);
    p.put("k", "v1");
    k.expect_json_lines(&mut p, 1);
    pk.expect_json_lines(&mut p, 1);
    p.put("k", "v2");
    k.expect_json_lines(&mut p, 1);
    pk.expect_json_lines(&mut p, 1);
    p.put("k/x", "y");
    pk.expect_json_lines(&mut p, 1);
    p.txn("\nput k v3\nput k/y z\n\n\n");
    k.expect_json_lines(&mut p, 1);
    pk.expect_json_lines(&mut p, 1);
    assert_eq!(p.del(&["--prefix", "k"]), "3\n");
    k.expect_json_lines(&mut p, 1);
    pk.expect_json_lines(&mut p, 1);
    // Historical replays: events concatenated (see the module docs).
    let h = p.watch(&["watch", "--rev=2", "--prefix", "", "-w", "json"], Mode::JsonFlat);
    let ha = p.watch(&["watch", "--rev=3", "--prev-kv", "a", "-w", "json"], Mode::JsonFlat);
    let wait_events = |w: &Watch, n: usize, pair: &mut Pair| {
        let count = |out: &str| {
            out.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .map(|v| v["Events"].as_array().map_or(0, Vec::len))
                .sum::<usize>()
        };
        assert!(
            w.e.wait_for(ETCD_WAIT, |out, _| count(out) >= n),
            "premise: etcd replay of {}: {:?}",
            w.name(),
            w.e.stdout()
        );
        if !pair.subject_stuck && !w.s.wait_for(SUBJECT_WAIT, |out, _| count(out) >= n) {
            pair.mismatches.push(format!(
                "{}: the subject replayed fewer than {n} events within {SUBJECT_WAIT:?}: {:?} {:?}",
                w.name(),
                w.s.stdout(),
                w.s.stderr()
            ));
            pair.subject_stuck = true;
        }
    };
    // 2..=12: 6 history writes, then k v1, k v2, k/x, txn (2 events), delete (3 events).
    wait_events(&h, 6 + 3 + 2 + 3, &mut p);
    wait_events(&ha, 3, &mut p);
    p.put("a", "9");
    wait_events(&h, 15, &mut p);
    wait_events(&ha, 4, &mut p);
    for w in [k, pk, h, ha] {
        w.finish(&mut p);
    }
    p.finish();
}

#[tokio::test]
async fn watch_compacted_revision() {
    let mut p = Pair::start().await;
    history(&mut p);
    let out = p.ctl(&["compaction", "4"], None);
    assert_eq!(out.stdout, "compacted revision 4\n", "premise: {out:?}");
    // Start revisions below the compaction: the server cancels the watch,
    // etcdctl prints the compaction and exits.
    for args in [
        &["watch", "--rev=2", "a"][..],
        &["watch", "--rev=3", "--prefix", ""],
        &["watch", "--rev=1", "--prev-kv", "b"],
        &["watch", "--rev=2", "a", "-w", "json"],
    ] {
        let json = args.contains(&"json");
        let mut w = p.watch(args, if json { Mode::Json } else { Mode::Text });
        w.expect_exit(&mut p);
        w.finish(&mut p);
    }
    // Exactly at the compaction revision: replayed from there (etcd finds no
    // previous pair below the compaction for --prev-kv).
    let mut w = p.watch(&["watch", "--rev=4", "--prev-kv", "a"], Mode::Text);
    w.expect(&mut p, &[put_ev("a", "3"), del_prev("a", "3"), put_ev("a", "5")].concat());
    p.put("a", "6");
    w.expect(&mut p, &put_prev("a", "5", "6"));
    w.finish(&mut p);
    // An empty range is refused by the server.
    let mut w = p.watch(&["watch", "b", "a"], Mode::Text);
    w.expect_exit(&mut p);
    w.finish(&mut p);
    p.finish();
}

#[tokio::test]
async fn watch_interactive() {
    let mut p = Pair::start().await;
    p.put("seed", "0");
    let mut w = p.watch(&["watch", "-i"], Mode::Text);
    // Two watches on one stream over disjoint keys, both from the next
    // revision (3): each write prints from exactly one of them, so the
    // output order is deterministic.
    for side in [&mut w.e, &mut w.s] {
        side.write_stdin("watch --rev=3 k\nwatch --prefix --rev=3 p/\n");
    }
    p.put("k", "a");
    w.expect(&mut p, &put_ev("k", "a"));
    p.put("p/x", "b");
    w.expect(&mut p, &put_ev("p/x", "b"));
    p.put("q", "c");
    p.put("k", "d");
    w.expect(&mut p, &put_ev("k", "d"));
    // A progress request is answered on the stream and printed by every
    // watch of it.
    for side in [&mut w.e, &mut w.s] {
        side.write_stdin("progress\n");
    }
    w.expect(&mut p, "progress notify: 6\nprogress notify: 6\n");
    // Client-side errors and a server-side refusal (empty range), on stderr.
    for side in [&mut w.e, &mut w.s] {
        side.write_stdin("bogus\nwatch\nwatch b a\n");
    }
    let msg = "watch was canceled (mvcc: watcher range is empty)\n";
    assert!(w.e.wait_for(ETCD_WAIT, |_, err| err.contains(msg)), "premise: {:?}", w.e.stderr());
    if !w.s.wait_for(SUBJECT_WAIT, |_, err| err.contains(msg)) {
        p.mismatches.push(format!("`watch -i` + `watch b a`: subject stderr {:?}", w.s.stderr()));
    }
    // A third watch, with history and previous pairs.
    for side in [&mut w.e, &mut w.s] {
        side.write_stdin("watch --rev=2 --prev-kv seed\n");
    }
    w.expect(&mut p, &put_ev("seed", "0"));
    p.put("seed", "1");
    w.expect(&mut p, &put_prev("seed", "0", "1"));
    // End of input ends etcdctl.
    w.e.close_stdin();
    w.s.close_stdin();
    w.expect_exit(&mut p);
    w.finish(&mut p);
    p.finish();
}

#[tokio::test]
async fn watch_progress_notify_flag_is_client_side() {
    let mut p = Pair::start().await;
    // etcdctl 3.4.23 has no --progress-notify (3.5 added it): both runs fail
    // the same way, in the client.
    let out = p.ctl(&["watch", "--progress-notify", "k"], None);
    assert!(out.code != 0 && out.stderr.contains("unknown flag: --progress-notify"), "premise: {out:?}");
    // The same watch without the flag works.
    let mut w = p.watch(&["watch", "--rev=2", "k"], Mode::Text);
    p.put("k", "v");
    w.expect(&mut p, &put_ev("k", "v"));
    w.finish(&mut p);
    p.finish();
}

/// Progress notifications over gRPC: both servers run with a 300 ms
/// `--experimental-watch-progress-notify-interval`; a watcher created with
/// `progress_notify` gets empty responses carrying its watch id and the
/// current revision, a watcher without it gets none, and events still
/// arrive. (Counts depend on timing; only their properties are compared.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notify_over_grpc() {
    let args = ["--experimental-watch-progress-notify-interval=300ms"];
    let (etcd, subject) =
        tokio::join!(Member::start(ketch_e2e::Kind::Etcd, &args), Member::start(subject_kind(), &args));
    let mut problems = Vec::new();
    for member in [&etcd, &subject] {
        let name = if std::ptr::eq(member, &etcd) { "etcd" } else { "subject" };
        match progress_notify_run(member).await {
            Ok(()) => {}
            Err(e) if name == "etcd" => panic!("premise on etcd: {e}"),
            Err(e) => problems.push(e),
        }
    }
    assert!(problems.is_empty(), "progress notify on {}: {}", subject_kind().as_str(), problems.join("\n"));
}

async fn next_response(
    stream: &mut tonic::Streaming<WatchResponse>,
    deadline: Instant,
) -> Result<WatchResponse, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, stream.message()).await {
        Err(_) => Err("no response within the deadline".to_string()),
        Ok(Err(e)) => Err(format!("stream error: {e}")),
        Ok(Ok(None)) => Err("stream ended".to_string()),
        Ok(Ok(Some(r))) => Ok(r),
    }
}

async fn progress_notify_run(member: &Member) -> Result<(), String> {
    let mut kv = member.kv().await;
    let mut watch = member.watch().await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let create = |key: &str, progress_notify: bool| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            progress_notify,
            ..Default::default()
        })),
    };
    tx.send(create("k", true)).expect("request channel is open");
    tx.send(create("other", false)).expect("request channel is open");
    let mut stream = watch
        .watch(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .map_err(|e| format!("watch call: {e}"))?
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(10);
    let c1 = next_response(&mut stream, deadline).await?;
    let c2 = next_response(&mut stream, deadline).await?;
    if !(c1.created && c2.created && c1.watch_id == 0 && c2.watch_id == 1) {
        return Err(format!("created responses: {c1:?} {c2:?}"));
    }
    // 3 notifications at revision 1, then a put (revision 2), its event,
    // then 3 more notifications, at revision 2 once the event was seen (one
    // generated just before the put was applied may still say 1).
    let (mut before, mut after) = (0, 0);
    let mut put_done = false;
    let mut event_seen = false;
    while after < 3 {
        let r = next_response(&mut stream, deadline)
            .await
            .map_err(|e| format!("{e} ({before}+{after} notifications, event seen: {event_seen})"))?;
        let rev = r.header.as_ref().map_or(0, |h| h.revision);
        if r.events.is_empty() {
            let ok_rev = match (put_done, event_seen) {
                (false, _) => rev == 1,
                (true, false) => rev == 1 || rev == 2,
                (true, true) => rev == 2,
            };
            if r.watch_id != 0 || r.created || r.canceled || r.compact_revision != 0 || !ok_rev {
                return Err(format!("unexpected progress notification (put done: {put_done}): {r:?}"));
            }
            if event_seen {
                after += 1;
            } else {
                before += 1;
            }
            if before == 3 && !put_done {
                kv.put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() })
                    .await
                    .map_err(|e| format!("put: {e}"))?;
                put_done = true;
            }
        } else {
            if r.watch_id != 0 || r.events.len() != 1 || rev != 2 || !put_done || event_seen {
                return Err(format!("unexpected event response: {r:?}"));
            }
            event_seen = true;
        }
    }
    Ok(())
}
