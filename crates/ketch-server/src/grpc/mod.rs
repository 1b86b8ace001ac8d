//! The client-facing gRPC services (thin edges over [`crate::member::Member`])
//! and the listener that also answers etcd's HTTP endpoints on the same port.

mod kv;
pub(crate) mod lease;
mod maintenance;
mod watch;

use std::future::Future;
use std::time::Duration;

use ketch_proto::etcdserverpb::cluster_server::ClusterServer;
use ketch_proto::etcdserverpb::kv_server::KvServer;
use ketch_proto::etcdserverpb::lease_server::LeaseServer;
use ketch_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use ketch_proto::etcdserverpb::watch_server::WatchServer;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

pub use maintenance::{ETCD_CLUSTER_VERSION, ETCD_VERSION};

use crate::member::Member;

/// gRPC allows this much on top of `--max-request-bytes` for framing (etcd's `grpcOverheadBytes`).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Concurrent HTTP/2 streams per client connection.
const STREAMS_PER_CONNECTION_MAX: u32 = 10_000;
/// Ping idle client connections this often, and drop them if a ping goes unanswered
/// for [`KEEPALIVE_TIMEOUT`] (etcd's `--grpc-keepalive-interval`/`-timeout`).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2 * 60 * 60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves the client API on `listener` until `shutdown` resolves.
pub async fn serve_clients(
    member: Member,
    listener: TcpListener,
    max_request_bytes: usize,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let decode_limit = max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES);
    // etcd's interceptors: a request carrying `hasleader: true` fails with
    // "no leader" on a member that knows no leader.
    let leader = member.clone();
    let check = move |req: tonic::Request<()>| {
        if watch::requires_leader(req.metadata()) && leader.raft_status().leader == 0 {
            return Err(tonic::Status::from(crate::error::ServerError::NoLeader));
        }
        Ok(req)
    };
    let routes = Routes::from(crate::http::router(member.clone()))
        .add_service(InterceptedService::new(
            KvServer::new(kv::KvService::new(member.clone())).max_decoding_message_size(decode_limit),
            check.clone(),
        ))
        .add_service(InterceptedService::new(
            MaintenanceServer::new(maintenance::MaintenanceService::new(member.clone()))
                .max_decoding_message_size(decode_limit),
            check.clone(),
        ))
        .add_service(InterceptedService::new(
            LeaseServer::new(lease::LeaseService::new(member.clone())).max_decoding_message_size(decode_limit),
            check.clone(),
        ))
        .add_service(InterceptedService::new(
            WatchServer::new(watch::WatchService::new(member.clone())).max_decoding_message_size(decode_limit),
            check.clone(),
        ))
        .add_service(InterceptedService::new(
            ClusterServer::new(maintenance::ClusterService::new(member)).max_decoding_message_size(decode_limit),
            check,
        ));
    tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_routes(routes)
        // With a listener of our own, tonic applies no socket options: set
        // TCP_NODELAY here, or Nagle's algorithm delays responses by ~40 ms.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
}
