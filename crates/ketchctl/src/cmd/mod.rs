//! One function per etcdctl command; [`run`] dispatches on the command path.

mod auth;
mod check;
mod concurrency;
mod endpoint;
mod kv;
mod lease;
mod maintenance;
mod member;
mod txn;
mod watch;

use crate::cli::{self, Invocation};
use crate::error::{CtlResult, EXIT_BAD_FEATURE, Exit, out};

/// Runs the command `inv` names.
pub async fn run(inv: Invocation) -> CtlResult {
    match inv.path.as_str() {
        "get" => kv::get(inv).await,
        "put" => kv::put(inv).await,
        "del" => kv::del(inv).await,
        "txn" => txn::txn(inv).await,
        "compaction" => kv::compaction(inv).await,
        "watch" => watch::watch(inv).await,
        "lease grant" => lease::grant(inv).await,
        "lease revoke" => lease::revoke(inv).await,
        "lease timetolive" => lease::time_to_live(inv).await,
        "lease list" => lease::list(inv).await,
        "lease keep-alive" => lease::keep_alive(inv).await,
        "member add" => member::add(inv).await,
        "member remove" => member::remove(inv).await,
        "member update" => member::update(inv).await,
        "member list" => member::list(inv).await,
        "member promote" => member::promote(inv).await,
        "endpoint health" => endpoint::health(inv).await,
        "endpoint status" => endpoint::status(inv).await,
        "endpoint hashkv" => endpoint::hash_kv(inv).await,
        "move-leader" => maintenance::move_leader(inv).await,
        "alarm list" => maintenance::alarm_list(inv).await,
        "alarm disarm" => maintenance::alarm_disarm(inv).await,
        "defrag" => maintenance::defrag(inv).await,
        "snapshot save" => maintenance::snapshot_save(inv).await,
        "lock" => concurrency::lock(inv).await,
        "user add" => auth::user_add(inv).await,
        "user delete" => auth::user_delete(inv).await,
        "user get" => auth::user_get(inv).await,
        "user list" => auth::user_list(inv).await,
        "user passwd" => auth::user_passwd(inv).await,
        "user grant-role" => auth::user_grant_role(inv).await,
        "user revoke-role" => auth::user_revoke_role(inv).await,
        "role add" => auth::role_add(inv).await,
        "role delete" => auth::role_delete(inv).await,
        "role get" => auth::role_get(inv).await,
        "role list" => auth::role_list(inv).await,
        "role grant-permission" => auth::role_grant_permission(inv).await,
        "role revoke-permission" => auth::role_revoke_permission(inv).await,
        "auth enable" => auth::auth_enable(inv).await,
        "auth disable" => auth::auth_disable(inv).await,
        "check perf" => check::perf(inv).await,
        "elect" => concurrency::elect(inv).await,
        "version" => {
            maintenance::version();
            Ok(())
        }
        "help" => {
            out(cli::help_command(&inv.args)?);
            Ok(())
        }
        other => Err(unsupported(other)),
    }
}

/// A command ketchctl does not implement: why, clearly, with etcdctl's
/// "bad feature" exit code.
fn unsupported(path: &str) -> Exit {
    let group = path.split(' ').next().unwrap_or(path);
    let why = match group {
        "snapshot" => " (it works offline on etcd's bbolt files, which Ketch does not use)",
        "migrate" => " (it migrates etcd v2 data, which Ketch never had)",
        _ => "",
    };
    Exit::error(EXIT_BAD_FEATURE, format!("ketchctl: `{path}` is not supported yet{why}"))
}
