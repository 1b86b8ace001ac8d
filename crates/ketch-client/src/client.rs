//! The client: options, endpoints and connections, and the one call loop
//! every unary request goes through.
//!
//! Each endpoint has one HTTP/2 connection (a tonic [`Channel`]) made
//! lazily by our own dialer, so that a failed dial is recognisable
//! (tonic wraps the dialer's error in [`tonic::ConnectError`], see
//! `retry.rs`). HTTP/2 keep-alive pings, sent only while calls are open
//! (etcd's server counts pings on an idle connection as abuse), notice a
//! member that stopped answering.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use ketch_proto::etcdserverpb::{MemberListRequest, cluster_client::ClusterClient};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::Status;
use tonic::codegen::http::Uri;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::auth::{Credentials, TokenState};
use crate::endpoint::{Address, Balancer, HealthPolicy};
use crate::error::{Error, Result};
use crate::retry::{self, Cause, Decision, Failure, Idempotence, RetryPolicy};
use crate::tls::{self, TlsOptions};
use crate::{Auth, Cluster, Kv, Lease, Maintenance, Watch};

/// etcd's gRPC metadata key asking the server to refuse the request (or end
/// the stream) when it has no leader (`rpctypes.MetadataRequireLeaderKey`).
pub(crate) const REQUIRE_LEADER_KEY: &str = "hasleader";
/// The value that turns [`REQUIRE_LEADER_KEY`] on (`rpctypes.MetadataHasLeader`).
pub(crate) const REQUIRE_LEADER_VALUE: &str = "true";
/// etcd's gRPC metadata key carrying the auth token (`rpctypes.TokenFieldNameGRPC`).
pub(crate) const TOKEN_KEY: &str = "token";

/// How the client connects, retries and fails over. Build with
/// [`ClientOptions::new`] and the setters:
///
/// ```
/// use std::time::Duration;
/// let options = ketch_client::ClientOptions::new()
///     .dial_timeout(Duration::from_secs(1))
///     .request_timeout(Duration::from_secs(5))
///     .auto_sync_interval(Duration::from_secs(30))
///     .require_leader(true);
/// ```
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub(crate) dial_timeout: Duration,
    pub(crate) keep_alive_interval: Duration,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) attempt_timeout: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) retry_backoff: Duration,
    pub(crate) retry_backoff_max: Duration,
    pub(crate) endpoint_backoff: Duration,
    pub(crate) endpoint_backoff_max: Duration,
    pub(crate) auto_sync_interval: Option<Duration>,
    pub(crate) require_leader: bool,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) tls: Option<TlsOptions>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            dial_timeout: Duration::from_secs(2),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(5),
            max_attempts: 20,
            retry_backoff: Duration::from_millis(25),
            retry_backoff_max: Duration::from_secs(1),
            endpoint_backoff: Duration::from_millis(500),
            endpoint_backoff_max: Duration::from_secs(5),
            auto_sync_interval: None,
            require_leader: false,
            credentials: None,
            tls: None,
        }
    }
}

impl ClientOptions {
    /// The defaults: dial timeout 2 s, keep-alive pings every 10 s with a
    /// 5 s timeout, request deadline 10 s with at most 20 attempts of 5 s
    /// each, retry backoff 25 ms doubling to 1 s, failed endpoints skipped
    /// for 500 ms doubling to 5 s, no auto-sync, leader not required.
    pub fn new() -> ClientOptions {
        ClientOptions::default()
    }

    /// Bound on establishing one TCP connection to an endpoint.
    pub fn dial_timeout(mut self, timeout: Duration) -> Self {
        self.dial_timeout = timeout;
        self
    }

    /// Interval of HTTP/2 keep-alive pings while calls are open. etcd
    /// refuses pings more frequent than its `--grpc-keepalive-min-time`
    /// (5 s by default) by closing the connection.
    pub fn keep_alive_interval(mut self, interval: Duration) -> Self {
        self.keep_alive_interval = interval;
        self
    }

