//! `watch`: how fast watchers are made and how fast their events arrive.
//!
//! Phase 1 makes `--streams` × `--watch-per-stream` watchers (stream `i`
//! on client `i % clients`), watcher `j` (counted over all streams) on
//! watched key `j % watched-key-total`; each creation is timed from the
//! request to the server's confirmation (etcd's tool times only handing
//! the request to clientv3). Phase 2 puts `--put-total` times, put `i` to
//! watched key `i % watched-key-total`, from all clients at `--put-rate`
//! (0: no limit), and counts every event every watcher receives until all
//! expected events arrived; its report counts events (their "latency" is
//! only the time to handle one, as in etcd's tool: the figure that matters
//! is events per second). The watched keys are `--watched-key-total` keys
//! of `--key-size` bytes from a key space of `--key-space-size`, random
//! or (`--sequential-keys`) in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use ketch_proto::etcdserverpb::{PutRequest, kv_client::KvClient};
use rand::Rng;
use serde_json::json;
use tokio::task::JoinSet;

use super::watch_stream::WatchStream;
use super::{CAPACITY_HINT_MAX, Ctx, Output, join_watching};
use crate::conn::status_text;
use crate::keys::{check_key_size, varint_key};
use crate::rate::Limiter;
use crate::report::{Outcome, Phase};

/// Streams gRPC-Go puts on one connection before etcd's tool warns.
const STREAMS_PER_CONN: usize = 100;

/// Benchmark watch.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Total watch streams
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Total watchers per stream
    #[arg(long, default_value_t = 100)]
    watch_per_stream: usize,
    /// Total number of keys to be watched
    #[arg(long, default_value_t = 1)]
    watched_key_total: usize,
    /// Number of keys to put per second (0 is no limit)
    #[arg(long, default_value_t = 0)]
    put_rate: u64,
    /// Number of put requests
    #[arg(long, default_value_t = 1000)]
    put_total: u64,
    /// Key size of watch request
    #[arg(long, default_value_t = 32)]
    key_size: usize,
    /// Maximum possible keys
    #[arg(long, default_value_t = 1)]
    key_space_size: u64,
    /// Use sequential keys
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    sequential_keys: bool,
}

