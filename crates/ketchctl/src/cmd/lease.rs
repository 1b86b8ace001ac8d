//! `lease grant|revoke|timetolive|list|keep-alive`.

use std::time::Duration;

use ketch_client::proto::LeaseKeepAliveResponse;

use crate::cli::Invocation;
use crate::error::{CtlResult, EXIT_BAD_ARGS, EXIT_BAD_CONNECTION, EXIT_ERROR, Exit, message, out};
use crate::gofmt;
use crate::printer::Format;
use crate::session::{self, Session};

/// Shortest pause between two renewals of `lease keep-alive`.
const RENEW_INTERVAL_MIN: Duration = Duration::from_millis(500);

/// etcdctl's `leaseFromArgs`: a lease ID in hex.
fn lease_from_arg(arg: &str) -> Result<i64, Exit> {
    gofmt::parse_int(arg, 16)
        .map_err(|e| Exit::error(EXIT_BAD_ARGS, format!("bad lease ID arg ({e}), expecting ID in Hex")))
}

/// `lease grant <ttl>`.
pub async fn grant(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 1 {
        return Err(Exit::error(EXIT_BAD_ARGS, "lease grant command needs TTL argument"));
    }
    let ttl = gofmt::parse_int(&inv.args[0], 10).map_err(|e| Exit::error(EXIT_BAD_ARGS, format!("bad TTL ({e})")))?;
    let s = session::connect(&mut inv).await?;
    let response = s
        .logged(s.client.lease().grant(ttl).await)
        .map_err(|e| Exit::error(EXIT_ERROR, format!("failed to grant lease ({})", message(&e))))?;
    s.printer.grant(&response)
}

/// `lease revoke <id>`.
pub async fn revoke(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 1 {
        return Err(Exit::error(EXIT_BAD_ARGS, "lease revoke command needs 1 argument"));
    }
    let id = lease_from_arg(&inv.args[0])?;
    let s = session::connect(&mut inv).await?;
    let response = s
        .logged(s.client.lease().revoke(id).await)
        .map_err(|e| Exit::error(EXIT_ERROR, format!("failed to revoke lease ({})", message(&e))))?;
    s.printer.revoke(id, &response)
}

/// `lease timetolive <id> [--keys]`.
pub async fn time_to_live(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 1 {
        return Err(Exit::error(EXIT_BAD_ARGS, "lease timetolive command needs lease ID as argument"));
    }
    let id = lease_from_arg(&inv.args[0])?;
    let keys = inv.flags.bool("keys");
    let s = session::connect(&mut inv).await?;
    let response =
        s.logged(s.client.lease().time_to_live(id, keys).await).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    s.printer.time_to_live(&response, keys)
}

/// `lease list`.
pub async fn list(mut inv: Invocation) -> CtlResult {
    let s = session::connect(&mut inv).await?;
    let response = s
        .logged(s.client.lease().leases().await)
        .map_err(|e| Exit::error(EXIT_ERROR, format!("failed to list leases ({})", message(&e))))?;
    s.printer.leases(&response)
}

/// `lease keep-alive [--once] <id>`: renews until the lease is gone (or
/// the process is interrupted), printing each renewal.
pub async fn keep_alive(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 1 {
        return Err(Exit::error(EXIT_BAD_ARGS, "lease keep-alive command needs lease ID as argument"));
    }
    let id = lease_from_arg(&inv.args[0])?;
    let s = session::connect(&mut inv).await?;
    if inv.flags.bool("once") {
        let response = renew(&s, id).await.map_err(|e| Exit::error(EXIT_BAD_CONNECTION, message(&e)))?;
        return s.printer.keep_alive(&response);
    }
    // clientv3's KeepAlive: renew at once, then every third of the TTL;
    // the channel closes (quietly) when the lease is gone.
    loop {
        let response = match renew(&s, id).await {
            Ok(response) => response,
            Err(e) if e.is_lease_gone() => break,
            // clientv3 retries a broken keep-alive stream quietly.
            Err(_) => {
                tokio::time::sleep(RENEW_INTERVAL_MIN).await;
                continue;
            }
        };
        s.printer.keep_alive(&response)?;
        let ttl = u64::try_from(response.ttl).unwrap_or(0);
        tokio::time::sleep((Duration::from_secs(ttl) / 3).max(RENEW_INTERVAL_MIN)).await;
    }
    if s.printer.format == Format::Simple {
        out(format!("lease {} expired or revoked.\n", crate::printer::hex_padded(id, 16)));
    }
    Ok(())
}

/// One renewal; a lease that is gone is `requested lease not found`.
async fn renew(s: &Session, id: i64) -> ketch_client::Result<LeaseKeepAliveResponse> {
    s.client.lease().keep_alive_once(id).await
}