    /// How long a keep-alive ping may go unanswered before the connection
    /// (and every call on it) is considered dead.
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.keep_alive_timeout = timeout;
        self
    }

    /// Overall deadline of one unary request, retries and backoff included.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Bound on one attempt of a request (within the request deadline);
    /// also sent to the server as the call's `grpc-timeout`.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Most attempts per unary request (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Backoff before the second attempt (and before re-opening a broken
    /// watch or keep-alive stream), doubled for each further one up to
    /// `max`; ±10 % jitter.
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.retry_backoff = base;
        self.retry_backoff_max = max.max(base);
        self
    }

    /// How long an endpoint whose call failed for want of a serving member
    /// is skipped: `base` after one failure, doubled for each consecutive
    /// failure up to `max`.
    pub fn endpoint_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.endpoint_backoff = base;
        self.endpoint_backoff_max = max.max(base);
        self
    }

    /// Every `interval`, replace the endpoints by the client URLs of the
    /// cluster's started voting members (`MemberList`; learners excluded).
    pub fn auto_sync_interval(mut self, interval: Duration) -> Self {
        self.auto_sync_interval = Some(interval);
        self
    }

    /// Ask the server to refuse every request while it has no leader
    /// (etcd's `WithRequireLeader`, gRPC metadata `hasleader: true`). The
    /// refusal is `Unavailable`: reads fail over to another member, writes
    /// report [`Error::OutcomeUnknown`] as for any `Unavailable` answer.
    /// Watches choose separately ([`crate::WatchOptions::require_leader`]).
    pub fn require_leader(mut self, require: bool) -> Self {
        self.require_leader = require;
        self
    }

    /// Authenticate as user `name` with `password`: [`Client::connect`]
    /// calls `Auth.Authenticate` and every request then carries the token
    /// (gRPC metadata `token`); a token the server no longer accepts is
    /// replaced by authenticating again, and the refused request is sent
    /// once more (see [`crate::Auth`]). A server with authentication
    /// disabled is used without a token, as etcd's clientv3 does.
    pub fn credentials(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some(Credentials { name: name.into(), password: password.into() });
        self
    }

    /// Use TLS (see [`TlsOptions`]): `host:port` endpoints are then dialed
    /// with TLS, as `https://` endpoints always are; `http://` endpoints
    /// stay plain.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// An endpoint of a client with these options: `host:port` uses TLS if
    /// the options have it.
    pub(crate) fn address(&self, endpoint: &str) -> Result<Address> {
        Ok(Address::parse(endpoint)?.with_default_scheme(self.tls.is_some()))
    }

    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            backoff: self.retry_backoff,
            backoff_max: self.retry_backoff_max,
        }
    }
}

/// An etcd v3 client over a set of endpoints. Cheap to clone; clones share
/// the connections. The typed APIs are views: [`Client::kv`],
/// [`Client::lease`], [`Client::watch`], [`Client::cluster`],
/// [`Client::maintenance`].
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("endpoints", &self.endpoints()).finish()
    }
}

impl Client {
    /// A client for `endpoints` (`host:port`, `http://host:port` or
    /// `https://host:port`; duplicates ignored). Connections are made
    /// lazily, one per endpoint, on first use: this fails only for an empty
    /// or unparseable endpoint list, or unusable TLS options
    /// ([`ClientOptions::tls`]). With [`ClientOptions::credentials`] it
    /// also authenticates, and fails if that fails (a server with
    /// authentication disabled is fine). Must be called within a tokio
    /// runtime.
    pub async fn connect<E: AsRef<str>>(
        endpoints: impl IntoIterator<Item = E>,
        options: ClientOptions,
    ) -> Result<Client> {
        let mut addresses: Vec<Address> = Vec::new();
        for endpoint in endpoints {
            let address = options.address(endpoint.as_ref())?;
            if !addresses.contains(&address) {
                addresses.push(address);
            }
        }
        if addresses.is_empty() {
            return Err(Error::NoEndpoints);
        }
        if let Some(tls) = &options.tls {
            // Bad TLS options fail here, even if no endpoint uses them yet.
            tls.validate()?;
        }
        let mut slots = Vec::with_capacity(addresses.len());
        for address in addresses {
            let channel = make_channel(&address, &options)?;
            slots.push((address, channel));
        }
        let policy = HealthPolicy { backoff: options.endpoint_backoff, backoff_max: options.endpoint_backoff_max };
        let inner = Arc::new(Inner {
            balancer: Mutex::new(Balancer::new(slots, policy)),
            auto_sync: Mutex::new(None),
            token: options.credentials.clone().map(TokenState::new),
            options,
        });
        // With credentials, connecting means authenticating (clientv3).
        inner.refresh_token(None).await?;
        if let Some(every) = inner.options.auto_sync_interval {
            let task = tokio::spawn(auto_sync(Arc::downgrade(&inner), every));
            *lock(&inner.auto_sync) = Some(task.abort_handle());
        }
        Ok(Client { inner })
    }

