//! etcdctl 3.4 against three-member clusters: every test starts a reference
//! etcd cluster and a cluster of the implementation under test (see
//! `KETCH_E2E_SUBJECT` in the library docs), runs the same etcdctl command
//! lines against both (`--endpoints` listing all three members, or one
//! member), and
//!
//! - checks what must hold of the subject's output on its own (3 rows, one
//!   leader, sane raft term and indices, the right names and URLs, ...);
//! - compares the output with etcd's after replacing every member ID, client
//!   URL, peer URL and endpoint by a placeholder (`<id:m0>`,
//!   `<client:m0>`, ...), sorting rows whose order follows the member IDs,
//!   and masking what legitimately differs (term, indices, sizes, which
//!   member leads, timings, the client library's log line timestamps).
//!
//! Mismatches of a test are collected and reported together at its end.

use std::time::{Duration, Instant};

use ketch_e2e::cluster::Cluster;
use ketch_e2e::{Kind, Output, etcdctl, json_diff, normalize_etcdctl_text, normalize_json_headers};
use serde_json::Value;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// Which endpoints an etcdctl run gets.
#[derive(Clone, Copy)]
enum At {
    /// All three members' client URLs.
    All,
    /// Only member `i`'s.
    Member(usize),
}

struct Pair {
    etcd: Cluster,
    subject: Cluster,
    /// Placeholder label of each member, per cluster (`m0`.. by default).
    labels: [Vec<String>; 2],
    mismatches: Vec<String>,
}

impl Pair {
    async fn start() -> Pair {
        let (mut etcd, mut subject) = tokio::join!(Cluster::start(Kind::Etcd, 3, &[]), Cluster::subject(3, &[]));
        wait_stable(&mut etcd).await;
        wait_stable(&mut subject).await;
        let labels = (0..3).map(|i| format!("m{i}")).collect::<Vec<_>>();
        Pair { etcd, subject, labels: [labels.clone(), labels], mismatches: Vec::new() }
    }

    fn cluster(&self, side: usize) -> &Cluster {
        if side == 0 { &self.etcd } else { &self.subject }
    }

    fn endpoints(&self, side: usize, at: At) -> String {
        let c = self.cluster(side);
        match at {
            At::All => c.endpoints(),
            At::Member(i) => c.member(i).client_url(),
        }
    }

    /// Replaces `side`'s member IDs (hex and decimal), client URLs, peer
    /// URLs and `127.0.0.1:<port>` endpoints by `<id:L>`, `<client:L>`,
    /// `<peer:L>`, `<L>` (L the member's label), then applies
    /// [`normalize_etcdctl_text`] (timings, log line timestamps and client
    /// ids).
    fn normalize(&self, side: usize, text: &str) -> String {
        let c = self.cluster(side);
        let mut text = text.to_string();
        for i in 0..3 {
            let l = &self.labels[side][i];
            text = text.replace(&c.member(i).client_url(), &format!("<client:{l}>"));
            text = text.replace(&c.peer_url(i), &format!("<peer:{l}>"));
            text = text.replace(&c.member(i).endpoint(), &format!("<{l}>"));
            text = text.replace(&format!("127.0.0.1:{}", c.proxy_port(i)), &format!("<peer-endpoint:{l}>"));
        }
        for i in 0..3 {
            let l = &self.labels[side][i];
            // Decimal IDs are JSON numbers: make them strings.
            text = text.replace(&c.id(i).to_string(), &format!("\"<id:{l}>\""));
            text = text.replace(&format!("{:x}", c.id(i)), &format!("<id:{l}>"));
        }
        normalize_etcdctl_text(&text, "\u{0}")
    }

    /// Runs `etcdctl <args>` against both clusters at once and returns both
    /// normalised outputs (etcd's first), without comparing them.
    fn run_both(&self, at: At, args: &[&str]) -> [Output; 2] {
        let [e, s] = self.run_both_raw(at, args);
        let norm = |side: usize, o: Output| Output {
            stdout: self.normalize(side, &o.stdout),
            stderr: self.normalize(side, &o.stderr),
            code: o.code,
        };
        [norm(0, e), norm(1, s)]
    }

