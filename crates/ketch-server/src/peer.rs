//! Member-to-member traffic: the peer transport and the peer gRPC service.
//!
//! **Sending.** The raft loop hands each outgoing raft message to
//! [`Transport::send`], which never blocks: every remote member has two
//! *lanes*, bounded queues each drained by one task into one long-lived
//! client-streaming `Peer.Raft` call. Appends (bulk) go on one lane; heartbeats,
//! votes and everything else on the other, so a burst of appends never delays a
//! heartbeat. A task batches what is queued (up to [`BATCH_MESSAGES_MAX`] /
//! [`BATCH_BYTES_MAX`]) into one `RaftBatch`. A full queue drops the message
//! (raft retransmits) and reports the peer unreachable; a broken call is
//! reopened with backoff. Snapshots carry only metadata on the lane: the
//! receiving member fetches the store itself with `Peer.Snapshot`.
//!
//! **Receiving.** [`PeerService`] checks each call's cluster ID and sender
//! (etcd refuses a peer from another cluster or a removed member the same way),
//! parses messages with prost only ([`ketch_raft::wire`]), and queues them for
//! the raft loop (bounded: a full queue drops, raft retransmits).
//!
//! Lease keep-alives and time-to-live queries received by a follower are
//! answered by the leader's lessor through `Peer.LeaseRenew` /
//! `Peer.LeaseTimeToLive`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ketch_mvcc::{SnapshotRecord, SnapshotTable};
use ketch_proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use ketch_proto::ketchpeerpb::peer_client::PeerClient;
use ketch_proto::ketchpeerpb::peer_server::{Peer, PeerServer};
use ketch_proto::ketchpeerpb::{self as ppb, RaftBatch, RaftDone, SnapshotChunk, SnapshotFetch};
use ketch_raft::eraftpb::{Message, MessageType};
use ketch_raft::wire;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::error::ServerError;
use crate::member::Member;

/// Raft messages queued per lane before new ones are dropped.
const LANE_QUEUE_MAX: usize = 4096;
/// Messages per `RaftBatch`.
const BATCH_MESSAGES_MAX: usize = 512;
/// Bytes per `RaftBatch` (a single larger message still goes alone).
const BATCH_BYTES_MAX: usize = 4 << 20;
/// Batches in flight per call before the lane waits for the connection.
const BATCHES_IN_FLIGHT_MAX: usize = 16;
/// Largest message a member accepts from a peer (a raft append of many
/// maximum-size entries, or a snapshot chunk).
pub const PEER_MESSAGE_BYTES_MAX: usize = 256 << 20;
/// Snapshot chunk size.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Snapshot chunks buffered ahead of the network.
const SNAPSHOT_CHUNKS_AHEAD: usize = 4;
/// How long a member asked for a snapshot waits to have applied far enough.
const SNAPSHOT_APPLY_WAIT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// HTTP/2 pings on peer connections, to notice a peer that stopped answering.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 flow-control windows on peer connections: large, so a burst of
/// appends is never held back waiting for window updates.
const PEER_WINDOW_BYTES: u32 = 16 << 20;

const META_CLUSTER: &str = "ketch-cluster-id";
const META_FROM: &str = "ketch-from";

/// What the transport tells the raft loop about delivery.
#[derive(Debug, Clone, Copy)]
pub enum PeerEvent {
    Unreachable(u64),
    /// A snapshot message to this member was delivered (true) or lost (false).
    Snapshot(u64, bool),
}

pub type EventSink = Arc<dyn Fn(PeerEvent) + Send + Sync>;

/// Who is talking: stamped on every peer call.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
}

impl Identity {
    fn stamp<T>(&self, mut req: Request<T>) -> Request<T> {
        let md = req.metadata_mut();
        if let Ok(v) = format!("{:x}", self.cluster_id).parse() {
            md.insert(META_CLUSTER, v);
        }
        if let Ok(v) = format!("{:x}", self.member_id).parse() {
            md.insert(META_FROM, v);
        }
        req
    }
}

fn endpoint(url: &str) -> Result<Endpoint, ServerError> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| ServerError::Internal(format!("peer URL {url}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(PEER_WINDOW_BYTES)
        .initial_connection_window_size(PEER_WINDOW_BYTES))
}

fn client(channel: Channel) -> PeerClient<Channel> {
    PeerClient::new(channel)
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
}