    /// Key-value API: get, put, delete, txn, compact.
    pub fn kv(&self) -> Kv {
        Kv::new(Arc::clone(&self.inner))
    }

    /// Lease API: grant, revoke, time-to-live, keep-alive.
    pub fn lease(&self) -> Lease {
        Lease::new(Arc::clone(&self.inner))
    }

    /// Watch API: resumable watches of keys and ranges.
    pub fn watch(&self) -> Watch {
        Watch::new(Arc::clone(&self.inner))
    }

    /// Cluster membership API.
    pub fn cluster(&self) -> Cluster {
        Cluster::new(Arc::clone(&self.inner))
    }

    /// Maintenance API: status, hash, alarms, defragment, leader moves,
    /// snapshots.
    pub fn maintenance(&self) -> Maintenance {
        Maintenance::new(Arc::clone(&self.inner))
    }

    /// Authentication API: users, roles, permissions, enabling
    /// authentication.
    pub fn auth(&self) -> Auth {
        Auth::new(Arc::clone(&self.inner))
    }

    /// Whether the client holds an auth token: it was made with
    /// [`ClientOptions::credentials`] and the server has authentication
    /// enabled (a server without it is used without a token).
    pub fn has_token(&self) -> bool {
        self.inner.token.as_ref().is_some_and(|t| t.current().1.is_some())
    }

    /// The current endpoints, as `http://host:port` (`https://` with TLS).
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.balancer().addresses().iter().map(Address::url).collect()
    }

    /// The options the client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// Replaces the endpoints by the client URLs of the cluster's started
    /// voting members (`MemberList`; learners and members that have not
    /// published their URLs yet are left out), as auto-sync does
    /// periodically. Returns the new endpoints. An empty result leaves the
    /// endpoints as they are.
    pub async fn sync_endpoints(&self) -> Result<Vec<String>> {
        self.inner.sync_endpoints().await?;
        Ok(self.endpoints())
    }
}

