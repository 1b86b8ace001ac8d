//! Simulated clients: each has at most one request outstanding, sent to a
//! random member through the member's own request path (the one the gRPC
//! layer uses), and records it in the history with its outcome.

use ketch_check::history::{
    Compare, CompareResult, CompareTarget, Failure, History, KeyValue, OpId, Outcome, Request, Response, ResponseBody,
};
use ketch_proto::etcdserverpb::{self as pb, InternalRaftRequest, compare, request_op, response_op};
use ketch_server::ServerError;
use ketch_server::member::{Applied, Member};
use rand::Rng;
use rand::rngs::StdRng;
use tokio::sync::oneshot;

/// A request sent and not yet answered.
pub struct Pending {
    pub op: OpId,
    pub member: usize,
    pub deadline: u64,
    pub wait: Wait,
}

pub enum Wait {
    Write(oneshot::Receiver<Result<Applied, ServerError>>),
    /// A linearizable read: the barrier, then the range on the member.
    Read(oneshot::Receiver<Result<(), ServerError>>, pb::RangeRequest),
}

pub struct Client {
    pub id: u64,
    /// Keys `k0..k{keys}` are used.
    keys: u64,
    timeout_ms: u64,
    pub pending: Option<Pending>,
    pub next_at: u64,
    writes: u64,
}

pub fn key(k: u64) -> Vec<u8> {
    format!("k{k}").into_bytes()
}

fn kv(kv: ketch_proto::mvccpb::KeyValue) -> KeyValue {
    KeyValue::new(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version).with_lease(kv.lease)
}

