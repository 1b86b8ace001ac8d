//! `endpoint health|status|hashkv`, and the `--cluster` endpoint list that
//! `defrag` shares.

use std::time::Instant;

use ketch_client::ErrorKind;
use tokio::task::JoinSet;

use crate::cli::{Flags, Invocation};
use crate::error::{CtlResult, EXIT_ERROR, Exit, err, message};
use crate::gofmt;
use crate::printer::{EndpointHash, EndpointHealth, EndpointStatus};
use crate::session::{self, Session};

/// The endpoints a per-endpoint command works on: `--endpoints`, or with
/// `--cluster` the client URLs of every member (etcdctl's
/// `endpointsFromCluster`).
pub async fn endpoints_from_cluster(s: &Session, flags: &Flags) -> Result<Vec<String>, Exit> {
    if !flags.bool("cluster") {
        // `--endpoints` even with `--discovery-srv` (etcdctl 3.4).
        return Ok(flags.strings("endpoints"));
    }
    let members = s.logged(s.client.cluster().member_list().await).map_err(|e| {
        Exit::error(EXIT_ERROR, format!("failed to fetch endpoints from etcd cluster member list: {}", message(&e)))
    })?;
    Ok(members.members.into_iter().flat_map(|m| m.client_ur_ls).collect())
}

/// `endpoint health`: a read through each endpoint; answered at all, or
/// refused for permissions, is healthy (etcdctl 3.4 does not look at
/// alarms; the alarm list would be a raft entry on etcd 3.4).
pub async fn health(mut inv: Invocation) -> CtlResult {
    let s = session::connect(&mut inv).await?;
    let endpoints = endpoints_from_cluster(&s, &inv.flags).await?;
    let mut checks = JoinSet::new();
    for endpoint in endpoints {
        let flags = inv.flags.clone();
        let printer = s.printer.clone();
        checks.spawn(async move {
            let one = match session::connect_to(&flags, vec![endpoint.clone()], printer).await {
                Ok(one) => one,
                Err(e) => {
                    let error = e.stderr.trim_start_matches("Error: ").trim_end().to_string();
                    return EndpointHealth { endpoint, health: false, took: String::new(), error };
                }
            };
            check_health(&one, endpoint).await
        });
    }
    let mut list = Vec::new();
    while let Some(result) = checks.join_next().await {
        if let Ok(health) = result {
            list.push(health);
        }
    }
    let unhealthy = list.iter().any(|h| !h.error.is_empty());
    s.printer.endpoint_health(&list)?;
    if unhealthy {
        return Err(Exit::error(EXIT_ERROR, "unhealthy cluster"));
    }
    Ok(())
}

async fn check_health(s: &Session, endpoint: String) -> EndpointHealth {
    let start = Instant::now();
    let read = s.logged(s.client.kv().get("health", ketch_client::GetOptions::new()).await);
    let took = gofmt::format_duration(start.elapsed());
    let mut health = EndpointHealth { endpoint, health: false, took, error: String::new() };
    match read {
        Ok(_) => health.health = true,
        Err(e) if e.kind() == Some(ErrorKind::PermissionDenied) => health.health = true,
        Err(e) => health.error = message(&e),
    }
    health
}

/// `endpoint status`.
pub async fn status(mut inv: Invocation) -> CtlResult {
    let s = session::connect(&mut inv).await?;
    let endpoints = endpoints_from_cluster(&s, &inv.flags).await?;
    let mut list = Vec::new();
    let mut failed = false;
    for endpoint in endpoints {
        match s.logged_on(&endpoint, s.client.maintenance().status_of(&endpoint).await) {
            Ok(status) => list.push(EndpointStatus { endpoint, status }),
            Err(e) => {
                failed = true;
                err(format!("Failed to get the status of endpoint {endpoint} ({})\n", message(&e)));
            }
        }
    }
    s.printer.endpoint_status(&list)?;
    if failed {
        return Err(Exit::silent(EXIT_ERROR));
    }
    Ok(())
}

/// `endpoint hashkv [--rev]`.
pub async fn hash_kv(mut inv: Invocation) -> CtlResult {
    let revision = inv.flags.int("rev");
    let s = session::connect(&mut inv).await?;
    let endpoints = endpoints_from_cluster(&s, &inv.flags).await?;
    let mut list = Vec::new();
    let mut last_error = None;
    for endpoint in endpoints {
        match s.logged_on(&endpoint, s.client.maintenance().hash_kv(&endpoint, revision).await) {
            Ok(hash) => list.push(EndpointHash { endpoint, hash }),
            Err(e) => {
                err(format!("Failed to get the hash of endpoint {endpoint} ({})\n", message(&e)));
                last_error = Some(e);
            }
        }
    }
    s.printer.endpoint_hash(&list)?;
    if let Some(e) = last_error {
        return Err(Exit::error(EXIT_ERROR, message(&e)));
    }
    Ok(())
}