/// State shared by a client's clones and views.
pub(crate) struct Inner {
    pub(crate) options: ClientOptions,
    balancer: Mutex<Balancer<Channel>>,
    auto_sync: Mutex<Option<tokio::task::AbortHandle>>,
    /// The auth token, for a client with credentials.
    pub(crate) token: Option<TokenState>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.auto_sync).take() {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds
    // consistent state.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn balancer(&self) -> MutexGuard<'_, Balancer<Channel>> {
        lock(&self.balancer)
    }

    /// The endpoint for the next request (see [`Balancer::pick`]).
    pub(crate) fn pick(&self) -> Result<(Address, Channel)> {
        self.balancer().pick(std::time::Instant::now()).ok_or(Error::NoEndpoints)
    }

    /// The endpoints, in order.
    pub(crate) fn addresses(&self) -> Vec<Address> {
        self.balancer().addresses()
    }

    /// Records a failure of `address` to serve a call.
    pub(crate) fn report_failure(&self, address: &Address) {
        self.balancer().report_failure(address, std::time::Instant::now());
    }

    /// Records a call served by `address`.
    pub(crate) fn report_success(&self, address: &Address) {
        self.balancer().report_success(address);
    }

    /// Records the outcome of a failed call on `address`: a member that
    /// answered definitely is healthy, one that could not serve is not.
    pub(crate) fn report(&self, address: &Address, failure: Failure) {
        match failure {
            Failure::Definite => self.report_success(address),
            Failure::NotSent | Failure::Indefinite => self.report_failure(address),
        }
    }

    /// The connection to `endpoint`: the client's own if it is one of its
    /// endpoints, else a new one.
    pub(crate) fn channel_for(&self, endpoint: &str) -> Result<(Address, Channel)> {
        let address = self.options.address(endpoint)?;
        if let Some(channel) = self.balancer().get(&address) {
            return Ok((address, channel));
        }
        let channel = make_channel(&address, &self.options)?;
        Ok((address, channel))
    }

    /// A request carrying `message`, the time limit as `grpc-timeout`,
    /// `hasleader` if `require_leader`, and the auth token if there is one.
    pub(crate) fn request<T>(&self, message: T, limit: Option<Duration>, require_leader: bool) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(limit) = limit {
            request.set_timeout(limit);
        }
        if require_leader {
            request.metadata_mut().insert(REQUIRE_LEADER_KEY, MetadataValue::from_static(REQUIRE_LEADER_VALUE));
        }
        if let Some((_, Some(token))) = self.token.as_ref().map(TokenState::current)
            && let Ok(value) = MetadataValue::try_from(token.as_str())
        {
            request.metadata_mut().insert(TOKEN_KEY, value);
        }
        request
    }

    /// Runs a unary call with failover: each attempt on the next healthy
    /// endpoint, bounded by the attempt timeout, until success, a definite
    /// answer, or what [`RetryPolicy::decide`] allows (the safety rule of
    /// `retry.rs`) within the request deadline.
    pub(crate) async fn unary<Req, Resp, F, Fut>(
        &self,
        name: &'static str,
        idempotence: Idempotence,
        message: Req,
        call: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: FnMut(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        Ok(self.with_failover(name, idempotence, message, call, true, true).await?.0)
    }

    /// [`Inner::unary`] without the auth token (`Auth.Authenticate`).
    pub(crate) async fn call_without_token<Req, Resp, F, Fut>(
        &self,
        name: &'static str,
        idempotence: Idempotence,
        message: Req,
        call: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: FnMut(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        Ok(self.with_failover(name, idempotence, message, call, true, false).await?.0)
    }

    /// Opens a server stream with failover like [`Inner::unary`]: the
    /// attempt timeout bounds the opening only, and no `grpc-timeout` is
    /// sent (it would bound the whole stream).
    pub(crate) async fn open_stream<Req, Resp, F, Fut>(
        &self,
        name: &'static str,
        message: Req,
        call: F,
    ) -> Result<(Resp, Address)>
    where
        Req: Clone,
        F: FnMut(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.with_failover(name, Idempotence::Immutable, message, call, false, true).await
    }

    /// The call loop of [`Inner::unary`] and [`Inner::open_stream`];
    /// returns the answer and the endpoint that gave it. `with_token`: send
    /// the auth token, and authenticate again once if the server refuses it
    /// (the refused request did not run: it is sent again).
    async fn with_failover<Req, Resp, F, Fut>(
        &self,
        name: &'static str,
        idempotence: Idempotence,
        message: Req,
        mut call: F,
        send_timeout: bool,
        with_token: bool,
    ) -> Result<(Resp, Address)>
    where
        Req: Clone,
        F: FnMut(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let deadline = Instant::now() + self.options.request_timeout;
        let policy = self.options.retry_policy();
        let mut attempt = 0;
        let mut reauthenticated = false;
        loop {
            attempt += 1;
            let (address, channel) = self.pick()?;
            let limit = self.options.attempt_timeout.min(deadline.saturating_duration_since(Instant::now()));
            let sent_token = self.token.as_ref().filter(|_| with_token).map(TokenState::current);
            let mut request = self.request(message.clone(), send_timeout.then_some(limit), self.options.require_leader);
            if !with_token {
                request.metadata_mut().remove(TOKEN_KEY);
            }
            let (failure, cause) = match attempt_call(limit, call(channel, request)).await {
                Ok(response) => {
                    self.report_success(&address);
                    return Ok((response, address));
                }
                Err(failed) => failed,
            };
            self.report(&address, failure);
            if let Some((generation, token)) = sent_token
                && !reauthenticated
                && crate::auth::needs_new_token(&cause, token.is_some())
            {
                // Refused before it ran: a new token, and the same request again.
                tracing::debug!(request = name, %address, %cause, "authenticating again");
                reauthenticated = true;
                self.refresh_token(Some(generation)).await?;
                attempt -= 1;
                continue;
            }
            let jitter = rand::random::<f64>() * 2.0 - 1.0;
            match policy.decide(idempotence, failure, attempt, Instant::now().into_std(), deadline.into_std(), jitter) {
                Decision::RetryAfter(wait) => {
                    tracing::debug!(request = name, %address, attempt, %cause, ?wait, "retrying on another endpoint");
                    tokio::time::sleep(wait).await;
                }
                Decision::Stop => {
                    return Err(retry::final_error(name, idempotence, failure, cause, &address.to_string(), attempt));
                }
            }
        }
    }

    /// One attempt of a unary call on a given endpoint, no failover (for
    /// member-specific calls such as `Status` of one member); a second one
    /// only after a refused auth token was replaced.
    pub(crate) async fn unary_on<Req, Resp, F, Fut>(
        &self,
        endpoint: &str,
        name: &'static str,
        idempotence: Idempotence,
        message: Req,
        mut call: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: FnMut(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let (address, channel) = self.channel_for(endpoint)?;
        let limit = self.options.request_timeout;
        let mut reauthenticated = false;
        loop {
            let sent_token = self.token.as_ref().map(TokenState::current);
            let request = self.request(message.clone(), Some(limit), self.options.require_leader);
            match attempt_call(limit, call(channel.clone(), request)).await {
                Ok(response) => {
                    self.report_success(&address);
                    return Ok(response);
                }
                Err((failure, cause)) => {
                    self.report(&address, failure);
                    if let Some((generation, token)) = sent_token
                        && !reauthenticated
                        && crate::auth::needs_new_token(&cause, token.is_some())
                    {
                        reauthenticated = true;
                        self.refresh_token(Some(generation)).await?;
                        continue;
                    }
                    return Err(retry::final_error(name, idempotence, failure, cause, &address.to_string(), 1));
                }
            }
        }
    }

    /// Refreshes the endpoints from `MemberList` (see
    /// [`Client::sync_endpoints`]).
    pub(crate) async fn sync_endpoints(&self) -> Result<()> {
        let list = self
            .unary(
                "Cluster.MemberList",
                Idempotence::Immutable,
                MemberListRequest { linearizable: false },
                |ch, r| async move { ClusterClient::new(ch).member_list(r).await },
            )
            .await?;
        let mut addresses: Vec<Address> = Vec::new();
        for member in list.members.iter().filter(|m| !m.is_learner && !m.name.is_empty()) {
            for url in &member.client_ur_ls {
                match self.options.address(url) {
                    Ok(a) if !addresses.contains(&a) => addresses.push(a),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(%url, error = %e, "auto-sync: skipping a client URL"),
                }
            }
        }
        // Connections for new endpoints are made outside the lock.
        let known = self.balancer().addresses();
        let mut fresh: Vec<(Address, Channel)> = Vec::new();
        for address in addresses.iter().filter(|a| !known.contains(a)) {
            match make_channel(address, &self.options) {
                Ok(channel) => fresh.push((address.clone(), channel)),
                Err(e) => tracing::debug!(%address, error = %e, "auto-sync: skipping an endpoint"),
            }
        }
        let changed = self.balancer().set_endpoints(&addresses, |address| {
            match fresh.iter().position(|(a, _)| a == address) {
                Some(i) => Some(fresh.swap_remove(i).1),
                // Dropped by a concurrent sync since `known` was read.
                None => make_channel(address, &self.options).ok(),
            }
        });
        if changed {
            tracing::info!(endpoints = ?addresses.iter().map(Address::to_string).collect::<Vec<_>>(), "endpoints synced from the member list");
        }
        Ok(())
    }
}

/// Runs one attempt bounded by `limit`; a failure comes back classified.
async fn attempt_call<Resp>(
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<Resp>, Status>>,
) -> std::result::Result<Resp, (Failure, Cause)> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err((retry::classify(&status), Cause::of(&status))),
        // The call may have been sent: the outcome is open.
        Err(_) => Err((Failure::Indefinite, Cause::TimedOut(limit))),
    }
}

