//! The cluster's membership: who the members are, their peer URLs (raft
//! attributes, fixed at bootstrap) and their names and client URLs (published by
//! each member through raft once it runs, as etcd does).
//!
//! Stored as JSON under the backend meta key `members`, in the same
//! transaction as the entry that changed it, so it travels with snapshots.

use std::collections::BTreeMap;

use ketch_proto::etcdserverpb as pb;
use serde::{Deserialize, Serialize};

use crate::error::ServerError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    /// Empty until the member has published its attributes.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    members: BTreeMap<u64, MemberInfo>,
}

impl Membership {
    pub fn new(members: impl IntoIterator<Item = MemberInfo>) -> Membership {
        Membership { members: members.into_iter().map(|m| (m.id, m)).collect() }
    }

    pub fn decode(bytes: &[u8]) -> Result<Membership, ServerError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ServerError::Internal(format!("stored cluster membership does not parse: {e}")))
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("membership serializes")
    }

    pub fn get(&self, id: u64) -> Option<&MemberInfo> {
        self.members.get(&id)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.members.contains_key(&id)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members.values()
    }

    /// Applies a member's published name and client URLs; false if unknown.
    pub fn set_attributes(&mut self, id: u64, name: &str, client_urls: &[String]) -> bool {
        match self.members.get_mut(&id) {
            Some(m) => {
                m.name = name.to_string();
                m.client_urls = client_urls.to_vec();
                true
            }
            None => false,
        }
    }

    /// The members as etcd's `MemberList` shows them.
    pub fn to_pb(&self) -> Vec<pb::Member> {
        self.members
            .values()
            .map(|m| pb::Member {
                id: m.id,
                name: m.name.clone(),
                peer_ur_ls: m.peer_urls.clone(),
                client_ur_ls: m.client_urls.clone(),
                is_learner: m.is_learner,
            })
            .collect()
    }
}
