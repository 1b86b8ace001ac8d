//! etcd's server flags, their `ETCD_*` environment variables and defaults, and
//! their validation into a [`MemberConfig`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{ArgAction, Parser};
use ketch_server::MemberConfig;
use url::Url;

const DEFAULT_NAME: &str = "default";
const DEFAULT_PEER_URL: &str = "http://localhost:2380";
const DEFAULT_INITIAL_CLUSTER: &str = "default=http://localhost:2380";
/// etcd's cap on `--election-timeout`.
const ELECTION_MS_MAX: u64 = 50_000;
/// etcd's backend quota when `--quota-backend-bytes` is 0: 2 GiB.
const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 << 30;

/// Ketch: a distributed, strongly consistent key-value store that speaks etcd's v3 API.
#[derive(Debug, Parser)]
#[command(name = "ketch", disable_version_flag = true)]
pub struct Flags {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = DEFAULT_NAME)]
    pub name: String,
    /// Path to the data directory (default: ${name}.ketch).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// List of URLs to listen on for client traffic.
    #[arg(long, env = "ETCD_LISTEN_CLIENT_URLS", default_value = "http://localhost:2379")]
    pub listen_client_urls: String,
    /// List of this member's client URLs to advertise to the public.
    #[arg(long, env = "ETCD_ADVERTISE_CLIENT_URLS", default_value = "http://localhost:2379")]
    pub advertise_client_urls: String,
    /// List of URLs to listen on for peer traffic.
    #[arg(long, env = "ETCD_LISTEN_PEER_URLS", default_value = DEFAULT_PEER_URL)]
    pub listen_peer_urls: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, env = "ETCD_INITIAL_ADVERTISE_PEER_URLS", default_value = DEFAULT_PEER_URL)]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping (name=peer-url,...).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER", default_value = DEFAULT_INITIAL_CLUSTER)]
    pub initial_cluster: String,
    /// Initial cluster token for the cluster during bootstrap.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_TOKEN", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,

    /// Raft log entries kept in memory after a snapshot, for slow followers to
    /// catch up from without a snapshot (etcd 3.5.12's flag).
    #[arg(
        long = "experimental-snapshot-catchup-entries",
        env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
        default_value_t = 5000
    )]
    pub experimental_snapshot_catchup_entries: u64,

    /// Maximum number of WAL files to retain (0 is unlimited). Ketch deletes a
    /// segment once a snapshot covers it, so it keeps at most as many as etcd would.
    #[arg(long, env = "ETCD_MAX_WALS", default_value_t = 5)]
    pub max_wals: u64,

    /// Maximum number of snapshot files to retain (0 is unlimited). Accepted for
    /// etcd compatibility: Ketch's snapshot is its backend, there are no files.
    #[arg(long, env = "ETCD_MAX_SNAPSHOTS", default_value_t = 5)]
    pub max_snapshots: u64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: u32,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: u32,
    /// Raise alarms when backend size exceeds the given quota (0 defaults to low space quota).
    #[arg(long, env = "ETCD_QUOTA_BACKEND_BYTES", default_value_t = 0)]
    pub quota_backend_bytes: i64,
    /// Enable the raft Pre-Vote algorithm to prevent disruption when a node that has been partitioned away rejoins the cluster.
    #[arg(long, env = "ETCD_PRE_VOTE", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub pre_vote: bool,
    /// Duration of periodic watch progress notifications (Go duration syntax, e.g. 10m, 30s).
    #[arg(long, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m", value_parser = parse_go_duration)]
    pub experimental_watch_progress_notify_interval: Duration,
    /// Enable leader to send regular checkpoints to other members to prevent reset of remaining TTL on leader change
    /// (and, in Ketch, on restart). On by default in Ketch.
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT", default_value = "true", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set)]
    pub experimental_enable_lease_checkpoint: bool,
    /// Duration of time between two lease checkpoints (Go duration syntax).
    #[arg(long, env = "ETCD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL", default_value = "5m", value_parser = parse_go_duration)]
    pub experimental_lease_checkpoint_interval: Duration,
    /// Configures log level. Only supports debug, info, warn, error, panic, or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info", value_parser = ["debug", "info", "warn", "error", "panic", "fatal"])]
    pub log_level: String,
    /// Specify 'zap' for structured logging or 'capnslog' (accepted for compatibility; Ketch logs one way).
    #[arg(long, env = "ETCD_LOGGER", default_value = "zap", value_parser = ["zap", "capnslog"])]
    pub logger: String,
    /// Specify 'stdout' or 'stderr' to skip journald logging even when running under systemd, or list of comma separated output targets.
    #[arg(long, env = "ETCD_LOG_OUTPUTS", default_value = "default")]
    pub log_outputs: String,
    /// Print the version and exit.
    #[arg(long, env = "ETCD_VERSION", num_args = 0..=1, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub version: bool,
}

