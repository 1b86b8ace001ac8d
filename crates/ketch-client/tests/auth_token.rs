//! The auth token through the real call path, without an etcd: an
//! in-process fake server with etcd's `Auth.Authenticate` and a `KV` that
//! checks the `token` metadata as etcd does (no token: `user name is
//! empty`; an unknown or expired one: `invalid auth token`).
//!
//! What must hold: connecting authenticates; every request carries the
//! current token and `Authenticate` none; a refused token is replaced once
//! and the refused request (a write included: it did not run) sent again;
//! concurrent requests share one new authentication; a server with
//! authentication disabled is used without a token until it enables it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ketch_client::proto::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse, AuthRoleAddRequest,
    AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse, AuthRoleGetRequest, AuthRoleGetResponse,
    AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest, AuthStatusResponse,
    AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest, AuthUserChangePasswordResponse,
    AuthUserDeleteRequest, AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse, AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader,
    TxnRequest, TxnResponse,
    auth_server::{Auth, AuthServer},
    kv_server::{Kv, KvServer},
};
use ketch_client::{Client, ClientOptions, ErrorKind, GetOptions, PutOptions};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// The fake server's state, shared by its two services.
#[derive(Clone, Default)]
struct Fake {
    enabled: Arc<AtomicBool>,
    password: Arc<Mutex<String>>,
    /// The token the server accepts now.
    valid: Arc<Mutex<Option<String>>>,
    issued: Arc<AtomicUsize>,
    /// `Authenticate` requests that came with a token.
    authenticate_with_token: Arc<AtomicUsize>,
    /// KV requests that reached the server, and those it served.
    received: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    /// Refuse every token (a server that never accepts it).
    refuse_all: Arc<AtomicBool>,
}

impl Fake {
    fn new(enabled: bool) -> Fake {
        let fake = Fake::default();
        fake.enabled.store(enabled, Ordering::SeqCst);
        *fake.password.lock().unwrap() = "pw".to_string();
        fake
    }

    /// Forgets the token handed out (it expired).
    fn expire(&self) {
        *self.valid.lock().unwrap() = None;
    }

