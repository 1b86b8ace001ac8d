//! Endpoints: parsing, and choosing one per request.
//!
//! The [`Balancer`] holds one connection per endpoint and hands them out
//! round-robin, skipping endpoints whose last call failed for want of a
//! serving member: such an endpoint is *unhealthy* for a backoff that
//! doubles with each consecutive failure (`base`, `2·base`, ... up to `max`)
//! and ends at the first success. When every endpoint is unhealthy the one
//! whose backoff ends first is used anyway: a request should find out for
//! itself rather than fail without trying.
//!
//! Time is an argument (`now`), so the selection is tested without clocks.

use std::fmt;
use std::time::{Duration, Instant};

use crate::error::Error;

/// A client endpoint, `host:port`, over plain HTTP/2 or TLS. Two addresses
/// are the same endpoint when host and port are, whatever their schemes
/// (a member list's `https://h:1` is the endpoint `h:1` given by hand).
#[derive(Clone, Debug)]
pub(crate) struct Address {
    /// Host name or IP address; IPv6 addresses keep their brackets.
    host: String,
    port: u16,
    /// `Some(true)` for `https://`, `Some(false)` for `http://`, `None`
    /// without a scheme (see [`Address::with_default_scheme`]).
    secure: Option<bool>,
}

impl PartialEq for Address {
    fn eq(&self, other: &Address) -> bool {
        (&self.host, self.port) == (&other.host, other.port)
    }
}

impl Eq for Address {}

impl std::hash::Hash for Address {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.host, self.port).hash(state);
    }
}

impl PartialOrd for Address {
    fn partial_cmp(&self, other: &Address) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Address {
    fn cmp(&self, other: &Address) -> std::cmp::Ordering {
        (&self.host, self.port).cmp(&(&other.host, other.port))
    }
}

impl Address {
    /// Parses `host:port`, `http://host:port` or `https://host:port` (a
    /// trailing `/` is allowed).
    pub(crate) fn parse(endpoint: &str) -> Result<Address, Error> {
        let invalid = |reason: &str| Error::InvalidEndpoint { endpoint: endpoint.to_string(), reason: reason.into() };
        let trimmed = endpoint.trim();
        let (secure, rest) = match trimmed.split_once("://") {
            Some(("http", rest)) => (Some(false), rest),
            Some(("https", rest)) => (Some(true), rest),
            Some((scheme, _)) => {
                return Err(invalid(&format!("unsupported scheme {scheme:?}, expected http or https")));
            }
            None => (None, trimmed),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(invalid("a path is not allowed"));
        }
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(invalid("expected host:port"));
        };
        let port: u16 = port.parse().map_err(|_| invalid("the port is not a number in 1..=65535"))?;
        if port == 0 {
            return Err(invalid("the port is not a number in 1..=65535"));
        }
        let bracketed = host.starts_with('[') && host.ends_with(']');
        if host.is_empty() || (host.contains(':') && !bracketed) {
            return Err(invalid("expected host:port (IPv6 addresses in brackets)"));
        }
        Ok(Address { host: host.to_string(), port, secure })
    }

    /// This address, with TLS if `tls` and no scheme was given.
    pub(crate) fn with_default_scheme(mut self, tls: bool) -> Address {
        self.secure.get_or_insert(tls);
        self
    }

    /// Whether the endpoint is dialed with TLS (`https://`, or no scheme on
    /// a client with TLS options).
    pub(crate) fn is_secure(&self) -> bool {
        self.secure == Some(true)
    }

    /// The host to dial (IPv6 without brackets).
    pub(crate) fn dial_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// `http://host:port`, or `https://host:port` with TLS.
    pub(crate) fn url(&self) -> String {
        let scheme = if self.is_secure() { "https" } else { "http" };
        format!("{scheme}://{self}")
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// How long a failing endpoint is skipped.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HealthPolicy {
    /// Skip time after the first failure.
    pub(crate) backoff: Duration,
    /// Cap of the doubling skip time.
    pub(crate) backoff_max: Duration,
}

impl HealthPolicy {
    /// Skip time after `failures` consecutive failures (≥ 1).
    fn skip_for(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.backoff.saturating_mul(1 << doublings).min(self.backoff_max)
    }
}

struct Slot<C> {
    address: Address,
    conn: C,
    /// Consecutive failures; 0 when healthy.
    failures: u32,
    unhealthy_until: Option<Instant>,
}

impl<C> Slot<C> {
    fn healthy(&self, now: Instant) -> bool {
        self.unhealthy_until.is_none_or(|until| now >= until)
    }
}

/// Endpoints with their connections `C`, chosen round-robin among the
/// healthy ones.
pub(crate) struct Balancer<C> {
    slots: Vec<Slot<C>>,
    /// Index where the next round-robin scan starts.
    next: usize,
    policy: HealthPolicy,
}

impl<C: Clone> Balancer<C> {
    /// A balancer over `endpoints` (in order), each with its connection.
    pub(crate) fn new(endpoints: Vec<(Address, C)>, policy: HealthPolicy) -> Balancer<C> {
        let slots = endpoints
            .into_iter()
            .map(|(address, conn)| Slot { address, conn, failures: 0, unhealthy_until: None })
            .collect();
        Balancer { slots, next: 0, policy }
    }