/// Runs `watch`.
pub async fn run(ctx: &mut Ctx, args: WatchArgs) -> Result<Output> {
    check_key_size(args.key_size, args.key_space_size)?;
    if args.watched_key_total == 0 {
        bail!("expected positive --watched-key-total, got (0)");
    }
    let conns = ctx.clients.min(ctx.conns);
    let wanted = 1 + args.streams / STREAMS_PER_CONN;
    if conns < wanted {
        eprintln!("warning: grpc limits 100 streams per client connection, have {conns} but need {wanted}");
    }
    let channels = ctx.client_channels().await?;
    let mut rng = rand::rng();
    let watched: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..args.watched_key_total)
            .map(|i| {
                let n = if args.sequential_keys {
                    i as u64 % args.key_space_size
                } else {
                    rng.random_range(0..args.key_space_size)
                };
                varint_key(args.key_size, n)
            })
            .collect(),
    );

    // Phase 1: make the watchers.
    let watchers_total = args
        .streams
        .checked_mul(args.watch_per_stream)
        .ok_or_else(|| anyhow::anyhow!("--streams x --watch-per-stream is too large"))?;
    let len = watched.len() as u64;
    let mut watchers_per_key: HashMap<&[u8], u64> = HashMap::new();
    for (k, key) in watched.iter().enumerate() {
        *watchers_per_key.entry(key).or_insert(0) += share(watchers_total as u64, len, k as u64);
    }
    let progress = ctx.progress(watchers_total as u64);
    let phase = Phase::start("watch-creation");
    let next = Arc::new(AtomicU64::new(0));
    let mut creators = JoinSet::new();
    for i in 0..args.streams {
        let mut stream = WatchStream::new(channels[i % channels.len()].clone());
        let (next, watched, counter) = (next.clone(), watched.clone(), progress.counter());
        let per_stream = args.watch_per_stream;
        creators.spawn(async move {
            let mut outcomes = Vec::with_capacity(per_stream.min(CAPACITY_HINT_MAX));
            for _ in 0..per_stream {
                let j = next.fetch_add(1, Ordering::Relaxed) as usize;
                let key = watched[j % watched.len()].clone();
                let start = Instant::now();
                let result = stream.create(key, false).await.map(drop).map_err(|e| e.to_string());
                outcomes.push(Outcome::now(start, result));
                counter.inc();
            }
            anyhow::Ok((stream, outcomes))
        });
    }
    let created = join_watching(creators, &progress.counter(), watchers_total as u64, "watch creation").await?;
    let (streams, outcomes): (Vec<WatchStream>, Vec<Vec<Outcome>>) = created.into_iter().unzip();
    let creation = phase.finish(outcomes.into_iter().flatten(), &ctx.report);
    progress.finish();
    ctx.print_now(&format!("Watch creation summary:\n{}", creation.render()));
    if creation.failures() > 0 {
        bail!("{} of {watchers_total} watchers could not be created", creation.failures());
    }

    // Phase 2: put and count the events.
    let events_total: u64 = watched.iter().enumerate().fold(0, |sum, (k, key)| {
        let puts = share(args.put_total, len, k as u64);
        sum.saturating_add(puts.saturating_mul(watchers_per_key.get(&key[..]).copied().unwrap_or(0)))
    });
    let progress = ctx.progress(events_total);
    let phase = Phase::start("watch-events");
    let remaining = Arc::new(AtomicU64::new(events_total));
    let done = Arc::new(tokio::sync::watch::Sender::new(events_total == 0));
    let mut receivers = JoinSet::new();
    for mut stream in streams {
        let (remaining, counter, mut finished) = (remaining.clone(), progress.counter(), done.subscribe());
        let done = done.clone();
        receivers.spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let answer = tokio::select! {
                    _ = finished.wait_for(|d| *d) => break,
                    answer = stream.next() => answer?,
                };
                let received = Instant::now();
                for _ in &answer.events {
                    outcomes.push(Outcome { start: received, end: Instant::now(), error: None, class: 0 });
                    counter.inc();
                    if remaining.fetch_sub(1, Ordering::Relaxed) == 1 {
                        done.send_replace(true);
                    }
                }
            }
            anyhow::Ok(outcomes)
        });
    }
    let limiter = Arc::new(Limiter::new(args.put_rate, 1));
    let next = Arc::new(AtomicU64::new(0));
    let mut putters = JoinSet::new();
    for channel in &channels {
        let mut kv = KvClient::new(channel.clone());
        let (next, watched, limiter) = (next.clone(), watched.clone(), limiter.clone());
        let put_total = args.put_total;
        putters.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= put_total {
                    return anyhow::Ok(());
                }
                limiter.wait().await;
                let key = watched[(i % watched.len() as u64) as usize].clone();
                let put = PutRequest { key, value: b"data".to_vec(), ..Default::default() };
                if let Err(s) = kv.put(put).await {
                    bail!("put failed: {}", status_text(&s));
                }
            }
        });
    }
    let counter = progress.counter();
    let (_, received) = tokio::try_join!(
        join_watching(putters, &counter, events_total, "watch events"),
        join_watching(receivers, &counter, events_total, "watch events"),
    )?;
    let events = phase.finish(received.into_iter().flatten(), &ctx.report);
    progress.finish();

    let mut output = Output {
        text: format!("Watch events received summary:\n{}", events.render()),
        reports: vec![creation, events],
        ..Output::default()
    };
    output.extra.insert("watchers".into(), json!(watchers_total));
    output.extra.insert("events_expected".into(), json!(events_total));
    Ok(output)
}

/// How many of `n` things dealt round-robin over `len` places (thing `i`
/// to place `i % len`) land on place `k`.
fn share(n: u64, len: u64, k: u64) -> u64 {
    n / len + u64::from(k < n % len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        assert_eq!((0..3).map(|k| share(10, 3, k)).collect::<Vec<_>>(), [4, 3, 3]);
        assert_eq!((0..5).map(|k| share(3, 5, k)).sum::<u64>(), 3);
    }
}
