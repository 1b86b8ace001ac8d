//! Connections, as etcd's tool makes them: `--conns` gRPC connections, each
//! to one endpoint (the endpoints taken round-robin, or only the leader
//! with `--target-leader`), shared by `--clients` clients, client `i` on
//! connection `i % conns`. A client never fails over and never retries:
//! what the server answers is what is measured.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ketch_client::{Client, ClientOptions};
use tonic::transport::{Channel, Endpoint};

/// Dial timeout of the leader lookup when `--dial-timeout` is 0.
const LEADER_LOOKUP_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Makes connections to the endpoints in turn (etcd's `mustCreateConn`).
#[derive(Debug)]
pub struct Dialer {
    /// The `--endpoints`, as `http://host:port` URLs.
    endpoints: Vec<String>,
    /// Where connections go: the endpoints, or only the leader's URL.
    targets: Vec<String>,
    dial_timeout: Duration,
    dialed: usize,
}

impl Dialer {
    /// A dialer for `endpoints` (`host:port` or `http://host:port`); with
    /// `target_leader`, for the leader's client URL only, found by asking
    /// the endpoints for their `Maintenance.Status`.
    pub async fn new(endpoints: &[String], dial_timeout: Duration, target_leader: bool) -> Result<Dialer> {
        let mut urls = Vec::new();
        for endpoint in endpoints {
            let endpoint = endpoint.trim();
            if endpoint.is_empty() {
                continue;
            }
            urls.push(url_of(endpoint)?);
        }
        if urls.is_empty() {
            bail!("no endpoints given (--endpoints)");
        }
        let targets = if target_leader { vec![find_leader(&urls, dial_timeout).await?] } else { urls.clone() };
        Ok(Dialer { endpoints: urls, targets, dial_timeout, dialed: 0 })
    }

    /// The URLs connections go to.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// The first of the `--endpoints` (etcd's `--check-hashkv` asks it).
    pub fn first_endpoint(&self) -> &str {
        &self.endpoints[0]
    }

    /// A new connection to the next endpoint in turn.
    pub async fn dial(&mut self) -> Result<Channel> {
        let url = self.targets[self.dialed % self.targets.len()].clone();
        self.dialed += 1;
        let mut endpoint = Endpoint::from_shared(url.clone())
            .with_context(|| format!("bad endpoint {url}"))?
            .tcp_nodelay(true)
            // gRPC-Go's dynamic flow-control window, as the Go tool has.
            .http2_adaptive_window(true);
        if !self.dial_timeout.is_zero() {
            endpoint = endpoint.connect_timeout(self.dial_timeout);
        }
        endpoint.connect().await.map_err(|e| anyhow!("dial error: {url}: {}", error_chain(&e)))
    }

    /// `conns` connections, then the channel of each of `clients` clients:
    /// client `i` uses connection `i % conns`.
    pub async fn clients(&mut self, conns: usize, clients: usize) -> Result<Vec<Channel>> {
        let mut channels = Vec::with_capacity(conns);
        for _ in 0..conns {
            channels.push(self.dial().await?);
        }
        Ok((0..clients).map(|i| channels[i % channels.len()].clone()).collect())
    }
}

/// `http://host:port` for `host:port` or `http://host:port`.
fn url_of(endpoint: &str) -> Result<String> {
    let url = match endpoint.split_once("://") {
        None => format!("http://{endpoint}"),
        Some(("http", _)) => endpoint.to_string(),
        Some((scheme, _)) => bail!("endpoint {endpoint}: scheme {scheme}:// is not supported (only http)"),
    };
    Ok(url.trim_end_matches('/').to_string())
}

/// The leader's client URL: the leader's ID from the first endpoint that
/// answers `Maintenance.Status`, then the endpoint of that member if it is
/// one of ours, else its first client URL from `Cluster.MemberList`.
async fn find_leader(urls: &[String], dial_timeout: Duration) -> Result<String> {
    let timeout = if dial_timeout.is_zero() { LEADER_LOOKUP_DIAL_TIMEOUT } else { dial_timeout };
    let client =
        Client::connect(urls, ClientOptions::new().dial_timeout(timeout)).await.context("failed to find the leader")?;
    let mut leader = None;
    let mut last_error = None;
    for url in urls {
        match client.maintenance().status_of(url).await {
            Ok(status) if status.leader != 0 => {
                leader = Some(status.leader);
                break;
            }
            Ok(_) => last_error = Some(format!("{url} knows no leader")),
            Err(e) => last_error = Some(format!("{url}: {e}")),
        }
    }
    let Some(leader) = leader else {
        bail!("failed to find a leader endpoint: {}", last_error.unwrap_or_default());
    };
    for url in urls {
        if let Ok(status) = client.maintenance().status_of(url).await
            && status.header.is_some_and(|h| h.member_id == leader)
        {
            return Ok(url.clone());
        }
    }
    let members = client.cluster().member_list().await.context("failed to get a member list")?;
    members
        .members
        .iter()
        .find(|m| m.id == leader)
        .and_then(|m| m.client_ur_ls.first())
        .map(|u| url_of(u))
        .transpose()?
        .ok_or_else(|| anyhow!("failed to find a leader endpoint: leader {leader:x} has no client URL"))
}

/// An error with its sources, `a: b: c`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

/// A request's error as the report counts it: etcd's own errors by their
/// message (`etcdserver: too many requests`), like clientv3; any other gRPC
/// error as gRPC-Go prints it.
pub fn status_text(status: &tonic::Status) -> String {
    let message = status.message();
    if message.starts_with("etcdserver:") || message.starts_with("mvcc:") || message.starts_with("lease") {
        message.to_string()
    } else {
        format!("rpc error: code = {:?} desc = {message}", status.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_become_urls() {
        assert_eq!(url_of("127.0.0.1:2379").ok().as_deref(), Some("http://127.0.0.1:2379"));
        assert_eq!(url_of("http://127.0.0.1:2379/").ok().as_deref(), Some("http://127.0.0.1:2379"));
        assert!(url_of("https://127.0.0.1:2379").is_err());
    }
}