fn rev(h: &Option<pb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

pub fn range_response(r: pb::RangeResponse) -> Response {
    Response::range(rev(&r.header), r.kvs.into_iter().map(kv).collect())
}

fn applied_response(a: Applied) -> Option<Response> {
    Some(match a {
        Applied::Put(r) => Response::put(rev(&r.header)),
        Applied::DeleteRange(r) => Response::delete(rev(&r.header), r.deleted),
        Applied::Txn(r) => {
            let bodies = r
                .responses
                .into_iter()
                .filter_map(|op| match op.response? {
                    response_op::Response::ResponsePut(_) => Some(ResponseBody::Put(Default::default())),
                    response_op::Response::ResponseRange(rr) => {
                        let Response { body, .. } = range_response(rr);
                        Some(body)
                    }
                    response_op::Response::ResponseDeleteRange(d) => {
                        Some(ResponseBody::DeleteRange(ketch_check::history::DeleteResult {
                            deleted: d.deleted,
                            prev_kvs: Vec::new(),
                        }))
                    }
                    response_op::Response::ResponseTxn(_) => None,
                })
                .collect();
            Response::txn(rev(&r.header), r.succeeded, bodies)
        }
        _ => return None,
    })
}

/// Whether a failed write provably had no effect.
fn definite(e: &ServerError) -> bool {
    matches!(
        e,
        ServerError::NoLeader | ServerError::TooManyRequests | ServerError::RequestTooLarge | ServerError::NoSpace
    )
}

impl Client {
    pub fn new(id: u64, keys: u64, timeout_ms: u64) -> Client {
        Client { id, keys, timeout_ms, pending: None, next_at: 0, writes: 0 }
    }

    /// Picks a request and sends it to `members[target]` (None: that member is
    /// down, so the request fails at once, with no effect).
    pub fn send(&mut self, now: u64, rng: &mut StdRng, target: usize, member: Option<&Member>, history: &mut History) {
        let k = key(rng.random_range(0..self.keys));
        self.writes += 1;
        let value = format!("c{}-{}", self.id, self.writes).into_bytes();
        let choice = rng.random_range(0..10);
        let (request, raft) = match choice {
            0..=3 => (
                Request::put(k.clone(), value.clone()),
                Some(InternalRaftRequest {
                    put: Some(pb::PutRequest { key: k.clone(), value, ..Default::default() }),
                    ..Default::default()
                }),
            ),
            4 => (
                Request::delete(k.clone()),
                Some(InternalRaftRequest {
                    delete_range: Some(pb::DeleteRangeRequest { key: k.clone(), ..Default::default() }),
                    ..Default::default()
                }),
            ),
            5 => {
                // Put if the key's version is what a guess says, else read it.
                let version = rng.random_range(0..4);
                let request = Request::txn(
                    vec![Compare::new(k.clone(), CompareTarget::Version(version), CompareResult::Equal)],
                    vec![Request::put(k.clone(), value.clone())],
                    vec![Request::get(k.clone())],
                );
                let txn = pb::TxnRequest {
                    compare: vec![pb::Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Version as i32,
                        key: k.clone(),
                        target_union: Some(compare::TargetUnion::Version(version)),
                        ..Default::default()
                    }],
                    success: vec![pb::RequestOp {
                        request: Some(request_op::Request::RequestPut(pb::PutRequest {
                            key: k.clone(),
                            value,
                            ..Default::default()
                        })),
                    }],
                    failure: vec![pb::RequestOp {
                        request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                            key: k.clone(),
                            ..Default::default()
                        })),
                    }],
                };
                (request, Some(InternalRaftRequest { txn: Some(txn), ..Default::default() }))
            }
            _ => (Request::get(k.clone()), None),
        };
        let op = history.invoke(self.id, now, request);
        let Some(member) = member else {
            history.complete(op, now, Outcome::Err(Failure::Rejected("connection refused".into())));
            return;
        };
        let deadline = now + self.timeout_ms;
        let wait = match raft {
            Some(req) => member.submit(req).map(Wait::Write),
            None => {
                let range = pb::RangeRequest { key: k, ..Default::default() };
                match member.submit_read() {
                    Ok(Some(rx)) => Ok(Wait::Read(rx, range)),
                    Ok(None) => {
                        let outcome = read_now(member, &range);
                        history.complete(op, now, outcome);
                        return;
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match wait {
            Ok(wait) => self.pending = Some(Pending { op, member: target, deadline, wait }),
            // Refused before it was queued: no effect.
            Err(e) => history.complete(op, now, Outcome::Err(Failure::Rejected(e.to_string()))),
        }
    }

    /// Completes the pending request if its answer is in (or its time is up,
    /// or its member is gone). Returns whether it completed.
    pub fn poll(&mut self, now: u64, members: &[Option<Member>], history: &mut History) -> bool {
        let Some(p) = &mut self.pending else { return false };
        let member = members.get(p.member).and_then(Option::as_ref);
        let outcome = match &mut p.wait {
            Wait::Write(rx) => match rx.try_recv() {
                Ok(Ok(applied)) => match applied_response(applied) {
                    Some(r) => Outcome::Ok(r),
                    None => Outcome::Unknown,
                },
                Ok(Err(e)) if definite(&e) => Outcome::Err(Failure::Rejected(e.to_string())),
                Ok(Err(_)) => Outcome::Unknown,
                Err(oneshot::error::TryRecvError::Closed) => Outcome::Unknown,
                Err(oneshot::error::TryRecvError::Empty) if now >= p.deadline => Outcome::Unknown,
                Err(oneshot::error::TryRecvError::Empty) => return false,
            },
            Wait::Read(rx, range) => match rx.try_recv() {
                Ok(Ok(())) => match member {
                    Some(m) => read_now(m, range),
                    None => Outcome::Err(Failure::Rejected("member crashed".into())),
                },
                Ok(Err(e)) => Outcome::Err(Failure::Rejected(e.to_string())),
                Err(oneshot::error::TryRecvError::Closed) => Outcome::Err(Failure::Rejected("member crashed".into())),
                Err(oneshot::error::TryRecvError::Empty) if now >= p.deadline => {
                    Outcome::Err(Failure::Rejected("timed out".into()))
                }
                Err(oneshot::error::TryRecvError::Empty) => return false,
            },
        };
        history.complete(p.op, now, outcome);
        self.pending = None;
        true
    }
}

/// Serves a range from the member's store, as the gRPC layer does after the
/// barrier.
pub fn read_now(member: &Member, range: &pb::RangeRequest) -> Outcome {
    let result =
        member.store().read().map_err(ServerError::from).and_then(|view| ketch_server::apply::range(&view, range));
    match result {
        Ok(r) => Outcome::Ok(range_response(r)),
        Err(e) => Outcome::Err(Failure::Rejected(e.to_string())),
    }
}
