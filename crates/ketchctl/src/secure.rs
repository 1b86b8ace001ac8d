//! TLS and DNS discovery from the global flags, as etcdctl 3.4 does them
//! (`secureCfgFromCmd`, `newClientCfg`, `endpointsFromCmd`), with its
//! error texts and exit codes.
//!
//! - `--cacert`, `--cert`, `--key` (or `ETCDCTL_CACERT`, ...) turn TLS on,
//!   as does `--insecure-transport=false` (then with the system's roots);
//!   `--insecure-skip-tls-verify` matters only when TLS is on that way.
//! - The first endpoint's scheme decides for all of them (gRPC's one
//!   transport credential per connection): `http://` plain, `https://`
//!   TLS (the system's roots if no TLS flag is given), none: TLS if the
//!   flags turned it on.
//! - `--discovery-srv <domain>` takes the endpoints from DNS SRV records
//!   (`_etcd-client-ssl._tcp.<domain>` then `_etcd-client._tcp.<domain>`,
//!   `--discovery-srv-name` appended to the service); with
//!   `--insecure-discovery=false` plain `http://` records are dropped and
//!   the certificates must name the domain. No record: `--endpoints`.
//! - Go's texts for unreadable files (`open x: no such file or
//!   directory`) and for certificates and keys (`tls: ...`), exit 128.

use std::io::Read;

use ketch_client::{TlsError, TlsOptions};

use crate::cli::Flags;
use crate::error::{EXIT_BAD_ARGS, EXIT_ERROR, Exit, err, go_io_error};
use crate::gofmt;

/// etcdctl's `keyAndCertFromCmd`: a TLS file flag given as `""`.
pub fn check_flags(flags: &Flags) -> Result<(), Exit> {
    for name in ["cert", "key", "cacert"] {
        if flags.string(name).is_empty() && flags.get(name).is_some_and(|f| f.changed) {
            return Err(Exit::error(EXIT_BAD_ARGS, format!("empty string is passed to --{name} option")));
        }
    }
    Ok(())
}

/// The discovery domain that TLS must verify (`--insecure-discovery=false`).
fn server_name(flags: &Flags) -> String {
    if flags.bool("insecure-discovery") { String::new() } else { flags.string("discovery-srv") }
}

/// Whether the flags ask for TLS on endpoints without a scheme.
pub fn tls_on(flags: &Flags) -> bool {
    ["cert", "key", "cacert"].iter().any(|f| !flags.string(f).is_empty())
        || !server_name(flags).is_empty()
        || !flags.bool("insecure-transport")
}

/// Go's `os.ReadFile`.
fn read_file(path: &str) -> Result<Vec<u8>, Exit> {
    let bad = |op: &str, e: std::io::Error| Exit::error(EXIT_BAD_ARGS, go_io_error(op, path, &e));
    let mut file = std::fs::File::open(path).map_err(|e| bad("open", e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| bad("read", e))?;
    Ok(bytes)
}

/// The types of the PEM blocks in `bytes` (`CERTIFICATE`, `EC PRIVATE
/// KEY`, ...), in order: what Go's `pem.Decode` loop finds.
fn pem_types(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut types = Vec::new();
    let mut open: Option<&str> = None;
    for line in text.lines().map(str::trim_end) {
        match open {
            None => {
                if let Some(kind) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) {
                    open = Some(kind);
                }
            }
            Some(kind) => {
                if line == format!("-----END {kind}-----") {
                    types.push(kind.to_string());
                    open = None;
                }
            }
        }
    }
    types
}

fn is_key_type(kind: &str) -> bool {
    kind == "PRIVATE KEY" || kind.ends_with(" PRIVATE KEY")
}

/// Go's `tls.X509KeyPair` checks of the PEM block types, with its errors.
fn check_key_pair(cert: &[u8], key: &[u8]) -> Result<(), String> {
    let cert_types = pem_types(cert);
    if !cert_types.iter().any(|t| t == "CERTIFICATE") {
        return Err(match cert_types.as_slice() {
            [] => "tls: failed to find any PEM data in certificate input".to_string(),
            [only] if only.ends_with("PRIVATE KEY") => "tls: failed to find certificate PEM data in certificate input, but did find a private key; PEM inputs may have been switched".to_string(),
            skipped => format!(
                "tls: failed to find \"CERTIFICATE\" PEM block in certificate input after skipping PEM blocks of the following types: [{}]",
                skipped.join(" ")
            ),
        });
    }
    let key_types = pem_types(key);
    let skipped: Vec<&String> = key_types.iter().take_while(|t| !is_key_type(t)).collect();
    if skipped.len() == key_types.len() {
        return Err(match skipped.as_slice() {
            [] => "tls: failed to find any PEM data in key input".to_string(),
            [only] if *only == "CERTIFICATE" => {
                "tls: found a certificate rather than a key in the PEM for the private key".to_string()
            }
            skipped => format!(
                "tls: failed to find PEM block with type ending in \"PRIVATE KEY\" in key input after skipping PEM blocks of the following types: [{}]",
                skipped.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
            ),
        });
    }
    Ok(())
}

/// Go's text for what the client library found wrong.
fn go_tls_text(e: &TlsError) -> String {
    match e {
        TlsError::KeyMismatch => "tls: private key does not match public key".to_string(),
        TlsError::NoPrivateKey | TlsError::BadPrivateKey(_) => "tls: failed to parse private key".to_string(),
        TlsError::NoClientCertificate => "tls: failed to find any PEM data in certificate input".to_string(),
        TlsError::BadCertificate { .. } | TlsError::Pem { .. } => "x509: malformed certificate".to_string(),
        other => other.to_string(),
    }
}