async fn auto_sync(client: Weak<Inner>, every: Duration) {
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = client.upgrade() else { return };
        if let Err(e) = inner.sync_endpoints().await {
            tracing::debug!(error = %e, "auto-sync of endpoints failed");
        }
    }
}

/// The lazily connected channel of one endpoint.
fn make_channel(address: &Address, options: &ClientOptions) -> Result<Channel> {
    let invalid =
        |e: &dyn std::fmt::Display| Error::InvalidEndpoint { endpoint: address.to_string(), reason: e.to_string() };
    let endpoint = Endpoint::from_shared(address.url())
        .map_err(|e| invalid(&e))?
        .user_agent(concat!("ketch-client/", env!("CARGO_PKG_VERSION")))
        .map_err(|e| invalid(&e))?
        .http2_keep_alive_interval(options.keep_alive_interval)
        .keep_alive_timeout(options.keep_alive_timeout)
        .keep_alive_while_idle(false);
    // TLS is ours (the dialer's), not tonic's: tonic is built without its
    // `tls-*` features, so it hands our TLS stream an `https://` URI as it is
    // (with them it would refuse `https://` without its own TLS config).
    let tls = match address.is_secure() {
        true => Some(tls::Handshake::new(options.tls.as_ref(), address.dial_host())?),
        false => None,
    };
    let dialer =
        Dialer { host: address.dial_host().to_string(), port: address.port(), timeout: options.dial_timeout, tls };
    Ok(endpoint.connect_with_connector_lazy(dialer))
}

