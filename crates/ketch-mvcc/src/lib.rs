//! Ketch's multi-version key-value store.
//!
//! Every write creates a new *revision* of the keyspace, and every revision stays
//! readable until it is compacted. This crate keeps etcd's model exactly, because
//! clients depend on it: a fresh store is at revision 1, each mutating request
//! advances the revision by one, all writes of one request share that revision
//! (told apart by a sub-revision), and each key carries `create_revision`,
//! `mod_revision` and a `version` that restarts at 1 after a delete.
//!
//! Two structures hold the data:
//!
//! * the **backend**, a redb table keyed by revision `(main, sub)` whose values are
//!   encoded key-values or tombstones (see [`codec`]), plus a `meta` table holding
//!   the current revision, the compaction point and the caller's applied position;
//! * the **key index**, in memory, mapping each key to the generations of revisions
//!   at which it changed (see [`key_index`]); it is rebuilt from the backend when the
//!   store opens.
//!
//! The store does no networking and reads no clock. Writes happen in a [`Batch`]
//! (one redb write transaction, possibly many requests); the caller stores its
//! applied position in the same transaction through [`Batch::commit`], so the
//! data and the position that covers it are always durable together.

pub mod codec;
pub mod key_index;
mod snapshot;
mod store;

pub use snapshot::{SnapshotRecord, SnapshotTable};
pub use store::{
    Batch, CompactionResult, Event, EventKind, KeyValue, MvccError, RangeEnd, RangeOptions, RangeResult, ReadTxn,
    Revision, Store, TxnWrite,
};
