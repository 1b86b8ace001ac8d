//! `ketch-client`'s authentication against the reference etcd 3.4.23
//! (Ketch has no authentication yet): the Auth API, tokens on every
//! request, etcd's errors for refused requests, and re-authentication
//! after the server forgot the token (simple tokens with a 1 s TTL).

use std::time::Duration;

use ketch_client::proto::{RangeRequest, kv_client::KvClient};
use ketch_client::{Client, ClientOptions, ErrorKind, GetOptions, PermissionType, PutOptions, WatchOptions};
use ketch_e2e::{Kind, Member};

/// Fast password hashing, and simple tokens forgotten after a second
/// unused.
const SERVER_FLAGS: &[&str] = &["--bcrypt-cost", "4", "--auth-token", "simple", "--auth-token-ttl", "1"];
/// Long enough for etcd to have dropped an unused token (its TTL keeper
/// checks every second).
const TOKEN_EXPIRY_WAIT: Duration = Duration::from_secs(4);

fn as_user(name: &str, password: &str) -> ClientOptions {
    ClientOptions::new().credentials(name, password).request_timeout(Duration::from_secs(5))
}

/// A range request with `token` (or none) on a raw connection.
async fn raw_get(member: &Member, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut kv = KvClient::connect(member.client_url()).await.expect("cannot connect to etcd");
    let mut request = tonic::Request::new(RangeRequest { key: b"pub/a".to_vec(), ..Default::default() });
    if let Some(token) = token {
        request.metadata_mut().insert("token", token.parse().expect("an ASCII token"));
    }
    kv.range(request).await.map(|_| ())
}

