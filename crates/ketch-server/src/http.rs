//! etcd's plain-HTTP endpoints on the client port: `/health` and `/version`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::grpc::{ETCD_CLUSTER_VERSION, ETCD_VERSION};
use crate::member::Member;

pub fn router(member: Member) -> Router {
    Router::new().route("/health", get(health)).route("/version", get(version)).with_state(member)
}

/// etcd 3.4's `/health`: healthy when there is a leader and a read succeeds.
async fn health(State(member): State<Member>) -> (StatusCode, &'static str) {
    let healthy = member.raft_status().leader != 0 && member.read(|view| Ok(view.rev())).await.is_ok();
    if healthy {
        (StatusCode::OK, r#"{"health":"true"}"#)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, r#"{"health":"false"}"#)
    }
}

async fn version() -> String {
    serde_json::json!({ "etcdserver": ETCD_VERSION, "etcdcluster": ETCD_CLUSTER_VERSION }).to_string()
}
