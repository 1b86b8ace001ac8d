//! `alarm list|disarm`, `move-leader`, `defrag`, `snapshot save` and
//! `version`.

use std::io::Write;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ketch_client::AlarmType;
use ketch_client::proto::{AlarmMember, AlarmResponse};

use crate::cli::Invocation;
use crate::error::{CtlResult, EXIT_BAD_ARGS, EXIT_ERROR, EXIT_INTERRUPTED, Exit, err, go_io_error, message, out};
use crate::gofmt::{self, json_string_plain};
use crate::session;

/// `alarm list`.
pub async fn alarm_list(mut inv: Invocation) -> CtlResult {
    if !inv.args.is_empty() {
        return Err(Exit::error(EXIT_BAD_ARGS, "alarm list command accepts no arguments"));
    }
    let s = session::connect(&mut inv).await?;
    let response =
        s.logged(s.client.maintenance().alarm_list().await).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    s.printer.alarm(&response)
}

/// `alarm disarm`: clientv3 lists the alarms and clears each one; the
/// answer gathers the cleared alarms (and has no header).
pub async fn alarm_disarm(mut inv: Invocation) -> CtlResult {
    if !inv.args.is_empty() {
        return Err(Exit::error(EXIT_BAD_ARGS, "alarm disarm command accepts no arguments"));
    }
    let s = session::connect(&mut inv).await?;
    let maintenance = s.client.maintenance();
    let listed = s.logged(maintenance.alarm_list().await).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    let mut answer = AlarmResponse::default();
    for AlarmMember { member_id, alarm } in listed.alarms {
        let alarm = AlarmType::try_from(alarm).unwrap_or(AlarmType::None);
        let cleared = s
            .logged(maintenance.alarm_disarm(member_id, alarm).await)
            .map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
        answer.alarms.extend(cleared.alarms);
    }
    s.printer.alarm(&answer)
}

/// `move-leader <member id>`: asks each endpoint for its status, and the
/// leader among them to hand over.
pub async fn move_leader(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 1 {
        return Err(Exit::error(EXIT_BAD_ARGS, "move-leader command needs 1 argument"));
    }
    let target = gofmt::parse_uint(&inv.args[0], 16).map_err(|e| Exit::error(EXIT_BAD_ARGS, e))?;
    let s = session::connect(&mut inv).await?;
    let mut leader = None;
    for endpoint in &s.endpoints {
        let status = s
            .logged_on(endpoint, s.client.maintenance().status_of(endpoint).await)
            .map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
        if status.header.as_ref().is_some_and(|h| h.member_id == status.leader) {
            leader = Some((endpoint.clone(), status.leader));
            break;
        }
    }
    let Some((endpoint, leader_id)) = leader else {
        return Err(Exit::error(
            EXIT_BAD_ARGS,
            format!("no leader endpoint given at {}", gofmt::string_slice(&s.endpoints)),
        ));
    };
    let on_leader = session::connect_to(&inv.flags, vec![endpoint], s.printer.clone()).await?;
    let response = on_leader
        .logged(on_leader.client.maintenance().move_leader(target).await)
        .map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    s.printer.move_leader(leader_id, target, &response)
}

/// `defrag [--cluster]`.
pub async fn defrag(mut inv: Invocation) -> CtlResult {
    if !inv.flags.string("data-dir").is_empty() {
        return Err(Exit::unsupported("defragmenting an etcd data directory offline (defrag --data-dir)"));
    }
    let s = session::connect(&mut inv).await?;
    let endpoints = super::endpoint::endpoints_from_cluster(&s, &inv.flags).await?;
    let mut failures = 0;
    for endpoint in endpoints {
        match s.logged_on(&endpoint, s.client.maintenance().defragment(&endpoint).await) {
            Ok(_) => out(format!("Finished defragmenting etcd member[{endpoint}]\n")),
            Err(e) => {
                err(format!("Failed to defragment etcd member[{endpoint}] ({})\n", message(&e)));
                failures += 1;
            }
        }
    }
    if failures != 0 {
        return Err(Exit::silent(EXIT_ERROR));
    }
    Ok(())
}