/// etcdctl's `newClientCfg`: the TLS options the flags give, if TLS is on.
pub fn tls_options(flags: &Flags) -> Result<Option<TlsOptions>, Exit> {
    if !tls_on(flags) {
        return Ok(None);
    }
    let (cert, key, cacert) = (flags.string("cert"), flags.string("key"), flags.string("cacert"));
    let bad = |text: String| Exit::error(EXIT_BAD_ARGS, text);
    let mut tls = TlsOptions::new();
    if !cert.is_empty() || !key.is_empty() {
        if cert.is_empty() || key.is_empty() {
            return Err(bad(format!("KeyFile and CertFile must both be present[key: {key}, cert: {cert}]")));
        }
        let cert_pem = read_file(&cert)?;
        let key_pem = read_file(&key)?;
        check_key_pair(&cert_pem, &key_pem).map_err(bad)?;
        tls = tls.identity(cert_pem, key_pem);
    }
    if !cacert.is_empty() {
        let pem = read_file(&cacert)?;
        // Go parses every PEM block as a certificate.
        if pem_types(&pem).iter().any(|t| t != "CERTIFICATE") {
            return Err(bad("x509: malformed tbs certificate".to_string()));
        }
        tls = tls.ca_certificate(pem);
    }
    let name = server_name(flags);
    if !name.is_empty() {
        tls = tls.server_name(name);
    }
    tls = tls.insecure_skip_verify(flags.bool("insecure-skip-tls-verify"));
    tls.validate().map_err(|e| bad(go_tls_text(&e)))?;
    Ok(Some(tls))
}

/// The endpoints as the client should dial them: the first endpoint's
/// scheme (or, without one, whether TLS is on) decides for all.
pub fn client_endpoints(endpoints: &[String], tls: bool) -> Vec<String> {
    let scheme = match endpoints.first().and_then(|e| e.trim().split_once("://")) {
        Some(("http", _)) => "http",
        Some(("https", _)) => "https",
        _ if tls => "https",
        _ => "http",
    };
    endpoints
        .iter()
        .map(|e| {
            let e = e.trim();
            match e.split_once("://") {
                Some(("http" | "https", rest)) => format!("{scheme}://{rest}"),
                Some(_) => e.to_string(),
                None => format!("{scheme}://{e}"),
            }
        })
        .collect()
}

/// An endpoint without its scheme, as clientv3 names its target.
pub fn host_port(endpoint: &str) -> &str {
    endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest)
}

/// etcdctl's `endpointsFromCmd`: the SRV records' endpoints with
/// `--discovery-srv`, else (or if there are none) `--endpoints`.
pub async fn endpoints(flags: &Flags) -> Result<Vec<String>, Exit> {
    let domain = flags.string("discovery-srv");
    if domain.is_empty() {
        return Ok(flags.strings("endpoints"));
    }
    let service_name = flags.string("discovery-srv-name");
    let found = ketch_client::discover_srv(&domain, Some(service_name.as_str()))
        .await
        .map_err(|e| Exit::error(EXIT_ERROR, e))?;
    let mut endpoints = Vec::new();
    for endpoint in found {
        if !flags.bool("insecure-discovery") && endpoint.starts_with("http://") {
            err(format!("ignoring discovered insecure endpoint {}\n", gofmt::quote(endpoint.as_bytes())));
            continue;
        }
        endpoints.push(endpoint);
    }
    if endpoints.is_empty() {
        return Ok(flags.strings("endpoints").iter().map(|e| e.trim().to_string()).collect());
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_endpoint_decides_the_scheme() {
        let eps = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(client_endpoints(&eps(&["a:1", "http://b:2"]), true), ["https://a:1", "https://b:2"]);
        assert_eq!(client_endpoints(&eps(&["a:1", "https://b:2"]), false), ["http://a:1", "http://b:2"]);
        assert_eq!(client_endpoints(&eps(&["http://a:1", "b:2"]), true), ["http://a:1", "http://b:2"]);
        assert_eq!(client_endpoints(&eps(&["https://a:1", "b:2"]), false), ["https://a:1", "https://b:2"]);
        assert_eq!(host_port("https://a:1"), "a:1");
        assert_eq!(host_port("a:1"), "a:1");
    }

    #[test]
    fn key_pairs_are_checked_as_go_does() {
        let block = |t: &str| format!("-----BEGIN {t}-----\nAAAA\n-----END {t}-----\n");
        let cert = block("CERTIFICATE");
        let key = block("EC PRIVATE KEY");
        assert_eq!(check_key_pair(cert.as_bytes(), key.as_bytes()), Ok(()));
        assert_eq!(
            check_key_pair(b"", key.as_bytes()).unwrap_err(),
            "tls: failed to find any PEM data in certificate input"
        );
        assert!(
            check_key_pair(key.as_bytes(), key.as_bytes()).unwrap_err().contains("PEM inputs may have been switched")
        );
        assert_eq!(
            check_key_pair(cert.as_bytes(), cert.as_bytes()).unwrap_err(),
            "tls: found a certificate rather than a key in the PEM for the private key"
        );
        let other = format!("{}{}", block("FOO"), block("BAR"));
        assert_eq!(
            check_key_pair(cert.as_bytes(), other.as_bytes()).unwrap_err(),
            "tls: failed to find PEM block with type ending in \"PRIVATE KEY\" in key input after skipping PEM blocks of the following types: [FOO BAR]"
        );
    }
}
