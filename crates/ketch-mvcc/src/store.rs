//! The store: backend tables, the shared key index, read and write transactions.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::codec;
use crate::key_index::TreeIndex;

/// Revision-keyed key-values: `(main, sub)` -> [`codec`] record.
pub(crate) const KV: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("kv");
/// Small named values: the store's own and the caller's (see [`Batch::commit`]).
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Lease records, by lease ID; their format is the lessor's (the store only keeps them
/// in the same transactions as the keys attached to them).
pub(crate) const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("lease");

pub(crate) const META_FORMAT: &str = "format";
const META_CURRENT_REV: &str = "current_rev";
const META_COMPACT_REV: &str = "compact_rev";
/// Written once at creation; a file without it (or with another value) is refused.
pub(crate) const FORMAT: &[u8] = b"ketch-mvcc/1";

/// A point in the store's history. `main` is the revision clients see; `sub`
/// orders the writes of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    fn table_key(self) -> (u64, u64) {
        // Revisions are never negative: main starts at 1, sub at 0.
        (self.main.unsigned_abs(), self.sub.unsigned_abs())
    }
}

/// A key's value at some revision, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// The upper end of a key range, decoded from etcd's `range_end` convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeEnd {
    /// `range_end` empty: the single key.
    Single,
    /// `range_end` = `"\0"`: every key `>= key`.
    Unbounded,
    /// Any other `range_end`: keys in `[key, end)`.
    Before(Vec<u8>),
}

impl RangeEnd {
    pub fn from_etcd(range_end: &[u8]) -> RangeEnd {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end.to_vec()),
        }
    }
}

/// One change to one key, as a watcher sees it (etcd's `mvccpb.Event`). A
/// delete's key-value carries only the key and the revision of the delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RangeOptions {
    /// Most key-values to return; 0 = all.
    pub limit: usize,
    /// Revision to read at; `<= 0` = the current one.
    pub rev: i64,
    /// Only count the keys.
    pub count_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys in the range at the read revision, regardless of `limit`.
    pub count: i64,
    /// The store's revision the read was served at (not the requested one).
    pub rev: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionResult {
    /// Revisions removed from the backend.
    pub removed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    #[error("mvcc backend: {0}")]
    Storage(#[from] redb::Error),
    #[error("mvcc backend is corrupt: {0}")]
    Corrupt(String),
    #[error("store snapshot: {0}")]
    Snapshot(String),
    #[error("{path}: not a Ketch MVCC database ({why})")]
    Foreign { path: PathBuf, why: String },
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for MvccError {
            fn from(e: $t) -> Self { MvccError::Storage(e.into()) }
        }
    )*};
}
storage_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

pub(crate) struct State {
    index: TreeIndex,
    pub(crate) current_rev: i64,
    /// etcd's `compactMainRev`: -1 until the first compaction.
    compact_rev: i64,
}

/// The multi-version store. Readers run concurrently with each other; a write
/// [`Batch`] excludes readers for its duration, so no reader sees half a request.
pub struct Store {
    /// The backend file (None for another storage backend).
    file: Option<PathBuf>,
    pub(crate) db: Database,
    pub(crate) state: RwLock<State>,
    /// The last committed revision, readable without waiting for a writer.
    pub(crate) committed_rev: AtomicI64,
}