    /// Runs `etcdctl <args>` against both clusters at once; raw outputs.
    fn run_both_raw(&self, at: At, args: &[&str]) -> [Output; 2] {
        let (e_ep, s_ep) = (self.endpoints(0, at), self.endpoints(1, at));
        std::thread::scope(|scope| {
            let e = scope.spawn(|| etcdctl(&e_ep, args, None));
            let s = etcdctl(&s_ep, args, None);
            [e.join().expect("etcdctl thread panicked"), s]
        })
    }

    /// Runs `etcdctl <args>` on both and compares exit code, stdout and
    /// stderr after normalisation; with `sorted`, lines are compared as
    /// sorted sets (their order follows member IDs). Returns both outputs.
    fn run(&mut self, at: At, args: &[&str], sorted: bool) -> [Output; 2] {
        let [e, s] = self.run_both(at, args);
        let prep = |t: &str| {
            if sorted {
                let mut lines: Vec<&str> = t.lines().collect();
                lines.sort_unstable();
                lines.join("\n")
            } else {
                t.to_string()
            }
        };
        let mut diffs = Vec::new();
        if e.code != s.code {
            diffs.push(format!("exit code: etcd={} subject={}", e.code, s.code));
        }
        if prep(&e.stdout) != prep(&s.stdout) {
            diffs.push(format!("stdout differs:\n    etcd:    {:?}\n    subject: {:?}", e.stdout, s.stdout));
        }
        if prep(&e.stderr) != prep(&s.stderr) {
            diffs.push(format!("stderr differs:\n    etcd:    {:?}\n    subject: {:?}", e.stderr, s.stderr));
        }
        self.record(args, diffs);
        [e, s]
    }

    /// Runs a `-w json` command on both, hands each parsed, normalised
    /// value to `prep` (which masks and sorts), and compares the results
    /// field by field. Returns both raw (unnormalised) parsed values.
    fn run_json(&mut self, at: At, args: &[&str], prep: impl Fn(&mut Value)) -> [Value; 2] {
        let [e, s] = self.run_both_raw(at, args);
        assert_eq!(e.code, 0, "premise: etcd's `etcdctl {}` failed: {e:?}", args.join(" "));
        let raw_e: Value = serde_json::from_str(e.stdout.trim()).expect("etcd's output is JSON");
        let mut norm_e: Value = serde_json::from_str(self.normalize(0, e.stdout.trim()).as_str())
            .expect("etcd's normalised output is JSON");
        normalize_json_headers(&mut norm_e);
        prep(&mut norm_e);
        let mut diffs = Vec::new();
        if s.code != 0 {
            diffs.push(format!("exit code {} (stderr {:?})", s.code, s.stderr));
        }
        let raw_s: Value = match serde_json::from_str(s.stdout.trim()) {
            Ok(v) => v,
            Err(err) => {
                diffs.push(format!("subject's stdout is not JSON ({err}): {:?}", s.stdout));
                Value::Null
            }
        };
        if !raw_s.is_null() {
            match serde_json::from_str::<Value>(self.normalize(1, s.stdout.trim()).as_str()) {
                Ok(mut norm_s) => {
                    normalize_json_headers(&mut norm_s);
                    prep(&mut norm_s);
                    let mut fields = Vec::new();
                    json_diff("$", &norm_e, &norm_s, &mut fields);
                    if !fields.is_empty() {
                        diffs.push(format!(
                            "json differs (etcd= is the reference, ketch= the subject):\n      {}\n    etcd:    \
                             {norm_e}\n    subject: {norm_s}",
                            fields.join("\n      ")
                        ));
                    }
                }
                Err(err) => diffs.push(format!("normalised subject output is not JSON ({err})")),
            }
        }
        self.record(args, diffs);
        [raw_e, raw_s]
    }