    /// The endpoint for the next request: the next healthy one in
    /// round-robin order, or, if none is healthy, the one whose skip time
    /// ends first. `None` only without endpoints.
    pub(crate) fn pick(&mut self, now: Instant) -> Option<(Address, C)> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let chosen = (0..n).map(|i| (self.next + i) % n).find(|&i| self.slots[i].healthy(now)).or_else(|| {
            (0..n).map(|i| (self.next + i) % n).min_by_key(|&i| self.slots[i].unhealthy_until.unwrap_or(now))
        })?;
        self.next = (chosen + 1) % n;
        let slot = &self.slots[chosen];
        Some((slot.address.clone(), slot.conn.clone()))
    }

    /// The connection of `address`, if it is one of the endpoints.
    pub(crate) fn get(&self, address: &Address) -> Option<C> {
        self.slots.iter().find(|s| &s.address == address).map(|s| s.conn.clone())
    }

    /// Records that a call on `address` failed for want of a serving member.
    pub(crate) fn report_failure(&mut self, address: &Address, now: Instant) {
        let policy = self.policy;
        if let Some(slot) = self.slots.iter_mut().find(|s| &s.address == address) {
            slot.failures = slot.failures.saturating_add(1);
            slot.unhealthy_until = Some(now + policy.skip_for(slot.failures));
        }
    }

    /// Records that a call on `address` was served.
    pub(crate) fn report_success(&mut self, address: &Address) {
        if let Some(slot) = self.slots.iter_mut().find(|s| &s.address == address) {
            slot.failures = 0;
            slot.unhealthy_until = None;
        }
    }

    /// The endpoints, in order.
    pub(crate) fn addresses(&self) -> Vec<Address> {
        self.slots.iter().map(|s| s.address.clone()).collect()
    }

