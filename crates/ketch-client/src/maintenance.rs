//! The maintenance API: member status and hashes, alarms, defragmentation,
//! leader moves and snapshots.
//!
//! Calls about one member (`status_of`, `hash_kv`, `defragment`) go to the
//! endpoint named, once, without failover: another member's answer would be
//! a different answer. The others fail over like any request.

use std::sync::Arc;

use ketch_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest, HashKvResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
    alarm_request::AlarmAction, maintenance_client::MaintenanceClient,
};
use tonic::Streaming;

use crate::client::Inner;
use crate::endpoint::Address;
use crate::error::{Error, EtcdError, Result};
use crate::retry::{self, Cause, Idempotence};

pub use ketch_proto::etcdserverpb::AlarmType;

/// The maintenance API of a [`crate::Client`].
#[derive(Clone)]
pub struct Maintenance {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Maintenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maintenance").finish_non_exhaustive()
    }
}

impl Maintenance {
    pub(crate) fn new(inner: Arc<Inner>) -> Maintenance {
        Maintenance { inner }
    }

    /// Status of whichever member answers first (fails over).
    pub async fn status(&self) -> Result<StatusResponse> {
        self.inner
            .unary("Maintenance.Status", Idempotence::Immutable, StatusRequest {}, |ch, r| async move {
                MaintenanceClient::new(ch).status(r).await
            })
            .await
    }

    /// Status of the member at `endpoint` (`host:port` or `http://host:port`).
    pub async fn status_of(&self, endpoint: &str) -> Result<StatusResponse> {
        self.inner
            .unary_on(endpoint, "Maintenance.Status", Idempotence::Immutable, StatusRequest {}, |ch, r| async move {
                MaintenanceClient::new(ch).status(r).await
            })
            .await
    }

    /// The hash of the member at `endpoint`'s key-value history up to
    /// `revision` (0: the latest).
    pub async fn hash_kv(&self, endpoint: &str, revision: i64) -> Result<HashKvResponse> {
        let request = HashKvRequest { revision };
        self.inner
            .unary_on(endpoint, "Maintenance.HashKV", Idempotence::Immutable, request, |ch, r| async move {
                MaintenanceClient::new(ch).hash_kv(r).await
            })
            .await
    }

    /// The active alarms of every member.
    pub async fn alarm_list(&self) -> Result<AlarmResponse> {
        let request = AlarmRequest { action: AlarmAction::Get as i32, member_id: 0, alarm: AlarmType::None as i32 };
        self.alarm(request).await
    }

    /// Clears `alarm` on member `member_id` (0: every member). At most once.
    pub async fn alarm_disarm(&self, member_id: u64, alarm: AlarmType) -> Result<AlarmResponse> {
        let request = AlarmRequest { action: AlarmAction::Deactivate as i32, member_id, alarm: alarm as i32 };
        self.alarm(request).await
    }

    /// Runs an `AlarmRequest` as given: listing fails over, raising and
    /// clearing are at most once.
    pub async fn alarm(&self, request: AlarmRequest) -> Result<AlarmResponse> {
        let idempotence =
            if request.action == AlarmAction::Get as i32 { Idempotence::Immutable } else { Idempotence::Mutable };
        self.inner
            .unary("Maintenance.Alarm", idempotence, request, |ch, r| async move {
                MaintenanceClient::new(ch).alarm(r).await
            })
            .await
    }

    /// Defragments the storage of the member at `endpoint`.
    pub async fn defragment(&self, endpoint: &str) -> Result<DefragmentResponse> {
        let request = DefragmentRequest {};
        self.inner
            .unary_on(endpoint, "Maintenance.Defragment", Idempotence::Mutable, request, |ch, r| async move {
                MaintenanceClient::new(ch).defragment(r).await
            })
            .await
    }

    /// Transfers leadership to member `target_id`. The request must reach
    /// the leader: the endpoints are asked for their status and the one
    /// that leads gets it.
    pub async fn move_leader(&self, target_id: u64) -> Result<MoveLeaderResponse> {
        let leader = self.leader_endpoint().await?;
        let request = MoveLeaderRequest { target_id };
        self.inner
            .unary_on(
                &leader.to_string(),
                "Maintenance.MoveLeader",
                Idempotence::Mutable,
                request,
                |ch, r| async move { MaintenanceClient::new(ch).move_leader(r).await },
            )
            .await
    }

    /// The endpoint whose member says it leads.
    async fn leader_endpoint(&self) -> Result<Address> {
        let endpoints = self.inner.addresses();
        let mut last = String::from("no endpoint answered");
        for address in &endpoints {
            match self.status_of(&address.to_string()).await {
                Ok(s) if s.leader != 0 && s.header.as_ref().is_some_and(|h| h.member_id == s.leader) => {
                    return Ok(address.clone());
                }
                Ok(s) => last = format!("{address}: leader is {:x}", s.leader),
                Err(e) => last = format!("{address}: {e}"),
            }
        }
        Err(Error::Unavailable {
            request: "Maintenance.MoveLeader",
            attempts: u32::try_from(endpoints.len()).unwrap_or(u32::MAX),
            last: format!("no endpoint is the leader; {last}"),
        })
    }

    /// Streams a snapshot of one member's backend (whichever answers). The
    /// stream is not resumed on another member: a failure mid-way is
    /// returned by [`Snapshot::message`].
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let (incoming, address) = self
            .inner
            .open_stream("Maintenance.Snapshot", SnapshotRequest {}, |ch, r| async move {
                MaintenanceClient::new(ch).snapshot(r).await
            })
            .await?;
        Ok(Snapshot { incoming, address })
    }
}

/// A snapshot being streamed from one member.
#[derive(Debug)]
pub struct Snapshot {
    incoming: Streaming<SnapshotResponse>,
    address: Address,
}

impl Snapshot {
    /// The endpoint the snapshot comes from, `http://host:port`.
    pub fn endpoint(&self) -> String {
        self.address.url()
    }

    /// The next chunk (`blob`, with `remaining_bytes`); `Ok(None)` at the
    /// end.
    pub async fn message(&mut self) -> Result<Option<SnapshotResponse>> {
        match self.incoming.message().await {
            Ok(chunk) => Ok(chunk),
            Err(status) => {
                let failure = retry::classify(&status);
                if failure == retry::Failure::Definite {
                    return Err(Error::Server(EtcdError::from(&status)));
                }
                Err(retry::final_error(
                    "Maintenance.Snapshot",
                    Idempotence::Immutable,
                    failure,
                    Cause::of(&status),
                    &self.address.to_string(),
                    1,
                ))
            }
        }
    }

    /// Reads the rest of the snapshot into memory.
    pub async fn read_to_end(mut self) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        while let Some(chunk) = self.message().await? {
            data.extend_from_slice(&chunk.blob);
        }
        Ok(data)
    }
}
