//! TLS for the end-to-end tests: certificates made at test time, and real
//! etcd 3.4 servers serving clients over TLS.
//!
//! - [`Pki`]: a CA, a second CA that signed nothing of ours (a "wrong CA"
//!   for clients), a server certificate for `127.0.0.1`, `localhost` and
//!   any names a test adds (SRV targets), and a client certificate, written
//!   as PEM files into a temporary directory. Generated with `rcgen` on
//!   every run, so nothing expires in the repository.
//! - [`TlsEtcd`]: `/usr/bin/etcd` with `--cert-file`/`--key-file` on an
//!   `https://127.0.0.1:<port>` client URL, optionally
//!   `--client-cert-auth` with `--trusted-ca-file` (mutual TLS), optionally
//!   inside a network namespace ([`crate::dns::Netns`]). Twins (same
//!   member and cluster IDs) come from the same `peer_flags`, as
//!   [`crate::Member::start_with_peer_flags`] makes them. Killed (SIGKILL)
//!   and reaped on drop; children die with the test process.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::{ETCD_BIN, READY_TIMEOUT, die_with_parent, free_port, spawn_child};

/// Test certificates, as PEM files in a temporary directory (removed on
/// drop).
pub struct Pki {
    dir: tempfile::TempDir,
}

/// A CA: its certificate (PEM) and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("cannot generate a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).expect("cannot self-sign the CA");
    Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
}

/// A certificate for `names` (IP addresses or DNS names) signed by `ca`:
/// (certificate PEM, key PEM).
fn leaf(ca: &Ca, common_name: &str, names: &[&str], usages: Vec<ExtendedKeyUsagePurpose>) -> (String, String) {
    let key = KeyPair::generate().expect("cannot generate a key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("certificate parameters");
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = usages;
    let cert = params.signed_by(&key, &ca.issuer).expect("cannot sign a certificate");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// A CA with a server certificate for `127.0.0.1`, `localhost` and
    /// `server_names`, a client certificate, and an unrelated CA.
    pub fn new(server_names: &[&str]) -> Pki {
        let dir = tempfile::Builder::new().prefix("ketch-e2e-pki-").tempdir().expect("cannot create the PKI directory");
        let ca = new_ca("ketch e2e CA");
        let other = new_ca("some other CA");
        let mut names = vec!["127.0.0.1", "localhost"];
        names.extend_from_slice(server_names);
        let (server, server_key) = leaf(
            &ca,
            "etcd server",
            &names,
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        );
        let (client, client_key) = leaf(&ca, "etcd client", &[], vec![ExtendedKeyUsagePurpose::ClientAuth]);
        let pki = Pki { dir };
        for (file, pem) in [
            ("ca.pem", ca.pem.as_str()),
            ("other-ca.pem", other.pem.as_str()),
            ("server.pem", &server),
            ("server-key.pem", &server_key),
            ("client.pem", &client),
            ("client-key.pem", &client_key),
        ] {
            std::fs::write(pki.path(file), pem).unwrap_or_else(|e| panic!("cannot write {file}: {e}"));
        }
        pki
    }

    /// A file of the PKI directory (or any name in it).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `path(file)` as a string, for command lines.
    pub fn arg(&self, file: &str) -> String {
        self.path(file).to_string_lossy().into_owned()
    }

    /// The CA certificate that signed the server and client certificates.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A CA that signed none of them.
    pub fn other_ca(&self) -> PathBuf {
        self.path("other-ca.pem")
    }

    /// The server certificate and key.
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (self.path("server.pem"), self.path("server-key.pem"))
    }

    /// The client certificate and key.
    pub fn client(&self) -> (PathBuf, PathBuf) {
        (self.path("client.pem"), self.path("client-key.pem"))
    }

    /// Reads a file of the PKI.
    pub fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap_or_else(|e| panic!("cannot read {file}: {e}"))
    }
}

/// How a [`TlsEtcd`] serves clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// TLS, any client (no client certificate asked for).
    None,
    /// Mutual TLS: `--client-cert-auth --trusted-ca-file <ca>`.
    Required,
}

/// A reference etcd serving clients over TLS (see the module docs).
pub struct TlsEtcd {
    dir: tempfile::TempDir,
    client_port: u16,
    child: Option<Child>,
}

impl TlsEtcd {
    /// Starts etcd with `pki`'s server certificate, and waits until it
    /// serves clients. `advertise_host` is the host of the advertised
    /// client URL (what `member list` shows); `peer_flags` replaces the
    /// single-member cluster flags (twins); `netns` runs it in that
    /// network namespace.
    pub fn start(
        pki: &Pki,
        auth: ClientAuth,
        advertise_host: &str,
        peer_flags: Option<&[String]>,
        netns: Option<&str>,
    ) -> TlsEtcd {
        let dir = tempfile::Builder::new().prefix("ketch-e2e-tls-etcd-").tempdir().expect("cannot create a directory");
        let client_port = free_port();
        let peer_port = free_port();
        let peer = format!("http://127.0.0.1:{peer_port}");
        let (cert, key) = pki.server();
        let mut args: Vec<String> = vec![
            "--name".into(),
            "e".into(),
            "--data-dir".into(),
            dir.path().join("data").to_string_lossy().into_owned(),
            "--listen-client-urls".into(),
            format!("https://127.0.0.1:{client_port}"),
            "--advertise-client-urls".into(),
            format!("https://{advertise_host}:{client_port}"),
            "--listen-peer-urls".into(),
            peer.clone(),
            "--cert-file".into(),
            cert.to_string_lossy().into_owned(),
            "--key-file".into(),
            key.to_string_lossy().into_owned(),
        ];
        match peer_flags {
            Some(flags) => args.extend(flags.iter().cloned()),
            None => args.extend([
                "--initial-advertise-peer-urls".to_string(),
                peer.clone(),
                "--initial-cluster".into(),
                format!("e={peer}"),
            ]),
        }
        if auth == ClientAuth::Required {
            args.extend(["--client-cert-auth".to_string(), "--trusted-ca-file".into(), pki.arg("ca.pem")]);
        }
        let mut cmd = in_netns(netns, Path::new(ETCD_BIN), &args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("server.log"))
            .expect("cannot open the server log");
        let log_err = log.try_clone().expect("cannot duplicate the log handle");
        cmd.stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
        die_with_parent(&mut cmd);
        let child = spawn_child(cmd).unwrap_or_else(|e| panic!("cannot start etcd: {e}"));
        let mut etcd = TlsEtcd { dir, client_port, child: Some(child) };
        etcd.wait_ready();
        etcd
    }

    fn log_text(&self) -> String {
        std::fs::read(self.dir.path().join("server.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.log_text().contains("serving client requests on") {
                return;
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                let log = self.log_text();
                self.stop();
                panic!("TLS etcd did not start ({exited:?}); its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `https://127.0.0.1:<client port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("--- last lines of the TLS etcd log:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    }
}

/// `program args`, or `ip netns exec <netns> program args`.
pub fn in_netns(netns: Option<&str>, program: &Path, args: &[String]) -> Command {
    match netns {
        None => {
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd
        }
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program).args(args);
            cmd
        }
    }
}
