//! `put`: `--total` puts of `--val-size` bytes to keys from a key space of
//! `--key-space-size` keys, random or (`--sequential-keys`) key `i %
//! key-space-size` for request `i`. Optionally compacts every
//! `--compact-interval` and prints the first endpoint's `HashKV` at the end
//! (`--check-hashkv`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use ketch_client::{Client, ClientOptions};
use ketch_proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest, kv_client::KvClient};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tonic::transport::Channel;

use super::{Ctx, Output, Request, closed_loop};
use crate::conn::status_text;
use crate::gofmt::{format_duration, humanize_bytes, parse_duration};
use crate::keys::{check_key_size, random_bytes, varint_key};
use crate::rate::Limiter;
use crate::report::Phase;

/// Benchmark put.
#[derive(Args, Debug)]
pub struct PutArgs {
    /// Key size of put request
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size of put request
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Maximum puts per second (0 is no limit)
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Total number of put requests
    #[arg(long, default_value_t = 10000)]
    total: u64,
    /// Maximum possible keys
    #[arg(long, default_value_t = 1)]
    key_space_size: u64,
    /// Use sequential keys
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    sequential_keys: bool,
    /// Interval to compact database (do not duplicate this with etcd's 'auto-compaction-retention' flag) (e.g. --compact-interval=5m compacts every 5-minute)
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    compact_interval: Duration,
    /// Delta between current revision and compact revision (e.g. current revision 10000, compact at 9000)
    #[arg(long, default_value_t = 1000)]
    compact_index_delta: i64,
    /// 'true' to check hashkv
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    check_hashkv: bool,
}

struct Putter {
    kv: KvClient<Channel>,
    key_size: usize,
    key_space_size: u64,
    sequential: bool,
    value: Arc<Vec<u8>>,
    rng: StdRng,
}

impl Request for Putter {
    async fn issue(&mut self, index: u64) -> Result<(), String> {
        let n =
            if self.sequential { index % self.key_space_size } else { self.rng.random_range(0..self.key_space_size) };
        let request =
            PutRequest { key: varint_key(self.key_size, n), value: self.value.to_vec(), ..Default::default() };
        self.kv.put(request).await.map(drop).map_err(|s| status_text(&s))
    }
}

/// Runs `put`.
pub async fn run(ctx: &mut Ctx, args: PutArgs) -> Result<Output> {
    check_key_size(args.key_size, args.key_space_size)?;
    let limiter = Arc::new(Limiter::new(args.rate, 1));
    let channels = ctx.client_channels().await?;
    let value = Arc::new(random_bytes(args.val_size));
    let clients: Vec<Putter> = channels
        .iter()
        .map(|channel| Putter {
            kv: KvClient::new(channel.clone()),
            key_size: args.key_size,
            key_space_size: args.key_space_size,
            sequential: args.sequential_keys,
            value: value.clone(),
            rng: StdRng::from_rng(&mut rand::rng()),
        })
        .collect();
    let compactor = (!args.compact_interval.is_zero()).then(|| {
        let kv = KvClient::new(channels[0].clone());
        tokio::spawn(compact_every(kv, args.compact_interval, args.compact_index_delta))
    });

    let progress = ctx.progress(args.total);
    let phase = Phase::start("put");
    let outcomes = closed_loop(clients, args.total, limiter, progress.counter()).await?;
    let stats = phase.finish(outcomes, &ctx.report);
    progress.finish();
    if let Some(compactor) = compactor {
        compactor.abort();
    }

    let mut output = Output { text: format!("{}\n", stats.render()), ..Output::default() };
    output.reports.push(stats);
    if args.check_hashkv {
        let (text, json) = hash_kv(ctx.dialer.first_endpoint()).await?;
        output.text.push_str(&text);
        output.extra.insert("hashkv".into(), json);
    }
    Ok(output)
}

/// etcd's `compactKV`, every `interval`: compacts at the current revision
/// minus `delta` (nothing while that is not positive; failures are
/// reported and the benchmark goes on).
async fn compact_every(mut kv: KvClient<Channel>, interval: Duration, delta: i64) {
    loop {
        tokio::time::sleep(interval).await;
        let revision = match kv.range(RangeRequest { key: b"foo".to_vec(), ..Default::default() }).await {
            Ok(r) => r.into_inner().header.map_or(0, |h| h.revision),
            Err(e) => {
                eprintln!("compaction: cannot read the revision: {}", status_text(&e));
                continue;
            }
        };
        let target = revision - delta;
        if target <= 0 {
            continue;
        }
        if let Err(e) = kv.compact(CompactionRequest { revision: target, physical: false }).await {
            eprintln!("compaction at revision {target} failed: {}", status_text(&e));
        }
    }
}

/// etcd's `hashKV`: the `HashKV` and database size of `endpoint`, and how
/// long asking took.
async fn hash_kv(endpoint: &str) -> Result<(String, serde_json::Value)> {
    let client = Client::connect([endpoint], ClientOptions::new()).await?;
    let started = Instant::now();
    let hash = client
        .maintenance()
        .hash_kv(endpoint, 0)
        .await
        .with_context(|| format!("Failed to get the hashkv of endpoint {endpoint}"))?;
    let status = client
        .maintenance()
        .status_of(endpoint)
        .await
        .with_context(|| format!("Failed to get the status of endpoint {endpoint}"))?;
    let took = started.elapsed();
    let db_size = u64::try_from(status.db_size).unwrap_or(0);
    let text = format!(
        "HashKV Summary:\n\tHashKV: {}\n\tEndpoint: {endpoint}\n\tTime taken to get hashkv: {}\n\tDB size: {}\n",
        hash.hash,
        format_duration(took),
        humanize_bytes(db_size)
    );
    let json = json!({
        "hash": hash.hash,
        "endpoint": endpoint,
        "secs": took.as_secs_f64(),
        "db_size": db_size,
    });
    Ok((text, json))
}