    /// Replaces the endpoint set by `addresses` (kept in the given order):
    /// endpoints already present keep their connection and health, new ones
    /// get a connection from `connect` (left out if it gives none), the
    /// others are dropped. Returns whether anything changed. An empty set is
    /// ignored.
    pub(crate) fn set_endpoints(
        &mut self,
        addresses: &[Address],
        mut connect: impl FnMut(&Address) -> Option<C>,
    ) -> bool {
        if addresses.is_empty() || addresses == self.addresses().as_slice() {
            return false;
        }
        let mut old = std::mem::take(&mut self.slots);
        for address in addresses {
            if self.slots.iter().any(|s| &s.address == address) {
                continue;
            }
            match old.iter().position(|s| &s.address == address) {
                Some(i) => self.slots.push(old.swap_remove(i)),
                None => {
                    if let Some(conn) = connect(address) {
                        self.slots.push(Slot { address: address.clone(), conn, failures: 0, unhealthy_until: None });
                    }
                }
            }
        }
        if self.slots.is_empty() {
            // Nothing usable: keep the old endpoints.
            self.slots = old;
            return false;
        }
        self.next %= self.slots.len();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn endpoints_parse_with_and_without_scheme() {
        assert_eq!(addr("127.0.0.1:2379"), addr("http://127.0.0.1:2379"));
        assert_eq!(addr("http://127.0.0.1:2379/").to_string(), "127.0.0.1:2379");
        assert_eq!(addr("localhost:1").url(), "http://localhost:1");
        let v6 = addr("http://[::1]:2379");
        assert_eq!((v6.dial_host(), v6.port(), v6.url().as_str()), ("::1", 2379, "http://[::1]:2379"));
        for bad in ["", "127.0.0.1", "host:", "host:0", "host:70000", "unix://x:1", "::1:2379", "h:1/x"] {
            assert!(matches!(Address::parse(bad), Err(Error::InvalidEndpoint { .. })), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_scheme_chooses_tls_and_a_bare_endpoint_takes_the_default() {
        let https = addr("https://h:1");
        assert!(https.is_secure() && https.url() == "https://h:1");
        assert_eq!(https, addr("http://h:1"), "the same endpoint whatever the scheme");
        assert!(!addr("http://h:1").with_default_scheme(true).is_secure());
        assert!(addr("https://h:1").with_default_scheme(false).is_secure());
        assert!(addr("h:1").with_default_scheme(true).is_secure());
        assert!(!addr("h:1").with_default_scheme(false).is_secure());
        assert_eq!(addr("h:1").with_default_scheme(true).url(), "https://h:1");
    }

    fn balancer(n: usize) -> Balancer<usize> {
        let policy = HealthPolicy { backoff: Duration::from_secs(1), backoff_max: Duration::from_secs(4) };
        Balancer::new((0..n).map(|i| (addr(&format!("h:{}", i + 1)), i)).collect(), policy)
    }

    fn picks(b: &mut Balancer<usize>, now: Instant, n: usize) -> Vec<usize> {
        (0..n).map(|_| b.pick(now).unwrap().1).collect()
    }

    #[test]
    fn requests_go_round_robin() {
        let mut b = balancer(3);
        assert_eq!(picks(&mut b, Instant::now(), 7), vec![0, 1, 2, 0, 1, 2, 0]);
        assert!(balancer(0).pick(Instant::now()).is_none());
    }

    #[test]
    fn failed_endpoints_are_skipped_until_their_backoff_ends() {
        let mut b = balancer(3);
        let t0 = Instant::now();
        b.report_failure(&addr("h:2"), t0);
        assert_eq!(picks(&mut b, t0, 4), vec![0, 2, 0, 2]);
        // Still skipped just before the end of the 1 s backoff, back after.
        assert_eq!(picks(&mut b, t0 + Duration::from_millis(999), 2), vec![0, 2]);
        assert_eq!(picks(&mut b, t0 + Duration::from_secs(1), 3), vec![0, 1, 2]);
    }

    #[test]
    fn backoff_doubles_with_consecutive_failures_and_resets_on_success() {
        let mut b = balancer(2);
        let t0 = Instant::now();
        let h1 = addr("h:1");
        b.report_failure(&h1, t0);
        b.report_failure(&h1, t0);
        b.report_failure(&h1, t0);
        // 3 failures: 4 s (1, 2, 4, capped at 4).
        assert_eq!(picks(&mut b, t0 + Duration::from_millis(3999), 2), vec![1, 1]);
        b.report_failure(&h1, t0);
        assert_eq!(picks(&mut b, t0 + Duration::from_millis(3999), 1), vec![1]);
        b.report_success(&h1);
        assert_eq!(picks(&mut b, t0, 2), vec![0, 1]);
    }

    #[test]
    fn with_every_endpoint_unhealthy_the_first_to_recover_is_tried() {
        let mut b = balancer(3);
        let t0 = Instant::now();
        b.report_failure(&addr("h:1"), t0 + Duration::from_millis(300));
        b.report_failure(&addr("h:2"), t0 + Duration::from_millis(100));
        b.report_failure(&addr("h:3"), t0 + Duration::from_millis(200));
        assert_eq!(picks(&mut b, t0 + Duration::from_millis(500), 2), vec![1, 1]);
    }

    #[test]
    fn changing_the_endpoint_set_keeps_known_connections_and_health() {
        let mut b = balancer(3);
        let t0 = Instant::now();
        b.report_failure(&addr("h:3"), t0);
        let mut made = Vec::new();
        let changed = b.set_endpoints(&[addr("h:3"), addr("h:9"), addr("h:1")], |a| {
            made.push(a.to_string());
            Some(90)
        });
        assert!(changed);
        assert_eq!(made, vec!["h:9"]);
        assert_eq!(b.addresses(), vec![addr("h:3"), addr("h:9"), addr("h:1")]);
        assert_eq!(b.get(&addr("h:1")), Some(0));
        assert_eq!(b.get(&addr("h:2")), None);
        // h:3 is still backing off.
        let got = picks(&mut b, t0, 4);
        assert!(!got.contains(&2), "{got:?}");
        assert!(!b.set_endpoints(&[addr("h:3"), addr("h:9"), addr("h:1")], |_| Some(0)));
        assert!(!b.set_endpoints(&[], |_| Some(0)));
        // Endpoints without a connection are left out; none at all: no change.
        assert!(!b.set_endpoints(&[addr("h:7")], |_| None));
        assert!(b.set_endpoints(&[addr("h:7"), addr("h:1")], |_| None));
        assert_eq!(b.addresses(), vec![addr("h:1")]);
    }
}
