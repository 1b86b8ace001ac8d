//! [`Mutex`]: etcd's distributed lock (`concurrency.Mutex`).

use ketch_proto::etcdserverpb::{ResponseHeader, response_op::Response};

use super::{
    AbandonGuard, Session, first_created, header, own_key, repeat_while_unknown, spawn_detached, wait_deletes,
    with_slash,
};
use crate::error::{Error, Result};
use crate::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};

/// A distributed lock on a key prefix, held through a [`Session`].
///
/// Locking creates `prefix/<lease hex>` (bound to the session's lease) if
/// it does not exist; the key with the lowest create revision under the
/// prefix holds the lock; a waiter watches for the deletion of the newest
/// key created before its own, until none is left. One `Mutex` per
/// contender: two `Mutex`es on one session share the key and do not exclude
/// each other (as in etcd).
#[derive(Debug)]
pub struct Mutex {
    session: Session,
    prefix: Vec<u8>,
    key: Vec<u8>,
    /// Create revision of `key`; -1 when not locked.
    rev: i64,
    header: Option<ResponseHeader>,
}

impl Mutex {
    /// A lock on `prefix` for `session` (not yet taken).
    pub fn new(session: &Session, prefix: impl Into<Vec<u8>>) -> Mutex {
        let prefix = with_slash(prefix);
        let key = own_key(&prefix, session.lease());
        Mutex { session: session.clone(), prefix, key, rev: -1, header: None }
    }

    /// Takes the lock, waiting as long as it takes. Fails with
    /// [`Error::SessionExpired`] if the session ends meanwhile (the key went
    /// with it). If the returned future is dropped before it completes, the
    /// key is deleted in the background. The creating write is repeated if
    /// its outcome is unknown (it is conditional on the key not existing).
    pub async fn lock(&mut self) -> Result<()> {
        let guard = self.abandon_guard();
        let locked = self.acquire().await;
        guard.disarm();
        locked
    }

    async fn acquire(&mut self) -> Result<()> {
        let (owner_rev, own_rev) = self.enqueue().await?;
        if owner_rev.is_none_or(|rev| rev == own_rev) {
            return Ok(());
        }
        let waited = tokio::select! {
            waited = wait_deletes(self.session.client(), &self.prefix, own_rev - 1) => waited,
            _ = self.session.done() => Err(Error::SessionExpired),
        };
        let waited = match waited {
            Ok(header) => header,
            Err(e) => {
                let _ = self.unlock().await;
                return Err(e);
            }
        };
        // The session may have ended while waiting, taking the key with it.
        let own = self.session.kv().get(self.key.clone(), GetOptions::new()).await?;
        if own.kvs.is_empty() {
            self.rev = -1;
            return Err(Error::SessionExpired);
        }
        self.header = Some(waited);
        Ok(())
    }

    /// Takes the lock only if nobody holds it; `Ok(false)` (and no key left
    /// behind) otherwise.
    pub async fn try_lock(&mut self) -> Result<bool> {
        let (owner_rev, own_rev) = self.enqueue().await?;
        if owner_rev.is_none_or(|rev| rev == own_rev) {
            return Ok(true);
        }
        self.unlock().await?;
        Ok(false)
    }

    /// Creates this contender's key if needed; returns the create revisions
    /// of the current holder (if any) and of the key.
    async fn enqueue(&mut self) -> Result<(Option<i64>, i64)> {
        let kv = self.session.kv();
        let key = self.key.clone();
        let lease = self.session.lease();
        let prefix = self.prefix.clone();
        let response = repeat_while_unknown(|| {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put(key.clone(), "", PutOptions::new().lease(lease)),
                    TxnOp::get(prefix.clone(), first_created()),
                ])
                .or_else([TxnOp::get(key.clone(), GetOptions::new()), TxnOp::get(prefix.clone(), first_created())]);
            kv.txn(txn)
        })
        .await?;
        let mut own_rev = header(&response).revision;
        if !response.succeeded {
            own_rev = range(&response, 0).and_then(|r| r.kvs.first()).map_or(own_rev, |kv| kv.create_revision);
        }
        self.rev = own_rev;
        self.header = Some(header(&response));
        let owner_rev = range(&response, 1).and_then(|r| r.kvs.first()).map(|kv| kv.create_revision);
        Ok((owner_rev, own_rev))
    }

    /// Releases the lock (deletes the key; repeated if the outcome is
    /// unknown, a delete being harmless to repeat).
    pub async fn unlock(&mut self) -> Result<()> {
        let kv = self.session.kv();
        let key = self.key.clone();
        let response = repeat_while_unknown(|| kv.delete(key.clone(), DeleteOptions::new())).await?;
        self.rev = -1;
        self.header = response.header;
        Ok(())
    }

    /// The key this contender holds or waits with, `prefix/<lease hex>`.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The header of the last write or read that decided the lock.
    pub fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }

    /// A condition that holds while this contender holds the lock: use it
    /// in a [`Txn`] to write only as the holder (etcd's `IsOwner`).
    pub fn is_owner(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.rev)
    }

    fn abandon_guard(&self) -> AbandonGuard {
        let kv = self.session.kv();
        let key = self.key.clone();
        AbandonGuard::new(move || {
            spawn_detached(async move {
                let _ = kv.delete(key, DeleteOptions::new()).await;
            })
        })
    }
}

/// The range answer at `index` of a transaction's responses.
fn range(
    response: &ketch_proto::etcdserverpb::TxnResponse,
    index: usize,
) -> Option<&ketch_proto::etcdserverpb::RangeResponse> {
    match response.responses.get(index)?.response.as_ref()? {
        Response::ResponseRange(r) => Some(r),
        _ => None,
    }
}
