//! `txn-mixed [key [end-range]]`: `--total` single-operation transactions,
//! each a read with probability `rw-ratio / (1 + rw-ratio)`, else a write;
//! separate reports for reads and writes.
//!
//! Writes put key `i % key-space-size` (request `i`). Reads are a Range of
//! at most `--limit` keys, linearizable or serializable: by default over
//! every key, as in etcd's tool; here also over `key` (to `end-range`, or
//! to `--end-key`, or that key alone) when given. (etcd's tool accepts
//! those arguments but ignores them, and its `--end-key` too.)

use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Args;
use ketch_proto::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest, kv_client::KvClient, request_op};
use rand::Rng;
use serde_json::json;
use tonic::transport::Channel;

use super::range::Consistency;
use super::{Ctx, Output, Request, closed_loop};
use crate::conn::status_text;
use crate::keys::{check_key_size, random_bytes, varint_key};
use crate::rate::Limiter;
use crate::report::Phase;

const READ: u8 = 0;
const WRITE: u8 = 1;

/// Benchmark a mixed load of txn-put & txn-range.
#[derive(Args, Debug)]
pub struct TxnMixedArgs {
    /// First key read (default: every key)
    key: Option<String>,
    /// End of the range read (exclusive)
    end_range: Option<String>,
    /// Key size of mixed txn
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size of mixed txn
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Maximum txns per second (0 is no limit)
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Total number of txn requests
    #[arg(long, default_value_t = 10000)]
    total: u64,
    /// Read operation range end key. By default, we do full range query with the default limit of 1000.
    #[arg(long, default_value = "")]
    end_key: String,
    /// Read operation range result limit
    #[arg(long, default_value_t = 1000)]
    limit: i64,
    /// Maximum possible keys
    #[arg(long, default_value_t = 1)]
    key_space_size: u64,
    /// Linearizable(l) or Serializable(s)
    #[arg(long, value_enum, default_value = "l", hide_possible_values = true)]
    consistency: Consistency,
    /// Read/write ops ratio
    #[arg(long, default_value_t = 1.0)]
    rw_ratio: f64,
}

struct Mixer {
    kv: KvClient<Channel>,
    /// Request `i` writes if `unit(seed, i) >= read_probability`.
    seed: u64,
    read_probability: f64,
    read: Arc<RangeRequest>,
    key_size: usize,
    key_space_size: u64,
    value: Arc<Vec<u8>>,
}

impl Request for Mixer {
    async fn issue(&mut self, index: u64) -> Result<(), String> {
        let op = if self.class(index) == WRITE {
            let n = index % self.key_space_size;
            let put =
                PutRequest { key: varint_key(self.key_size, n), value: self.value.to_vec(), ..Default::default() };
            request_op::Request::RequestPut(put)
        } else {
            request_op::Request::RequestRange((*self.read).clone())
        };
        let request = TxnRequest { success: vec![RequestOp { request: Some(op) }], ..Default::default() };
        self.kv.txn(request).await.map(drop).map_err(|s| status_text(&s))
    }

    fn class(&self, index: u64) -> u8 {
        if unit(self.seed, index) >= self.read_probability { WRITE } else { READ }
    }
}

/// A uniform number in [0, 1) for request `index` of a run with `seed`
/// (SplitMix64), so each request's kind is drawn at random, once, without
/// a table as long as `--total`.
fn unit(seed: u64, index: u64) -> f64 {
    let mut z = seed.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `txn-mixed`.
pub async fn run(ctx: &mut Ctx, args: TxnMixedArgs) -> Result<Output> {
    check_key_size(args.key_size, args.key_space_size)?;
    if !(args.rw_ratio.is_finite() && args.rw_ratio >= 0.0) {
        bail!("expected a non-negative --rw-ratio, got ({})", args.rw_ratio);
    }
    ctx.info(args.consistency.banner());
    let read_probability = args.rw_ratio / (1.0 + args.rw_ratio);
    let seed: u64 = rand::rng().random();

    let (key, range_end) = match (args.key, args.end_range) {
        (Some(key), Some(end)) => (key.into_bytes(), end.into_bytes()),
        (Some(key), None) if !args.end_key.is_empty() => (key.into_bytes(), args.end_key.into_bytes()),
        (Some(key), None) => (key.into_bytes(), Vec::new()),
        (None, _) if !args.end_key.is_empty() => (vec![0], args.end_key.into_bytes()),
        (None, _) => (vec![0], vec![0]),
    };
    let read = Arc::new(RangeRequest {
        key,
        range_end,
        limit: args.limit,
        serializable: args.consistency.serializable(),
        ..Default::default()
    });
    let limiter = Arc::new(Limiter::new(args.rate, 1));
    let value = Arc::new(random_bytes(args.val_size));
    let clients: Vec<Mixer> = ctx
        .client_channels()
        .await?
        .into_iter()
        .map(|channel| Mixer {
            kv: KvClient::new(channel),
            seed,
            read_probability,
            read: read.clone(),
            key_size: args.key_size,
            key_space_size: args.key_space_size,
            value: value.clone(),
        })
        .collect();

    let progress = ctx.progress(args.total);
    let (read_phase, write_phase) = (Phase::start("read"), Phase::start("write"));
    let outcomes = closed_loop(clients, args.total, limiter, progress.counter()).await?;
    let (writes_done, reads_done): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|o| o.class == WRITE);
    let (read_ops, write_ops) = (reads_done.len(), writes_done.len());
    let read_stats = read_phase.finish(reads_done, &ctx.report);
    let write_stats = write_phase.finish(writes_done, &ctx.report);
    progress.finish();

    let text = format!(
        "Total Read Ops: {read_ops}\nDetails:{}\nTotal Write Ops: {write_ops}\nDetails:{}\n",
        read_stats.render(),
        write_stats.render()
    );
    let mut output = Output { text, reports: vec![read_stats, write_stats], ..Output::default() };
    output.extra.insert("read_ops".into(), json!(read_ops));
    output.extra.insert("write_ops".into(), json!(write_ops));
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_kinds_follow_the_ratio() {
        let writes = (0..10_000).filter(|&i| unit(42, i) >= 0.75).count();
        assert!((2_250..2_750).contains(&writes), "{writes}");
        assert!((0..10_000).all(|i| (0.0..1.0).contains(&unit(7, i))));
    }
}
