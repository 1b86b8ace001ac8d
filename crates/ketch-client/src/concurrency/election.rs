//! [`Election`]: etcd's leader election (`concurrency.Election`).

use std::pin::Pin;
use std::task::{Context, Poll};

use ketch_proto::etcdserverpb::{ResponseHeader, response_op::Response};
use ketch_proto::mvccpb::KeyValue;
use ketch_proto::mvccpb::event::EventType;
use tokio::sync::mpsc;

use super::{
    AbandonGuard, Session, first_created, header, own_key, repeat_while_unknown, spawn_detached, wait_deletes,
    with_slash,
};
use crate::error::{Error, Result};
use crate::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Kv, PutOptions, Txn, TxnOp, WatchOptions};

/// Leader changes queued for an [`Observer`] before the observing task
/// waits for the caller.
const OBSERVED_QUEUED_MAX: usize = 16;

/// A leader election on a key prefix, campaigned for through a
/// [`Session`]. Candidates queue by the create revision of their key
/// `prefix/<lease hex>`; the first is the leader and its key's value is the
/// proclaimed value.
#[derive(Debug)]
pub struct Election {
    session: Session,
    prefix: Vec<u8>,
    /// The key and its create revision while campaigning or leading.
    leader: Option<(Vec<u8>, i64)>,
    header: Option<ResponseHeader>,
}

impl Election {
    /// An election on `prefix` for `session` (not yet campaigning).
    pub fn new(session: &Session, prefix: impl Into<Vec<u8>>) -> Election {
        Election { session: session.clone(), prefix: with_slash(prefix), leader: None, header: None }
    }

    /// Puts up `value` and waits until elected. Fails with
    /// [`Error::SessionExpired`] if the session ends meanwhile. If the
    /// returned future is dropped before it completes, the candidacy is
    /// withdrawn in the background. The creating write is repeated if its
    /// outcome is unknown (it is conditional on the key not existing).
    pub async fn campaign(&mut self, value: impl Into<Vec<u8>>) -> Result<()> {
        let value = value.into();
        let kv = self.session.kv();
        let key = own_key(&self.prefix, self.session.lease());
        let lease = self.session.lease();
        let guard = withdraw_guard(kv.clone(), key.clone());
        let response = repeat_while_unknown(|| {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value.clone(), PutOptions::new().lease(lease))])
                .or_else([TxnOp::get(key.clone(), GetOptions::new())]);
            kv.txn(txn)
        })
        .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                guard.disarm();
                return Err(e);
            }
        };
        let mut rev = header(&response).revision;
        self.leader = Some((key.clone(), rev));
        if !response.succeeded {
            let existing = match response.responses.first().and_then(|r| r.response.as_ref()) {
                Some(Response::ResponseRange(r)) => r.kvs.first().cloned(),
                _ => None,
            };
            if let Some(existing) = existing {
                rev = existing.create_revision;
                self.leader = Some((key.clone(), rev));
                if existing.value != value
                    && let Err(e) = self.proclaim(value.clone()).await
                {
                    guard.disarm();
                    let _ = self.resign().await;
                    return Err(e);
                }
            }
        }
        let waited = tokio::select! {
            waited = wait_deletes(self.session.client(), &self.prefix, rev - 1) => waited,
            _ = self.session.done() => Err(Error::SessionExpired),
        };
        guard.disarm();
        match waited {
            Ok(_) => {
                self.header = Some(header(&response));
                Ok(())
            }
            Err(e) => {
                self.leader = None;
                Err(e)
            }
        }
    }

    /// Sets the leader's value without another election; only the leader
    /// may ([`Error::ElectionNotLeader`] otherwise). Not repeated when the
    /// outcome is unknown.
    pub async fn proclaim(&mut self, value: impl Into<Vec<u8>>) -> Result<()> {
        let Some((key, rev)) = self.leader.clone() else {
            return Err(Error::ElectionNotLeader);
        };
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key, value, PutOptions::new().lease(self.session.lease()))]);
        let response = self.session.kv().txn(txn).await?;
        if !response.succeeded {
            self.leader = None;
            return Err(Error::ElectionNotLeader);
        }
        self.header = Some(header(&response));
        Ok(())
    }

    /// Gives up leadership (or the candidacy): deletes the key if it is
    /// still this campaign's. Repeated if the outcome is unknown.
    pub async fn resign(&mut self) -> Result<()> {
        let Some((key, rev)) = self.leader.clone() else {
            return Ok(());
        };
        let kv = self.session.kv();
        let response = repeat_while_unknown(|| {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, rev)])
                .and_then([TxnOp::delete(key.clone(), DeleteOptions::new())]);
            kv.txn(txn)
        })
        .await?;
        self.header = Some(header(&response));
        self.leader = None;
        Ok(())
    }

    /// The current leader's key-value pair; [`Error::ElectionNoLeader`] if
    /// there is none.
    pub async fn leader(&self) -> Result<KeyValue> {
        let response = self.session.kv().get(self.prefix.clone(), first_created()).await?;
        response.kvs.into_iter().next().ok_or(Error::ElectionNoLeader)
    }

    /// Follows the leadership: yields the leader's key-value pair now (or
    /// once there is one) and after every change (new value or new leader).
    pub fn observe(&self) -> Observer {
        let (tx, rx) = mpsc::channel(OBSERVED_QUEUED_MAX);
        let client = self.session.client().clone();
        let task = tokio::spawn(observe(client, self.prefix.clone(), tx));
        Observer { rx, task }
    }

    /// This campaign's key, while campaigning or leading.
    pub fn key(&self) -> Option<&[u8]> {
        self.leader.as_ref().map(|(k, _)| k.as_slice())
    }

    /// The create revision of this campaign's key.
    pub fn rev(&self) -> Option<i64> {
        self.leader.as_ref().map(|(_, r)| *r)
    }

    /// The header of the last write that changed this campaign.
    pub fn header(&self) -> Option<&ResponseHeader> {
        self.header.as_ref()
    }
}

