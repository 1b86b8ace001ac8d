//! The simulator in the test suite: a fixed sweep of seeds must pass, a seed
//! must replay exactly, and each planted bug must be caught within the sweep.
//!
//! `KETCH_SIM_SEEDS=N` widens the sweep; a failing seed prints the command
//! that replays it.

use ketch_sim::sim::planted;
use ketch_sim::{Report, SimConfig, run};

/// Seeds the default sweep runs (about a second each in a debug build).
const SWEEP_SEEDS: u64 = 48;
/// Seeds that once failed for a reason since fixed, beyond the sweep.
const REGRESSION_SEEDS: &[u64] = &[
    // A restarted member reused request IDs still in its log (the
    // simulator's ID seeding; see docs/bugs-found.md).
    130,
];
/// Seeds a planted bug gets to show itself.
const BUG_SEEDS: u64 = 12;

fn sweep_size() -> u64 {
    std::env::var("KETCH_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(SWEEP_SEEDS)
}

fn describe(r: &Report) -> String {
    let mut out = format!("seed {} FAILED ({} ops, {} faults):\n", r.seed, r.ops, r.faults.len());
    for f in r.failures.iter().take(6) {
        out.push_str(&format!("  {}\n", f.lines().next().unwrap_or_default()));
    }
    out.push_str(&format!("  replay: cargo run -p ketch-sim -- --seed {} --verbose\n", r.seed));
    out
}

#[test]
fn seed_sweep_finds_no_violation() {
    let n = sweep_size();
    println!("running seeds 1..={n} (KETCH_SIM_SEEDS=N for more)");
    let mut failed = String::new();
    for seed in (1..=n).chain(REGRESSION_SEEDS.iter().copied().filter(|&s| s > n)) {
        let r = run(SimConfig::new(seed));
        println!(
            "seed {seed}: {} ops, {} acked writes, {} faults, trace {:016x}",
            r.ops,
            r.acked_writes,
            r.faults.len(),
            r.trace
        );
        assert!(r.acked_writes > 20, "seed {seed}: too little got through to check anything: {r:?}");
        if !r.passed() {
            failed.push_str(&describe(&r));
        }
    }
    assert!(failed.is_empty(), "{failed}");
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [7, 11] {
        let a = run(SimConfig::new(seed));
        let b = run(SimConfig::new(seed));
        assert_eq!((a.trace, a.ops, &a.faults), (b.trace, b.ops, &b.faults), "seed {seed} did not replay");
    }
    // And different seeds make different runs.
    assert_ne!(run(SimConfig::new(1)).trace, run(SimConfig::new(2)).trace);
}

/// Runs seeds with `bug` planted until one fails; returns what it found.
fn catch(bug: &str) -> Report {
    for seed in 1..=BUG_SEEDS {
        let mut cfg = SimConfig::new(seed);
        cfg.bugs = planted(bug).expect("a known bug");
        let r = run(cfg);
        if !r.passed() {
            println!("{bug} caught by seed {seed}:");
            for f in r.failures.iter().take(4) {
                println!("  {}", f.lines().next().unwrap_or_default());
            }
            return r;
        }
        println!("{bug}: seed {seed} passed");
    }
    panic!("the planted bug {bug} went unnoticed for {BUG_SEEDS} seeds");
}

#[test]
fn acknowledging_before_fsync_is_caught() {
    catch("ack-before-fsync");
}

#[test]
fn applying_uncommitted_entries_is_caught() {
    catch("apply-uncommitted");
}

#[test]
fn reading_without_read_index_is_caught() {
    let r = catch("read-without-read-index");
    assert!(
        r.failures.iter().any(|f| f.starts_with("linearizability")),
        "a stale read shows as a linearizability violation: {:?}",
        r.failures
    );
}

#[test]
fn applied_index_apart_from_data_is_caught() {
    catch("applied-index-apart");
}

/// The simulator's first finding: raft does not deduplicate proposals, so a
/// transport that delivered a forwarded `MsgProp` twice would have it
/// applied twice. Ketch's transport delivers at most once; this keeps the
/// checkers able to see the double write.
#[test]
fn a_duplicated_proposal_is_applied_twice_and_caught() {
    let mut cfg = SimConfig::new(5);
    cfg.duplicate_proposals = true;
    let r = run(cfg);
    assert!(!r.passed(), "seed 5 with duplicated proposals should fail: {r:?}");
}
