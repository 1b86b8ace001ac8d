//! TLS: the options, the rustls configuration made from them, and the
//! stream our dialer hands to tonic.
//!
//! The handshake is done by our own dialer (`client.rs`), right after the
//! TCP connection: a failed handshake is then a failed dial, so a request
//! that met it provably never left the client (see `retry.rs`), exactly as
//! a refused connection. rustls with the *ring* provider; HTTP/2 is
//! negotiated with ALPN (`h2`), as etcd's Go server expects.
//!
//! Which endpoints use TLS: `https://host:port` always, `http://host:port`
//! never, and a bare `host:port` when the client has [`TlsOptions`]. An
//! `https://` endpoint of a client without [`TlsOptions`] trusts the
//! system's root certificates.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How the client uses TLS (see [`crate::ClientOptions::tls`]): whom it
/// trusts, who it is, and which name it expects on the server's
/// certificate.
///
/// ```no_run
/// use ketch_client::{Client, ClientOptions, TlsOptions};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let tls = TlsOptions::new()
///     .ca_certificate(std::fs::read("ca.pem")?)
///     // Mutual TLS, for a server started with `--client-cert-auth`.
///     .identity(std::fs::read("client.pem")?, std::fs::read("client-key.pem")?);
/// // `host:port` endpoints use TLS when the options have it; `https://` always does.
/// let client = Client::connect(["10.0.0.1:2379", "https://10.0.0.2:2379"], ClientOptions::new().tls(tls)).await?;
/// client.kv().put("greeting", "hello", Default::default()).await?;
/// # Ok(())
/// # }
/// ```
///
/// Certificates and keys are PEM. Everything is checked when the client is
/// made ([`crate::Client::connect`] fails with [`crate::Error::Tls`]), not
/// at the first request.
#[derive(Clone, Default)]
pub struct TlsOptions {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    insecure_skip_verify: bool,
    server_name: Option<String>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key stays out of logs.
        f.debug_struct("TlsOptions")
            .field("ca_certificate", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("identity", &self.identity.as_ref().map(|_| "<pem>"))
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsOptions {
    /// TLS trusting the system's root certificates, without a client
    /// certificate, checking the server's certificate against the
    /// endpoint's host.
    pub fn new() -> TlsOptions {
        TlsOptions::default()
    }

    /// Trust exactly the certificates of this PEM bundle (etcdctl's
    /// `--cacert`) instead of the system's roots. As in etcd's Go client, a
    /// bundle without any certificate trusts no server: every handshake
    /// then fails.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Present this certificate chain and private key (PEM; PKCS#8, PKCS#1
    /// or SEC1 key) to servers that ask for one (mutual TLS: etcd's
    /// `--client-cert-auth`; etcdctl's `--cert` and `--key`).
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Accept any server certificate, unchecked (etcdctl's
    /// `--insecure-skip-tls-verify`). The connection is still encrypted,
    /// but anyone in the middle can read it: for tests only.
    pub fn insecure_skip_verify(mut self, skip: bool) -> Self {
        self.insecure_skip_verify = skip;
        self
    }

    /// Expect this name on every server's certificate (and send it as SNI)
    /// instead of each endpoint's host; etcdctl sets the discovery domain
    /// with `--insecure-discovery=false`.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Checks the options as [`crate::Client::connect`] does: every
    /// certificate and the key parse, the key is the certificate's, the
    /// server name is valid.
    pub fn validate(&self) -> Result<(), TlsError> {
        client_config(Some(self))?;
        if let Some(name) = &self.server_name {
            server_name(name)?;
        }
        Ok(())
    }
}

/// Why [`TlsOptions`] could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM bundle could not be read.
    #[error("invalid PEM in the {what}: {reason}")]
    Pem {
        /// Which input: `CA certificate`, `client certificate` or `client key`.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A certificate (of the CA bundle or the client's chain) is malformed.
    #[error("invalid {what}: {reason}")]
    BadCertificate {
        /// Which input: `CA certificate` or `client certificate`.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The client certificate PEM holds no certificate.
    #[error("no certificate in the client certificate PEM")]
    NoClientCertificate,
    /// The client key PEM holds no private key.
    #[error("no private key in the client key PEM")]
    NoPrivateKey,
    /// The client key could not be used (unsupported or malformed).
    #[error("invalid client key: {0}")]
    BadPrivateKey(String),
    /// The client key is not the key of the client certificate.
    #[error("the client key does not match the client certificate")]
    KeyMismatch,
    /// The server name to expect is not a valid DNS name or IP address.
    #[error("invalid TLS server name {0:?}")]
    InvalidServerName(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider every configuration uses (ring), independent of
/// any process-wide default.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// The system's root certificates, read once (unreadable ones skipped).
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "skipping system root certificates");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "system root certificates");
            Arc::new(roots)
        })
        .clone()
}

fn pem_error(what: &'static str) -> impl Fn(pem::Error) -> TlsError {
    move |e| TlsError::Pem { what, reason: e.to_string() }
}

/// Every certificate of a PEM bundle, in order; other sections are
/// ignored.
fn certificates(pem_bytes: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut certs = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem_bytes) {
        let (kind, der) = section.map_err(pem_error(what))?;
        if kind == SectionKind::Certificate {
            certs.push(CertificateDer::from(der));
        }
    }
    Ok(certs)
}

