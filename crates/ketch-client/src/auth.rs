//! Authentication: the token the client presents, and the `Auth` API.
//!
//! A client made with [`crate::ClientOptions::credentials`] calls
//! `Auth.Authenticate` when it connects and attaches the token it gets to
//! every request as the gRPC metadata `token` (etcd's
//! `rpctypes.TokenFieldNameGRPC`, as clientv3 does). A server that has
//! authentication disabled answers `authentication is not enabled`: the
//! client then goes on without a token, as clientv3 does.
//!
//! Tokens expire (etcd's simple tokens after `--auth-token-ttl` seconds
//! unused, JWTs at their expiry). A request the server refuses with
//! `etcdserver: invalid auth token` was rejected before it ran, so the
//! client authenticates again and sends it once more, writes included. A
//! request refused with `etcdserver: user name is empty` while the client
//! holds no token (authentication was enabled after it connected) is
//! treated the same way. Concurrent requests that fail with the same stale
//! token share one new authentication.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use ketch_proto::authpb::{Permission, UserAddOptions, permission::Type as PermissionType};
use ketch_proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse, AuthRoleAddRequest,
    AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse, AuthRoleGetRequest, AuthRoleGetResponse,
    AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest, AuthStatusResponse,
    AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest, AuthUserChangePasswordResponse,
    AuthUserDeleteRequest, AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse, AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, auth_client::AuthClient,
};

use crate::client::Inner;
use crate::error::{ErrorKind, Result};
use crate::retry::{Cause, Idempotence};

/// A user name and password to authenticate with.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) name: String,
    pub(crate) password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("Credentials").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The token a client presents, with a generation counter so that
/// concurrent requests failing with the same stale token authenticate once.
#[derive(Debug)]
pub(crate) struct TokenState {
    pub(crate) credentials: Credentials,
    current: Mutex<(u64, Option<String>)>,
    /// Held while authenticating.
    refreshing: tokio::sync::Mutex<()>,
}

impl TokenState {
    pub(crate) fn new(credentials: Credentials) -> TokenState {
        TokenState { credentials, current: Mutex::new((0, None)), refreshing: tokio::sync::Mutex::new(()) }
    }

    /// The current generation and token.
    pub(crate) fn current(&self) -> (u64, Option<String>) {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, token: Option<String>) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.0 += 1;
        current.1 = token;
    }
}

/// Whether a failed attempt asks for a new token: the token was refused,
/// or none was sent while the server wants one.
pub(crate) fn needs_new_token(cause: &Cause, had_token: bool) -> bool {
    let Cause::Status(e) = cause else { return false };
    match e.kind() {
        Some(ErrorKind::InvalidAuthToken) => true,
        Some(ErrorKind::UserEmpty) => !had_token,
        _ => false,
    }
}

/// Whether a watch creation was canceled for its stream's token (etcd
/// cancels it with the refusal's text, `rpc error: code = Unauthenticated
/// desc = etcdserver: invalid auth token`, instead of failing the stream).
pub(crate) fn watch_refused_token(reason: &str, had_token: bool) -> bool {
    reason.ends_with(ErrorKind::InvalidAuthToken.message())
        || (!had_token && reason.ends_with(ErrorKind::UserEmpty.message()))
}

