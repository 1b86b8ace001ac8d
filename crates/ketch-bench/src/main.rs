//! `ketch-bench`: etcd's `benchmark` tool (`tools/benchmark` of etcd 3.4)
//! for Ketch and etcd alike: the same subcommands, flags, defaults and
//! report, plus `--json`, so that runs against both can be compared side by
//! side.
//!
//! ```text
//! ketch-bench --endpoints 127.0.0.1:2379 --conns 8 --clients 64 \
//!     put --total 20000 --key-size 8 --val-size 256 --sequential-keys --key-space-size 20000
//! ketch-bench --endpoints 127.0.0.1:2379 range foo --consistency s --total 10000
//! ketch-bench --json put --total 1000 > report.json
//! ```
//!
//! Subcommands: `put`, `range`, `txn-put`, `txn-mixed`, `watch`,
//! `watch-latency` (etcd 3.5's, with `--streams`, `--watchers-per-stream`
//! and `--prevkv`), `lease-keepalive`. Global flags (before or after the
//! subcommand): `--endpoints`, `--conns`, `--clients`, `--dial-timeout`,
//! `--target-leader`, `--precise`, `--sample`, and ours: `--json`,
//! `--no-progress`. Per-command flags (`--total`, `--key-size`, `--rate`,
//! ...) come after the subcommand, as in etcd.
//!
//! Requests go over raw gRPC (`ketch-proto`'s generated clients): client
//! `i` uses connection `i % conns` for all its requests, without failover
//! or retries, as etcd's tool does. Not supported: TLS and authentication
//! (`--cert`, `--key`, `--cacert`, `--user`), which Ketch does not serve
//! yet.
//!
//! Output: etcd's text on stdout and a progress bar on stderr (only if
//! stderr is a terminal and without `--no-progress`). With `--json`,
//! stdout gets one JSON object instead:
//!
//! ```text
//! {"command": "put", "endpoints": ["http://127.0.0.1:2379"], "conns": 1, "clients": 1,
//!  "reports": [{"name": "put", "requests": 1000, "count": 1000, "errors": 0,
//!               "error_distribution": {}, "total_secs": 0.61, "slowest_secs": ..., "fastest_secs": ...,
//!               "average_secs": ..., "stddev_secs": ..., "requests_per_sec": 1639.3,
//!               "histogram": [{"mark_secs": ..., "count": ...}, ...],
//!               "latency_distribution": [{"percentile": 10.0, "latency_secs": ...}, ...],
//!               "time_series": null}]}
//! ```
//!
//! `count` is the successful requests, `errors` the failed ones (counted
//! per message in `error_distribution`); latencies are of successful
//! requests, in seconds. Request errors end in the report (exit status 0,
//! as etcd's); bad flags and failures to connect or to set up exit with 1.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod cmd;
mod conn;
mod gofmt;
mod keys;
mod progress;
mod rate;
mod report;

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use serde_json::{Map, Value, json};

use crate::cmd::{Ctx, Output, write_stdout};
use crate::conn::Dialer;
use crate::gofmt::parse_duration;
use crate::report::ReportOptions;