    /// etcd's check of a request's token.
    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.received.fetch_add(1, Ordering::SeqCst);
        if !self.enabled.load(Ordering::SeqCst) {
            self.served.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        let Some(token) = request.metadata().get("token").and_then(|v| v.to_str().ok()) else {
            return Err(Status::invalid_argument("etcdserver: user name is empty"));
        };
        let valid = self.valid.lock().unwrap().clone();
        if self.refuse_all.load(Ordering::SeqCst) || valid.as_deref() != Some(token) {
            return Err(Status::unauthenticated("etcdserver: invalid auth token"));
        }
        self.served.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn header() -> Option<ResponseHeader> {
    Some(ResponseHeader { cluster_id: 1, member_id: 1, revision: 5, raft_term: 2 })
}

#[tonic::async_trait]
impl Kv for Fake {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.check(&request)?;
        Ok(Response::new(RangeResponse { header: header(), ..Default::default() }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.check(&request)?;
        Ok(Response::new(PutResponse { header: header(), prev_kv: None }))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.check(&request)?;
        Ok(Response::new(DeleteRangeResponse { header: header(), ..Default::default() }))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.check(&request)?;
        Ok(Response::new(TxnResponse { header: header(), ..Default::default() }))
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        self.check(&request)?;
        Ok(Response::new(CompactionResponse { header: header() }))
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in the fake"))
}

#[tonic::async_trait]
impl Auth for Fake {
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        if request.metadata().get("token").is_some() {
            self.authenticate_with_token.fetch_add(1, Ordering::SeqCst);
        }
        if !self.enabled.load(Ordering::SeqCst) {
            return Err(Status::failed_precondition("etcdserver: authentication is not enabled"));
        }
        let request = request.into_inner();
        if request.name != "root" || request.password != *self.password.lock().unwrap() {
            return Err(Status::invalid_argument("etcdserver: authentication failed, invalid user ID or password"));
        }
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("token-{n}");
        *self.valid.lock().unwrap() = Some(token.clone());
        Ok(Response::new(AuthenticateResponse { header: header(), token }))
    }

    async fn user_list(&self, request: Request<AuthUserListRequest>) -> Result<Response<AuthUserListResponse>, Status> {
        self.check(&request)?;
        Ok(Response::new(AuthUserListResponse { header: header(), users: vec!["root".into()] }))
    }

    async fn auth_enable(&self, _: Request<AuthEnableRequest>) -> Result<Response<AuthEnableResponse>, Status> {
        unimplemented()
    }
    async fn auth_disable(&self, _: Request<AuthDisableRequest>) -> Result<Response<AuthDisableResponse>, Status> {
        unimplemented()
    }
    async fn auth_status(&self, _: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        unimplemented()
    }
    async fn user_add(&self, _: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        unimplemented()
    }
    async fn user_get(&self, _: Request<AuthUserGetRequest>) -> Result<Response<AuthUserGetResponse>, Status> {
        unimplemented()
    }
    async fn user_delete(&self, _: Request<AuthUserDeleteRequest>) -> Result<Response<AuthUserDeleteResponse>, Status> {
        unimplemented()
    }
    async fn user_change_password(
        &self,
        _: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        unimplemented()
    }
    async fn user_grant_role(
        &self,
        _: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        unimplemented()
    }
    async fn user_revoke_role(
        &self,
        _: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        unimplemented()
    }
    async fn role_add(&self, _: Request<AuthRoleAddRequest>) -> Result<Response<AuthRoleAddResponse>, Status> {
        unimplemented()
    }
    async fn role_get(&self, _: Request<AuthRoleGetRequest>) -> Result<Response<AuthRoleGetResponse>, Status> {
        unimplemented()
    }
    async fn role_list(&self, _: Request<AuthRoleListRequest>) -> Result<Response<AuthRoleListResponse>, Status> {
        unimplemented()
    }
    async fn role_delete(&self, _: Request<AuthRoleDeleteRequest>) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        unimplemented()
    }
    async fn role_grant_permission(
        &self,
        _: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        unimplemented()
    }
    async fn role_revoke_permission(
        &self,
        _: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        unimplemented()
    }
}

/// Serves `fake` on a fresh loopback port; returns `host:port`.
async fn serve(fake: Fake) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(fake.clone()))
            .add_service(AuthServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    address
}

fn root(password: &str) -> ClientOptions {
    ClientOptions::new().credentials("root", password)
}

#[tokio::test]
async fn connecting_authenticates_and_requests_carry_the_token() {
    let fake = Fake::new(true);
    let client = Client::connect([serve(fake.clone()).await], root("pw")).await.unwrap();
    assert_eq!(fake.issued.load(Ordering::SeqCst), 1);
    assert!(client.has_token());
    client.kv().put("k", "v", PutOptions::new()).await.unwrap();
    client.kv().get("k", GetOptions::new()).await.unwrap();
    let users = client.auth().user_list().await.unwrap();
    assert_eq!(users.users, vec!["root".to_string()]);
    assert_eq!(fake.served.load(Ordering::SeqCst), 3);
    assert_eq!(fake.received.load(Ordering::SeqCst), 3, "no request was refused");
    assert_eq!(fake.authenticate_with_token.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_without_credentials_sends_no_token() {
    let fake = Fake::new(true);
    let client = Client::connect([serve(fake.clone()).await], ClientOptions::new()).await.unwrap();
    assert!(!client.has_token());
    let e = client.kv().get("k", GetOptions::new()).await.unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::UserEmpty), "{e:?}");
    assert_eq!(fake.issued.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_wrong_password_fails_the_connection() {
    let fake = Fake::new(true);
    let e = Client::connect([serve(fake.clone()).await], root("nope")).await.unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::AuthFailed), "{e:?}");
}

#[tokio::test]
async fn an_expired_token_is_replaced_and_the_write_sent_again() {
    let fake = Fake::new(true);
    let client = Client::connect([serve(fake.clone()).await], root("pw")).await.unwrap();
    fake.expire();
    // A write: refused before it ran, so sent again with the new token.
    client.kv().put("k", "v", PutOptions::new()).await.unwrap();
    assert_eq!(fake.issued.load(Ordering::SeqCst), 2);
    assert_eq!(fake.received.load(Ordering::SeqCst), 2);
    assert_eq!(fake.served.load(Ordering::SeqCst), 1, "applied once");
    fake.expire();
    client.kv().get("k", GetOptions::new()).await.unwrap();
    assert_eq!(fake.issued.load(Ordering::SeqCst), 3);
    assert_eq!(fake.authenticate_with_token.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn concurrent_requests_share_one_new_authentication() {
    let fake = Fake::new(true);
    let client = Client::connect([serve(fake.clone()).await], root("pw")).await.unwrap();
    fake.expire();
    let mut gets = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let kv = client.kv();
        gets.spawn(async move { kv.get("k", GetOptions::new()).await });
    }
    while let Some(result) = gets.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(fake.issued.load(Ordering::SeqCst), 2, "one new token for all of them");
    assert_eq!(fake.served.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn a_refused_new_authentication_is_the_error() {
    let fake = Fake::new(true);
    let client = Client::connect([serve(fake.clone()).await], root("pw")).await.unwrap();
    fake.expire();
    *fake.password.lock().unwrap() = "changed".to_string();
    let e = client.kv().put("k", "v", PutOptions::new()).await.unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::AuthFailed), "{e:?}");
    assert_eq!(fake.served.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_token_refused_again_is_not_retried_forever() {
    let fake = Fake::new(true);
    let client = Client::connect([serve(fake.clone()).await], root("pw")).await.unwrap();
    fake.refuse_all.store(true, Ordering::SeqCst);
    let e = client.kv().put("k", "v", PutOptions::new()).await.unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::InvalidAuthToken), "{e:?}");
    assert_eq!(fake.received.load(Ordering::SeqCst), 2, "sent once more after one new authentication");
    assert_eq!(fake.issued.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn without_auth_on_the_server_until_it_is_enabled() {
    let fake = Fake::new(false);
    let client = Client::connect([serve(fake.clone()).await], root("pw")).await.unwrap();
    assert!(!client.has_token(), "authentication is not enabled: no token");
    client.kv().put("k", "v", PutOptions::new()).await.unwrap();
    fake.enabled.store(true, Ordering::SeqCst);
    // The server now wants a token the client does not have: it gets one.
    client.kv().put("k", "v", PutOptions::new()).await.unwrap();
    assert!(client.has_token());
    assert_eq!(fake.issued.load(Ordering::SeqCst), 1);
    assert_eq!(fake.served.load(Ordering::SeqCst), 2);
}