impl Inner {
    /// Authenticates with the client's credentials and keeps the token
    /// (none if the server has authentication disabled). `seen`: the
    /// generation of the token a failed request carried; if another request
    /// has replaced it meanwhile, that token is used and no new
    /// authentication is made.
    /// (Boxed: the call loop that asks for it also runs it.)
    pub(crate) fn refresh_token(&self, seen: Option<u64>) -> Pin<Box<dyn Future<Output = Result<()>> + Send + '_>> {
        Box::pin(self.refresh_token_inner(seen))
    }

    async fn refresh_token_inner(&self, seen: Option<u64>) -> Result<()> {
        let Some(state) = &self.token else { return Ok(()) };
        let _guard = state.refreshing.lock().await;
        if let Some(seen) = seen
            && state.current().0 != seen
        {
            return Ok(());
        }
        let request =
            AuthenticateRequest { name: state.credentials.name.clone(), password: state.credentials.password.clone() };
        // Authenticating again is harmless (the server hands out another
        // token): it fails over like a read.
        let answer = self
            .call_without_token("Auth.Authenticate", Idempotence::Immutable, request, |ch, r| async move {
                AuthClient::new(ch).authenticate(r).await
            })
            .await;
        match answer {
            Ok(response) => {
                state.set(Some(response.token));
                Ok(())
            }
            Err(e) if e.kind() == Some(ErrorKind::AuthNotEnabled) => {
                tracing::debug!("authentication is not enabled on the server: going on without a token");
                state.set(None);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// The authentication API of a [`crate::Client`]: users, roles,
/// permissions, and turning authentication on and off.
///
/// Reads (`user_get`, `user_list`, `role_get`, `role_list`,
/// `auth_status`) fail over like any read; changes are sent at most once.
///
/// ```no_run
/// use ketch_client::{Client, ClientOptions, PermissionType};
///
/// # async fn example() -> Result<(), ketch_client::Error> {
/// let admin = Client::connect(["127.0.0.1:2379"], ClientOptions::new()).await?;
/// let auth = admin.auth();
/// auth.user_add("root", "rootpw").await?;
/// auth.role_add("root").await?;
/// auth.user_grant_role("root", "root").await?;
/// auth.role_add("reader").await?;
/// auth.role_grant_permission("reader", "app/", "app0", PermissionType::Read).await?;
/// auth.user_add("alice", "alicepw").await?;
/// auth.user_grant_role("alice", "reader").await?;
/// auth.auth_enable().await?;
///
/// // From now on, requests need a token: a client with credentials gets
/// // one when it connects, and a new one whenever the server refuses it.
/// let options = ClientOptions::new().credentials("alice", "alicepw");
/// let alice = Client::connect(["127.0.0.1:2379"], options).await?;
/// let got = alice.kv().get("app/", ketch_client::GetOptions::new().prefix()).await?;
/// println!("{} keys", got.count);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

macro_rules! call {
    ($self:ident, $name:literal, $idempotence:expr, $request:expr, $method:ident) => {
        $self
            .inner
            .unary($name, $idempotence, $request, |ch, r| async move { AuthClient::new(ch).$method(r).await })
            .await
    };
}

impl Auth {
    pub(crate) fn new(inner: Arc<Inner>) -> Auth {
        Auth { inner }
    }

    /// Turns authentication on. The server refuses unless user `root`
    /// exists (`root user does not exist`) and has role `root` (`root user
    /// does not have root role`).
    pub async fn auth_enable(&self) -> Result<AuthEnableResponse> {
        call!(self, "Auth.AuthEnable", Idempotence::Mutable, AuthEnableRequest {}, auth_enable)
    }

    /// Turns authentication off (needs `root` while it is on).
    pub async fn auth_disable(&self) -> Result<AuthDisableResponse> {
        call!(self, "Auth.AuthDisable", Idempotence::Mutable, AuthDisableRequest {}, auth_disable)
    }

    /// Whether authentication is on, and the auth store's revision. etcd
    /// 3.5 and later only: etcd 3.4 answers `Unimplemented`.
    pub async fn auth_status(&self) -> Result<AuthStatusResponse> {
        call!(self, "Auth.AuthStatus", Idempotence::Immutable, AuthStatusRequest {}, auth_status)
    }

    /// Checks `name` and `password` and returns a token for them, without
    /// changing the token this client presents.
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<AuthenticateResponse> {
        let request = AuthenticateRequest { name: name.to_string(), password: password.to_string() };
        self.inner
            .call_without_token("Auth.Authenticate", Idempotence::Immutable, request, |ch, r| async move {
                AuthClient::new(ch).authenticate(r).await
            })
            .await
    }

    /// Adds user `name` with `password`.
    pub async fn user_add(&self, name: &str, password: &str) -> Result<AuthUserAddResponse> {
        self.user_add_with_options(name, password, false).await
    }

    /// Adds user `name`; with `no_password`, a user that can only
    /// authenticate with a TLS client certificate (`password` ignored).
    pub async fn user_add_with_options(
        &self,
        name: &str,
        password: &str,
        no_password: bool,
    ) -> Result<AuthUserAddResponse> {
        let request = AuthUserAddRequest {
            name: name.to_string(),
            password: if no_password { String::new() } else { password.to_string() },
            options: Some(UserAddOptions { no_password }),
            hashed_password: String::new(),
        };
        call!(self, "Auth.UserAdd", Idempotence::Mutable, request, user_add)
    }

    /// Deletes user `name`.
    pub async fn user_delete(&self, name: &str) -> Result<AuthUserDeleteResponse> {
        call!(
            self,
            "Auth.UserDelete",
            Idempotence::Mutable,
            AuthUserDeleteRequest { name: name.to_string() },
            user_delete
        )
    }

    /// User `name`'s roles.
    pub async fn user_get(&self, name: &str) -> Result<AuthUserGetResponse> {
        call!(self, "Auth.UserGet", Idempotence::Immutable, AuthUserGetRequest { name: name.to_string() }, user_get)
    }

    /// Every user's name, sorted.
    pub async fn user_list(&self) -> Result<AuthUserListResponse> {
        call!(self, "Auth.UserList", Idempotence::Immutable, AuthUserListRequest {}, user_list)
    }

    /// Replaces user `name`'s password.
    pub async fn user_change_password(&self, name: &str, password: &str) -> Result<AuthUserChangePasswordResponse> {
        let request = AuthUserChangePasswordRequest {
            name: name.to_string(),
            password: password.to_string(),
            hashed_password: String::new(),
        };
        call!(self, "Auth.UserChangePassword", Idempotence::Mutable, request, user_change_password)
    }

    /// Grants `role` to user `name`.
    pub async fn user_grant_role(&self, name: &str, role: &str) -> Result<AuthUserGrantRoleResponse> {
        let request = AuthUserGrantRoleRequest { user: name.to_string(), role: role.to_string() };
        call!(self, "Auth.UserGrantRole", Idempotence::Mutable, request, user_grant_role)
    }

    /// Revokes `role` from user `name`.
    pub async fn user_revoke_role(&self, name: &str, role: &str) -> Result<AuthUserRevokeRoleResponse> {
        let request = AuthUserRevokeRoleRequest { name: name.to_string(), role: role.to_string() };
        call!(self, "Auth.UserRevokeRole", Idempotence::Mutable, request, user_revoke_role)
    }

    /// Adds role `name`.
    pub async fn role_add(&self, name: &str) -> Result<AuthRoleAddResponse> {
        call!(self, "Auth.RoleAdd", Idempotence::Mutable, AuthRoleAddRequest { name: name.to_string() }, role_add)
    }

    /// Deletes role `name` (and revokes it from every user).
    pub async fn role_delete(&self, name: &str) -> Result<AuthRoleDeleteResponse> {
        call!(
            self,
            "Auth.RoleDelete",
            Idempotence::Mutable,
            AuthRoleDeleteRequest { role: name.to_string() },
            role_delete
        )
    }

    /// Role `name`'s permissions.
    pub async fn role_get(&self, name: &str) -> Result<AuthRoleGetResponse> {
        call!(self, "Auth.RoleGet", Idempotence::Immutable, AuthRoleGetRequest { role: name.to_string() }, role_get)
    }

    /// Every role's name, sorted.
    pub async fn role_list(&self) -> Result<AuthRoleListResponse> {
        call!(self, "Auth.RoleList", Idempotence::Immutable, AuthRoleListRequest {}, role_list)
    }

    /// Grants role `name` access of type `permission` to `key` (an empty
    /// `range_end`), or to the range `[key, range_end)`. As in etcd, a
    /// `range_end` of `"\0"` means every key from `key` on, and the key
    /// `"\0"` with that end every key ([`crate::prefix_range_end`] gives
    /// the end of a prefix).
    pub async fn role_grant_permission(
        &self,
        name: &str,
        key: impl Into<Vec<u8>>,
        range_end: impl Into<Vec<u8>>,
        permission: PermissionType,
    ) -> Result<AuthRoleGrantPermissionResponse> {
        let perm = Permission { perm_type: permission as i32, key: key.into(), range_end: range_end.into() };
        let request = AuthRoleGrantPermissionRequest { name: name.to_string(), perm: Some(perm) };
        call!(self, "Auth.RoleGrantPermission", Idempotence::Mutable, request, role_grant_permission)
    }

    /// Revokes role `name`'s permission on exactly `key` / `[key,
    /// range_end)` as granted.
    pub async fn role_revoke_permission(
        &self,
        name: &str,
        key: impl Into<Vec<u8>>,
        range_end: impl Into<Vec<u8>>,
    ) -> Result<AuthRoleRevokePermissionResponse> {
        let request =
            AuthRoleRevokePermissionRequest { role: name.to_string(), key: key.into(), range_end: range_end.into() };
        call!(self, "Auth.RoleRevokePermission", Idempotence::Mutable, request, role_revoke_permission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EtcdError;
    use tonic::Code;

    #[test]
    fn which_failures_ask_for_a_new_token() {
        let status = |code, message: &str| Cause::Status(EtcdError::new(code, message));
        let invalid = status(Code::Unauthenticated, "etcdserver: invalid auth token");
        assert!(needs_new_token(&invalid, true));
        assert!(needs_new_token(&invalid, false));
        let empty = status(Code::InvalidArgument, "etcdserver: user name is empty");
        assert!(needs_new_token(&empty, false), "auth was enabled after the client connected");
        assert!(!needs_new_token(&empty, true), "a request with an empty user name, not a token problem");
        assert!(!needs_new_token(&status(Code::PermissionDenied, "etcdserver: permission denied"), true));
        assert!(!needs_new_token(&Cause::StreamEnded, true));
        let canceled = "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token";
        assert!(watch_refused_token(canceled, true));
        assert!(!watch_refused_token("etcdserver: permission denied", true));
        assert!(watch_refused_token("rpc error: code = InvalidArgument desc = etcdserver: user name is empty", false));
    }

    #[test]
    fn credentials_never_show_the_password() {
        let c = Credentials { name: "root".into(), password: "s3cret".into() };
        let shown = format!("{c:?}");
        assert!(shown.contains("root") && !shown.contains("s3cret"), "{shown}");
    }
}
