//! The data directory: where each file lives, first-time bootstrap, and the
//! refusal of data directories Ketch did not write.
//!
//! ```text
//! <data-dir>/
//!   member/
//!     wal/{seq:016x}-{index:016x}.wal   the raft log (ketch-wal format)
//!     kv.redb                           MVCC backend + meta (ketch-mvcc format)
//! ```
//!
//! Server-owned keys in the backend's `meta` table (all little-endian u64):
//! `consistent_index` (raft index of the last applied entry), `consistent_term`,
//! `member_id`, `cluster_id`, and `members` (the cluster's membership, JSON). They
//! are written in the same redb transaction as the data they describe. All but
//! `member_id` are replicated state: a snapshot sent to another member carries
//! them.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::ServerError;

pub const META_CONSISTENT_INDEX: &str = "consistent_index";
pub const META_CONSISTENT_TERM: &str = "consistent_term";
pub const META_MEMBER_ID: &str = "member_id";
pub const META_CLUSTER_ID: &str = "cluster_id";
pub const META_MEMBERS: &str = "members";
/// `"1"` from just before a snapshot install replaces the store until the
/// WAL's marker for it is durable: a restart that finds the store past the end
/// of the WAL with this set finishes the install (writes the marker) instead
/// of refusing to start.
pub const META_SNAPSHOT_INSTALLING: &str = "snapshot_installing";
/// Meta keys that belong to this member, not to the replicated state (kept
/// across a snapshot install, never sent in one).
pub const LOCAL_META: &[&str] = &[META_MEMBER_ID, META_SNAPSHOT_INSTALLING];

pub struct Layout {
    pub data_dir: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Layout {
        Layout { data_dir: data_dir.to_path_buf() }
    }
    pub fn member_dir(&self) -> PathBuf {
        self.data_dir.join("member")
    }
    pub fn wal_dir(&self) -> PathBuf {
        self.member_dir().join("wal")
    }
    pub fn backend_path(&self) -> PathBuf {
        self.member_dir().join("kv.redb")
    }

    /// Refuses a data directory written by etcd (or anything else that is not
    /// Ketch's), before any file in it is touched.
    pub fn check_not_foreign(&self) -> Result<(), ServerError> {
        let etcd_db = self.member_dir().join("snap").join("db");
        if etcd_db.exists() {
            return Err(ServerError::Internal(format!(
                "data dir {} was written by etcd (found {}); Ketch has its own on-disk format and cannot read it. \
                 Move the data with `etcdctl snapshot save` and a client-side copy, or choose another --data-dir",
                self.data_dir.display(),
                etcd_db.display()
            )));
        }
        let wal = self.wal_dir();
        if let Ok(entries) = fs::read_dir(&wal) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "wal") {
                    let mut magic = [0u8; 8];
                    let ours = fs::File::open(&path)
                        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                        .map(|_| &magic == b"KETCHWAL")
                        .unwrap_or(true);
                    if !ours {
                        return Err(ServerError::Internal(format!(
                            "data dir {}: {} is not a Ketch WAL segment (an etcd data dir?); refusing to start",
                            self.data_dir.display(),
                            path.display()
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

pub fn u64_meta(bytes: Option<Vec<u8>>) -> Option<u64> {
    bytes.and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
}