fn withdraw_guard(kv: Kv, key: Vec<u8>) -> AbandonGuard {
    AbandonGuard::new(move || {
        spawn_detached(async move {
            let _ = kv.delete(key, DeleteOptions::new()).await;
        })
    })
}

/// The leadership as it changes ([`Election::observe`]). Ends after an
/// error; dropping it stops observing.
#[derive(Debug)]
pub struct Observer {
    rx: mpsc::Receiver<Result<KeyValue>>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// The next leader key-value pair; `Ok(None)` if observing stopped.
    pub async fn next(&mut self) -> Result<Option<KeyValue>> {
        self.rx.recv().await.transpose()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl tokio_stream::Stream for Observer {
    type Item = Result<KeyValue>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// etcd's `observe` loop: find the leader (or wait for the first candidate),
/// report it, follow its key until it is deleted, repeat.
async fn observe(client: Client, prefix: Vec<u8>, out: mpsc::Sender<Result<KeyValue>>) {
    if let Err(e) = observe_loop(&client, &prefix, &out).await {
        let _ = out.send(Err(e)).await;
    }
}

async fn observe_loop(client: &Client, prefix: &[u8], out: &mpsc::Sender<Result<KeyValue>>) -> Result<()> {
    loop {
        let response = client.kv().get(prefix, first_created()).await?;
        let from = response.header.as_ref().map_or(0, |h| h.revision);
        let leader = match response.kvs.into_iter().next() {
            Some(kv) => (kv, from),
            None => match first_put(client, prefix, from).await? {
                Some(kv) => {
                    let rev = kv.mod_revision;
                    (kv, rev)
                }
                None => return Ok(()),
            },
        };
        let (kv, rev) = leader;
        let key = kv.key.clone();
        if out.send(Ok(kv)).await.is_err() {
            return Ok(());
        }
        let mut watcher = client.watch().watch(key, WatchOptions::new().start_revision(rev + 1)).await?;
        'leader: loop {
            let Some(response) = watcher.message().await? else { return Ok(()) };
            for event in response.events {
                if event.r#type == EventType::Delete as i32 {
                    break 'leader;
                }
                if let Some(kv) = event.kv
                    && out.send(Ok(kv)).await.is_err()
                {
                    return Ok(());
                }
            }
        }
    }
}

/// The first PUT under `prefix` from revision `from` (the first candidate
/// of an empty election); `None` if the watch ended.
async fn first_put(client: &Client, prefix: &[u8], from: i64) -> Result<Option<KeyValue>> {
    let mut watcher = client.watch().watch(prefix, WatchOptions::new().prefix().start_revision(from)).await?;
    while let Some(response) = watcher.message().await? {
        // Only a put names a leader; a delete would only make us spin.
        if let Some(kv) = response.events.into_iter().find(|e| e.r#type == EventType::Put as i32).and_then(|e| e.kv) {
            return Ok(Some(kv));
        }
    }
    Ok(None)
}
