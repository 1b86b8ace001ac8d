//! `txn-put`: `--total` transactions of `--txn-ops` puts each, without
//! compares; transaction `i` writes keys `(i * txn-ops + j) %
//! key-space-size` for `j` in `0..txn-ops`.

use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Args;
use ketch_proto::etcdserverpb::{PutRequest, RequestOp, TxnRequest, kv_client::KvClient, request_op};
use tonic::transport::Channel;

use super::{Ctx, Output, Request, closed_loop};
use crate::conn::status_text;
use crate::keys::{check_key_size, random_bytes, varint_key};
use crate::rate::Limiter;
use crate::report::Phase;

/// Benchmark txn-put.
#[derive(Args, Debug)]
pub struct TxnPutArgs {
    /// Key size of txn put
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size of txn put
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Number of puts per txn
    #[arg(long, default_value_t = 1)]
    txn_ops: u64,
    /// Maximum txns per second (0 is no limit)
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Total number of txn requests
    #[arg(long, default_value_t = 10000)]
    total: u64,
    /// Maximum possible keys
    #[arg(long, default_value_t = 1)]
    key_space_size: u64,
}

struct TxnPutter {
    kv: KvClient<Channel>,
    key_size: usize,
    key_space_size: u64,
    ops: u64,
    value: Arc<Vec<u8>>,
}

impl Request for TxnPutter {
    async fn issue(&mut self, index: u64) -> Result<(), String> {
        let success = (0..self.ops)
            .map(|j| {
                let n = index.wrapping_mul(self.ops).wrapping_add(j) % self.key_space_size;
                let put =
                    PutRequest { key: varint_key(self.key_size, n), value: self.value.to_vec(), ..Default::default() };
                RequestOp { request: Some(request_op::Request::RequestPut(put)) }
            })
            .collect();
        let request = TxnRequest { success, ..Default::default() };
        self.kv.txn(request).await.map(drop).map_err(|s| status_text(&s))
    }
}

/// Runs `txn-put`.
pub async fn run(ctx: &mut Ctx, args: TxnPutArgs) -> Result<Output> {
    check_key_size(args.key_size, args.key_space_size)?;
    if args.txn_ops == 0 {
        bail!("expected positive --txn-ops, got (0)");
    }
    if args.txn_ops > args.key_space_size {
        // A transaction would put one key twice, which etcd refuses.
        bail!(
            "expected --txn-ops no larger than --key-space-size, got txn-ops({}) key-space-size({})",
            args.txn_ops,
            args.key_space_size
        );
    }
    let limiter = Arc::new(Limiter::new(args.rate, 1));
    let value = Arc::new(random_bytes(args.val_size));
    let clients: Vec<TxnPutter> = ctx
        .client_channels()
        .await?
        .into_iter()
        .map(|channel| TxnPutter {
            kv: KvClient::new(channel),
            key_size: args.key_size,
            key_space_size: args.key_space_size,
            ops: args.txn_ops,
            value: value.clone(),
        })
        .collect();

    let progress = ctx.progress(args.total);
    let phase = Phase::start("txn-put");
    let outcomes = closed_loop(clients, args.total, limiter, progress.counter()).await?;
    let stats = phase.finish(outcomes, &ctx.report);
    progress.finish();
    Ok(Output { text: format!("{}\n", stats.render()), reports: vec![stats], ..Output::default() })
}
