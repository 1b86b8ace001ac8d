//! The cluster membership API: pass-through calls of etcd's `Cluster`
//! service. Listing fails over like a read; changes are at most once.

use std::sync::Arc;

use ketch_proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
    cluster_client::ClusterClient,
};

use crate::client::Inner;
use crate::error::Result;
use crate::retry::Idempotence;

/// The membership API of a [`crate::Client`].
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

impl Cluster {
    pub(crate) fn new(inner: Arc<Inner>) -> Cluster {
        Cluster { inner }
    }

    /// Every member (ID, name, peer and client URLs, learner flag).
    pub async fn member_list(&self) -> Result<MemberListResponse> {
        let request = MemberListRequest { linearizable: false };
        self.inner
            .unary("Cluster.MemberList", Idempotence::Immutable, request, |ch, r| async move {
                ClusterClient::new(ch).member_list(r).await
            })
            .await
    }

    /// Adds a member with these peer URLs, as a learner if `is_learner`.
    pub async fn member_add(&self, peer_urls: Vec<String>, is_learner: bool) -> Result<MemberAddResponse> {
        let request = MemberAddRequest { peer_ur_ls: peer_urls, is_learner };
        self.inner
            .unary("Cluster.MemberAdd", Idempotence::Mutable, request, |ch, r| async move {
                ClusterClient::new(ch).member_add(r).await
            })
            .await
    }

    /// Removes member `id`.
    pub async fn member_remove(&self, id: u64) -> Result<MemberRemoveResponse> {
        self.inner
            .unary("Cluster.MemberRemove", Idempotence::Mutable, MemberRemoveRequest { id }, |ch, r| async move {
                ClusterClient::new(ch).member_remove(r).await
            })
            .await
    }

    /// Replaces member `id`'s peer URLs.
    pub async fn member_update(&self, id: u64, peer_urls: Vec<String>) -> Result<MemberUpdateResponse> {
        let request = MemberUpdateRequest { id, peer_ur_ls: peer_urls };
        self.inner
            .unary("Cluster.MemberUpdate", Idempotence::Mutable, request, |ch, r| async move {
                ClusterClient::new(ch).member_update(r).await
            })
            .await
    }

    /// Promotes learner `id` to a voting member.
    pub async fn member_promote(&self, id: u64) -> Result<MemberPromoteResponse> {
        self.inner
            .unary("Cluster.MemberPromote", Idempotence::Mutable, MemberPromoteRequest { id }, |ch, r| async move {
                ClusterClient::new(ch).member_promote(r).await
            })
            .await
    }
}