/// The rustls configuration of `options` (`None`: TLS with the system's
/// roots, as for an `https://` endpoint of a client without TLS options).
pub(crate) fn client_config(options: Option<&TlsOptions>) -> Result<Arc<ClientConfig>, TlsError> {
    let default = TlsOptions::default();
    let options = options.unwrap_or(&default);
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = if options.insecure_skip_verify {
        Arc::new(SkipVerify(provider.clone()))
    } else {
        let roots = match &options.ca_pem {
            None => system_roots(),
            Some(pem_bytes) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(pem_bytes, "CA certificate")? {
                    roots
                        .add(cert)
                        .map_err(|e| TlsError::BadCertificate { what: "CA certificate", reason: e.to_string() })?;
                }
                Arc::new(roots)
            }
        };
        if roots.is_empty() {
            Arc::new(TrustNothing(provider.clone()))
        } else {
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &options.identity {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = certificates(cert_pem, "client certificate")?;
            if chain.is_empty() {
                return Err(TlsError::NoClientCertificate);
            }
            let key = match PrivateKeyDer::from_pem_slice(key_pem) {
                Ok(key) => key,
                Err(pem::Error::NoItemsFound) => return Err(TlsError::NoPrivateKey),
                Err(e) => return Err(pem_error("client key")(e)),
            };
            builder.with_client_auth_cert(chain, key).map_err(|e| match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => TlsError::KeyMismatch,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                    TlsError::BadCertificate { what: "client certificate", reason: e.to_string() }
                }
                other => TlsError::BadPrivateKey(other.to_string()),
            })?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The name to verify for `host` (an endpoint's host, IPv6 without
/// brackets, or the configured override). A DNS name's trailing dot (SRV
/// targets have one) is dropped, as Go's TLS does.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::InvalidServerName(host.to_string()))
}

/// What the dialer needs to make a TLS connection to one endpoint.
#[derive(Clone)]
pub(crate) struct Handshake {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl Handshake {
    /// The handshake for an endpoint whose host is `host`.
    pub(crate) fn new(options: Option<&TlsOptions>, host: &str) -> Result<Handshake, TlsError> {
        let config = client_config(options)?;
        let name = match options.and_then(|o| o.server_name.as_deref()) {
            Some(name) => server_name(name)?,
            None => server_name(host)?,
        };
        Ok(Handshake { connector: TlsConnector::from(config), name })
    }

    /// Runs the handshake over `tcp`, then waits for the server's first
    /// bytes (an HTTP/2 server's SETTINGS, which etcd's and tonic's servers
    /// send first): with TLS 1.3 a server refuses a client certificate
    /// (or its absence) only after the client has finished its handshake,
    /// and that refusal must fail the dial, before any request is written,
    /// as gRPC's wait for the server preface makes it in etcd's clients.
    pub(crate) async fn connect(&self, tcp: TcpStream) -> io::Result<Stream> {
        use tokio::io::AsyncReadExt;
        let mut tls = self.connector.connect(self.name.clone(), tcp).await?;
        let mut first = vec![0; 16 * 1024];
        let n = tls.read(&mut first).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by the server"));
        }
        first.truncate(n);
        Ok(Stream::Tls { stream: Box::new(tls), first, read: 0 })
    }
}

/// A connection to an endpoint: plain TCP or TLS over TCP.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls {
        stream: Box<TlsStream<TcpStream>>,
        /// The server's first bytes, read by the dialer ([`Handshake::connect`]).
        first: Vec<u8>,
        /// How many of them were handed out.
        read: usize,
    },
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls { stream, first, read } => {
                if *read < first.len() {
                    let n = buf.remaining().min(first.len() - *read);
                    buf.put_slice(&first[*read..*read + n]);
                    *read += n;
                    if *read == first.len() {
                        *first = Vec::new();
                        *read = 0;
                    }
                    return Poll::Ready(Ok(()));
                }
                Pin::new(stream.as_mut()).poll_read(cx, buf)
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls { stream, .. } => stream.is_write_vectored(),
        }
    }
}

/// Signature checks of the handshake, which even an unverified
/// certificate's key must pass.
fn signature_schemes(provider: &CryptoProvider) -> Vec<SignatureScheme> {
    provider.signature_verification_algorithms.supported_schemes()
}

/// `insecure_skip_verify`: any certificate is accepted; the handshake's
/// signatures are still checked against it.
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_schemes(&self.0)
    }
}

/// A CA bundle without certificates: no server is trusted (Go's empty
/// `x509.CertPool`); every certificate is from an unknown issuer.
#[derive(Debug)]
struct TrustNothing(Arc<CryptoProvider>);

impl ServerCertVerifier for TrustNothing {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_schemes(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_drop_a_trailing_dot_and_keep_ip_addresses() {
        assert_eq!(server_name("n1.example.test.").unwrap(), ServerName::try_from("n1.example.test").unwrap());
        assert!(matches!(server_name("127.0.0.1").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("::1").unwrap(), ServerName::IpAddress(_)));
        assert_eq!(server_name("bad name!"), Err(TlsError::InvalidServerName("bad name!".into())));
    }

    #[test]
    fn bad_inputs_are_reported_before_connecting() {
        let no_cert = TlsOptions::new().identity("not pem", "not pem");
        assert_eq!(client_config(Some(&no_cert)).err(), Some(TlsError::NoClientCertificate));
        let garbage_ca =
            TlsOptions::new().ca_certificate("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        assert!(matches!(client_config(Some(&garbage_ca)), Err(TlsError::BadCertificate { .. })), "garbage CA");
        // No certificate at all: nothing is trusted, but that is not an error.
        let empty_ca = TlsOptions::new().ca_certificate("");
        assert!(client_config(Some(&empty_ca)).is_ok());
        let skip = TlsOptions::new().insecure_skip_verify(true);
        let config = client_config(Some(&skip)).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
    }

    #[test]
    fn the_private_key_stays_out_of_debug_output() {
        let options = TlsOptions::new().identity("CERT", "SECRET KEY");
        let text = format!("{options:?}");
        assert!(!text.contains("SECRET"), "{text}");
    }
}
