//! etcdctl compatibility: every test starts one reference etcd and one
//! ketch (see `KETCH_E2E_SUBJECT` in the library docs), runs the same etcdctl
//! command lines against both, in the same order so that revisions line up,
//! and compares:
//!
//! - the exit code;
//! - `-w json` stdout field by field after dropping `cluster_id`,
//!   `member_id` and `raft_term` from every header;
//! - any other stdout byte for byte, and stderr byte for byte, after
//!   [`normalize_etcdctl_text`] (endpoint address, `took = <duration>`, and the
//!   timestamp / random client id of the client library's JSON log lines).
//!
//! Every mismatch of a test is collected and reported together at the end of
//! the test (later mismatches may be consequences of earlier ones).
//!
//! etcdctl 3.4 has no `get --count-only` (added in 3.5), and its `txn`
//! cannot express `lease(...)` compares (etcdctl panics client-side) or
//! nested txns; those are covered over gRPC by `differential.rs`.

use ketch_e2e::{Member, Output, etcdctl, json_diff, normalize_etcdctl_text, parse_normalized_json, subject_kind};
use serde_json::Value;

struct Pair {
    etcd: Member,
    subject: Member,
    mismatches: Vec<String>,
}

fn wants_json(args: &[&str]) -> bool {
    args.windows(2).any(|w| w == ["-w", "json"] || w == ["--write-out", "json"])
        || args.iter().any(|a| *a == "-w=json" || *a == "--write-out=json")
}

impl Pair {
    async fn start() -> Pair {
        let (etcd, subject) = tokio::join!(Member::etcd(), Member::subject());
        Pair { etcd, subject, mismatches: Vec::new() }
    }

    fn run(&mut self, args: &[&str]) -> Output {
        self.run_stdin(args, None)
    }