    /// Runs a `-w table` command on both and compares the tables cell by
    /// cell: rows sorted, cells of the columns in `masked` replaced by `*`.
    /// Returns both parsed tables (normalised, unmasked).
    fn run_table(&mut self, at: At, args: &[&str], masked: &[&str]) -> [Table; 2] {
        // Well-formedness is checked on the raw text, cells are normalised.
        let [e, s] = self.run_both_raw(at, args);
        assert_eq!(e.code, 0, "premise: etcd's `etcdctl {}` failed: {e:?}", args.join(" "));
        let te = parse_table(&e.stdout)
            .map(|t| self.normalize_table(0, t))
            .unwrap_or_else(|why| panic!("premise: etcd's table ({why}): {}", e.stdout));
        let mut diffs = Vec::new();
        if s.code != 0 {
            diffs.push(format!("exit code {} (stderr {:?})", s.code, s.stderr));
        }
        let ts = match parse_table(&s.stdout) {
            Ok(t) => self.normalize_table(1, t),
            Err(why) => {
                diffs.push(format!("subject's table is malformed ({why}): {:?}", s.stdout));
                Table::default()
            }
        };
        if !ts.header.is_empty() {
            if te.header != ts.header {
                diffs.push(format!("header: etcd={:?} subject={:?}", te.header, ts.header));
            } else {
                let (me, ms) = (te.masked(masked), ts.masked(masked));
                if me != ms {
                    diffs.push(format!("rows (masked {masked:?}):\n    etcd:    {me:?}\n    subject: {ms:?}"));
                }
            }
        }
        self.record(args, diffs);
        [te, ts]
    }

    fn normalize_table(&self, side: usize, mut t: Table) -> Table {
        for row in &mut t.rows {
            for cell in row.iter_mut() {
                *cell = self.normalize(side, cell);
            }
        }
        t.rows.sort();
        t
    }

    fn record(&mut self, args: &[&str], diffs: Vec<String>) {
        if !diffs.is_empty() {
            self.mismatches.push(format!("`etcdctl {}`:\n  {}", args.join(" "), diffs.join("\n  ")));
        }
    }

    /// Records a problem found by a check on the subject's own output.
    fn problem(&mut self, what: String) {
        self.mismatches.push(what);
    }

    fn finish(self) {
        assert!(
            self.mismatches.is_empty(),
            "{} {} cluster differs from the etcd cluster or is inconsistent:\n\n{}",
            self.mismatches.len(),
            self.subject.kind().as_str(),
            self.mismatches.join("\n\n")
        );
    }
}

/// Waits until every member reports the same leader (one that says it
/// leads) and the same raft term: the state in which `endpoint status`
/// output has one leader and one term.
async fn wait_stable(c: &mut Cluster) {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        let statuses = c.statuses().await;
        let all: Vec<_> = statuses.iter().flatten().collect();
        let stable = all.len() == c.size()
            && all.iter().all(|s| s.leader != 0 && s.leader == all[0].leader && s.raft_term == all[0].raft_term)
            && all.iter().any(|s| s.header.as_ref().is_some_and(|h| h.member_id == s.leader));
        if stable {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} cluster: members do not agree on leader and term within {LEADER_TIMEOUT:?}; {}",
            c.kind().as_str(),
            c.describe(&statuses)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An etcdctl `-w table`: header cells and body rows (sorted).
#[derive(Debug, Default, PartialEq)]
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    fn cells(&self, name: &str) -> Vec<&str> {
        let c = self.column(name).unwrap_or(usize::MAX);
        self.rows.iter().map(|r| r.get(c).map_or("", String::as_str)).collect()
    }

    fn masked(&self, masked: &[&str]) -> Vec<Vec<String>> {
        let cols: Vec<usize> = masked.iter().filter_map(|m| self.column(m)).collect();
        let mut rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                r.iter().enumerate().map(|(i, c)| if cols.contains(&i) { "*".into() } else { c.clone() }).collect()
            })
            .collect();
        rows.sort();
        rows
    }
}