impl Store {
    /// Opens (creating if absent) the store at `path` and rebuilds the key index.
    pub fn open(path: &Path) -> Result<Store, MvccError> {
        let fresh = !path.exists();
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(why)) => {
                MvccError::Foreign { path: path.to_path_buf(), why }
            }
            e => e.into(),
        })?;
        Store::open_db(db, fresh, path, Some(path.to_path_buf()))
    }

    /// Opens the store on a storage backend other than a file (a simulator's
    /// disk). `label` names it in errors; [`Store::file_size`] reports 0.
    pub fn open_with_backend(backend: impl redb::StorageBackend, label: &Path) -> Result<Store, MvccError> {
        let fresh = backend.len().map_err(|e| MvccError::Storage(redb::StorageError::from(e).into()))? == 0;
        let db = redb::Builder::new().create_with_backend(backend).map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(why)) => {
                MvccError::Foreign { path: label.to_path_buf(), why }
            }
            e => e.into(),
        })?;
        Store::open_db(db, fresh, label, None)
    }

    fn open_db(db: Database, fresh: bool, path: &Path, file: Option<PathBuf>) -> Result<Store, MvccError> {
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let format = meta.get(META_FORMAT)?.map(|v| v.value().to_vec());
            match format {
                Some(f) if f == FORMAT => {}
                None if fresh => {
                    meta.insert(META_FORMAT, FORMAT)?;
                }
                other => {
                    let why = match other {
                        Some(f) => format!("format {:?}", String::from_utf8_lossy(&f)),
                        None => "no format marker".to_string(),
                    };
                    return Err(MvccError::Foreign { path: path.to_path_buf(), why });
                }
            }
            txn.open_table(KV)?;
            txn.open_table(LEASES)?;
        }
        txn.commit()?;

        let state = load_state(&db)?;
        let current_rev = state.current_rev;
        Ok(Store { file, db, state: RwLock::new(state), committed_rev: AtomicI64::new(current_rev) })
    }

    pub fn read(&self) -> Result<ReadTxn<'_>, MvccError> {
        let state = self.state.read().expect("mvcc state lock poisoned");
        let txn = self.db.begin_read()?;
        Ok(ReadTxn { state, txn })
    }

    /// Starts a write batch. Only one exists at a time; it blocks readers until
    /// committed or dropped. Dropping a batch without committing leaves the
    /// in-memory index ahead of the backend: callers treat that as fatal.
    pub fn batch(&self) -> Result<Batch<'_>, MvccError> {
        let state = self.state.write().expect("mvcc state lock poisoned");
        let txn = self.db.begin_write()?;
        Ok(Batch { state, txn, committed_rev: &self.committed_rev, events: Vec::new() })
    }

    /// The revision of the last committed write; never blocks.
    pub fn current_revision(&self) -> i64 {
        self.committed_rev.load(Ordering::SeqCst)
    }

    pub fn compact_revision(&self) -> i64 {
        self.state.read().expect("mvcc state lock poisoned").compact_rev
    }

    /// A caller-owned meta value, as last committed.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, MvccError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Every stored lease record, by ascending lease ID.
    pub fn lease_records(&self) -> Result<Vec<(i64, Vec<u8>)>, MvccError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LEASES)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Size of the backend file in bytes.
    pub fn file_size(&self) -> u64 {
        self.file.as_ref().and_then(|f| std::fs::metadata(f).ok()).map_or(0, |m| m.len())
    }
}

/// Reads the revisions and rebuilds the key index from the backend.
pub(crate) fn load_state(db: &Database) -> Result<State, MvccError> {
    let read = db.begin_read()?;
    let meta = read.open_table(META)?;
    let meta_i64 = |key: &str| -> Result<Option<i64>, MvccError> {
        match meta.get(key)? {
            None => Ok(None),
            Some(v) => {
                let bytes: [u8; 8] = v.value().try_into().map_err(|_| MvccError::Corrupt(format!("meta {key}")))?;
                Ok(Some(i64::from_le_bytes(bytes)))
            }
        }
    };
    let mut current_rev = meta_i64(META_CURRENT_REV)?.unwrap_or(1).max(1);
    let compact_rev = meta_i64(META_COMPACT_REV)?.unwrap_or(-1);

    let mut index = TreeIndex::default();
    let kv = read.open_table(KV)?;
    for item in kv.iter()? {
        let (k, v) = item?;
        let (main, sub) = k.value();
        let rev = Revision {
            main: i64::try_from(main).map_err(|_| MvccError::Corrupt("revision overflow".into()))?,
            sub: i64::try_from(sub).map_err(|_| MvccError::Corrupt("revision overflow".into()))?,
        };
        let rec = codec::decode(v.value())?;
        current_rev = current_rev.max(rev.main);
        if rec.tombstone {
            index.tombstone(&rec.key, rev);
        } else if index.contains(&rec.key) {
            index.put(&rec.key, rev);
        } else {
            index.restore(&rec.key, Revision { main: rec.create_revision, sub: 0 }, rev, rec.version);
        }
    }
    Ok(State { index, current_rev, compact_rev })
}

