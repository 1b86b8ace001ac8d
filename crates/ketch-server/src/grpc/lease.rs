//! `etcdserverpb.Lease`: grants and revokes go through raft like any write;
//! keep-alives and time-to-live queries are answered by the leader's lessor.

use std::pin::Pin;
use std::time::Duration;

use ketch_lease::LeaseError;
use ketch_proto::etcdserverpb::{
    self as pb, InternalRaftRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::watch::requires_leader;
use crate::error::ServerError;
use crate::member::{Applied, Member};

/// Keep-alive responses queued per stream before the stream waits for the client.
const KEEPALIVE_RESPONSES_QUEUED_MAX: usize = 64;

pub struct LeaseService {
    member: Member,
}

impl LeaseService {
    pub fn new(member: Member) -> LeaseService {
        LeaseService { member }
    }
}

fn unexpected() -> Status {
    ServerError::Internal("apply answered a lease request with another kind of response".into()).into()
}

/// How often a keep-alive for an expired lease checks whether its revoke landed.
const EXPIRED_LEASE_POLL: Duration = Duration::from_millis(10);

/// Renews a lease for a keep-alive on the leader (through the peer link when
/// another member leads); 0 when the lease is gone (etcd's answer).
async fn renew(member: &Member, id: i64) -> Result<i64, ServerError> {
    if !member.with_lessor(|lessor, _| lessor.is_primary())
        && let Some(ttl) = member.forward_lease_renew(id).await?
    {
        return Ok(ttl);
    }
    renew_local(member, id).await
}

/// Renews a lease in this member's lessor (it must be the leader's).
pub(crate) async fn renew_local(member: &Member, id: i64) -> Result<i64, ServerError> {
    let renewed = member.with_lessor(|lessor, now| lessor.renew(id, now));
    if let Err(LeaseError::Expired) = renewed {
        // etcd's rule: an expired lease is never renewed, and the answer waits
        // until its revoke is applied, so the client never sees its keys after
        // being told it is gone.
        return wait_for_revoke(member, id).await;
    }
    match renewed {
        Ok(renewed) => {
            if renewed.clear_checkpoint {
                // The checkpointed remaining TTL no longer holds on any member.
                let cp = pb::LeaseCheckpoint { id, remaining_ttl: 0 };
                let req = pb::LeaseCheckpointRequest { checkpoints: vec![cp] };
                member.propose(InternalRaftRequest { lease_checkpoint: Some(req), ..Default::default() }).await?;
            }
            Ok(renewed.ttl)
        }
        Err(LeaseError::NotFound | LeaseError::Expired) => Ok(0),
        Err(LeaseError::NotPrimary) => Err(ServerError::NotLeader),
        Err(e) => Err(ServerError::Internal(e.to_string())),
    }
}

async fn wait_for_revoke(member: &Member, id: i64) -> Result<i64, ServerError> {
    let deadline = tokio::time::Instant::now() + member.request_timeout();
    loop {
        let (exists, primary) = member.with_lessor(|lessor, _| (lessor.exists(id), lessor.is_primary()));
        if !exists {
            return Ok(0);
        }
        if !primary {
            return Err(ServerError::NotLeader);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ServerError::Timeout);
        }
        tokio::time::sleep(EXPIRED_LEASE_POLL).await;
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let mut r = request.into_inner();
        if r.id == 0 {
            r.id = self.member.next_lease_id();
        }
        let Applied::LeaseGrant(mut resp) =
            self.member.propose(InternalRaftRequest { lease_grant: Some(r), ..Default::default() }).await?
        else {
            return Err(unexpected());
        };
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let r = request.into_inner();
        let Applied::LeaseRevoke(mut resp) =
            self.member.propose(InternalRaftRequest { lease_revoke: Some(r), ..Default::default() }).await?
        else {
            return Err(unexpected());
        };
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let require_leader = requires_leader(request.metadata());
        if require_leader && self.member.raft_status().leader == 0 {
            return Err(ServerError::NoLeader.into());
        }
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_RESPONSES_QUEUED_MAX);
        let member = self.member.clone();
        tokio::spawn(async move {
            let every = member.election_interval();
            let mut leader_check = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                let req = tokio::select! {
                    msg = incoming.message() => match msg {
                        Ok(Some(req)) => req,
                        _ => return,
                    },
                    _ = leader_check.tick(), if require_leader => {
                        // etcd's monitorLeader: give up on a leaderless member.
                        if member.leader_lost_too_long() {
                            let _ = tx.send(Err(ServerError::NoLeader.into())).await;
                            return;
                        }
                        continue;
                    }
                };
                let reply = match renew(&member, req.id).await {
                    Ok(ttl) => {
                        let mut resp = LeaseKeepAliveResponse { header: None, id: req.id, ttl };
                        member.fill_header(&mut resp.header);
                        Ok(resp)
                    }
                    Err(e) => Err(Status::from(e)),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let r = request.into_inner();
        let mut resp = match self.member.with_lessor(|lessor, _| lessor.is_primary()) {
            true => time_to_live_local(&self.member, r)?,
            false => match self.member.forward_lease_time_to_live(r).await? {
                Some(resp) => resp,
                None => time_to_live_local(&self.member, r)?,
            },
        };
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self.member.with_lessor(|lessor, _| lessor.leases_by_expiry());
        let leases = leases.into_iter().map(|id| pb::LeaseStatus { id }).collect();
        let mut resp = LeaseLeasesResponse { header: None, leases };
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }
}

/// A lease's time-to-live from this member's lessor (it must be the leader's).
pub(crate) fn time_to_live_local(
    member: &Member,
    r: LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse, ServerError> {
    let found = member.with_lessor(|lessor, now| lessor.time_to_live(r.id, now));
    match found {
        Ok(t) => Ok(LeaseTimeToLiveResponse {
            header: None,
            id: r.id,
            ttl: t.remaining_secs,
            granted_ttl: t.granted_secs,
            keys: if r.keys { t.keys } else { Vec::new() },
        }),
        // etcd answers an unknown lease with TTL -1 rather than an error.
        Err(LeaseError::NotFound | LeaseError::Expired) => {
            Ok(LeaseTimeToLiveResponse { header: None, id: r.id, ttl: -1, granted_ttl: 0, keys: Vec::new() })
        }
        Err(LeaseError::NotPrimary) => Err(ServerError::NotLeader),
        Err(e) => Err(ServerError::Internal(e.to_string())),
    }
}
