//! `etcdserverpb.Maintenance` and `etcdserverpb.Cluster`: the status and
//! membership views of this member.

use std::pin::Pin;

use ketch_proto::etcdserverpb::{
    self as pb, AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest, HashKvResponse,
    HashRequest, HashResponse, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse, cluster_server::Cluster, maintenance_server::Maintenance,
};
use tonic::{Request, Response, Status};

use crate::member::Member;

/// The etcd release whose API and behaviour Ketch matches; reported as the
/// server version so clients that gate features on it behave as with etcd.
pub const ETCD_VERSION: &str = "3.4.23";
/// The cluster version etcd 3.4 members agree on.
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";

pub struct MaintenanceService {
    member: Member,
}

impl MaintenanceService {
    pub fn new(member: Member) -> MaintenanceService {
        MaintenanceService { member }
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("ketch: {what} is not supported yet"))
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let r = request.into_inner();
        if r.action != pb::alarm_request::AlarmAction::Get as i32 {
            return Err(not_yet("raising or clearing alarms"));
        }
        // No alarm can be raised yet, so the list is empty.
        let mut resp = AlarmResponse { header: None, alarms: Vec::new() };
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let raft = self.member.raft_status();
        let db_size = i64::try_from(self.member.store().file_size()).unwrap_or(i64::MAX);
        let mut resp = StatusResponse {
            header: None,
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: raft.leader,
            raft_index: raft.commit_index,
            raft_term: raft.term,
            raft_applied_index: raft.applied_index,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: false,
        };
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn defragment(&self, _: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        Err(not_yet("defragment"))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(not_yet("hash"))
    }

    /// etcd's `HashKV`, byte-compatible: the same history gives the same hash on
    /// Ketch and etcd, so `endpoint hashkv` can compare members of either kind.
    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let rev = request.into_inner().revision;
        let (hash, current, compact) = self.member.read(move |view| Ok(view.hash_kv(rev)?)).await?;
        let header = Some(pb::ResponseHeader { revision: current, ..Default::default() });
        let mut resp = HashKvResponse { header, hash, compact_revision: compact };
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    type SnapshotStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

    async fn snapshot(&self, _: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(not_yet("snapshot"))
    }

    /// etcd's `MoveLeader`: only the leader takes it; answers once the target leads.
    async fn move_leader(&self, request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        self.member.move_leader(target).await?;
        let mut resp = MoveLeaderResponse { header: None };
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }
}

pub struct ClusterService {
    member: Member,
}

impl ClusterService {
    pub fn new(member: Member) -> ClusterService {
        ClusterService { member }
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        // etcd's cluster responses carry no revision.
        Some(pb::ResponseHeader {
            cluster_id: self.member.cluster_id(),
            member_id: self.member.member_id(),
            revision: 0,
            raft_term: self.member.raft_status().term,
        })
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, _: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        Err(not_yet("member add"))
    }

    async fn member_remove(&self, _: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(not_yet("member remove"))
    }

    async fn member_update(&self, _: Request<MemberUpdateRequest>) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(not_yet("member update"))
    }

    async fn member_list(&self, _: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        let members = self.member.membership().to_pb();
        Ok(Response::new(MemberListResponse { header: self.header(), members }))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(not_yet("member promote"))
    }
}