/// zap's production log line with an epoch timestamp (etcdctl's snapshot
/// logger) or an ISO one (clientv3's logger).
fn log_info(epoch_ts: bool, caller: &str, msg: &str, fields: &[(&str, String)]) {
    let ts = if epoch_ts {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        format!("{}", now.as_secs_f64())
    } else {
        json_string_plain(&crate::clock::iso8601_utc_millis())
    };
    let mut line = format!(
        "{{\"level\":\"info\",\"ts\":{ts},\"caller\":{},\"msg\":{}",
        json_string_plain(caller),
        json_string_plain(msg)
    );
    for (key, value) in fields {
        line.push_str(&format!(",{}:{value}", json_string_plain(key)));
    }
    line.push_str("}\n");
    err(line);
}

/// clientv3's warning when the snapshot stream fails; the error to return.
fn stream_failed(e: &ketch_client::Error) -> String {
    let status = crate::error::status_text(e).unwrap_or_else(|| message(e));
    let line = format!(
        "{{\"level\":\"warn\",\"ts\":{},\"caller\":\"clientv3/maintenance.go:210\",\"msg\":\"failed to receive from snapshot stream; closing\",\"error\":{}}}\n",
        json_string_plain(&crate::clock::iso8601_utc_millis()),
        json_string_plain(&status)
    );
    err(line);
    message(e)
}

/// `snapshot save <file>`: the backend of one member, streamed into
/// `<file>.part`, synced, then renamed.
pub async fn snapshot_save(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 1 {
        return Err(Exit::error(EXIT_BAD_ARGS, "snapshot save expects one argument"));
    }
    let path = inv.args[0].clone();
    let s = session::connect(&mut inv).await?;
    if s.endpoints.len() != 1 {
        return Err(Exit::error(
            EXIT_INTERRUPTED,
            format!(
                "snapshot must be requested to one selected node, not multiple {}",
                gofmt::string_slice(&s.endpoints)
            ),
        ));
    }
    let endpoint = s.endpoints[0].clone();
    let part = format!("{path}.part");
    let saved = save_to(&s, &endpoint, &part, &path).await;
    if saved.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    saved.map_err(|e| Exit::error(EXIT_INTERRUPTED, e))?;
    out(format!("Snapshot saved at {path}\n"));
    Ok(())
}

async fn save_to(s: &session::Session, endpoint: &str, part: &str, path: &str) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode_private()
        .open(part)
        .map_err(|e| format!("could not open {part} ({})", go_io_error("open", part, &e)))?;
    log_info(true, "snapshot/v3_snapshot.go:119", "created temporary db file", &[("path", json_string_plain(part))]);
    let started = Instant::now();
    let opened = s.client.maintenance().snapshot().await;
    log_info(false, "clientv3/maintenance.go:200", "opened snapshot stream; downloading", &[]);
    log_info(true, "snapshot/v3_snapshot.go:127", "fetching snapshot", &[("endpoint", json_string_plain(endpoint))]);
    let mut snapshot = opened.map_err(|e| stream_failed(&e))?;
    let mut size: u64 = 0;
    while let Some(chunk) = snapshot.message().await.map_err(|e| stream_failed(&e))? {
        file.write_all(&chunk.blob).map_err(|e| go_io_error("write", part, &e))?;
        size += chunk.blob.len() as u64;
    }
    log_info(false, "clientv3/maintenance.go:208", "completed snapshot read; closing", &[]);
    file.sync_all().map_err(|e| go_io_error("sync", part, &e))?;
    drop(file);
    log_info(
        true,
        "snapshot/v3_snapshot.go:142",
        "fetched snapshot",
        &[
            ("endpoint", json_string_plain(endpoint)),
            ("size", json_string_plain(&gofmt::humanize_bytes(size))),
            ("took", format!("{}", started.elapsed().as_secs_f64())),
        ],
    );
    std::fs::rename(part, path)
        .map_err(|e| format!("could not rename {part} to {path} ({})", go_io_error("rename", part, &e)))?;
    log_info(true, "snapshot/v3_snapshot.go:152", "saved", &[("path", json_string_plain(path))]);
    Ok(())
}

/// Owner-only permissions for a new file (etcd's `PrivateFileMode`).
trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for std::fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// `version`: etcdctl's own version lines (ketchctl speaks etcdctl 3.4.23's
/// command line and API).
pub fn version() {
    out("etcdctl version: 3.4.23\nAPI version: 3.4\n");
}