#[tokio::test]
async fn client_authenticates_and_reauthenticates_after_token_expiry() {
    let member = Member::start(Kind::Etcd, SERVER_FLAGS).await;
    let endpoint = [member.endpoint()];

    // Credentials while authentication is off: no token, requests work.
    let early = Client::connect(endpoint.clone(), as_user("root", "rootpw")).await.expect("connect with auth off");
    assert!(!early.has_token());
    early.kv().put("pub/a", "1", PutOptions::new()).await.expect("put with auth off");

    let admin = Client::connect(endpoint.clone(), ClientOptions::new()).await.expect("connect");
    let auth = admin.auth();
    let e = auth.auth_enable().await.expect_err("no root user yet");
    assert_eq!(e.kind(), Some(ErrorKind::RootUserNotExist), "{e:?}");
    auth.user_add("root", "rootpw").await.expect("user add root");
    let e = auth.user_add("root", "again").await.expect_err("duplicate user");
    assert_eq!(e.kind(), Some(ErrorKind::UserAlreadyExists), "{e:?}");
    let e = auth.auth_enable().await.expect_err("root has no root role");
    assert_eq!(e.kind(), Some(ErrorKind::RootRoleNotExist), "{e:?}");
    auth.role_add("root").await.expect("role add root");
    auth.user_grant_role("root", "root").await.expect("grant root");
    auth.role_add("reader").await.expect("role add reader");
    auth.role_grant_permission("reader", "pub/", ketch_client::prefix_range_end(b"pub/"), PermissionType::Read)
        .await
        .expect("grant read on pub/");
    auth.user_add("alice", "alicepw").await.expect("user add alice");
    auth.user_grant_role("alice", "reader").await.expect("grant reader");
    let role = auth.role_get("reader").await.expect("role get");
    assert_eq!(role.perm.len(), 1);
    assert_eq!(role.perm[0].key, b"pub/");
    assert_eq!(auth.user_get("alice").await.expect("user get").roles, vec!["reader".to_string()]);
    assert_eq!(auth.user_list().await.expect("user list").users, vec!["alice".to_string(), "root".to_string()]);
    assert_eq!(auth.role_list().await.expect("role list").roles, vec!["reader".to_string(), "root".to_string()]);
    let e = auth.user_get("nobody").await.expect_err("unknown user");
    assert_eq!(e.kind(), Some(ErrorKind::UserNotFound), "{e:?}");
    let e = auth.auth_status().await.expect_err("etcd 3.4 has no AuthStatus");
    assert_eq!(e.code(), Some(ketch_client::Code::Unimplemented), "{e:?}");
    auth.auth_enable().await.expect("auth enable");

    // The client without credentials is now refused; the early one (no
    // token yet) authenticates on its next request.
    let e = admin.kv().get("pub/a", GetOptions::new()).await.expect_err("no token");
    assert_eq!(e.kind(), Some(ErrorKind::UserEmpty), "{e:?}");
    early.kv().get("pub/a", GetOptions::new()).await.expect("the early client authenticates");
    assert!(early.has_token());

    let e = Client::connect(endpoint.clone(), as_user("root", "wrong")).await.expect_err("wrong password");
    assert_eq!(e.kind(), Some(ErrorKind::AuthFailed), "{e:?}");

    let root = Client::connect(endpoint.clone(), as_user("root", "rootpw")).await.expect("connect as root");
    assert!(root.has_token());
    root.kv().put("pub/a", "2", PutOptions::new()).await.expect("put as root");
    let alice = Client::connect(endpoint.clone(), as_user("alice", "alicepw")).await.expect("connect as alice");
    let got = alice.kv().get("pub/a", GetOptions::new()).await.expect("alice reads pub/");
    assert_eq!(got.kvs[0].value, b"2");
    let e = alice.kv().put("pub/a", "3", PutOptions::new()).await.expect_err("alice may not write");
    assert_eq!(e.kind(), Some(ErrorKind::PermissionDenied), "{e:?}");
    let e = alice.auth().user_list().await.expect_err("alice is no admin");
    assert_eq!(e.kind(), Some(ErrorKind::PermissionDenied), "{e:?}");

    // A token of our own shows that etcd really forgets unused tokens.
    let token = root.auth().authenticate("root", "rootpw").await.expect("authenticate").token;
    raw_get(&member, Some(&token)).await.expect("a fresh token is accepted");
    tokio::time::sleep(TOKEN_EXPIRY_WAIT).await;
    let refused = raw_get(&member, Some(&token)).await.expect_err("the token expired");
    assert_eq!(refused.message(), "etcdserver: invalid auth token", "{refused:?}");

    // The clients' tokens expired the same way: they authenticate again,
    // and the refused requests, writes included, are sent once more.
    root.kv().put("pub/b", "1", PutOptions::new()).await.expect("put after expiry");
    tokio::time::sleep(TOKEN_EXPIRY_WAIT).await;
    let got = root.kv().get("pub/", GetOptions::new().prefix()).await.expect("get after expiry");
    assert_eq!(got.count, 2);
    tokio::time::sleep(TOKEN_EXPIRY_WAIT).await;
    let lease = root.lease().grant(30).await.expect("lease grant after expiry");
    root.lease().revoke(lease.id).await.expect("lease revoke");
    tokio::time::sleep(TOKEN_EXPIRY_WAIT).await;
    alice.kv().get("pub/b", GetOptions::new()).await.expect("alice reads after expiry");
    tokio::time::sleep(TOKEN_EXPIRY_WAIT).await;
    let mut watcher = alice.watch().watch("pub/", WatchOptions::new().prefix()).await.expect("watch after expiry");
    root.kv().put("pub/c", "1", PutOptions::new()).await.expect("put for the watch");
    let event = tokio::time::timeout(Duration::from_secs(10), watcher.message())
        .await
        .expect("watch event in time")
        .expect("watch message")
        .expect("watch still open");
    assert_eq!(event.events[0].kv.as_ref().map(|kv| kv.key.clone()), Some(b"pub/c".to_vec()));

    root.auth().auth_disable().await.expect("auth disable");
    admin.kv().get("pub/a", GetOptions::new()).await.expect("no token needed any more");
}
