//! `member add|remove|update|list|promote`.

use crate::cli::Invocation;
use crate::error::{CtlResult, EXIT_BAD_ARGS, EXIT_ERROR, Exit, message, out};
use crate::gofmt;
use crate::printer::Format;
use crate::session;

/// Re-reads of the member list, at most, until it comes from the member
/// that added the new one (etcdctl loops without a bound).
const MEMBER_LIST_SYNC_ATTEMPTS: usize = 10;

/// A member ID argument in hex.
fn member_id(args: &[String]) -> Result<u64, Exit> {
    if args.len() != 1 {
        return Err(Exit::error(EXIT_BAD_ARGS, "member ID is not provided"));
    }
    gofmt::parse_uint(&args[0], 16)
        .map_err(|e| Exit::error(EXIT_BAD_ARGS, format!("bad member ID arg ({e}), expecting ID in Hex")))
}

fn peer_urls(inv: &Invocation) -> Result<Vec<String>, Exit> {
    let urls = inv.flags.string("peer-urls");
    if urls.is_empty() {
        return Err(Exit::error(EXIT_BAD_ARGS, "member peer urls not provided"));
    }
    Ok(urls.split(',').map(str::to_string).collect())
}

/// `member add <name> --peer-urls=... [--learner]`.
pub async fn add(mut inv: Invocation) -> CtlResult {
    let Some(name) = inv.args.first().cloned() else {
        return Err(Exit::error(EXIT_BAD_ARGS, "member name not provided"));
    };
    if inv.args.len() > 1 {
        let mut message = "too many arguments".to_string();
        for arg in &inv.args {
            if arg.to_lowercase().starts_with("http") {
                message.push_str(&format!(", did you mean --peer-urls={arg}"));
            }
        }
        return Err(Exit::error(EXIT_BAD_ARGS, message));
    }
    let urls = peer_urls(&inv)?;
    let learner = inv.flags.bool("learner");
    let s = session::connect(&mut inv).await?;
    let cluster = s.client.cluster();
    let response =
        s.logged(cluster.member_add(urls.clone(), learner).await).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    s.printer.member_add(&response)?;
    if s.printer.format != Format::Simple {
        return Ok(());
    }
    let new_id = response.member.as_ref().map_or(0, |m| m.id);
    let added_by = response.header.as_ref().map_or(0, |h| h.member_id);
    let mut list = s.logged(cluster.member_list().await).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    for _ in 0..MEMBER_LIST_SYNC_ATTEMPTS {
        if list.header.as_ref().map_or(0, |h| h.member_id) == added_by {
            break;
        }
        list = s.logged(cluster.member_list().await).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    }
    let mut initial_cluster = Vec::new();
    for m in &list.members {
        for url in &m.peer_ur_ls {
            let member_name = if m.id == new_id { name.as_str() } else { m.name.as_str() };
            initial_cluster.push(format!("{member_name}={url}"));
        }
    }
    out(format!(
        "\nETCD_NAME={}\nETCD_INITIAL_CLUSTER={}\nETCD_INITIAL_ADVERTISE_PEER_URLS={}\nETCD_INITIAL_CLUSTER_STATE=\"existing\"\n",
        gofmt::quote(name.as_bytes()),
        gofmt::quote(initial_cluster.join(",").as_bytes()),
        gofmt::quote(inv.flags.string("peer-urls").as_bytes()),
    ));
    Ok(())
}

/// `member remove <id>`.
pub async fn remove(mut inv: Invocation) -> CtlResult {
    let id = member_id(&inv.args)?;
    let s = session::connect(&mut inv).await?;
    let response =
        s.logged(s.client.cluster().member_remove(id).await).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    s.printer.member_remove(id, &response)
}

/// `member update <id> --peer-urls=...`.
pub async fn update(mut inv: Invocation) -> CtlResult {
    let id = member_id(&inv.args)?;
    let urls = peer_urls(&inv)?;
    let s = session::connect(&mut inv).await?;
    let response =
        s.logged(s.client.cluster().member_update(id, urls).await).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    s.printer.member_update(id, &response)
}

/// `member promote <id>`.
pub async fn promote(mut inv: Invocation) -> CtlResult {
    let id = member_id(&inv.args)?;
    let s = session::connect(&mut inv).await?;
    let response =
        s.logged(s.client.cluster().member_promote(id).await).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    s.printer.member_promote(id, &response)
}

/// `member list`.
pub async fn list(mut inv: Invocation) -> CtlResult {
    let s = session::connect(&mut inv).await?;
    let response =
        s.logged(s.client.cluster().member_list().await).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    s.printer.member_list(&response)
}