async fn connect(urls: &[String]) -> Result<Channel, ServerError> {
    let mut last = ServerError::Internal("member has no peer URLs".into());
    for url in urls {
        match endpoint(url)?.connect().await {
            Ok(c) => return Ok(c),
            Err(e) => last = ServerError::Internal(format!("dial {url}: {e}")),
        }
    }
    Err(last)
}

/// The two outgoing queues to one member.
struct Lanes {
    append: mpsc::Sender<Message>,
    control: mpsc::Sender<Message>,
}

/// Outgoing raft traffic, owned by the raft loop.
pub struct Transport {
    lanes: HashMap<u64, Lanes>,
    events: EventSink,
}

impl Transport {
    /// Starts the lane tasks for every remote member (`peers`: ID and URLs).
    pub fn start(
        runtime: &tokio::runtime::Handle,
        me: Identity,
        peers: &[(u64, Vec<String>)],
        events: EventSink,
    ) -> Transport {
        let mut lanes = HashMap::new();
        for (id, urls) in peers {
            if *id == me.member_id {
                continue;
            }
            let lane = |name: &'static str| {
                let (tx, rx) = mpsc::channel(LANE_QUEUE_MAX);
                runtime.spawn(run_lane(me, *id, name, urls.clone(), rx, events.clone()));
                tx
            };
            let append = lane("append");
            let control = lane("control");
            lanes.insert(*id, Lanes { append, control });
        }
        Transport { lanes, events }
    }

    /// Queues messages for their members; never blocks.
    pub fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            let Some(lanes) = self.lanes.get(&to) else {
                tracing::warn!(to = %format!("{to:x}"), "raft message for an unknown member dropped");
                continue;
            };
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            let lane = if m.get_msg_type() == MessageType::MsgAppend { &lanes.append } else { &lanes.control };
            if lane.try_send(m).is_err() {
                (self.events)(PeerEvent::Unreachable(to));
                if is_snapshot {
                    (self.events)(PeerEvent::Snapshot(to, false));
                }
            }
        }
    }
}

/// A `RaftBatch` being filled.
#[derive(Default)]
struct Batch {
    messages: Vec<Vec<u8>>,
    bytes: usize,
    /// Members this batch carries a snapshot message to.
    snapshots: Vec<u64>,
}

impl Batch {
    fn add(&mut self, m: &Message) {
        if m.get_msg_type() == MessageType::MsgSnapshot {
            self.snapshots.push(m.to);
        }
        let b = wire::encode_message(m);
        self.bytes += b.len();
        self.messages.push(b);
    }
}

