//! ketch-client over TLS against the real etcd 3.4 (Ketch itself has no
//! TLS yet): mutual TLS, server-only TLS, `insecure_skip_verify`, a server
//! name override, and the failures (unknown CA, no client certificate,
//! bad key), which must be dial failures: a write that met them was never
//! sent, so the client may say so ([`Error::Unavailable`], not
//! [`Error::OutcomeUnknown`]).
//!
//! Certificates are made at test time ([`Pki`]).

use std::time::Duration;

use ketch_client::{Client, ClientOptions, DeleteOptions, Error, GetOptions, PutOptions, TlsError, TlsOptions};
use ketch_e2e::tls::{ClientAuth, Pki, TlsEtcd};

fn options() -> ClientOptions {
    ClientOptions::new().dial_timeout(Duration::from_secs(2)).request_timeout(Duration::from_secs(3))
}

fn mutual(pki: &Pki) -> TlsOptions {
    TlsOptions::new().ca_certificate(pki.read("ca.pem")).identity(pki.read("client.pem"), pki.read("client-key.pem"))
}

async fn round_trip(client: &Client, key: &str) {
    let put = client.kv().put(key, "v1", PutOptions::new()).await.unwrap_or_else(|e| panic!("put {key}: {e}"));
    let revision = put.header.unwrap_or_default().revision;
    let got = client.kv().get(key, GetOptions::new()).await.unwrap_or_else(|e| panic!("get {key}: {e}"));
    assert_eq!(got.kvs.len(), 1, "{key}: {got:?}");
    assert_eq!((got.kvs[0].value.as_slice(), got.kvs[0].mod_revision), (b"v1".as_slice(), revision));
}

#[tokio::test]
async fn kv_watch_and_maintenance_over_mutual_tls() {
    let pki = Pki::new(&[]);
    let etcd = TlsEtcd::start(&pki, ClientAuth::Required, "127.0.0.1", None, None);
    // A bare endpoint uses TLS because the options have it; so does https://.
    for endpoint in [etcd.endpoint(), etcd.url()] {
        let client = Client::connect([&endpoint], options().tls(mutual(&pki))).await.expect("connect");
        assert_eq!(client.endpoints(), vec![etcd.url()]);
        round_trip(&client, &format!("k-{endpoint}")).await;
    }
    let client = Client::connect([etcd.endpoint()], options().tls(mutual(&pki))).await.expect("connect");
    let mut watcher = client.watch().watch("w", Default::default()).await.expect("watch");
    client.kv().put("w", "1", PutOptions::new()).await.expect("put w");
    let event = tokio::time::timeout(Duration::from_secs(5), watcher.message()).await.expect("no event in time");
    let response = event.expect("watch failed").expect("watch ended");
    assert_eq!(response.events.len(), 1);
    assert_eq!(response.events[0].kv.as_ref().map(|kv| kv.value.clone()), Some(b"1".to_vec()));
    let deleted = client.kv().delete("w", DeleteOptions::new()).await.expect("delete");
    assert_eq!(deleted.deleted, 1);
    let status = client.maintenance().status_of(&etcd.endpoint()).await.expect("status");
    assert_eq!(status.version, "3.4.23");
    let members = client.cluster().member_list().await.expect("member list");
    assert_eq!(members.members[0].client_ur_ls, vec![etcd.url()]);
    // Auto-sync keeps the https:// endpoint (the member list's URL).
    assert_eq!(client.sync_endpoints().await.expect("sync"), vec![etcd.url()]);
    round_trip(&client, "after-sync").await;
}

#[tokio::test]
async fn server_only_tls_skip_verify_and_a_server_name() {
    let pki = Pki::new(&["etcd.example.test"]);
    let etcd = TlsEtcd::start(&pki, ClientAuth::None, "127.0.0.1", None, None);
    let ca = TlsOptions::new().ca_certificate(pki.read("ca.pem"));
    let client = Client::connect([etcd.endpoint()], options().tls(ca.clone())).await.expect("connect");
    round_trip(&client, "ca-only").await;
    // Not verified at all: a CA that signed nothing still works.
    let skip = TlsOptions::new().ca_certificate(pki.read("other-ca.pem")).insecure_skip_verify(true);
    let client = Client::connect([etcd.endpoint()], options().tls(skip)).await.expect("connect");
    round_trip(&client, "skip-verify").await;
    // The certificate is checked against the name given instead of 127.0.0.1.
    let named = ca.clone().server_name("etcd.example.test");
    let client = Client::connect([etcd.endpoint()], options().tls(named)).await.expect("connect");
    round_trip(&client, "named").await;
    let wrong_name = ca.server_name("other.example.test");
    let client = Client::connect([etcd.endpoint()], options().tls(wrong_name)).await.expect("connect");
    let e = client.kv().get("k", GetOptions::new()).await.expect_err("a certificate for another name was accepted");
    assert!(matches!(&e, Error::Unavailable { last, .. } if last.contains("not valid for name")), "{e}");
    // An explicit http:// endpoint stays plain, even with TLS options: the
    // TLS server does not answer it.
    let plain = format!("http://{}", etcd.endpoint());
    let client = Client::connect([plain], options().tls(TlsOptions::new())).await.expect("connect");
    let e = client.kv().get("k", GetOptions::new()).await.expect_err("plain HTTP/2 to a TLS server worked");
    assert!(matches!(e, Error::Unavailable { .. }), "{e}");
}

