//! `ketch-sim`: runs seeds of the deterministic simulation.
//!
//! ```text
//! ketch-sim [--seeds N] [--first S] [--seed S] [--fault-ms MS] [--bug NAME] [--verbose]
//! ```
//!
//! Each failing seed prints the command that replays it.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use ketch_sim::SimConfig;

fn usage() -> &'static str {
    "usage: ketch-sim [--seeds N] [--first S] [--seed S] [--fault-ms MS] [--bug ack-before-fsync|apply-uncommitted|read-without-read-index|applied-index-apart] [--duplicate-proposals] [--verbose]"
}

struct Args {
    first: u64,
    seeds: u64,
    fault_ms: Option<u64>,
    bug: Option<String>,
    duplicate_proposals: bool,
    verbose: bool,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args { first: 1, seeds: 10, fault_ms: None, bug: None, duplicate_proposals: false, verbose: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value\n{}", usage()));
        match flag.as_str() {
            "--seeds" => a.seeds = value("--seeds")?.parse()?,
            "--first" => a.first = value("--first")?.parse()?,
            "--seed" => {
                a.first = value("--seed")?.parse()?;
                a.seeds = 1;
            }
            "--fault-ms" => a.fault_ms = Some(value("--fault-ms")?.parse()?),
            "--bug" => a.bug = Some(value("--bug")?),
            "--duplicate-proposals" => a.duplicate_proposals = true,
            "--verbose" | "-v" => a.verbose = true,
            "--help" | "-h" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown flag {other:?}\n{}", usage()),
        }
    }
    Ok(a)
}

fn main() -> anyhow::Result<ExitCode> {
    let args = parse()?;
    // A member's panic is a finding the report carries; one line is enough.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let mut failed = 0;
    let started = Instant::now();
    for seed in args.first..args.first + args.seeds {
        let mut cfg = SimConfig::new(seed);
        if let Some(ms) = args.fault_ms {
            cfg.fault_ms = ms;
        }
        if let Some(bug) = &args.bug {
            cfg.bugs = ketch_sim::sim::planted(bug).with_context(|| format!("unknown bug {bug:?}\n{}", usage()))?;
        }
        cfg.duplicate_proposals = args.duplicate_proposals;
        let t = Instant::now();
        let report = ketch_sim::Sim::new(cfg.clone()).verbose(args.verbose).run();
        println!(
            "seed {seed}: {} members, {} ops, {} acked writes, {} faults, trace {:016x}, {:.1}s: {}",
            cfg.members,
            report.ops,
            report.acked_writes,
            report.faults.len(),
            report.trace,
            t.elapsed().as_secs_f64(),
            if report.passed() { "ok" } else { "FAILED" }
        );
        if !report.passed() {
            failed += 1;
            for f in &report.failures {
                println!("  {f}");
            }
            let bug = args.bug.as_ref().map(|b| format!(" --bug {b}")).unwrap_or_default();
            let fault = args.fault_ms.map(|m| format!(" --fault-ms {m}")).unwrap_or_default();
            let dup = if args.duplicate_proposals { " --duplicate-proposals" } else { "" };
            println!("  replay: cargo run -p ketch-sim -- --seed {seed}{fault}{bug}{dup} --verbose");
        }
    }
    println!("{} seeds, {failed} failed, {:.1}s", args.seeds, started.elapsed().as_secs_f64());
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