/// Go's flag package accepts `-flag` as well as `--flag`; clap only the latter.
pub fn normalize_go_flags(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(
            |(i, a)| {
                if i > 0 && a.starts_with('-') && !a.starts_with("--") && a.len() > 2 { format!("-{a}") } else { a }
            },
        )
        .collect()
}

/// Parses Go's `time.ParseDuration` syntax: a sequence of decimal numbers with
/// units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h` (e.g. `1h30m`, `1.5s`, `500ms`).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("time: invalid duration {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += value * nanos_per;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_nanos(total as u64))
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_string).collect()
}

fn parse_urls(flag: &str, s: &str) -> anyhow::Result<Vec<Url>> {
    let urls: Vec<Url> = split_list(s)
        .iter()
        .map(|u| Url::parse(u).with_context(|| format!("--{flag}: {u:?} is not a valid URL")))
        .collect::<anyhow::Result<_>>()?;
    if urls.is_empty() {
        bail!("--{flag} must name at least one URL");
    }
    for u in &urls {
        match u.scheme() {
            "http" => {}
            "https" => bail!("--{flag}: {u}: TLS is not supported yet; use http URLs"),
            other => bail!("--{flag}: URL scheme must be http, https, unix or unixs: {other}"),
        }
        if u.host_str().is_none() || u.port().is_none() {
            bail!("--{flag}: {u}: URL must have a host and a port");
        }
    }
    Ok(urls)
}

/// etcd's URL string form: scheme://host:port, no trailing slash.
fn url_string(u: &Url) -> String {
    let host = u.host_str().unwrap_or_default();
    match u.port() {
        Some(p) => format!("{}://{host}:{p}", u.scheme()),
        None => format!("{}://{host}", u.scheme()),
    }
}

/// Resolves listen URLs to socket addresses (`localhost` is allowed, other names are not, as in etcd).
fn listen_addrs(flag: &str, urls: &[Url]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for u in urls {
        let host = u.host_str().unwrap_or_default();
        let port = u.port().unwrap_or_default();
        let addr = if host == "localhost" {
            ("127.0.0.1", port).to_socket_addrs()?.next()
        } else {
            let ip = host.trim_start_matches('[').trim_end_matches(']');
            let ip: std::net::IpAddr =
                ip.parse().with_context(|| format!("--{flag}: expected IP in URL for binding ({u})"))?;
            Some(SocketAddr::new(ip, port))
        };
        if let Some(a) = addr
            && !out.contains(&a)
        {
            out.push(a);
        }
    }
    Ok(out)
}

#[derive(Debug)]
pub struct ServerConfig {
    pub member: MemberConfig,
    pub client_listen: Vec<SocketAddr>,
    pub peer_listen: Vec<SocketAddr>,
    pub log_level: String,
}

impl Flags {
    pub fn into_config(self) -> anyhow::Result<ServerConfig> {
        if self.heartbeat_interval == 0 {
            bail!("--heartbeat-interval must be greater than 0");
        }
        if 5 * self.heartbeat_interval > self.election_timeout {
            bail!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout,
                self.heartbeat_interval
            );
        }
        if self.election_timeout > ELECTION_MS_MAX {
            bail!(
                "--election-timeout[{}ms] is too long, and should be set less than {}ms",
                self.election_timeout,
                ELECTION_MS_MAX
            );
        }
        if self.max_txn_ops == 0 {
            bail!("--max-txn-ops must be greater than 0");
        }
        if self.max_request_bytes == 0 {
            bail!("--max-request-bytes must be greater than 0");
        }
        let listen_client = parse_urls("listen-client-urls", &self.listen_client_urls)?;
        let advertise_client = parse_urls("advertise-client-urls", &self.advertise_client_urls)?;
        let listen_peer = parse_urls("listen-peer-urls", &self.listen_peer_urls)?;
        if listen_peer.iter().any(|u| u.scheme() == "https") {
            bail!("--listen-peer-urls: https (peer TLS) is not supported yet");
        }
        let advertise_peer = parse_urls("initial-advertise-peer-urls", &self.initial_advertise_peer_urls)?;
        let advertise_peer: Vec<String> = advertise_peer.iter().map(url_string).collect();