/// Shared read path for read and write transactions.
fn range_in(
    state: &State,
    table: &impl ReadableTable<(u64, u64), &'static [u8]>,
    key: &[u8],
    end: &RangeEnd,
    cur_rev: i64,
    opts: RangeOptions,
) -> Result<RangeResult, MvccError> {
    let mut rev = opts.rev;
    if rev > cur_rev {
        return Err(MvccError::FutureRev);
    }
    if rev <= 0 {
        rev = cur_rev;
    }
    if rev < state.compact_rev {
        return Err(MvccError::Compacted);
    }
    let mut revs = Vec::new();
    match end {
        RangeEnd::Single => revs.extend(state.index.get(key, rev).map(|f| f.modified)),
        RangeEnd::Unbounded => state.index.visit_range(key, None, rev, |_, f| {
            revs.push(f.modified);
            true
        }),
        RangeEnd::Before(end) => state.index.visit_range(key, Some(end), rev, |_, f| {
            revs.push(f.modified);
            true
        }),
    }
    let count = i64::try_from(revs.len()).unwrap_or(i64::MAX);
    if opts.count_only || revs.is_empty() {
        return Ok(RangeResult { kvs: Vec::new(), count, rev: cur_rev });
    }
    if opts.limit > 0 {
        revs.truncate(opts.limit);
    }
    let mut kvs = Vec::with_capacity(revs.len());
    for r in revs {
        let raw = table.get(r.table_key())?.ok_or_else(|| {
            MvccError::Corrupt(format!("index names revision {}.{} that the backend lacks", r.main, r.sub))
        })?;
        let rec = codec::decode(raw.value())?;
        kvs.push(KeyValue {
            key: rec.key,
            value: rec.value,
            create_revision: rec.create_revision,
            mod_revision: r.main,
            version: rec.version,
            lease: rec.lease,
        });
    }
    Ok(RangeResult { kvs, count, rev: cur_rev })
}

/// A consistent read view of the store.
pub struct ReadTxn<'a> {
    state: RwLockReadGuard<'a, State>,
    txn: redb::ReadTransaction,
}

impl ReadTxn<'_> {
    pub fn rev(&self) -> i64 {
        self.state.current_rev
    }

    pub fn compact_rev(&self) -> i64 {
        self.state.compact_rev
    }

    pub fn range(&self, key: &[u8], end: &RangeEnd, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        let table = self.txn.open_table(KV)?;
        range_in(&self.state, &table, key, end, self.state.current_rev, opts)
    }

    /// etcd's `HashKV`: a CRC-32C over the history up to `rev` (0 = current), in
    /// etcd's own byte layout (revision keys `main_sub[t]` and protobuf-encoded
    /// key-values, see [`crate::codec::etcd_hash_bytes`]), so that the same
    /// history hashes the same on Ketch and on etcd. Returns the hash, the
    /// current revision and the compaction point.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), MvccError> {
        let (compact, current) = (self.state.compact_rev, self.state.current_rev);
        if rev > 0 && rev <= compact {
            return Err(MvccError::Compacted);
        }
        if rev > 0 && rev > current {
            return Err(MvccError::FutureRev);
        }
        let rev = if rev == 0 { current } else { rev };
        let keep = self.state.index.keep(rev);
        let table = self.txn.open_table(KV)?;
        let mut crc = crc32c::crc32c(b"key");
        let upto = Revision { main: rev, sub: i64::MAX }.table_key();
        for item in table.range(..=upto)? {
            let (k, v) = item?;
            let (main, sub) = k.value();
            let r = Revision { main: main as i64, sub: sub as i64 };
            if r.main <= compact && !keep.is_empty() && !keep.contains(&r) {
                continue;
            }
            let rec = codec::decode(v.value())?;
            let (key_bytes, value_bytes) = codec::etcd_hash_bytes(r.main, r.sub, &rec);
            crc = crc32c::crc32c_append(crc, &key_bytes);
            crc = crc32c::crc32c_append(crc, &value_bytes);
        }
        Ok((crc, current, compact))
    }

    /// The history of revisions `from..=to`, in revision order, as events. Stops
    /// early, at a revision boundary, once at least `max_events` are collected;
    /// returns the events and the last revision they fully cover. The caller
    /// checks `from` against the compaction point first: compacted history is
    /// incomplete.
    pub fn events(&self, from: i64, to: i64, max_events: usize) -> Result<(Vec<Event>, i64), MvccError> {
        let table = self.txn.open_table(KV)?;
        let start = Revision { main: from.max(0), sub: 0 }.table_key();
        let end = Revision { main: to.max(0), sub: i64::MAX }.table_key();
        let mut events = Vec::new();
        let mut last_main = from - 1;
        for item in table.range(start..=end)? {
            let (k, v) = item?;
            let main = i64::try_from(k.value().0).map_err(|_| MvccError::Corrupt("revision overflow".into()))?;
            if main != last_main && events.len() >= max_events {
                return Ok((events, last_main));
            }
            last_main = main;
            let rec = codec::decode(v.value())?;
            events.push(if rec.tombstone {
                Event {
                    kind: EventKind::Delete,
                    kv: KeyValue { key: rec.key, mod_revision: main, ..Default::default() },
                }
            } else {
                Event {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: rec.key,
                        value: rec.value,
                        create_revision: rec.create_revision,
                        mod_revision: main,
                        version: rec.version,
                        lease: rec.lease,
                    },
                }
            });
        }
        Ok((events, to))
    }
}

