//! `range key [end-range]`: `--total` Range requests for one key or a
//! range, linearizable (`--consistency l`, the default) or serializable
//! (`s`).

use std::sync::Arc;

use anyhow::Result;
use clap::{Args, ValueEnum};
use ketch_proto::etcdserverpb::{RangeRequest, kv_client::KvClient};
use tonic::transport::Channel;

use super::{Ctx, Output, Request, closed_loop};
use crate::conn::status_text;
use crate::rate::Limiter;
use crate::report::Phase;

/// Read consistency, etcd's `--consistency` letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable
    L,
    /// Serializable
    S,
}

impl Consistency {
    /// The line etcd's tool prints before a run with this consistency.
    pub fn banner(self) -> &'static str {
        match self {
            Consistency::L => "bench with linearizable range",
            Consistency::S => "bench with serializable range",
        }
    }

    /// Whether reads are serializable.
    pub fn serializable(self) -> bool {
        self == Consistency::S
    }
}

/// Benchmark range.
#[derive(Args, Debug)]
pub struct RangeArgs {
    /// The key (or first key of the range) to read
    key: String,
    /// End of the range (exclusive); a single key without it
    end_range: Option<String>,
    /// Maximum range requests per second (0 is no limit)
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Total number of range requests
    #[arg(long, default_value_t = 10000)]
    total: u64,
    /// Linearizable(l) or Serializable(s)
    #[arg(long, value_enum, default_value = "l", hide_possible_values = true)]
    consistency: Consistency,
}

struct Ranger {
    kv: KvClient<Channel>,
    request: Arc<RangeRequest>,
}

impl Request for Ranger {
    async fn issue(&mut self, _index: u64) -> Result<(), String> {
        self.kv.range((*self.request).clone()).await.map(drop).map_err(|s| status_text(&s))
    }
}

/// Runs `range`.
pub async fn run(ctx: &mut Ctx, args: RangeArgs) -> Result<Output> {
    ctx.info(args.consistency.banner());
    let request = Arc::new(RangeRequest {
        key: args.key.into_bytes(),
        range_end: args.end_range.map(String::into_bytes).unwrap_or_default(),
        serializable: args.consistency.serializable(),
        ..Default::default()
    });
    let limiter = Arc::new(Limiter::new(args.rate, 1));
    let clients: Vec<Ranger> = ctx
        .client_channels()
        .await?
        .into_iter()
        .map(|channel| Ranger { kv: KvClient::new(channel), request: request.clone() })
        .collect();

    let progress = ctx.progress(args.total);
    let phase = Phase::start("range");
    let outcomes = closed_loop(clients, args.total, limiter, progress.counter()).await?;
    let stats = phase.finish(outcomes, &ctx.report);
    progress.finish();
    Ok(Output { text: stats.render(), reports: vec![stats], ..Output::default() })
}
