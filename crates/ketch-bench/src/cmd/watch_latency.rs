//! `watch-latency`: the time from a put to each watcher's event (etcd 3.5's
//! version, with `--streams`, `--watchers-per-stream` and `--prevkv`).
//!
//! `--streams` × `--watchers-per-stream` watchers (stream `i` on client
//! `i % clients`) all watch one random key of `--key-size` bytes; once
//! every watcher is confirmed, one more connection puts a `--val-size`
//! value to that key `--put-total` times at `--put-rate` a second (bursts
//! of as many). Reported: the puts, and for every watcher and put the time
//! from the put's answer to the watcher's event (0 if the event came
//! first), as etcd measures it.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use ketch_proto::etcdserverpb::{PutRequest, kv_client::KvClient};
use tokio::task::JoinSet;

use super::watch_stream::WatchStream;
use super::{CAPACITY_HINT_MAX, Ctx, Output, join_watching};
use crate::conn::status_text;
use crate::keys::random_bytes;
use crate::rate::Limiter;
use crate::report::{Outcome, Phase};

/// Benchmark watch latency.
#[derive(Args, Debug)]
pub struct WatchLatencyArgs {
    /// Total watch streams
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Total watchers per stream
    #[arg(long, default_value_t = 10)]
    watchers_per_stream: usize,
    /// PrevKV enabled on watch requests
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    prevkv: bool,
    /// Total number of put requests
    #[arg(long, default_value_t = 1000)]
    put_total: u64,
    /// Number of keys to put per second (0 is no limit)
    #[arg(long, default_value_t = 100)]
    put_rate: u64,
    /// Key size of watch response
    #[arg(long, default_value_t = 32)]
    key_size: usize,
    /// Value size of watch response
    #[arg(long, default_value_t = 32)]
    val_size: usize,
}

/// Runs `watch-latency`.
pub async fn run(ctx: &mut Ctx, args: WatchLatencyArgs) -> Result<Output> {
    if args.key_size == 0 {
        bail!("expected positive --key-size, got (0)");
    }
    let key = random_bytes(args.key_size);
    let value = random_bytes(args.val_size);
    let put_total = usize::try_from(args.put_total)?;
    let channels = ctx.client_channels().await?;

    // Every watcher, confirmed before the first put.
    let mut creators = JoinSet::new();
    for i in 0..args.streams {
        let mut stream = WatchStream::new(channels[i % channels.len()].clone());
        let (key, per_stream, prev_kv) = (key.clone(), args.watchers_per_stream, args.prevkv);
        creators.spawn(async move {
            let mut ids = HashMap::with_capacity(per_stream);
            for local in 0..per_stream {
                let id = stream.create(key.clone(), prev_kv).await.context("watch creation failed")?;
                ids.insert(id, local);
            }
            anyhow::Ok((stream, ids))
        });
    }
    let mut streams = Vec::with_capacity(args.streams);
    while let Some(joined) = creators.join_next().await {
        streams.push(joined.context("a watch creation task failed")??);
    }
    let mut kv = KvClient::new(ctx.dialer.dial().await?);

    let events_total =
        args.streams
            .checked_mul(args.watchers_per_stream)
            .and_then(|watchers| watchers.checked_mul(put_total))
            .ok_or_else(|| anyhow!("--streams x --watchers-per-stream x --put-total is too large"))? as u64;
    let progress = ctx.progress(events_total);
    let mut receivers = JoinSet::new();
    for (mut stream, ids) in streams {
        let counter = progress.counter();
        receivers.spawn(async move {
            // Per watcher of this stream, when each of its events arrived.
            let mut times: Vec<Vec<Instant>> = vec![Vec::with_capacity(put_total.min(CAPACITY_HINT_MAX)); ids.len()];
            let mut complete = times.iter().filter(|t| t.len() >= put_total).count();
            while complete < times.len() {
                let answer = stream.next().await?;
                let Some(&local) = ids.get(&answer.watch_id) else { continue };
                for _ in &answer.events {
                    times[local].push(Instant::now());
                    counter.inc();
                    if times[local].len() == put_total {
                        complete += 1;
                    }
                }
            }
            anyhow::Ok(times)
        });
    }

    let put_phase = Phase::start("put");
    let watch_phase = Phase::start("watch-events");
    let limiter = Limiter::new(args.put_rate, args.put_rate);
    let counter = progress.counter();
    let puts = async {
        let mut outcomes = Vec::with_capacity(put_total.min(CAPACITY_HINT_MAX));
        let mut put_times = Vec::with_capacity(put_total.min(CAPACITY_HINT_MAX));
        for _ in 0..put_total {
            limiter.wait().await;
            let start = Instant::now();
            let put = PutRequest { key: key.clone(), value: value.clone(), ..Default::default() };
            kv.put(put).await.map_err(|s| anyhow!("Failed to Put for watch latency benchmark: {}", status_text(&s)))?;
            let outcome = Outcome::now(start, Ok(()));
            put_times.push(outcome.end);
            outcomes.push(outcome);
        }
        anyhow::Ok((outcomes, put_times))
    };
    let ((put_outcomes, put_times), event_times) =
        tokio::try_join!(puts, join_watching(receivers, &counter, events_total, "watch events"))?;
    let put_stats = put_phase.finish(put_outcomes, &ctx.report);
    progress.finish();

    let latencies = event_times.into_iter().flatten().flat_map(|times| {
        times.into_iter().zip(put_times.iter().copied()).map(|(end, put)| Outcome {
            start: put.min(end),
            end,
            error: None,
            class: 0,
        })
    });
    let watch_stats = watch_phase.finish(latencies, &ctx.report);
    Ok(Output {
        text: format!("\nPut summary:\n{}\nWatch events summary:\n{}", put_stats.render(), watch_stats.render()),
        reports: vec![put_stats, watch_stats],
        ..Output::default()
    })
}