    /// Runs `etcdctl <args>` (with `stdin`) against both servers at once,
    /// records any difference, and returns etcd's normalised output so the
    /// test can check its own premises.
    fn run_stdin(&mut self, args: &[&str], stdin: Option<&str>) -> Output {
        let (e_ep, s_ep) = (self.etcd.endpoint(), self.subject.endpoint());
        let (e, s) = std::thread::scope(|scope| {
            let e = scope.spawn(|| etcdctl(&e_ep, args, stdin));
            let s = etcdctl(&s_ep, args, stdin);
            (e.join().expect("etcdctl thread panicked"), s)
        });
        let norm = |o: Output, ep: &str| Output {
            stdout: normalize_etcdctl_text(&o.stdout, ep),
            stderr: normalize_etcdctl_text(&o.stderr, ep),
            code: o.code,
        };
        let (e, s) = (norm(e, &e_ep), norm(s, &s_ep));
        let mut diffs = Vec::new();
        if e.code != s.code {
            diffs.push(format!("exit code: etcd={} ketch={}", e.code, s.code));
        }
        if wants_json(args) && !e.stdout.trim().is_empty() {
            let ev = parse_normalized_json(&e.stdout);
            match serde_json::from_str::<Value>(s.stdout.trim()) {
                Ok(mut sv) => {
                    ketch_e2e::normalize_json_headers(&mut sv);
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
        } else if e.stdout != s.stdout {
            diffs.push(format!("stdout differs:\n    etcd:  {:?}\n    ketch: {:?}", e.stdout, s.stdout));
        }
        if e.stderr != s.stderr {
            diffs.push(format!("stderr differs:\n    etcd:  {:?}\n    ketch: {:?}", e.stderr, s.stderr));
        }
        if !diffs.is_empty() {
            let stdin_note = stdin.map_or(String::new(), |s| format!(" <<< {s:?}"));
            self.mismatches.push(format!("`etcdctl {}`{stdin_note}:\n  {}", args.join(" "), diffs.join("\n  ")));
        }
        e
    }

    /// Asserts etcd's output (a premise of the test, not a comparison).
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

    /// Asserts that etcd fails with `message` on stderr (a premise).
    fn expect_err(&mut self, args: &[&str], message: &str) {
        let out = self.run(args);
        assert!(
            out.code != 0 && out.stderr.contains(message),
            "premise: `etcdctl {}` on etcd should fail with {message:?}, got {out:?}",
            args.join(" ")
        );
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

/// Writes the same keys on both servers (revisions 2..=N+1) and returns the
/// last revision.
fn put_all(pair: &mut Pair, kvs: &[(&str, &str)]) {
    for (k, v) in kvs {
        pair.expect(&["put", k, v], "OK\n");
    }
}

#[tokio::test]
async fn put_command() {
    let mut p = Pair::start().await;
    p.expect(&["put", "foo", "bar"], "OK\n");
    p.expect(&["put", "foo", "bar2", "--prev-kv"], "OK\nfoo\nbar\n");
    p.run(&["put", "foo", "bar3", "--prev-kv", "-w", "json"]);
    p.run(&["put", "foo", "bar4", "-w", "json"]);
    p.run(&["put", "new", "v", "--prev-kv", "-w", "json"]);
    p.expect(&["put", "new", "v2", "--prev-kv"], "OK\nnew\nv\n");
    // --ignore-value keeps the value, bumps version and mod revision.
    p.expect(&["put", "foo", "--ignore-value"], "OK\n");
    p.run(&["put", "foo", "--ignore-value", "--prev-kv", "-w", "json"]);
    p.expect_err(&["put", "missing", "--ignore-value"], "key not found");
    p.expect_err(&["put", "missing", "--ignore-value", "-w", "json"], "key not found");
    // Client-side argument error; still compared.
    p.run(&["put", "foo", "x", "--ignore-value"]);
    // --ignore-lease keeps the (zero) lease.
    p.expect(&["put", "foo", "baz", "--ignore-lease"], "OK\n");
    p.run(&["put", "foo", "baz2", "--ignore-lease", "--prev-kv", "-w", "json"]);
    p.expect_err(&["put", "missing2", "v", "--ignore-lease"], "key not found");
    p.expect_err(&["put", "foo", "v", "--lease=1234"], "requested lease not found");
    p.expect(&["put", "--", "-dash", "-val"], "OK\n");
    p.expect(&["put", "empty", ""], "OK\n");
    p.run(&["put", "empty", "", "--prev-kv", "-w", "json"]);
    let out = p.run_stdin(&["put", "fromstdin"], Some("value from\nstdin"));
    assert_eq!(out.stdout, "OK\n", "premise: put reads the value from stdin");
    p.expect(&["put", "sp ace", "v a l"], "OK\n");
    p.expect(&["put", "utf8-ключ", "значение"], "OK\n");
    p.run(&["get", "", "--from-key", "-w", "json"]);
    p.run(&["get", "", "--from-key"]);
    p.finish();
}

/// Keys for the range tests: prefixes overlap (`a`, `a/…`, `ab`, `foo`,
/// `foo/…`, `foo0`), some keys are rewritten so versions differ.
fn range_data(p: &mut Pair) {
    put_all(
        p,
        &[
            ("a", "1"),
            ("a/1", "x"),
            ("a/2", "y"),
            ("a/3", "x"),
            ("ab", "2"),
            ("b", "3"),
            ("b/1", "y"),
            ("c", "x"),
            ("foo", "f"),
            ("foo/bar", "fb"),
            ("foo0", "f0"),
            ("z", "last"),
            ("a/2", "y2"),
            ("b", "3b"),
            ("a/2", "y3"),
        ],
    );
}

#[tokio::test]
async fn get_command() {
    let mut p = Pair::start().await;
    range_data(&mut p);
    p.expect(&["get", "a"], "a\n1\n");
    p.expect(&["get", "nope"], "");
    let cases: &[&[&str]] = &[
        &["get", "a"],
        &["get", "nope"],
        &["get", "a", "--prefix"],
        &["get", "a/", "--prefix"],
        &["get", "foo", "--prefix"],
        &["get", "", "--prefix"],
        &["get", "b", "--from-key"],
        &["get", "", "--from-key"],
        &["get", "zz", "--from-key"],
        &["get", "a", "b"],
        &["get", "a/", "a/3"],
        &["get", "b", "a"],
        &["get", "a", "--prefix", "--limit", "2"],
        &["get", "a", "--prefix", "--limit=4"],
        &["get", "a", "--prefix", "--limit=100"],
        &["get", "", "--from-key", "--limit=1"],
        &["get", "a", "--prefix", "--keys-only"],
        &["get", "a", "--prefix", "--print-value-only"],
        &["get", "a", "--prefix", "--keys-only", "--print-value-only"],
        &["get", "a", "--prefix", "--hex"],
        &["get", "foo", "--hex"],
        &["get", "a", "--prefix", "--consistency=s"],
        &["get", "a", "--consistency=l"],
        &["get", "a", "c", "--limit=3", "--keys-only"],
    ];
    for args in cases {
        p.run(args);
        let mut json = args.to_vec();
        json.extend(["-w", "json"]);
        p.run(&json);
    }
    p.finish();
}

#[tokio::test]
async fn get_sorted() {
    let mut p = Pair::start().await;
    // At most 12 keys in any sorted range: etcd sorts with Go's sort.Sort,
    // which is an insertion sort (stable) only up to 12 elements. Ties (same
    // value / version) are deliberate.
    put_all(
        &mut p,
        &[
            ("s/c", "v2"),
            ("s/a", "v1"),
            ("s/e", "v1"),
            ("s/b", "v3"),
            ("s/d", "v2"),
            ("s/a", "v2"),
            ("s/f", "v0"),
            ("s/c", "v1"),
            ("s/c", "v9"),
            ("s/g", "v3"),
            ("s/b", "v3"),
            ("t", "outside"),
        ],
    );
    for target in ["", "KEY", "VERSION", "CREATE", "MODIFY", "VALUE"] {
        for order in ["", "ASCEND", "DESCEND"] {
            for limit in ["", "3"] {
                let mut args = vec!["get", "s/", "--prefix"];
                let sort = format!("--sort-by={target}");
                let ord = format!("--order={order}");
                let lim = format!("--limit={limit}");
                if !target.is_empty() {
                    args.push(&sort);
                }
                if !order.is_empty() {
                    args.push(&ord);
                }
                if !limit.is_empty() {
                    args.push(&lim);
                }
                p.run(&args);
                args.extend(["-w", "json"]);
                p.run(&args);
            }
        }
    }
    p.run(&["get", "s/", "--prefix", "--sort-by=VERSION", "--keys-only"]);
    p.run(&["get", "s/b", "s/f", "--sort-by=VALUE", "--order=DESCEND"]);
    // Invalid options are client-side errors; compared all the same.
    p.run(&["get", "s/", "--prefix", "--sort-by=BOGUS"]);
    p.run(&["get", "s/", "--prefix", "--order=UP"]);
    p.finish();
}

#[tokio::test]
async fn get_revisions() {
    let mut p = Pair::start().await;
    put_all(
        &mut p,
        &[
            ("r", "1"),  // rev 2
            ("r", "2"),  // rev 3
            ("r2", "a"), // rev 4
        ],
    );
    p.expect(&["del", "r"], "1\n"); // rev 5
    put_all(&mut p, &[("r", "3"), ("r2", "b")]); // rev 6, 7
    for rev in ["1", "2", "3", "4", "5", "6", "7", "0"] {
        let flag = format!("--rev={rev}");
        p.run(&["get", "r", &flag]);
        p.run(&["get", "r", &flag, "-w", "json"]);
        p.run(&["get", "r", "--prefix", &flag, "-w", "json"]);
        p.run(&["get", "r", "--prefix", &flag, "--limit=1", "-w", "json"]);
    }
    p.expect_err(&["get", "r", "--rev=8"], "future revision");
    p.run(&["get", "r", "--rev=1000", "-w", "json"]);
    p.expect(&["compaction", "3"], "compacted revision 3\n");
    p.expect_err(&["get", "r", "--rev=2"], "required revision has been compacted");
    p.run(&["get", "r", "--rev=2", "-w", "json"]);
    p.run(&["get", "r", "--prefix", "--rev=1"]);
    p.expect(&["get", "r", "--rev=3"], "r\n2\n");
    p.run(&["get", "r", "--prefix", "--rev=3", "-w", "json"]);
    p.run(&["get", "r", "--prefix", "--rev=7", "--consistency=s", "-w", "json"]);
    p.finish();
}

#[tokio::test]
async fn del_command() {
    let mut p = Pair::start().await;
    range_data(&mut p);
    p.expect(&["del", "nope"], "0\n");
    p.expect(&["del", "c"], "1\n");
    p.run(&["del", "c", "-w", "json"]);
    p.expect(&["del", "b/1", "--prev-kv"], "1\nb/1\ny\n");
    p.run(&["del", "a/", "--prefix", "--prev-kv"]);
    p.run(&["del", "a/", "--prefix", "--prev-kv", "-w", "json"]);
    put_all(&mut p, &[("a/1", "again"), ("a/9", "nine")]);
    p.run(&["del", "a/", "--prefix", "--prev-kv", "-w", "json"]);
    p.run(&["del", "foo", "foo0"]);
    p.run(&["del", "a", "b", "--prev-kv", "-w", "json"]);
    p.run(&["del", "y", "--from-key", "--prev-kv"]);
    p.run(&["get", "", "--from-key", "-w", "json"]);
    p.run(&["del", "", "--from-key", "-w", "json"]);
    p.run(&["del", "", "--prefix"]);
    p.run(&["get", "", "--from-key", "-w", "json"]);
    p.run(&["del"]);
    p.finish();
}

#[tokio::test]
async fn txn_command() {
    let mut p = Pair::start().await;
    put_all(&mut p, &[("k", "v"), ("k", "v2"), ("other", "o"), ("p/1", "1")]);
    // Each script: compares, blank line, success ops, blank line, failure
    // ops, blank line (etcdctl txn -i=false reads three sections).
    let scripts = [
        "mod(\"k\") > \"0\"\nvalue(\"k\") = \"v2\"\n\nput k v3\nget k\n\nput k no\n\n",
        "value(\"k\") = \"nope\"\n\nput k yes\n\nget k\ndel other\nput f 1\n\n",
        "version(\"k\") = \"3\"\n\nput k v4 --prev-kv\n\n\n",
        "version(\"k\") != \"3\"\n\nput k bad\n\nget k --prefix --limit=1\n\n",
        "ver(\"k\") < \"100\"\nc(\"k\") = \"2\"\nm(\"k\") > \"2\"\n\nget p/ --prefix\nget k --rev=2\n\n\n",
        "create(\"nokey\") = \"0\"\n\nput nokey 1\ndel p/ --prefix --prev-kv\n\n\n",
        "create(\"nokey\") = \"0\"\n\nput nokey 2\n\nget nokey\n\n",
        "val(\"nokey\") > \"0\"\nval(\"k\") < \"zzz\"\n\nget nokey\nget k --keys-only\n\n\n",
        "mod(\"k\") = \"1000\"\n\n\nput x 1\nput y 2\ndel z --prev-kv\n\n",
        // A put and a delete of the same key in one branch: server-side
        // "duplicate key" error.
        "mod(\"k\") = \"1000\"\n\n\nput x 1\nput y 2\ndel x\n\n",
        "\n\nget a --from-key\nget k z --keys-only\n\n\n",
        // Same key put twice in one branch: server-side error.
        "\n\nput dup 1\nput dup 2\n\n\n",
        // etcd's duplicate-key check sees neither a from-key delete
        // (range_end "\0") nor an empty `[k, k)` delete as covering a put of
        // the same branch: both txns succeed on etcd 3.4.
        "\n\nput za 1\ndel z --from-key --prev-kv\n\n\n",
        "\n\nput zb 1\ndel zb --from-key\n\n\n",
        "\n\nput k same\ndel k k\n\n\n",
        // Compare value against a missing key fails, failure branch runs.
        "value(\"missing\") = \"\"\n\nput a 1\n\nput b 2\n\n",
        // Malformed compare: client-side error.
        "bogus(\"k\") < \"1\"\n\n\n\n",
    ];
    for script in scripts {
        p.run_stdin(&["txn", "-i=false"], Some(script));
        p.run_stdin(&["txn", "-i=false", "-w", "json"], Some(script));
    }
    let out = p.run(&["get", "", "--from-key"]);
    assert!(out.stdout.contains("nokey\n1\n"), "premise: {out:?}");
    p.run(&["get", "", "--from-key", "-w", "json"]);
    p.finish();
}

#[tokio::test]
async fn compaction_command() {
    let mut p = Pair::start().await;
    for i in 0..9 {
        let v = i.to_string();
        p.expect(&["put", "c", &v], "OK\n"); // revs 2..=10
    }
    p.expect_err(&["compaction", "11"], "future revision");
    p.expect(&["compaction", "4"], "compacted revision 4\n");
    p.expect_err(&["compaction", "4"], "required revision has been compacted");
    p.expect_err(&["compaction", "2"], "required revision has been compacted");
    p.expect_err(&["get", "c", "--rev=3"], "required revision has been compacted");
    p.expect(&["get", "c", "--rev=4"], "c\n2\n");
    p.expect(&["compaction", "--physical", "7"], "compacted revision 7\n");
    p.expect_err(&["get", "c", "--rev=6"], "required revision has been compacted");
    p.run(&["get", "c", "--rev=7", "-w", "json"]);
    p.expect(&["compaction", "10"], "compacted revision 10\n");
    p.expect_err(&["compaction", "10", "--physical"], "has been compacted");
    p.run(&["compaction", "abc"]);
    p.run(&["get", "c", "-w", "json"]);
    p.expect(&["put", "c", "after"], "OK\n");
    p.run(&["get", "c", "--rev=10", "-w", "json"]);
    p.run(&["get", "c", "-w", "json"]);
    p.finish();
}

#[tokio::test]
async fn endpoint_commands() {
    let mut p = Pair::start().await;
    put_all(&mut p, &[("a", "1"), ("b", "2"), ("a", "3")]);

    // endpoint health: exit code and text (timing normalised); etcdctl
    // prints the health line on stderr.
    let out = p.run(&["endpoint", "health"]);
    assert_eq!(out.code, 0, "premise: {out:?}");
    assert!(out.stderr.contains("is healthy"), "premise: {out:?}");
    let health = |m: &Member| {
        let o = etcdctl(&m.endpoint(), &["endpoint", "health", "-w", "json"], None);
        assert_eq!(o.code, 0, "endpoint health -w json on {:?}: {o:?}", m.kind());
        let mut v: Value = serde_json::from_str(o.stdout.trim())
            .unwrap_or_else(|e| panic!("health json on {:?}: {e}: {o:?}", m.kind()));
        let entry = &mut v[0];
        assert!(entry["took"].is_string(), "{o:?}");
        entry["took"] = Value::from("<duration>");
        entry["endpoint"] = Value::from("<endpoint>");
        v
    };
    let (eh, sh) = (health(&p.etcd), health(&p.subject));
    if eh != sh {
        p.mismatches.push(format!("`etcdctl endpoint health -w json`: etcd={eh} ketch={sh}"));
    }

    // endpoint status: only the fields that must match.
    let status = |m: &Member| -> Value {
        let o = etcdctl(&m.endpoint(), &["endpoint", "status", "-w", "json"], None);
        assert_eq!(o.code, 0, "endpoint status on {:?}: {o:?}", m.kind());
        serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| panic!("status json on {:?}: {e}: {o:?}", m.kind()))
    };
    let (es, ss) = (status(&p.etcd), status(&p.subject));
    let etcd_status = &es[0]["Status"];
    assert_eq!(etcd_status["header"]["revision"], 4, "premise: {es}");
    let st = &ss[0]["Status"];
    let mut problems = Vec::new();
    let version = st["version"].as_str().unwrap_or("");
    let family = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    let etcd_version = etcd_status["version"].as_str().unwrap_or("");
    if version.is_empty() || family(version) != family(etcd_version) {
        problems.push(format!("version {:?} is not of etcd's family {:?}", st["version"], family(etcd_version)));
    }
    if st["header"]["revision"] != etcd_status["header"]["revision"] {
        problems.push(format!(
            "header.revision: etcd={} ketch={}",
            etcd_status["header"]["revision"], st["header"]["revision"]
        ));
    }
    for field in ["raftIndex", "leader"] {
        if st[field].as_u64().unwrap_or(0) == 0 {
            problems.push(format!("{field} missing or zero: {}", st[field]));
        }
    }
    if ss[0]["Endpoint"].as_str() != Some(p.subject.endpoint().as_str()) {
        problems.push(format!("Endpoint field: {}", ss[0]["Endpoint"]));
    }
    if !problems.is_empty() {
        p.mismatches.push(format!(
            "`etcdctl endpoint status -w json`: {}\n    etcd:  {es}\n    ketch: {ss}",
            problems.join("; ")
        ));
    }
    p.finish();
}