/// One backend write transaction covering one or more requests.
pub struct Batch<'a> {
    state: RwLockWriteGuard<'a, State>,
    txn: redb::WriteTransaction,
    committed_rev: &'a AtomicI64,
    /// Every change made in this batch, in revision order, for watchers.
    events: Vec<Event>,
}

impl<'a> Batch<'a> {
    /// Starts one request's writes; all of them share one revision.
    pub fn txn(&mut self) -> TxnWrite<'_, 'a> {
        let begin_rev = self.state.current_rev;
        TxnWrite { batch: self, begin_rev, changes: 0 }
    }

    pub fn rev(&self) -> i64 {
        self.state.current_rev
    }

    /// Stores (`Some`) or removes (`None`) a lease record in this batch.
    pub fn set_lease_record(&mut self, id: i64, record: Option<&[u8]>) -> Result<(), MvccError> {
        let mut table = self.txn.open_table(LEASES)?;
        match record {
            Some(bytes) => {
                table.insert(id, bytes)?;
            }
            None => {
                table.remove(id)?;
            }
        }
        Ok(())
    }

    /// Compacts history before `rev`: afterwards reads below `rev` fail with
    /// [`MvccError::Compacted`]. Does not change the current revision.
    pub fn compact(&mut self, rev: i64) -> Result<CompactionResult, MvccError> {
        if rev <= self.state.compact_rev {
            return Err(MvccError::Compacted);
        }
        if rev > self.state.current_rev {
            return Err(MvccError::FutureRev);
        }
        let keep = self.state.index.compact(rev);
        let mut table = self.txn.open_table(KV)?;
        let upto = Revision { main: rev, sub: i64::MAX }.table_key();
        let mut doomed = Vec::new();
        for item in table.range(..=upto)? {
            let (k, _) = item?;
            let (main, sub) = k.value();
            let r = Revision { main: main as i64, sub: sub as i64 };
            if !keep.contains(&r) {
                doomed.push(k.value());
            }
        }
        for k in &doomed {
            table.remove(k)?;
        }
        self.state.compact_rev = rev;
        Ok(CompactionResult { removed: doomed.len() as u64 })
    }

