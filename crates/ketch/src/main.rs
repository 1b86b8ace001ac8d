//! `ketch`: start a member the way one starts etcd.

mod flags;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ketch_server::Member;
use tokio::net::TcpListener;
use tokio::sync::watch;

use flags::{Flags, ServerConfig};

/// How long shutdown waits for client requests, then for the raft loop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// How long shutdown waits for the raft loop (which may hand leadership over first).
const RAFT_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(12);

fn main() -> ExitCode {
    // Test builds only: `FAILPOINTS` arms the server's crash points (see
    // ARCHITECTURE.md, "Failpoints").
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let args = flags::normalize_go_flags(std::env::args());
    let flags = match Flags::try_parse_from(args) {
        Ok(f) => f,
        Err(e) => e.exit(),
    };
    if flags.version {
        println!("ketch Version: {}", env!("CARGO_PKG_VERSION"));
        println!("etcd API Version: {}", ketch_server::grpc::ETCD_VERSION);
        println!("OS/Arch: {}/{}", std::env::consts::OS, std::env::consts::ARCH);
        return ExitCode::SUCCESS;
    }
    let config = match flags.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ketch: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ketch: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(config));
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ketch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    let level = match level {
        "panic" | "fatal" => "error",
        l => l,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KETCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},raft={level}")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

async fn run(config: ServerConfig) -> anyhow::Result<()> {
    let ServerConfig { member: member_config, client_listen, peer_listen, .. } = config;
    let max_request_bytes = member_config.max_request_bytes;
    let multi_member = member_config.initial_cluster.len() > 1;

    // Bind before starting, so a port conflict fails the start cleanly.
    let mut listeners = Vec::new();
    for addr in &client_listen {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("listen tcp {addr}"))?;
        listeners.push((*addr, listener));
    }
    let mut peer_listeners = Vec::new();
    for addr in &peer_listen {
        match TcpListener::bind(addr).await {
            Ok(listener) => peer_listeners.push((*addr, listener)),
            // A lone member needs no peers; etcd binds anyway, so a clash is its error too.
            Err(e) if !multi_member => tracing::warn!(%addr, error = %e, "cannot listen for peers"),
            Err(e) => return Err(e).with_context(|| format!("listen tcp {addr}")),
        }
    }
    let (member, raft_thread) = Member::start(member_config)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    // Peer traffic keeps flowing until the raft loop has stopped (it may be
    // handing leadership over).
    let (peer_stop_tx, peer_stop_rx) = watch::channel(false);
    let mut peer_servers = tokio::task::JoinSet::new();
    for (addr, listener) in peer_listeners {
        tracing::info!(%addr, "serving peer traffic");
        let mut stop = peer_stop_rx.clone();
        let member = member.clone();
        peer_servers.spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = ketch_server::peer::serve_peers(member, listener, shutdown).await {
                tracing::error!(%addr, error = %e, "peer server failed");
            }
        });
    }
    // Like etcd, serve clients only once this member's attributes are published
    // through raft (which needs a leader): until then connections wait.
    tokio::select! {
        _ = member.wait_ready() => {}
        _ = shutdown_signal() => {
            member.stop();
            let _ = tokio::task::spawn_blocking(move || raft_thread.join()).await;
            return Ok(());
        }
    }
    let mut servers = tokio::task::JoinSet::new();
    for (addr, listener) in listeners {
        tracing::info!(%addr, "serving client traffic (gRPC and HTTP)");
        let mut stop = stop_rx.clone();
        let member = member.clone();
        servers.spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            ketch_server::grpc::serve_clients(member, listener, max_request_bytes, shutdown).await
        });
    }
    let raft = tokio::task::spawn_blocking(move || raft_thread.join());
    tokio::pin!(raft);
    let mut raft_done = false;
    let outcome = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("received a stop signal; shutting down");
            Ok(())
        }
        joined = &mut raft => {
            raft_done = true;
            match joined {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(e))) => Err(anyhow::anyhow!(e).context("the member stopped")),
                Ok(Err(_)) | Err(_) => Err(anyhow::anyhow!("the raft loop panicked")),
            }
        }
        Some(served) = servers.join_next() => {
            match served {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::anyhow!(e).context("client server failed")),
                Err(e) => Err(anyhow::anyhow!(e).context("client server task failed")),
            }
        }
    };
    // Hand leadership over while still serving, then stop taking requests,
    // give open ones a moment, then stop the raft loop (which makes the backend
    // durable) and wait for it.
    if !raft_done {
        member.step_down().await;
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while servers.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("client connections still open after {SHUTDOWN_GRACE:?}; closing them");
        servers.abort_all();
    }
    member.stop();
    if !raft_done && tokio::time::timeout(RAFT_STOP_GRACE, &mut raft).await.is_err() {
        tracing::warn!("the raft loop did not stop within {RAFT_STOP_GRACE:?}");
    }
    let _ = peer_stop_tx.send(true);
    peer_servers.abort_all();
    outcome
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
