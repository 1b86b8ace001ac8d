//! `lease-keepalive`: every client grants itself a lease (TTL 100 s), then
//! the clients renew their leases `--total` times in all, each renewal a
//! `LeaseKeepAlive` stream of one request and one answer (clientv3's
//! `KeepAliveOnce`, which etcd's tool uses). The grants happen before the
//! clock starts.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use ketch_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, lease_client::LeaseClient};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{Ctx, Output, Request, closed_loop};
use crate::conn::status_text;
use crate::rate::Limiter;
use crate::report::Phase;

/// TTL of the benchmark's leases, seconds (etcd's tool grants 100).
const LEASE_TTL_SECS: i64 = 100;

/// Benchmark lease keepalive.
#[derive(Args, Debug)]
pub struct LeaseKeepaliveArgs {
    /// Total number of lease keepalive requests
    #[arg(long, default_value_t = 10000)]
    total: u64,
}

struct KeepAliver {
    lease: LeaseClient<Channel>,
    id: i64,
}

impl Request for KeepAliver {
    async fn issue(&mut self, _index: u64) -> Result<(), String> {
        let (sender, requests) = tokio::sync::mpsc::channel(1);
        sender.send(LeaseKeepAliveRequest { id: self.id }).await.map_err(|e| e.to_string())?;
        let mut answers =
            self.lease.lease_keep_alive(ReceiverStream::new(requests)).await.map_err(|s| status_text(&s))?.into_inner();
        let answer = answers.message().await.map_err(|s| status_text(&s))?;
        drop(sender);
        match answer {
            Some(answer) if answer.ttl > 0 => Ok(()),
            // clientv3's KeepAliveOnce: a TTL of 0 means the lease is gone.
            Some(_) => Err("etcdserver: requested lease not found".to_string()),
            None => Err("keep-alive stream closed without an answer".to_string()),
        }
    }
}

/// Runs `lease-keepalive`.
pub async fn run(ctx: &mut Ctx, args: LeaseKeepaliveArgs) -> Result<Output> {
    let channels = ctx.client_channels().await?;
    let mut grants = tokio::task::JoinSet::new();
    for channel in channels {
        grants.spawn(async move {
            let mut lease = LeaseClient::new(channel);
            let granted = lease
                .lease_grant(LeaseGrantRequest { ttl: LEASE_TTL_SECS, id: 0 })
                .await
                .map_err(|s| anyhow::anyhow!("lease grant failed: {}", status_text(&s)))?
                .into_inner();
            anyhow::Ok(KeepAliver { lease, id: granted.id })
        });
    }
    let mut clients = Vec::new();
    while let Some(joined) = grants.join_next().await {
        clients.push(joined.context("a lease grant task failed")??);
    }

    let progress = ctx.progress(args.total);
    let phase = Phase::start("lease-keepalive");
    let outcomes = closed_loop(clients, args.total, Arc::new(Limiter::unlimited()), progress.counter()).await?;
    let stats = phase.finish(outcomes, &ctx.report);
    progress.finish();
    Ok(Output { text: stats.render(), reports: vec![stats], ..Output::default() })
}
