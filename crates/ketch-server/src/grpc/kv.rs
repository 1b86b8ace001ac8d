//! `etcdserverpb.KV`: validate, delegate to the member, fill the header.

use ketch_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, InternalRaftRequest, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, kv_server::Kv,
};
use tonic::{Request, Response, Status};

use crate::apply;
use crate::error::ServerError;
use crate::member::{Applied, Member};

pub struct KvService {
    member: Member,
}

impl KvService {
    pub fn new(member: Member) -> KvService {
        KvService { member }
    }

    async fn propose(&self, req: InternalRaftRequest) -> Result<Applied, Status> {
        Ok(self.member.propose(req).await?)
    }
}

/// etcd's `isTxnSerializable`: a read-only txn whose every range is serializable.
fn is_txn_serializable(r: &TxnRequest) -> bool {
    use ketch_proto::etcdserverpb::request_op::Request as Op;
    r.success.iter().chain(&r.failure).all(|op| match &op.request {
        Some(Op::RequestRange(range)) => range.serializable,
        Some(Op::RequestTxn(t)) => is_txn_serializable(t),
        _ => true,
    })
}

fn unexpected(what: &str) -> Status {
    ServerError::Internal(format!("apply answered a {what} request with another kind of response")).into()
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let r = request.into_inner();
        apply::check_range(&r)?;
        if !r.serializable {
            self.member.linearizable_barrier().await?;
        }
        let mut resp = self.member.read(move |view| apply::range(view, &r)).await?;
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let r = request.into_inner();
        apply::check_put(&r)?;
        let Applied::Put(mut resp) = self.propose(InternalRaftRequest { put: Some(r), ..Default::default() }).await?
        else {
            return Err(unexpected("put"));
        };
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let r = request.into_inner();
        apply::check_delete(&r)?;
        let req = InternalRaftRequest { delete_range: Some(r), ..Default::default() };
        let Applied::DeleteRange(mut resp) = self.propose(req).await? else {
            return Err(unexpected("delete"));
        };
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let r = request.into_inner();
        apply::check_txn(&r, self.member.max_txn_ops())?;
        let mut resp = if apply::is_txn_read_only(&r) {
            if !is_txn_serializable(&r) {
                self.member.linearizable_barrier().await?;
            }
            self.member.read(move |view| apply::read_only_txn(view, &r)).await?
        } else {
            let Applied::Txn(resp) = self.propose(InternalRaftRequest { txn: Some(r), ..Default::default() }).await?
            else {
                return Err(unexpected("txn"));
            };
            resp
        };
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let r = request.into_inner();
        // Compaction runs to completion inside apply, so `physical` is always honoured.
        let req = InternalRaftRequest { compaction: Some(r), ..Default::default() };
        let Applied::Compaction(mut resp) = self.propose(req).await? else {
            return Err(unexpected("compaction"));
        };
        self.member.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }
}