/// One lane: drains its queue into a streaming call to the member, reopening
/// the call (with backoff) whenever it breaks.
async fn run_lane(
    me: Identity,
    to: u64,
    lane: &'static str,
    urls: Vec<String>,
    mut rx: mpsc::Receiver<Message>,
    events: EventSink,
) {
    let report_lost = |m: &Message| {
        events(PeerEvent::Unreachable(to));
        if m.get_msg_type() == MessageType::MsgSnapshot {
            events(PeerEvent::Snapshot(to, false));
        }
    };
    let mut backoff = BACKOFF_MIN;
    let mut logged_down = false;
    while let Some(first) = rx.recv().await {
        let channel = match connect(&urls).await {
            Ok(c) => c,
            Err(e) => {
                if !logged_down {
                    tracing::warn!(peer = %format!("{to:x}"), lane, error = %e, "peer unreachable");
                    logged_down = true;
                }
                report_lost(&first);
                while let Ok(m) = rx.try_recv() {
                    report_lost(&m);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if logged_down {
            tracing::info!(peer = %format!("{to:x}"), lane, "peer reachable again");
            logged_down = false;
        }
        backoff = BACKOFF_MIN;
        let (batch_tx, batch_rx) = mpsc::channel::<RaftBatch>(BATCHES_IN_FLIGHT_MAX);
        let mut peer = client(channel);
        let request = me.stamp(Request::new(ReceiverStream::new(batch_rx)));
        let call = tokio::spawn(async move { peer.raft(request).await });
        let mut next = Some(first);
        while let Some(first) = next.take() {
            let mut batch = Batch::default();
            batch.add(&first);
            while batch.messages.len() < BATCH_MESSAGES_MAX && batch.bytes < BATCH_BYTES_MAX {
                match rx.try_recv() {
                    Ok(m) => batch.add(&m),
                    Err(_) => break,
                }
            }
            let Batch { messages, snapshots, .. } = batch;
            if batch_tx.send(RaftBatch { messages }).await.is_err() {
                events(PeerEvent::Unreachable(to));
                for id in snapshots {
                    events(PeerEvent::Snapshot(id, false));
                }
                break;
            }
            for id in snapshots {
                events(PeerEvent::Snapshot(id, true));
            }
            next = rx.recv().await;
        }
        drop(batch_tx);
        match call.await {
            Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                tracing::error!(peer = %format!("{to:x}"), error = %status.message(), "peer refused this member");
                tokio::time::sleep(BACKOFF_MAX).await;
            }
            Ok(Err(status)) => {
                tracing::debug!(peer = %format!("{to:x}"), lane, error = %status, "peer stream ended");
            }
            _ => {}
        }
    }
}

/// Unary calls to other members (snapshot fetches, lease forwarding), over
/// lazily opened channels.
pub struct PeerClients {
    me: Identity,
    channels: Mutex<HashMap<u64, Channel>>,
}

impl PeerClients {
    pub fn new(me: Identity) -> PeerClients {
        PeerClients { me, channels: Mutex::new(HashMap::new()) }
    }

    fn channel(&self, id: u64, urls: &[String]) -> Result<Channel, ServerError> {
        let mut channels = self.channels.lock().expect("peer channel lock poisoned");
        if let Some(c) = channels.get(&id) {
            return Ok(c.clone());
        }
        let url = urls.first().ok_or_else(|| ServerError::Internal(format!("member {id:x} has no peer URL")))?;
        let c = endpoint(url)?.connect_lazy();
        channels.insert(id, c.clone());
        Ok(c)
    }

    fn forget(&self, id: u64) {
        self.channels.lock().expect("peer channel lock poisoned").remove(&id);
    }

    pub async fn lease_renew(
        &self,
        id: u64,
        urls: &[String],
        req: LeaseKeepAliveRequest,
        timeout: Duration,
    ) -> Result<LeaseKeepAliveResponse, ServerError> {
        let mut c = client(self.channel(id, urls)?);
        let call = c.lease_renew(self.me.stamp(Request::new(req)));
        self.finish(id, tokio::time::timeout(timeout, call).await).map(Response::into_inner)
    }

    pub async fn lease_time_to_live(
        &self,
        id: u64,
        urls: &[String],
        req: LeaseTimeToLiveRequest,
        timeout: Duration,
    ) -> Result<LeaseTimeToLiveResponse, ServerError> {
        let mut c = client(self.channel(id, urls)?);
        let call = c.lease_time_to_live(self.me.stamp(Request::new(req)));
        self.finish(id, tokio::time::timeout(timeout, call).await).map(Response::into_inner)
    }

    fn finish<T>(
        &self,
        id: u64,
        outcome: Result<Result<Response<T>, Status>, tokio::time::error::Elapsed>,
    ) -> Result<Response<T>, ServerError> {
        match outcome {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(status)) => {
                if status.code() == tonic::Code::Unavailable && !status.message().starts_with("etcdserver:") {
                    self.forget(id);
                    return Err(ServerError::LeaderChanged);
                }
                Err(server_error(&status))
            }
            Err(_) => Err(ServerError::Timeout),
        }
    }

    /// Fetches the store of member `id` once it has applied `min_index`, feeding
    /// each chunk to `install` (which runs on the caller's thread).
    pub async fn fetch_snapshot(
        &self,
        id: u64,
        urls: &[String],
        min_index: u64,
    ) -> Result<Streaming<SnapshotChunk>, ServerError> {
        let mut c = client(self.channel(id, urls)?);
        let req = self.me.stamp(Request::new(SnapshotFetch { min_index }));
        match c.snapshot(req).await {
            Ok(r) => Ok(r.into_inner()),
            Err(status) => {
                self.forget(id);
                Err(ServerError::Internal(format!("snapshot from {id:x}: {}", status.message())))
            }
        }
    }
}

/// Turns an error from a peer back into the server error it was made from.
fn server_error(status: &Status) -> ServerError {
    let all = [
        ServerError::NoLeader,
        ServerError::NotLeader,
        ServerError::LeaderChanged,
        ServerError::Timeout,
        ServerError::Stopped,
        ServerError::LeaseNotFound,
        ServerError::TooManyRequests,
    ];
    all.into_iter()
        .find(|e| e.to_string() == status.message())
        .unwrap_or_else(|| ServerError::Internal(status.message().to_string()))
}

/// Converts snapshot records between the wire and the store.
pub fn records_from_wire(chunk: SnapshotChunk) -> Result<Vec<SnapshotRecord>, String> {
    chunk
        .records
        .into_iter()
        .map(|r| {
            let table =
                SnapshotTable::from_u32(r.table).ok_or_else(|| format!("unknown snapshot table {}", r.table))?;
            Ok(SnapshotRecord { table, key: r.key, value: r.value })
        })
        .collect()
}

fn records_to_wire(records: Vec<SnapshotRecord>) -> SnapshotChunk {
    SnapshotChunk {
        records: records
            .into_iter()
            .map(|r| ppb::SnapshotRecord { table: r.table as u32, key: r.key, value: r.value })
            .collect(),
    }
}

/// The peer-facing gRPC service.
pub struct PeerService {
    member: Member,
}

impl PeerService {
    /// Refuses calls from another cluster or from a member not in this one.
    fn check(&self, md: &MetadataMap) -> Result<u64, Status> {
        let hex = |key: &str| {
            md.get(key)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| Status::invalid_argument(format!("peer request without a valid {key} header")))
        };
        let cluster = hex(META_CLUSTER)?;
        let from = hex(META_FROM)?;
        if cluster != self.member.cluster_id() {
            tracing::warn!(
                local = %format!("{:x}", self.member.cluster_id()),
                remote = %format!("{cluster:x}"),
                from = %format!("{from:x}"),
                "request cluster ID mismatch"
            );
            return Err(Status::failed_precondition(format!(
                "request cluster ID mismatch: member {from:x} is in cluster {cluster:x}, this member is in cluster {:x}",
                self.member.cluster_id()
            )));
        }
        if !self.member.is_cluster_member(from) {
            return Err(Status::failed_precondition(format!(
                "member {from:x} is not a member of cluster {:x} (the member has been permanently removed from the cluster, or was never part of it)",
                self.member.cluster_id()
            )));
        }
        Ok(from)
    }
}

type ChunkStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, request: Request<Streaming<RaftBatch>>) -> Result<Response<RaftDone>, Status> {
        let from = self.check(request.metadata())?;
        let me = self.member.member_id();
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            for bytes in batch.messages {
                let m = wire::decode_message(&bytes).map_err(|e| Status::invalid_argument(e.to_string()))?;
                if m.to != me || m.from != from {
                    return Err(Status::invalid_argument(format!(
                        "raft message from {:x} to {:x} arrived at member {me:x} on a stream from {from:x}",
                        m.from, m.to
                    )));
                }
                self.member.step(m);
            }
        }
        Ok(Response::new(RaftDone {}))
    }

    type SnapshotStream = ChunkStream;

    async fn snapshot(&self, request: Request<SnapshotFetch>) -> Result<Response<ChunkStream>, Status> {
        let from = self.check(request.metadata())?;
        let min_index = request.into_inner().min_index;
        let deadline = tokio::time::Instant::now() + SNAPSHOT_APPLY_WAIT;
        while self.member.raft_status().applied_index < min_index {
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::unavailable(format!("this member has not applied index {min_index} yet")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::info!(to = %format!("{from:x}"), min_index, "sending a snapshot of the store");
        let (tx, rx) = mpsc::channel(SNAPSHOT_CHUNKS_AHEAD);
        let store = self.member.store().clone();
        tokio::task::spawn_blocking(move || {
            let err_tx = tx.clone();
            let sent = store.export(SNAPSHOT_CHUNK_BYTES, crate::storage::LOCAL_META, |records| {
                tx.blocking_send(Ok(records_to_wire(records))).is_ok()
            });
            if let Err(e) = sent {
                let _ = err_tx.blocking_send(Err(Status::internal(format!("reading the store: {e}"))));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_renew(
        &self,
        request: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        self.check(request.metadata())?;
        let id = request.into_inner().id;
        let ttl = crate::grpc::lease::renew_local(&self.member, id).await?;
        Ok(Response::new(LeaseKeepAliveResponse { header: None, id, ttl }))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.check(request.metadata())?;
        let resp = crate::grpc::lease::time_to_live_local(&self.member, request.into_inner())?;
        Ok(Response::new(resp))
    }
}

/// Serves the peer API on `listener` until `shutdown` resolves.
pub async fn serve_peers(
    member: Member,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let service = PeerServer::new(PeerService { member })
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
    tonic::transport::Server::builder()
        .initial_stream_window_size(PEER_WINDOW_BYTES)
        .initial_connection_window_size(PEER_WINDOW_BYTES)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(service)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
