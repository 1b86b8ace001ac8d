//! DNS SRV discovery of a cluster's client endpoints, as etcd's clients do
//! it (`pkg/srv.GetClient` of etcd 3.4, etcdctl's `--discovery-srv`).
//!
//! For a domain `example.com` two services are looked up, with the
//! system's resolver configuration (`/etc/resolv.conf`):
//!
//! - `_etcd-client-ssl._tcp.example.com`: each record is an endpoint
//!   `https://<target>:<port>`;
//! - `_etcd-client._tcp.example.com`: each record is an endpoint
//!   `http://<target>:<port>`.
//!
//! With a service name `s`, the services are `_etcd-client-ssl-s` and
//! `_etcd-client-s`. Targets keep the trailing dot of a DNS name
//! (`https://n1.example.com.:2379`) as Go prints them; TLS verifies the
//! name without it. Records are ordered by priority, and by weight at
//! random within a priority (RFC 2782, as Go's `net.LookupSRV`), the
//! secure ones first. Discovery fails only if both lookups fail.

use std::fmt;
use std::net::IpAddr;

use hickory_resolver::config::ResolverConfig;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::proto::rr::rdata::SRV;

use crate::client::{Client, ClientOptions};
use crate::error::Result;

/// etcd's client service name (`_etcd-client._tcp`, `_etcd-client-ssl._tcp`).
const CLIENT_SERVICE: &str = "etcd-client";

/// Why one SRV lookup failed, in the words of Go's resolver (whose
/// messages etcd's tools print).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LookupFailure {
    /// The name does not exist or has no SRV record (`no such host`).
    NoSuchHost,
    /// The server refused or failed the query (`server misbehaving`).
    ServerMisbehaving,
    /// No answer in time (`i/o timeout`).
    Timeout,
    /// Anything else.
    Other(String),
}

impl fmt::Display for LookupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupFailure::NoSuchHost => f.write_str("no such host"),
            LookupFailure::ServerMisbehaving => f.write_str("server misbehaving"),
            LookupFailure::Timeout => f.write_str("i/o timeout"),
            LookupFailure::Other(text) => f.write_str(text),
        }
    }
}

/// A failed SRV lookup: `lookup <name> on <server>: <failure>`, as Go's
/// `net.DNSError` reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("lookup {name}{}: {failure}", server.as_ref().map(|s| format!(" on {s}")).unwrap_or_default())]
pub struct LookupError {
    /// The name looked up, e.g. `_etcd-client-ssl._tcp.example.com`.
    pub name: String,
    /// The name server asked (`127.0.0.1:53`), if one was configured.
    pub server: Option<String>,
    /// What went wrong.
    pub failure: LookupFailure,
}

/// Why discovery found no endpoints.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The system's resolver configuration could not be read.
    #[error("cannot read the DNS resolver configuration: {0}")]
    Config(String),
    /// Both lookups failed (etcd's message).
    #[error("dns lookup errors: {https} and {http}")]
    Lookup {
        /// The lookup of the secure service (`_etcd-client-ssl._tcp`).
        https: LookupError,
        /// The lookup of the plain service (`_etcd-client._tcp`).
        http: LookupError,
    },
}

/// The SRV service for `scheme` (etcd's `GetSRVService`).
fn service(service_name: Option<&str>, secure: bool) -> String {
    let base = if secure { format!("{CLIENT_SERVICE}-ssl") } else { CLIENT_SERVICE.to_string() };
    match service_name.filter(|s| !s.is_empty()) {
        Some(name) => format!("{base}-{name}"),
        None => base,
    }
}

/// Go's `net.JoinHostPort` of a name server.
fn server_address(config: &ResolverConfig) -> Option<String> {
    let server = config.name_servers().first()?;
    let port = server.connections.first().map_or(53, |c| c.port);
    Some(match server.ip {
        IpAddr::V4(ip) => format!("{ip}:{port}"),
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
    })
}

fn failure(e: &NetError) -> LookupFailure {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(_)) => LookupFailure::NoSuchHost,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::NXDomain)) => LookupFailure::NoSuchHost,
        NetError::Dns(DnsError::ResponseCode(_)) => LookupFailure::ServerMisbehaving,
        NetError::Timeout => LookupFailure::Timeout,
        other => LookupFailure::Other(other.to_string()),
    }
}

/// Orders records as Go's `net.LookupSRV` does: by priority, then, within
/// a priority, at random with chances proportional to the weights.
/// `random(n)` picks in `0..n`.
fn order(mut records: Vec<SRV>, mut random: impl FnMut(u32) -> u32) -> Vec<SRV> {
    records.sort_by_key(|r| (r.priority, r.weight));
    let mut start = 0;
    while start < records.len() {
        let priority = records[start].priority;
        let end = start + records[start..].iter().take_while(|r| r.priority == priority).count();
        shuffle_by_weight(&mut records[start..end], &mut random);
        start = end;
    }
    records
}

