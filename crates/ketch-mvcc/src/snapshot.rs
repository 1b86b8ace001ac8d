//! Whole-store snapshots: how a member that fell too far behind gets a copy of
//! another member's store.
//!
//! [`Store::export`] walks one read transaction (a consistent point in time)
//! and hands out the backend's records in bounded chunks; [`Store::install`]
//! replaces the whole backend with such records in one durable write
//! transaction and rebuilds the key index, so readers see either the old store
//! or the new one, never a mix. The records are the backend's own bytes; the
//! caller transports them and names the meta keys that belong to the member
//! rather than to the replicated state (they are neither sent nor replaced).

use std::sync::atomic::Ordering;

use redb::{Durability, ReadableDatabase, ReadableTable};

use crate::store::{KV, LEASES, META, META_FORMAT, MvccError, Store, load_state};

/// Which backend table a [`SnapshotRecord`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotTable {
    /// Key `main | sub` revision, 16 bytes big-endian.
    Kv = 1,
    /// Key: the meta name (UTF-8).
    Meta = 2,
    /// Key: the lease ID, 8 bytes big-endian.
    Lease = 3,
}

impl SnapshotTable {
    pub fn from_u32(v: u32) -> Option<SnapshotTable> {
        match v {
            1 => Some(SnapshotTable::Kv),
            2 => Some(SnapshotTable::Meta),
            3 => Some(SnapshotTable::Lease),
            _ => None,
        }
    }
}

/// One backend record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub table: SnapshotTable,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

fn bad(why: impl Into<String>) -> MvccError {
    MvccError::Snapshot(why.into())
}

impl Store {
    /// Streams every record of the store as of now, in chunks of about
    /// `chunk_bytes`, to `sink`; stops early (without error) when `sink` returns
    /// false. Meta keys in `local_meta` are left out.
    pub fn export(
        &self,
        chunk_bytes: usize,
        local_meta: &[&str],
        mut sink: impl FnMut(Vec<SnapshotRecord>) -> bool,
    ) -> Result<(), MvccError> {
        let txn = self.db.begin_read()?;
        let mut chunk = Vec::new();
        let mut size = 0usize;
        let mut push = |rec: SnapshotRecord, chunk: &mut Vec<SnapshotRecord>| -> bool {
            size += rec.key.len() + rec.value.len() + 8;
            chunk.push(rec);
            if size >= chunk_bytes {
                size = 0;
                return sink(std::mem::take(chunk));
            }
            true
        };
        {
            let meta = txn.open_table(META)?;
            for item in meta.iter()? {
                let (k, v) = item?;
                if local_meta.contains(&k.value()) {
                    continue;
                }
                let rec = SnapshotRecord {
                    table: SnapshotTable::Meta,
                    key: k.value().as_bytes().to_vec(),
                    value: v.value().to_vec(),
                };
                if !push(rec, &mut chunk) {
                    return Ok(());
                }
            }
        }
        {
            let leases = txn.open_table(LEASES)?;
            for item in leases.iter()? {
                let (k, v) = item?;
                let rec = SnapshotRecord {
                    table: SnapshotTable::Lease,
                    key: k.value().to_be_bytes().to_vec(),
                    value: v.value().to_vec(),
                };
                if !push(rec, &mut chunk) {
                    return Ok(());
                }
            }
        }
        {
            let kv = txn.open_table(KV)?;
            for item in kv.iter()? {
                let (k, v) = item?;
                let (main, sub) = k.value();
                let mut key = main.to_be_bytes().to_vec();
                key.extend_from_slice(&sub.to_be_bytes());
                let rec = SnapshotRecord { table: SnapshotTable::Kv, key, value: v.value().to_vec() };
                if !push(rec, &mut chunk) {
                    return Ok(());
                }
            }
        }
        if !chunk.is_empty() {
            sink(chunk);
        }
        Ok(())
    }

    /// Replaces the whole store with the records `source` yields (`Ok(None)` at
    /// the end), keeping the meta keys in `local_meta`. One durable write
    /// transaction: on any error nothing changes. Readers wait for the swap.
    pub fn install(
        &self,
        local_meta: &[&str],
        mut source: impl FnMut() -> Result<Option<Vec<SnapshotRecord>>, MvccError>,
    ) -> Result<(), MvccError> {
        let mut state = self.state.write().expect("mvcc state lock poisoned");
        let mut txn = self.db.begin_write()?;
        {
            let mut kept = Vec::new();
            {
                let meta = txn.open_table(META)?;
                for key in local_meta {
                    if let Some(v) = meta.get(*key)? {
                        kept.push((key.to_string(), v.value().to_vec()));
                    }
                }
            }
            txn.delete_table(KV)?;
            txn.delete_table(META)?;
            txn.delete_table(LEASES)?;
            let mut kv = txn.open_table(KV)?;
            let mut meta = txn.open_table(META)?;
            let mut leases = txn.open_table(LEASES)?;
            let mut format_seen = false;
            while let Some(chunk) = source()? {
                for rec in chunk {
                    match rec.table {
                        SnapshotTable::Kv => {
                            let key: [u8; 16] =
                                rec.key.as_slice().try_into().map_err(|_| bad("kv record key is not 16 bytes"))?;
                            let main = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
                            let sub = u64::from_be_bytes(key[8..].try_into().expect("8 bytes"));
                            crate::codec::decode(&rec.value)?;
                            kv.insert((main, sub), rec.value.as_slice())?;
                        }
                        SnapshotTable::Meta => {
                            let key = std::str::from_utf8(&rec.key).map_err(|_| bad("meta key is not UTF-8"))?;
                            if local_meta.contains(&key) {
                                continue;
                            }
                            if key == META_FORMAT {
                                if rec.value != crate::store::FORMAT {
                                    return Err(bad("snapshot of another store format"));
                                }
                                format_seen = true;
                            }
                            meta.insert(key, rec.value.as_slice())?;
                        }
                        SnapshotTable::Lease => {
                            let key: [u8; 8] =
                                rec.key.as_slice().try_into().map_err(|_| bad("lease record key is not 8 bytes"))?;
                            leases.insert(i64::from_be_bytes(key), rec.value.as_slice())?;
                        }
                    }
                }
            }
            if !format_seen {
                return Err(bad("snapshot carries no format marker"));
            }
            for (k, v) in &kept {
                meta.insert(k.as_str(), v.as_slice())?;
            }
        }
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        *state = load_state(&self.db)?;
        self.committed_rev.store(state.current_rev, Ordering::SeqCst);
        Ok(())
    }
}
