//! Distributed locks and leader election on top of leases, keys and
//! watches, with etcd's algorithms (`client/v3/concurrency`), so that they
//! interoperate with Go programs using the same prefixes.
//!
//! - [`Session`]: a lease kept alive; everything held through the session
//!   goes away with it.
//! - [`Mutex`]: each contender creates `prefix/<lease hex>` bound to its
//!   session; the lowest create revision holds the lock; the others each
//!   wait for the deletion of the key just before theirs (no herd).
//! - [`Election`]: the same queue; the holder's value is the proclaimed
//!   value; observers follow the holder's key.
//!
//! The writes these recipes make are conditional on the key's create
//! revision, so sending one again cannot apply it twice in a harmful way:
//! where that holds the recipes retry an [`Error::OutcomeUnknown`] on their
//! own (noted on each method).

mod election;
mod mutex;
mod session;

use std::future::Future;

use ketch_proto::etcdserverpb::{ResponseHeader, TxnResponse};
use ketch_proto::mvccpb::event::EventType;

pub use election::{Election, Observer};
pub use mutex::Mutex;
pub use session::{DEFAULT_SESSION_TTL, Session, SessionOptions};

use crate::error::{Error, Result};
use crate::{Client, GetOptions, SortOrder, SortTarget, WatchOptions};

/// Attempts of an idempotent recipe write whose outcome stayed unknown.
const IDEMPOTENT_WRITE_ATTEMPTS: u32 = 5;

/// Runs `write` again while its outcome is unknown (for writes that are
/// safe to repeat), up to [`IDEMPOTENT_WRITE_ATTEMPTS`] times.
async fn repeat_while_unknown<T, F, Fut>(mut write: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 1;
    loop {
        match write().await {
            Err(e) if e.is_outcome_unknown() && attempt < IDEMPOTENT_WRITE_ATTEMPTS => {
                tracing::debug!(error = %e, "repeating an idempotent write whose outcome is unknown");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// `prefix` with a trailing `/`, as etcd's recipes name their keys.
fn with_slash(prefix: impl Into<Vec<u8>>) -> Vec<u8> {
    let mut prefix = prefix.into();
    prefix.push(b'/');
    prefix
}

/// `prefix` + the lease ID in lowercase hex (etcd's `fmt.Sprintf("%s%x")`).
fn own_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// The key with the lowest create revision under `prefix`
/// (`clientv3.WithFirstCreate`).
fn first_created() -> GetOptions {
    GetOptions::new().prefix().sort(SortTarget::Create, SortOrder::Ascend).limit(1)
}

/// The header of a transaction's answer.
fn header(response: &TxnResponse) -> ResponseHeader {
    response.header.unwrap_or_default()
}

/// Waits until every key under `prefix` created at or before
/// `max_create_revision` is deleted, one at a time from the newest
/// (etcd's `waitDeletes`); returns the header of the last read.
async fn wait_deletes(client: &Client, prefix: &[u8], max_create_revision: i64) -> Result<ResponseHeader> {
    let options = GetOptions::new()
        .prefix()
        .sort(SortTarget::Create, SortOrder::Descend)
        .limit(1)
        .max_create_revision(max_create_revision);
    loop {
        let response = client.kv().get(prefix, options.clone()).await?;
        let header = response.header.unwrap_or_default();
        let Some(last) = response.kvs.into_iter().next() else {
            return Ok(header);
        };
        wait_delete(client, last.key, header.revision).await?;
    }
}

/// Waits for a DELETE of `key` at or after `revision`.
async fn wait_delete(client: &Client, key: Vec<u8>, revision: i64) -> Result<()> {
    let mut watcher = client.watch().watch(key, WatchOptions::new().start_revision(revision)).await?;
    while let Some(response) = watcher.message().await? {
        if response.events.iter().any(|e| e.r#type == EventType::Delete as i32) {
            return Ok(());
        }
    }
    Err(Error::Closed)
}

/// Deletes a recipe key if a lock or campaign is abandoned half-way (its
/// future dropped): the key would otherwise block others until the session
/// ends. Disarmed once the operation completes.
struct AbandonGuard {
    cleanup: Option<Box<dyn FnOnce() + Send>>,
}

impl AbandonGuard {
    fn new(cleanup: impl FnOnce() + Send + 'static) -> AbandonGuard {
        AbandonGuard { cleanup: Some(Box::new(cleanup)) }
    }

    fn disarm(mut self) {
        self.cleanup = None;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            cleanup();
        }
    }
}

/// Spawns `future` on the current runtime, if there is one.
fn spawn_detached(future: impl Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(future);
    }
}
