//! [`Session`]: a lease kept alive for as long as the session lives.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::lease::KeepAlive;
use crate::{Client, Kv};

/// Default TTL of a session's lease, in seconds (etcd's `defaultSessionTTL`).
pub const DEFAULT_SESSION_TTL: i64 = 60;

/// Options of [`Session::new`].
#[derive(Clone, Debug)]
pub struct SessionOptions {
    ttl: i64,
    lease: Option<i64>,
}

impl Default for SessionOptions {
    fn default() -> SessionOptions {
        SessionOptions { ttl: DEFAULT_SESSION_TTL, lease: None }
    }
}

impl SessionOptions {
    /// A new lease of [`DEFAULT_SESSION_TTL`] seconds.
    pub fn new() -> SessionOptions {
        SessionOptions::default()
    }

    /// The TTL of the session's new lease, in seconds. A shorter TTL frees
    /// the locks of a crashed holder sooner, and tolerates shorter outages.
    pub fn ttl(mut self, seconds: i64) -> Self {
        self.ttl = seconds;
        self
    }

    /// Use this existing lease instead of granting one.
    pub fn lease(mut self, id: i64) -> Self {
        self.lease = Some(id);
        self
    }
}

struct SessionInner {
    client: Client,
    lease: i64,
    keep_alive: KeepAlive,
}

/// A lease kept alive in the background: the liveness that locks and
/// elections hang on (etcd's `concurrency.Session`). Cheap to clone; the
/// keep-alive stops when the last clone is dropped (the lease then expires
/// after its TTL) or at [`Session::close`] (the lease is revoked at once).
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("lease", &format_args!("{:x}", self.inner.lease)).finish()
    }
}

impl Session {
    /// Grants a lease (or takes the given one) and starts keeping it alive.
    pub async fn new(client: &Client, options: SessionOptions) -> Result<Session> {
        let lease = match options.lease {
            Some(id) => id,
            None => client.lease().grant(options.ttl).await?.id,
        };
        let keep_alive = client.lease().keep_alive(lease).await?;
        Ok(Session { inner: Arc::new(SessionInner { client: client.clone(), lease, keep_alive }) })
    }

    /// The session's lease ID.
    pub fn lease(&self) -> i64 {
        self.inner.lease
    }

    /// The client the session uses.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    pub(crate) fn kv(&self) -> Kv {
        self.inner.client.kv()
    }

    /// Whether the lease is still being kept alive.
    pub fn is_alive(&self) -> bool {
        self.inner.keep_alive.is_alive()
    }

    /// Waits until the session's lease is lost (expired, revoked, or not
    /// renewed within its TTL) and returns why.
    pub async fn done(&self) -> Error {
        self.inner.keep_alive.ended().await
    }

    /// Revokes the lease: every key held through this session (locks,
    /// candidacies) is deleted at once. At most once.
    pub async fn close(&self) -> Result<()> {
        match self.inner.client.lease().revoke(self.inner.lease).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_lease_gone() => Ok(()),
            Err(e) => Err(e),
        }
    }
}