        // etcd: a custom --name with the default --initial-cluster means "just me".
        let initial_cluster = if self.initial_cluster == DEFAULT_INITIAL_CLUSTER && self.name != DEFAULT_NAME {
            advertise_peer.iter().map(|u| format!("{}={u}", self.name)).collect::<Vec<_>>().join(",")
        } else {
            self.initial_cluster.clone()
        };
        let mut cluster: Vec<(String, Vec<String>)> = Vec::new();
        for part in split_list(&initial_cluster) {
            let (name, url) = part
                .split_once('=')
                .with_context(|| format!("--initial-cluster: {part:?} is not of the form name=peer-url"))?;
            let url = url_string(&parse_urls("initial-cluster", url)?[0]);
            match cluster.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url),
                None => cluster.push((name.to_string(), vec![url])),
            }
        }
        let Some((_, own_urls)) = cluster.iter().find(|(n, _)| *n == self.name) else {
            bail!("couldn't find local name {:?} in the initial cluster configuration", self.name);
        };
        let (mut a, mut b) = (own_urls.clone(), advertise_peer.clone());
        a.sort();
        b.sort();
        if a != b {
            bail!(
                "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={} (resolved urls: {:?} != {:?})",
                self.name,
                own_urls.join(","),
                advertise_peer.join(","),
                b,
                a
            );
        }
        match self.initial_cluster_state.as_str() {
            "new" => {}
            "existing" => tracing::warn!(
                "--initial-cluster-state=existing: a member with no data joins as the founding member of --initial-cluster it names (adding members at run time is not supported yet)"
            ),
            other => bail!("--initial-cluster-state: unexpected value {other:?} (expected \"new\" or \"existing\")"),
        }
        if self.experimental_lease_checkpoint_interval.is_zero() {
            bail!("--experimental-lease-checkpoint-interval must be greater than 0");
        }
        if self.experimental_watch_progress_notify_interval.is_zero() {
            bail!("--experimental-watch-progress-notify-interval must be greater than 0");
        }
        let data_dir = self.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.ketch", self.name)));
        let quota = match self.quota_backend_bytes {
            q if q < 0 => bail!("--quota-backend-bytes must not be negative"),
            0 => QUOTA_BACKEND_BYTES_DEFAULT,
            q => q as u64,
        };
        let member = MemberConfig {
            name: self.name.clone(),
            data_dir,
            initial_cluster: cluster,
            initial_cluster_token: self.initial_cluster_token.clone(),
            initial_advertise_peer_urls: advertise_peer,
            advertise_client_urls: advertise_client.iter().map(url_string).collect(),
            heartbeat_ms: self.heartbeat_interval,
            election_ms: self.election_timeout,
            snapshot_count: self.snapshot_count,
            snapshot_catch_up_entries: self.experimental_snapshot_catchup_entries,
            purge_wals: self.max_wals > 0,
            max_request_bytes: self.max_request_bytes as usize,
            max_txn_ops: self.max_txn_ops as usize,
            quota_backend_bytes: quota,
            pre_vote: self.pre_vote,
            watch_progress_notify_interval: self.experimental_watch_progress_notify_interval,
            lease_checkpoint_interval: self
                .experimental_enable_lease_checkpoint
                .then_some(self.experimental_lease_checkpoint_interval),
        };
        Ok(ServerConfig {
            member,
            client_listen: listen_addrs("listen-client-urls", &listen_client)?,
            peer_listen: listen_addrs("listen-peer-urls", &listen_peer)?,
            log_level: self.log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<ServerConfig> {
        let mut v = vec!["ketch".to_string()];
        v.extend(args.iter().map(|s| s.to_string()));
        Flags::try_parse_from(normalize_go_flags(v))?.into_config()
    }

    #[test]
    fn defaults_are_etcds() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.member.data_dir, PathBuf::from("default.ketch"));
        assert_eq!(c.client_listen, vec!["127.0.0.1:2379".parse().unwrap()]);
        assert_eq!(c.member.max_request_bytes, 1_572_864);
        assert_eq!(c.member.max_txn_ops, 128);
        assert_eq!(c.member.initial_cluster, vec![("default".to_string(), vec!["http://localhost:2380".to_string()])]);
    }

    #[test]
    fn custom_name_implies_its_own_initial_cluster() {
        let c = parse(&["-name", "n1", "--initial-advertise-peer-urls=http://127.0.0.1:12380"]).unwrap();
        assert_eq!(c.member.initial_cluster, vec![("n1".to_string(), vec!["http://127.0.0.1:12380".to_string()])]);
        assert_eq!(c.member.data_dir, PathBuf::from("n1.ketch"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("ten minutes").is_err());
    }

    #[test]
    fn bad_flags_are_refused_with_etcds_words() {
        let e = parse(&["--name", "x", "--initial-cluster", "y=http://localhost:2380"]).unwrap_err();
        assert!(e.to_string().contains("couldn't find local name \"x\""), "{e}");
        let e = parse(&["--heartbeat-interval", "300"]).unwrap_err();
        assert!(e.to_string().contains("should be at least as 5 times"), "{e}");
        assert!(parse(&["--no-such-flag"]).is_err());
        assert!(parse(&["--max-txn-ops", "many"]).is_err());
        assert!(parse(&["--listen-client-urls", "http://example.com:2379"]).is_err());
    }
}