/// Go's `shuffleByWeight`: picks the first record with chances
/// proportional to the weights, then the next among the rest, ...
fn shuffle_by_weight(mut group: &mut [SRV], random: &mut impl FnMut(u32) -> u32) {
    let mut sum: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
    while sum > 0 && group.len() > 1 {
        let n = random(sum);
        let mut s = 0;
        if let Some(i) = group.iter().position(|r| {
            s += u32::from(r.weight);
            s > n
        }) {
            group.swap(0, i);
        }
        sum -= u32::from(group[0].weight);
        group = &mut std::mem::take(&mut group)[1..];
    }
}

/// The client endpoints that the SRV records of `domain` name (see the
/// module documentation): secure ones (`https://`) first. `service_name`
/// selects `_etcd-client[-ssl]-<name>` records.
///
/// ```no_run
/// # async fn example() -> Result<(), ketch_client::Error> {
/// let endpoints = ketch_client::discover_srv("example.com", None).await?;
/// // e.g. ["https://n1.example.com.:2379", "https://n2.example.com.:2379"]
/// # Ok(())
/// # }
/// ```
pub async fn discover_srv(domain: &str, service_name: Option<&str>) -> Result<Vec<String>, DiscoveryError> {
    let (config, options) =
        hickory_resolver::system_conf::read_system_conf().map_err(|e| DiscoveryError::Config(e.to_string()))?;
    let server = server_address(&config);
    let mut builder = hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    *builder.options_mut() = options;
    let resolver = builder.build().map_err(|e| DiscoveryError::Config(e.to_string()))?;
    let mut endpoints = Vec::new();
    let mut errors = Vec::new();
    for secure in [true, false] {
        let name = format!("_{}._tcp.{domain}", service(service_name, secure));
        // Fully qualified: no search domains.
        let query = if name.ends_with('.') { name.clone() } else { format!("{name}.") };
        match resolver.srv_lookup(query.as_str()).await {
            Ok(lookup) => {
                let records: Vec<SRV> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SRV(srv) => Some(srv.clone()),
                        _ => None,
                    })
                    .collect();
                let scheme = if secure { "https" } else { "http" };
                for srv in order(records, |n| rand::random_range(0..n)) {
                    endpoints.push(format!("{scheme}://{}:{}", srv.target.to_ascii(), srv.port));
                }
            }
            Err(e) => {
                tracing::debug!(%name, error = %e, "SRV lookup failed");
                errors.push(LookupError { name, server: server.clone(), failure: failure(&e) });
            }
        }
    }
    match <[LookupError; 2]>::try_from(errors) {
        Ok([https, http]) => Err(DiscoveryError::Lookup { https, http }),
        Err(_) => Ok(endpoints),
    }
}

impl Client {
    /// A client for the endpoints that `domain`'s DNS SRV records name
    /// ([`discover_srv`]): `https://` ones use TLS (with
    /// [`ClientOptions::tls`], or the system's roots without it).
    pub async fn connect_srv(domain: &str, service_name: Option<&str>, options: ClientOptions) -> Result<Client> {
        let endpoints = discover_srv(domain, service_name).await?;
        Client::connect(endpoints, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::Name;

    fn srv(priority: u16, weight: u16, target: &str) -> SRV {
        SRV::new(priority, weight, 2379, Name::from_ascii(target).unwrap())
    }

    fn targets(records: &[SRV]) -> Vec<String> {
        records.iter().map(|r| r.target.to_ascii()).collect()
    }

    #[test]
    fn services_follow_etcd() {
        assert_eq!(service(None, true), "etcd-client-ssl");
        assert_eq!(service(None, false), "etcd-client");
        assert_eq!(service(Some("prod"), true), "etcd-client-ssl-prod");
        assert_eq!(service(Some(""), false), "etcd-client");
    }

    #[test]
    fn records_go_by_priority_then_weighted_at_random() {
        let records = vec![srv(20, 0, "c."), srv(10, 1, "b."), srv(10, 0, "z."), srv(10, 3, "a.")];
        // Weight sum 4 in priority 10: 0..1 picks b (after the 0-weight z), 1..4 picks a.
        assert_eq!(targets(&order(records.clone(), |_| 0)), ["b.", "a.", "z.", "c."]);
        assert_eq!(targets(&order(records, |n| n - 1)), ["a.", "b.", "z.", "c."]);
        assert_eq!(srv(1, 1, "n1.example.test.").target.to_ascii(), "n1.example.test.");
    }

    #[test]
    fn errors_read_as_go_and_etcd_print_them() {
        let e = |secure: bool, failure| LookupError {
            name: format!("_{}._tcp.example.test", service(None, secure)),
            server: Some("127.0.0.1:53".into()),
            failure,
        };
        let both = DiscoveryError::Lookup {
            https: e(true, LookupFailure::NoSuchHost),
            http: e(false, LookupFailure::ServerMisbehaving),
        };
        assert_eq!(
            both.to_string(),
            "dns lookup errors: lookup _etcd-client-ssl._tcp.example.test on 127.0.0.1:53: no such host and \
             lookup _etcd-client._tcp.example.test on 127.0.0.1:53: server misbehaving"
        );
    }
}