/// Dials one endpoint over TCP, then TLS for a secure endpoint, both
/// bounded by the dial timeout. tonic wraps its errors in
/// [`tonic::ConnectError`], which marks a request that was never sent (a
/// failed TLS handshake included: no request byte was written).
#[derive(Clone)]
struct Dialer {
    host: String,
    port: u16,
    timeout: Duration,
    tls: Option<tls::Handshake>,
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("cannot connect to {address}: {source}")]
    Io { address: String, source: std::io::Error },
    #[error("cannot connect to {address}: no connection within {timeout:?}")]
    TimedOut { address: String, timeout: Duration },
    #[error("cannot connect to {address}: TLS handshake failed: {source}")]
    Tls { address: String, source: std::io::Error },
}

impl tonic::codegen::Service<Uri> for Dialer {
    type Response = TokioIo<tls::Stream>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Self::Response, DialError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let Dialer { host, port, timeout, tls } = self.clone();
        Box::pin(async move {
            let address = format!("{host}:{port}");
            let deadline = Instant::now() + timeout;
            let stream = match tokio::time::timeout_at(deadline, TcpStream::connect((host.as_str(), port))).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(source)) => return Err(DialError::Io { address, source }),
                Err(_) => return Err(DialError::TimedOut { address, timeout }),
            };
            // Small requests: send at once.
            let _ = stream.set_nodelay(true);
            let Some(tls) = tls else { return Ok(TokioIo::new(tls::Stream::Plain(stream))) };
            match tokio::time::timeout_at(deadline, tls.connect(stream)).await {
                Ok(Ok(stream)) => Ok(TokioIo::new(stream)),
                Ok(Err(source)) => Err(DialError::Tls { address, source }),
                Err(_) => Err(DialError::TimedOut { address, timeout }),
            }
        })
    }
}