#[tokio::test]
async fn handshake_failures_fail_the_dial_so_writes_were_never_sent() {
    let pki = Pki::new(&[]);
    let etcd = TlsEtcd::start(&pki, ClientAuth::Required, "127.0.0.1", None, None);
    let cases = [
        (
            "unknown CA",
            TlsOptions::new()
                .ca_certificate(pki.read("other-ca.pem"))
                .identity(pki.read("client.pem"), pki.read("client-key.pem")),
            "UnknownIssuer",
        ),
        ("no client certificate", TlsOptions::new().ca_certificate(pki.read("ca.pem")), "fatal alert"),
        // https:// without TLS options: the system's roots, which do not have our CA.
        ("system roots", TlsOptions::new(), "UnknownIssuer"),
        ("a CA bundle without certificates", TlsOptions::new().ca_certificate(""), "UnknownIssuer"),
    ];
    for (what, tls, expected) in cases {
        let client = Client::connect([etcd.url()], options().tls(tls)).await.expect("connect");
        let e = client.kv().put("k", "v", PutOptions::new()).await.expect_err(what);
        match &e {
            Error::Unavailable { last, .. } => {
                assert!(last.contains("TLS handshake failed") && last.contains(expected), "{what}: {e}")
            }
            other => panic!("{what}: a failed handshake must mean never sent: {other}"),
        }
    }
    // Nothing was written.
    let client = Client::connect([etcd.url()], options().tls(mutual(&pki))).await.expect("connect");
    assert_eq!(client.kv().get("k", GetOptions::new()).await.expect("get").count, 0);
}

#[tokio::test]
async fn bad_certificates_and_keys_fail_at_connect() {
    let pki = Pki::new(&[]);
    let connect = |tls: TlsOptions| async move { Client::connect(["127.0.0.1:1"], options().tls(tls)).await };
    let tls = |cert: &str, key: &str| TlsOptions::new().identity(pki.read(cert), pki.read(key));
    let e = connect(tls("client.pem", "server-key.pem")).await.expect_err("a key of another certificate");
    assert!(matches!(e, Error::Tls(TlsError::KeyMismatch)), "{e}");
    let e = connect(tls("client-key.pem", "client-key.pem")).await.expect_err("a key for a certificate");
    assert!(matches!(e, Error::Tls(TlsError::NoClientCertificate)), "{e}");
    let e = connect(tls("client.pem", "client.pem")).await.expect_err("a certificate for a key");
    assert!(matches!(e, Error::Tls(TlsError::NoPrivateKey)), "{e}");
    let e = connect(TlsOptions::new().server_name("no spaces allowed")).await.expect_err("a bad name");
    assert!(matches!(e, Error::Tls(TlsError::InvalidServerName(_))), "{e}");
    assert!(connect(mutual(&pki)).await.is_ok());
}

/// The part of [`client_connects_through_srv_records`] that runs inside its
/// network namespace (a child process: the resolver configuration is the
/// namespace's `/etc/resolv.conf` only there). Does nothing elsewhere.
#[tokio::test]
#[ignore = "run by client_connects_through_srv_records in its network namespace"]
async fn srv_records_inside_the_namespace() {
    let (Ok(domain), Ok(pki), Ok(port)) =
        (std::env::var("KETCH_SRV_DOMAIN"), std::env::var("KETCH_SRV_PKI"), std::env::var("KETCH_SRV_PORT"))
    else {
        return;
    };
    let read = |file: &str| std::fs::read(std::path::Path::new(&pki).join(file)).expect("PKI file");
    let tls = TlsOptions::new().ca_certificate(read("ca.pem")).identity(read("client.pem"), read("client-key.pem"));
    let found = ketch_client::discover_srv(&domain, None).await.expect("discovery");
    assert_eq!(found, vec![format!("https://n1.{domain}.:{port}")]);
    let client = Client::connect_srv(&domain, None, options().tls(tls)).await.expect("connect_srv");
    round_trip(&client, "through-srv").await;
    let e = ketch_client::discover_srv(&domain, Some("missing")).await.expect_err("records for a missing service");
    assert_eq!(
        e.to_string(),
        format!(
            "dns lookup errors: lookup _etcd-client-ssl-missing._tcp.{domain} on 127.0.0.1:53: no such host \
             and lookup _etcd-client-missing._tcp.{domain} on 127.0.0.1:53: no such host"
        )
    );
    println!("SRV CHECKS DONE");
}

#[test]
fn client_connects_through_srv_records() {
    use ketch_e2e::dns::{Dnsmasq, Netns, SrvRecord};
    let netns = Netns::new();
    let pki = Pki::new(&["n1.srv.test"]);
    let etcd = TlsEtcd::start(&pki, ClientAuth::Required, "n1.srv.test", None, Some(netns.name()));
    let record = SrvRecord::new("_etcd-client-ssl._tcp.srv.test", "n1.srv.test", etcd.client_port());
    let _dnsmasq = Dnsmasq::start(&netns, "srv.test", &[record], &[("n1.srv.test", "127.0.0.1")]);
    let exe = std::env::current_exe().expect("the test executable");
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", netns.name()])
        .arg(exe)
        .args(["srv_records_inside_the_namespace", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("KETCH_SRV_DOMAIN", "srv.test")
        .env("KETCH_SRV_PKI", pki.arg(""))
        .env("KETCH_SRV_PORT", etcd.client_port().to_string());
    ketch_e2e::die_with_parent(&mut cmd);
    let out = cmd.output().expect("cannot run the test executable in the namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("SRV CHECKS DONE"),
        "the checks inside the namespace failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