/// Parses an etcdctl table (`+---+` borders, `| a | b |` rows), checking
/// that it is well formed: every line as wide as the border, every row with
/// as many cells as the header.
fn parse_table(text: &str) -> Result<Table, String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let border = lines.first().ok_or("empty output")?;
    if !border.starts_with('+') {
        return Err("does not start with a border".into());
    }
    let width = border.chars().count();
    let mut rows = Vec::new();
    for line in &lines {
        if line.chars().count() != width {
            return Err(format!("line {line:?} is not {width} wide"));
        }
        if line.starts_with('|') {
            let cells: Vec<String> = line.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect();
            rows.push(cells);
        } else if !line.starts_with('+') {
            return Err(format!("unexpected line {line:?}"));
        }
    }
    if rows.is_empty() {
        return Err("no header".into());
    }
    let header = rows.remove(0);
    if let Some(bad) = rows.iter().find(|r| r.len() != header.len()) {
        return Err(format!("row {bad:?} has not {} cells", header.len()));
    }
    rows.sort();
    Ok(Table { header, rows })
}

/// "3.4" of "3.4.23".
fn family(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// Checks of `etcdctl endpoint status -w json` output of `c` that must
/// hold on their own; returns the problems and the leader's index.
fn check_status_json(c: &Cluster, v: &Value) -> (Vec<String>, Option<usize>) {
    let mut problems = Vec::new();
    let Some(rows) = v.as_array() else {
        return (vec![format!("not an array: {v}")], None);
    };
    if rows.len() != 3 {
        problems.push(format!("{} rows, not 3", rows.len()));
    }
    let mut seen = Vec::new();
    let u = |x: &Value| x.as_u64().unwrap_or(0);
    let first = &rows.first().map_or(Value::Null, |r| r["Status"].clone());
    let leader = u(&first["leader"]);
    let mut leaders = 0;
    for row in rows {
        let st = &row["Status"];
        let me = u(&st["header"]["member_id"]);
        let Some(i) = c.index_of(me) else {
            problems.push(format!("member_id {me:x} is not a member: {row}"));
            continue;
        };
        seen.push(i);
        if row["Endpoint"].as_str() != Some(c.member(i).client_url().as_str()) {
            problems.push(format!("m{i}'s row has Endpoint {}", row["Endpoint"]));
        }
        if u(&st["header"]["cluster_id"]) == 0 || st["header"]["cluster_id"] != first["header"]["cluster_id"] {
            problems.push(format!("cluster_id zero or not the same on every member: {row}"));
        }
        if u(&st["leader"]) != leader || leader == 0 {
            problems.push(format!("members disagree on the leader (or it is 0): {v}"));
        }
        if me == leader {
            leaders += 1;
        }
        let (term, index, applied) = (u(&st["raftTerm"]), u(&st["raftIndex"]), u(&st["raftAppliedIndex"]));
        if term == 0 || term != u(&st["header"]["raft_term"]) || term != u(&first["raftTerm"]) {
            problems.push(format!(
                "raftTerm {term} zero, not the header's raft_term or not the same on all members: {row}"
            ));
        }
        if index == 0 || applied > index {
            problems.push(format!("raftIndex {index} zero or below raftAppliedIndex {applied}: {row}"));
        }
        if family(st["version"].as_str().unwrap_or("")) != "3.4" {
            problems.push(format!("version {} is not 3.4.x", st["version"]));
        }
        if u(&st["dbSize"]) == 0 {
            problems.push(format!("dbSize is 0: {row}"));
        }
    }
    seen.sort_unstable();
    if seen != [0, 1, 2] {
        problems.push(format!("rows are not one per member: {seen:?}"));
    }
    if leaders != 1 {
        problems.push(format!("{leaders} rows are the leader (leader id {leader:x}), not exactly one"));
    }
    (problems, c.index_of(leader))
}

/// Masks the fields of `endpoint status -w json` rows that legitimately
/// differ, and sorts the rows.
fn mask_status(v: &mut Value) {
    mask_status_but_leader(v);
    if let Some(rows) = v.as_array_mut() {
        for row in rows {
            row["Status"]["leader"] = Value::from("*");
        }
    }
}

/// [`mask_status`], keeping the leader (for when which member leads is
/// known: its placeholder then names the same role on both sides).
fn mask_status_but_leader(v: &mut Value) {
    if let Some(rows) = v.as_array_mut() {
        for row in rows.iter_mut() {
            let st = &mut row["Status"];
            for f in ["raftIndex", "raftTerm", "raftAppliedIndex", "dbSize", "dbSizeInUse"] {
                if st.get(f).is_some() {
                    st[f] = Value::from("*");
                }
            }
            if let Some(version) = st.get("version").and_then(Value::as_str) {
                st["version"] = Value::from(family(version));
            }
        }
        rows.sort_by_key(|r| r["Endpoint"].to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_and_endpoint_status() {
    let mut p = Pair::start().await;

    // member list: fully deterministic once IDs and URLs are placeholders.
    p.run(At::All, &["member", "list"], true);
    p.run_table(At::All, &["member", "list", "-w", "table"], &[]);
    let [e, s] = p.run_json(At::All, &["member", "list", "-w", "json"], |v| {
        if let Some(members) = v["members"].as_array_mut() {
            members.sort_by_key(|m| m["name"].to_string());
        }
    });
    for (side, v) in [(0, &e), (1, &s)] {
        let c = p.cluster(side);
        let members = v["members"].as_array().cloned().unwrap_or_default();
        let mut problems = Vec::new();
        let ids: Vec<u64> = members.iter().map(|m| m["ID"].as_u64().unwrap_or(0)).collect();
        if !ids.is_sorted() {
            problems.push(format!("members are not sorted by ID as etcd's are: {ids:x?}"));
        }
        let mut got: Vec<(String, Value, Value, Option<usize>)> = members
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or("").to_string(),
                    m["peerURLs"].clone(),
                    m["clientURLs"].clone(),
                    c.index_of(m["ID"].as_u64().unwrap_or(0)),
                )
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let want: Vec<(String, Value, Value, Option<usize>)> = (0..3)
            .map(|i| {
                (
                    format!("m{i}"),
                    Value::from(vec![c.peer_url(i)]),
                    Value::from(vec![c.member(i).client_url()]),
                    Some(i),
                )
            })
            .collect();
        if got != want {
            problems.push(format!("members (name, peer URLs, client URLs, index of ID): {got:?}, want {want:?}"));
        }
        if side == 0 {
            assert!(problems.is_empty(), "premise: etcd's member list: {problems:?}");
        } else {
            for what in problems {
                p.problem(format!("`etcdctl member list -w json`: {what}"));
            }
        }
    }

    // endpoint status: with --cluster (endpoints from the member list) and
    // with the three endpoints given.
    for cluster_flag in [true, false] {
        let mut args = vec!["endpoint", "status"];
        if cluster_flag {
            args.push("--cluster");
        }
        let table_args: Vec<&str> = args.iter().copied().chain(["-w", "table"]).collect();
        let [te, ts] = p.run_table(
            At::All,
            &table_args,
            &["VERSION", "DB SIZE", "IS LEADER", "RAFT TERM", "RAFT INDEX", "RAFT APPLIED INDEX"],
        );
        for (side, t) in [(0, &te), (1, &ts)] {
            let mut problems = Vec::new();
            let leaders = t.cells("IS LEADER").iter().filter(|c| **c == "true").count();
            if t.rows.len() != 3 || leaders != 1 {
                problems.push(format!("{} rows, {leaders} leaders: {t:?}", t.rows.len()));
            }
            let terms = t.cells("RAFT TERM");
            if terms.iter().any(|x| x.parse::<u64>().unwrap_or(0) == 0 || *x != terms[0]) {
                problems.push(format!("RAFT TERM not the same positive number on all: {terms:?}"));
            }
            for (index, applied) in t.cells("RAFT INDEX").iter().zip(t.cells("RAFT APPLIED INDEX")) {
                let (index, applied) = (index.parse::<u64>().unwrap_or(0), applied.parse::<u64>().unwrap_or(u64::MAX));
                if index == 0 || applied > index {
                    problems.push(format!("RAFT INDEX {index} / RAFT APPLIED INDEX {applied}"));
                }
            }
            if side == 0 {
                assert!(problems.is_empty(), "premise: etcd's {table_args:?}: {problems:?}");
            } else {
                for what in problems {
                    p.problem(format!("`etcdctl {}`: {what}", table_args.join(" ")));
                }
            }
        }
        let json_args: Vec<&str> = args.iter().copied().chain(["-w", "json"]).collect();
        let [e, s] = p.run_json(At::All, &json_args, mask_status);
        let (problems, _) = check_status_json(&p.etcd, &e);
        assert!(problems.is_empty(), "premise: etcd's {json_args:?}: {problems:?}\n{e}");
        let (problems, _) = check_status_json(&p.subject, &s);
        for what in problems {
            p.problem(format!("`etcdctl {}`: {what}", json_args.join(" ")));
        }
    }

    // endpoint health --cluster: one line per member on stderr.
    let [e, _] = p.run(At::All, &["endpoint", "health", "--cluster"], true);
    assert_eq!((e.code, e.stderr.matches("is healthy").count()), (0, 3), "premise: {e:?}");
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_and_gets_through_each_member() {
    let mut p = Pair::start().await;
    for i in 0..3 {
        let (key, value) = (format!("k{i}"), format!("v{i}"));
        let [e, _] = p.run(At::Member(i), &["put", &key, &value], false);
        assert_eq!(e.stdout, "OK\n", "premise: {e:?}");
        for j in 0..3 {
            // Linearizable, then serializable (no longer stale after it).
            let [e, _] = p.run(At::Member(j), &["get", &key], false);
            assert_eq!(e.stdout, format!("{key}\n{value}\n"), "premise: {e:?}");
            p.run(At::Member(j), &["get", &key, "--consistency=s"], false);
        }
    }
    let [e, _] = p.run(At::All, &["put", "k1", "again", "--prev-kv"], false);
    assert_eq!(e.stdout, "OK\nk1\nv1\n", "premise: {e:?}");
    let [e, _] = p.run(At::Member(2), &["del", "k0"], false);
    assert_eq!(e.stdout, "1\n", "premise: {e:?}");
    for j in 0..3 {
        p.run_json(At::Member(j), &["get", "k", "--prefix", "-w", "json"], |_| {});
        p.run(At::Member(j), &["get", "k", "--prefix", "--keys-only"], false);
    }
    // The same history on both: the same hash on every member.
    let [e, _] = p.run(At::All, &["endpoint", "hashkv", "--cluster"], true);
    assert_eq!((e.code, e.stdout.lines().count()), (0, 3), "premise: {e:?}");
    p.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader() {
    let mut p = Pair::start().await;
    // Leader and target follower of each cluster, from `endpoint status -w
    // json`; placeholders by role so that the two clusters compare.
    let mut roles = Vec::new();
    for side in 0..2 {
        let c = p.cluster(side);
        let out = etcdctl(&c.endpoints(), &["endpoint", "status", "-w", "json"], None);
        let v: Value = serde_json::from_str(out.stdout.trim()).unwrap_or(Value::Null);
        let (problems, leader) = check_status_json(c, &v);
        let leader = match leader {
            Some(leader) if problems.is_empty() => leader,
            _ => {
                let what = format!("endpoint status -w json before move-leader: {problems:?}\n{out:?}");
                assert_eq!(side, 1, "premise: etcd's {what}");
                p.problem(what);
                // Carry on with the leader as seen over gRPC, to test
                // move-leader itself.
                p.subject.leader().await.expect("the subject cluster has a leader")
            }
        };
        let target = (leader + 1) % 3;
        let other = (leader + 2) % 3;
        let mut labels = vec![String::new(); 3];
        labels[leader] = "leader".into();
        labels[target] = "target".into();
        labels[other] = "other".into();
        p.labels[side] = labels;
        roles.push((leader, target, other));
    }
    let ids = [0, 1].map(|side| (0..3).map(|i| p.cluster(side).id(i)).collect::<Vec<u64>>());
    let hex = |side: usize, i: usize| format!("{:x}", ids[side][i]);

    // Errors first, while leadership is where it was: an unknown member,
    // a malformed ID, no argument, and only a follower's endpoint given.
    p.run(At::All, &["move-leader", "1234"], false);
    p.run(At::All, &["move-leader", "zz"], false);
    p.run(At::All, &["move-leader"], false);
    let (e_target, s_target) = (hex(0, roles[0].1), hex(1, roles[1].1));
    let [e, s] = std::thread::scope(|scope| {
        let p = &p;
        let e = scope.spawn(|| {
            let c = p.cluster(0);
            etcdctl(&c.member(roles[0].2).client_url(), &["move-leader", &e_target], None)
        });
        let c = p.cluster(1);
        let s = etcdctl(&c.member(roles[1].2).client_url(), &["move-leader", &s_target], None);
        [e.join().expect("etcdctl thread panicked"), s]
    });
    let (e, s) = (p.normalize(0, &e.stderr), p.normalize(1, &s.stderr));
    assert_eq!(e, "Error: no leader endpoint given at [<client:other>]\n", "premise");
    if e != s {
        p.problem(format!("`etcdctl move-leader` with a follower's endpoint: stderr etcd={e:?} subject={s:?}"));
    }
    // To the leader itself: a no-op that etcd reports as a transfer.
    let (e_leader, s_leader) = (hex(0, roles[0].0), hex(1, roles[1].0));
    let [e, s] = std::thread::scope(|scope| {
        let p = &p;
        let e = scope.spawn(|| etcdctl(&p.etcd.endpoints(), &["move-leader", &e_leader], None));
        let s = etcdctl(&p.subject.endpoints(), &["move-leader", &s_leader], None);
        [e.join().expect("etcdctl thread panicked"), s]
    });
    let (e, s) = ((e.code, p.normalize(0, &e.stdout)), (s.code, p.normalize(1, &s.stdout)));
    assert_eq!(e, (0, "Leadership transferred from <id:leader> to <id:leader>\n".to_string()), "premise");
    if e != s {
        p.problem(format!("`etcdctl move-leader <leader>`: etcd={e:?} subject={s:?}"));
    }

    // The real transfer, then leadership must actually have moved.
    let [e, s] = std::thread::scope(|scope| {
        let p = &p;
        let e = scope.spawn(|| etcdctl(&p.etcd.endpoints(), &["move-leader", &e_target], None));
        let s = etcdctl(&p.subject.endpoints(), &["move-leader", &s_target], None);
        [e.join().expect("etcdctl thread panicked"), s]
    });
    let (e, s) = ((e.code, p.normalize(0, &e.stdout)), (s.code, p.normalize(1, &s.stdout), s.stderr));
    assert_eq!(e, (0, "Leadership transferred from <id:leader> to <id:target>\n".to_string()), "premise");
    if (s.0, &s.1) != (e.0, &e.1) {
        p.problem(format!("`etcdctl move-leader <follower>`: etcd={e:?} subject={s:?}"));
    }
    for (side, &(_, target, _)) in roles.iter().enumerate() {
        let c = if side == 0 { &mut p.etcd } else { &mut p.subject };
        let started = Instant::now();
        let mut now = None;
        while started.elapsed() < Duration::from_secs(5) {
            now = c.leader().await;
            if now == Some(target) {
                // Until every member has heard of it.
                wait_stable(c).await;
                now = c.leader().await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if now != Some(target) {
            let what = format!("after move-leader to m{target}, the leader is {now:?}");
            assert!(side == 1, "premise: etcd {what}");
            p.problem(what);
        }
    }
    // Every member agrees, as etcdctl shows it.
    // Which member leads is now deterministic (`<id:target>`): compare it.
    let [e, s] = p.run_json(At::All, &["endpoint", "status", "-w", "json"], mask_status_but_leader);
    let (problems, leader) = check_status_json(&p.etcd, &e);
    assert!(problems.is_empty() && leader == Some(roles[0].1), "premise: {problems:?} {leader:?}\n{e}");
    let (problems, leader) = check_status_json(&p.subject, &s);
    for what in problems {
        p.problem(format!("endpoint status after move-leader: {what}"));
    }
    if leader != Some(roles[1].1) {
        p.problem(format!("endpoint status after move-leader: leader {leader:?}, want m{}", roles[1].1));
    }
    // Writes still work through every member.
    for i in 0..3 {
        p.run(At::Member(i), &["put", "after-move", &format!("{i}")], false);
    }
    p.run(At::All, &["get", "after-move"], false);
    p.finish();
}