    /// Commits the batch together with the caller's `meta` entries (its applied
    /// position, typically). `durable = false` skips the fsync: the commit becomes
    /// durable with the next durable one, and a crash before that rolls the store
    /// back to the previous durable commit as a whole.
    /// Returns the batch's changes, in revision order, for watchers.
    pub fn commit(mut self, meta: &[(&str, &[u8])], durable: bool) -> Result<Vec<Event>, MvccError> {
        {
            let mut table = self.txn.open_table(META)?;
            table.insert(META_CURRENT_REV, self.state.current_rev.to_le_bytes().as_slice())?;
            table.insert(META_COMPACT_REV, self.state.compact_rev.to_le_bytes().as_slice())?;
            for (k, v) in meta {
                table.insert(*k, *v)?;
            }
        }
        self.txn.set_durability(if durable { Durability::Immediate } else { Durability::None })?;
        self.txn.commit()?;
        self.committed_rev.store(self.state.current_rev, Ordering::SeqCst);
        Ok(self.events)
    }
}

/// The writes of one request, all at revision `begin_rev + 1`.
pub struct TxnWrite<'b, 'a> {
    batch: &'b mut Batch<'a>,
    begin_rev: i64,
    changes: i64,
}

impl TxnWrite<'_, '_> {
    /// The revision reads inside this request see.
    pub fn read_rev(&self) -> i64 {
        if self.changes > 0 { self.begin_rev + 1 } else { self.begin_rev }
    }

    pub fn compact_rev(&self) -> i64 {
        self.batch.state.compact_rev
    }

    pub fn range(&self, key: &[u8], end: &RangeEnd, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        let table = self.batch.txn.open_table(KV)?;
        range_in(&self.batch.state, &table, key, end, self.read_rev(), opts)
    }

    /// Writes `key`; returns the revision of the write.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, MvccError> {
        let rev = self.begin_rev + 1;
        let (create_revision, version) = match self.batch.state.index.get(key, rev) {
            Some(f) => (f.created.main, f.version + 1),
            None => (rev, 1),
        };
        let idx_rev = Revision { main: rev, sub: self.changes };
        let kv =
            KeyValue { key: key.to_vec(), value: value.to_vec(), create_revision, mod_revision: rev, version, lease };
        self.batch.txn.open_table(KV)?.insert(idx_rev.table_key(), codec::encode_put(&kv).as_slice())?;
        self.batch.state.index.put(key, idx_rev);
        self.batch.events.push(Event { kind: EventKind::Put, kv });
        self.changes += 1;
        Ok(rev)
    }

    /// Deletes the live keys in the range; returns them and the revision the
    /// response reports (unchanged when nothing at all was written).
    pub fn delete_range(&mut self, key: &[u8], end: &RangeEnd) -> Result<(Vec<Vec<u8>>, i64), MvccError> {
        let at = self.read_rev();
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let index = &self.batch.state.index;
        match end {
            RangeEnd::Single => {
                if index.get(key, at).is_some() {
                    keys.push(key.to_vec());
                }
            }
            RangeEnd::Unbounded => index.visit_range(key, None, at, |k, _| {
                keys.push(k.to_vec());
                true
            }),
            RangeEnd::Before(end) => index.visit_range(key, Some(end), at, |k, _| {
                keys.push(k.to_vec());
                true
            }),
        }
        if keys.is_empty() {
            return Ok((keys, self.read_rev()));
        }
        let rev = self.begin_rev + 1;
        let mut table = self.batch.txn.open_table(KV)?;
        for k in &keys {
            let idx_rev = Revision { main: rev, sub: self.changes };
            table.insert(idx_rev.table_key(), codec::encode_tombstone(k).as_slice())?;
            self.batch.state.index.tombstone(k, idx_rev);
            let kv = KeyValue { key: k.clone(), mod_revision: rev, ..Default::default() };
            self.batch.events.push(Event { kind: EventKind::Delete, kv });
            self.changes += 1;
        }
        Ok((keys, rev))
    }

    pub fn changed(&self) -> bool {
        self.changes > 0
    }

    /// Ends the request: the store's revision advances if anything was written.
    /// Returns the store's revision afterwards.
    pub fn end(self) -> i64 {
        if self.changes > 0 {
            self.batch.state.current_rev = self.begin_rev + 1;
        }
        self.batch.state.current_rev
    }
}
