//! The subcommands, one module each, and what they share: the run context,
//! the output, and the closed loop most of them run (`--clients` clients,
//! each sending its next request as soon as the last one is answered, until
//! `--total` requests were sent).

pub mod lease;
pub mod put;
pub mod range;
pub mod txn_mixed;
pub mod txn_put;
pub mod watch;
pub mod watch_latency;
mod watch_stream;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use tonic::transport::Channel;

use crate::conn::Dialer;
use crate::progress::{Counter, Progress};
use crate::rate::Limiter;
use crate::report::{Outcome, ReportOptions, Stats};

/// Everything a subcommand runs with: the global flags, made usable.
#[derive(Debug)]
pub struct Ctx {
    /// Makes the connections (`--endpoints`, `--target-leader`, `--dial-timeout`).
    pub dialer: Dialer,
    /// `--conns`.
    pub conns: usize,
    /// `--clients`.
    pub clients: usize,
    /// `--precise`, `--sample`.
    pub report: ReportOptions,
    /// Whether to draw progress bars.
    pub progress: bool,
    /// `--json`: stdout gets only the JSON report.
    pub json: bool,
}

impl Ctx {
    /// A line etcd's tool prints before it starts (`bench with linearizable
    /// range`): to stdout, or to stderr with `--json`.
    pub fn info(&self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            write_stdout(&format!("{line}\n"));
        }
    }

    /// Text etcd's tool prints between phases: to stdout now, or nowhere
    /// with `--json` (the JSON report has it all).
    pub fn print_now(&self, text: &str) {
        if !self.json {
            write_stdout(text);
        }
    }

    /// The `--conns` connections and the channel of each of the `--clients`
    /// clients.
    pub async fn client_channels(&mut self) -> Result<Vec<Channel>> {
        self.dialer.clients(self.conns, self.clients).await
    }

    /// A progress bar over `total` steps (drawn only if enabled).
    pub fn progress(&self, total: u64) -> Progress {
        Progress::start(total, self.progress)
    }
}

/// Writes `text` to stdout; a reader that went away (`| head`) is not an
/// error worth a panic.
pub fn write_stdout(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

/// What a subcommand produced: its reports, the text etcd's tool would have
/// printed at the end, and extra JSON fields.
#[derive(Debug, Default)]
pub struct Output {
    /// The reports, in the order etcd prints them.
    pub reports: Vec<Stats>,
    /// The text etcd's tool prints after the run.
    pub text: String,
    /// Further top-level fields of the JSON report.
    pub extra: Map<String, Value>,
}

/// One client's way of sending requests in a closed loop.
pub trait Request: Send + 'static {
    /// Sends request number `index` and waits for its answer; the error is
    /// the text the report counts it under.
    fn issue(&mut self, index: u64) -> impl Future<Output = Result<(), String>> + Send;

    /// Which of the command's reports request `index` counts in.
    fn class(&self, _index: u64) -> u8 {
        0
    }
}

/// Largest number of results space is reserved for up front (a huge
/// `--total` must not fail at the start).
pub const CAPACITY_HINT_MAX: usize = 1 << 20;

/// How long a phase waits for watch events that do not come before it
/// gives up.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits for every task of `tasks`, failing at the first failure, or when
/// `counter` has not moved for [`STALL_TIMEOUT`] (`what` names the work in
/// the error).
pub async fn join_watching<T: 'static>(
    mut tasks: tokio::task::JoinSet<Result<T>>,
    counter: &Counter,
    expected: u64,
    what: &str,
) -> Result<Vec<T>> {
    let mut results = Vec::with_capacity(tasks.len());
    let (mut seen, mut moved) = (counter.get(), Instant::now());
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => return Ok(results),
                Some(joined) => results.push(joined.context("a benchmark task failed")??),
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                let now = counter.get();
                if now != seen {
                    (seen, moved) = (now, Instant::now());
                } else if moved.elapsed() >= STALL_TIMEOUT {
                    bail!("{what} stalled: {now} of {expected} after nothing new for {STALL_TIMEOUT:?}");
                }
            }
        }
    }
}

/// Runs `clients` concurrently until `total` requests were sent, each
/// client waiting for `limiter` before each request and counting it on
/// `counter`; returns every request's outcome.
pub async fn closed_loop<R: Request>(
    clients: Vec<R>,
    total: u64,
    limiter: Arc<Limiter>,
    counter: Counter,
) -> Result<Vec<Outcome>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let (next, limiter, counter) = (next.clone(), limiter.clone(), counter.clone());
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total {
                    break;
                }
                limiter.wait().await;
                let start = Instant::now();
                let result = client.issue(index).await;
                let mut outcome = Outcome::now(start, result);
                outcome.class = client.class(index);
                outcomes.push(outcome);
                counter.inc();
            }
            outcomes
        });
    }
    let mut all = Vec::with_capacity(usize::try_from(total).unwrap_or(0).min(CAPACITY_HINT_MAX));
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.context("a client task failed")?);
    }
    Ok(all)
}