/// benchmark is a low-level benchmark tool for etcd3.
/// It uses gRPC client directly and does not depend on
/// etcd client library.
#[derive(Parser, Debug)]
#[command(name = "ketch-bench", version, about = "A low-level benchmark tool for etcd3 (and Ketch)")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct GlobalArgs {
    /// gRPC endpoints
    #[arg(long, global = true, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Total number of gRPC connections
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Total number of gRPC clients
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// use full floating point precision
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    precise: bool,
    /// 'true' to sample requests for every second
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    sample: bool,
    /// dial timeout for client connections (0: none)
    #[arg(long, global = true, default_value = "0", value_parser = parse_duration)]
    dial_timeout: Duration,
    /// connect only to the leader node
    #[arg(long, global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    target_leader: bool,
    /// print the report as one JSON object on stdout (not in etcd's tool)
    #[arg(long, global = true)]
    json: bool,
    /// never draw the progress bar (not in etcd's tool; it is also off when stderr is not a terminal)
    #[arg(long, global = true)]
    no_progress: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Benchmark put
    Put(cmd::put::PutArgs),
    /// Benchmark range
    Range(cmd::range::RangeArgs),
    /// Benchmark txn-put
    TxnPut(cmd::txn_put::TxnPutArgs),
    /// Benchmark a mixed load of txn-put & txn-range.
    TxnMixed(cmd::txn_mixed::TxnMixedArgs),
    /// Benchmark watch
    Watch(cmd::watch::WatchArgs),
    /// Benchmark watch latency
    WatchLatency(cmd::watch_latency::WatchLatencyArgs),
    /// Benchmark lease keepalive
    LeaseKeepalive(cmd::lease::LeaseKeepaliveArgs),
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Put(_) => "put",
            Command::Range(_) => "range",
            Command::TxnPut(_) => "txn-put",
            Command::TxnMixed(_) => "txn-mixed",
            Command::Watch(_) => "watch",
            Command::WatchLatency(_) => "watch-latency",
            Command::LeaseKeepalive(_) => "lease-keepalive",
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let global = cli.global;
    if global.conns == 0 {
        bail!("expected positive --conns, got (0)");
    }
    if global.clients == 0 {
        bail!("expected positive --clients, got (0)");
    }
    let dialer = Dialer::new(&global.endpoints, global.dial_timeout, global.target_leader).await?;
    let mut ctx = Ctx {
        dialer,
        conns: global.conns,
        clients: global.clients,
        report: ReportOptions::new(global.precise, global.sample),
        progress: !global.no_progress && std::io::stderr().is_terminal(),
        json: global.json,
    };
    let name = cli.command.name();
    let output = match cli.command {
        Command::Put(args) => cmd::put::run(&mut ctx, args).await?,
        Command::Range(args) => cmd::range::run(&mut ctx, args).await?,
        Command::TxnPut(args) => cmd::txn_put::run(&mut ctx, args).await?,
        Command::TxnMixed(args) => cmd::txn_mixed::run(&mut ctx, args).await?,
        Command::Watch(args) => cmd::watch::run(&mut ctx, args).await?,
        Command::WatchLatency(args) => cmd::watch_latency::run(&mut ctx, args).await?,
        Command::LeaseKeepalive(args) => cmd::lease::run(&mut ctx, args).await?,
    };
    if ctx.json {
        write_stdout(&format!("{}\n", serde_json::to_string_pretty(&json_report(name, &ctx, output))?));
    } else {
        write_stdout(&output.text);
    }
    Ok(())
}

/// The `--json` report: what ran, against what, and every report.
fn json_report(command: &str, ctx: &Ctx, output: Output) -> Value {
    let mut report = Map::new();
    report.insert("command".into(), json!(command));
    report.insert("endpoints".into(), json!(ctx.dialer.targets()));
    report.insert("conns".into(), json!(ctx.conns));
    report.insert("clients".into(), json!(ctx.clients));
    report.insert("reports".into(), Value::Array(output.reports.iter().map(|r| r.to_json()).collect()));
    report.extend(output.extra);
    Value::Object(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_like_etcd() {
        let cli = Cli::try_parse_from([
            "ketch-bench",
            "--endpoints=a:1,b:2",
            "--conns",
            "4",
            "put",
            "--clients=16",
            "--sequential-keys",
            "--total",
            "5",
            "--precise=true",
        ])
        .expect("parses");
        assert_eq!(cli.global.endpoints, ["a:1", "b:2"]);
        assert_eq!((cli.global.conns, cli.global.clients), (4, 16));
        assert!(cli.global.precise);
        assert!(matches!(cli.command, Command::Put(_)));

        let cli = Cli::try_parse_from(["ketch-bench", "range", "foo", "fop", "--consistency", "s"]).expect("parses");
        assert!(matches!(cli.command, Command::Range(_)));
        assert!(Cli::try_parse_from(["ketch-bench", "range", "foo", "--consistency", "x"]).is_err());
        assert!(Cli::try_parse_from(["ketch-bench", "range"]).is_err());
        assert!(Cli::try_parse_from(["ketch-bench", "txn-put", "--txn-ops", "2"]).is_ok());
        assert!(Cli::try_parse_from(["ketch-bench", "watch-latency", "--prevkv", "--put-rate", "5"]).is_ok());
        assert!(Cli::try_parse_from(["ketch-bench", "lease-keepalive", "--total", "-1"]).is_err());
    }
}
