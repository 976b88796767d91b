//! TLS on the controller's one port, and who the caller is.
//!
//! The handshake asks every client for a certificate but accepts whatever it
//! gets (the client still proves it holds the certificate's key): trust is
//! decided after the handshake, against the fabric's CA, so that a caller
//! with no certificate, an expired one or one from another CA reaches the
//! authorization layer ([`crate::api::authz`]) and is told
//! `UNAUTHENTICATED` with the reason, instead of seeing a broken connection.
//! Health checks and reflection stay open to callers without a certificate.
//!
//! The controller's own certificate is served through [`ServerCert`], which
//! reloads it from its files when they change ([`ServerCert::watch`]): a
//! renewed certificate is served to new connections without a restart.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use lb_proto::pki::{Credentials, Identity};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {detail}")]
    Config { what: &'static str, detail: String },
}

fn config_err(what: &'static str) -> impl FnOnce(String) -> TlsError {
    move |detail| TlsError::Config { what, detail }
}

/// A caller the CA vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub identity: Identity,
    /// IP addresses in its certificate (a realserver's own address).
    pub ips: Vec<IpAddr>,
    /// When the certificate was issued, read from its serial number
    /// (`lb_proto::pki::issued_at_ms`); `None` for a certificate from an
    /// operator's own CA, which a revocation then covers whatever its age.
    pub issued_at_ms: Option<u64>,
    /// When the certificate expires: a connection made before then is cut
    /// off at it.
    pub expires_at: std::time::SystemTime,
}

/// What the controller knows about the other end of a connection; tonic
/// puts it in every request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote: Option<SocketAddr>,
    /// The verified identity, or why there is none.
    pub identity: Result<Verified, String>,
}

/// The provider every TLS piece here uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_certs(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| config_err(what)(e.to_string()))?;
    if certs.is_empty() {
        return Err(config_err(what)("no certificate in the PEM".into()));
    }
    Ok(certs)
}

/// Requests a client certificate, accepts any (checking only that the
/// client holds its key); [`Acceptor::verify`] decides trust afterwards.
#[derive(Debug)]
struct AskForCertificate(Arc<CryptoProvider>);

impl ClientCertVerifier for AskForCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    lb_proto::handshake_signatures!(0);
}

/// Accepts TLS connections with the controller's certificate and names
/// their peers.
#[derive(Clone)]
pub struct Acceptor {
    tls: TlsAcceptor,
    trust: Arc<dyn ClientCertVerifier>,
}

impl Acceptor {
    /// `creds`: the CA (whom callers are checked against); `cert`: this
    /// controller's certificate as it stands.
    pub fn new(creds: &Credentials, cert: Arc<ServerCert>) -> Result<Acceptor, TlsError> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        for ca in pem_certs("CA certificate", &creds.ca_pem)? {
            roots
                .add(ca)
                .map_err(|e| config_err("CA certificate")(e.to_string()))?;
        }
        let trust = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| config_err("CA certificate")(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_err("TLS versions")(e.to_string()))?
            .with_client_cert_verifier(Arc::new(AskForCertificate(provider)))
            .with_cert_resolver(cert);
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Acceptor {
            tls: TlsAcceptor::from(Arc::new(config)),
            trust,
        })
    }

    /// Whether the CA vouches for the presented chain, and for whom.
    fn verify(&self, chain: Option<&[CertificateDer<'static>]>) -> Result<Verified, String> {
        let Some((end, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return Err("no client certificate".into());
        };
        self.trust
            .verify_client_cert(end, intermediates, UnixTime::now())
            .map_err(|e| format!("client certificate not accepted: {e}"))?;
        identity_of(end)
    }

    /// TLS connections from `listener`, each handshake on its own task so a
    /// slow client cannot hold up the others.
    pub fn incoming(self, listener: TcpListener) -> ReceiverStream<io::Result<TlsConn>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, conns) = (self.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.tls.accept(tcp),
                    )
                    .await;
                    let stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    };
                    let identity = acceptor.verify(stream.get_ref().1.peer_certificates());
                    let peer = Peer {
                        remote: Some(remote),
                        identity,
                    };
                    let _ = conns.send(Ok(TlsConn { stream, peer })).await;
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        ReceiverStream::new(rx)
    }
}

/// This controller's certificate chain (its certificate, then the CA: a
/// joining agent pins the CA by fingerprint, everyone else already has
/// it) and key.
fn certified(
    creds: &Credentials,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let (Some(cert), Some(key)) = (&creds.cert_pem, &creds.key_pem) else {
        return Err(config_err("controller certificate")(
            "missing: give a certificate and key".into(),
        ));
    };
    let mut chain = pem_certs("controller certificate", cert)?;
    for ca in pem_certs("CA certificate", &creds.ca_pem)? {
        if !chain.contains(&ca) {
            chain.push(ca);
        }
    }
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| config_err("controller key")(e.to_string()))?;
    Ok((chain, key))
}

/// Where the controller's certificate comes from, to reload it.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    fn watch(&self) -> lb_proto::pki::FileWatch {
        lb_proto::pki::FileWatch::new(vec![self.ca.clone(), self.cert.clone(), self.key.clone()])
    }
}

/// How often [`ServerCert::watch`] looks at the files.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The certificate and key the controller presents (gRPC and HTTPS), able
/// to change while it runs.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    pub fn new(creds: &Credentials) -> Result<Arc<ServerCert>, TlsError> {
        Ok(Arc::new(ServerCert {
            current: RwLock::new(Arc::new(certified_key(creds)?)),
        }))
    }

    /// Reloads the certificate from `files` whenever one of them changes,
    /// until `stop`. A file that does not read, or a key that does not
    /// match its certificate (one written before the other, say), keeps
    /// the certificate served so far, and is tried again at the next
    /// change.
    pub fn watch(
        self: Arc<Self>,
        files: CertFiles,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send {
        // The files as they are now, not when the task first runs.
        let mut watch = files.watch();
        async move {
            loop {
                tokio::select! {
                    _ = watch.changed(RELOAD_EVERY) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let loaded =
                    Credentials::from_files(&files.ca, Some(&files.cert), Some(&files.key))
                        .map_err(|e| config_err("controller certificate")(e.to_string()))
                        .and_then(|c| certified_key(&c).map(|k| (k, c)));
                match loaded {
                    Ok((key, creds)) => {
                        let expires = creds
                            .cert_pem
                            .as_deref()
                            .and_then(|p| lb_proto::pki::lifetime(p).ok())
                            .map(|(_, until)| lb_proto::pki::unix_ms(until));
                        if let Ok(mut current) = self.current.write() {
                            *current = Arc::new(key);
                        }
                        tracing::info!(cert = %files.cert.display(), expires_at_ms = ?expires, "controller certificate reloaded: new connections get it");
                    }
                    Err(e) => {
                        tracing::warn!(cert = %files.cert.display(), error = %e, "controller certificate changed but does not load; serving the one before")
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

/// `creds`' chain and key, checked to belong together.
fn certified_key(creds: &Credentials) -> Result<CertifiedKey, TlsError> {
    let (chain, key) = certified(creds)?;
    CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| config_err("controller certificate")(e.to_string()))
}

/// HTTPS for the dashboard: the controller's certificate, no client
/// certificate asked (the page is read-only, like health), HTTP/1.1; each
/// handshake on its own task. An axum listener.
pub struct HttpsListener {
    conns: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl HttpsListener {
    pub fn new(cert: Arc<ServerCert>, listener: TcpListener) -> Result<HttpsListener, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_err("TLS versions")(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(cert);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = TlsAcceptor::from(Arc::new(config));
        let local = listener
            .local_addr()
            .map_err(|e| config_err("--http-listen")(e.to_string()))?;
        let (tx, conns) = mpsc::channel(16);
        tokio::spawn(async move {
            while !tx.is_closed() {
                let Ok((tcp, remote)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    let limit = std::time::Duration::from_secs(10);
                    if let Ok(Ok(stream)) = tokio::time::timeout(limit, tls.accept(tcp)).await {
                        let _ = tx.send((stream, remote)).await;
                    }
                });
            }
        });
        Ok(HttpsListener { conns, local })
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.conns.recv().await {
            Some(conn) => conn,
            // The accepting task ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The identity URI and IP addresses in a certificate's subject alternative names.
fn identity_of(der: &CertificateDer<'_>) -> Result<Verified, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("client certificate: {e}"))?
        .ok_or("client certificate names no identity")?;
    let mut identity = None;
    let mut ips = Vec::new();
    for name in &san.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::URI(uri) => {
                identity = identity.or_else(|| Identity::from_uri(uri))
            }
            x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                if let Ok(b) = <[u8; 4]>::try_from(*bytes) {
                    ips.push(IpAddr::from(b));
                } else if let Ok(b) = <[u8; 16]>::try_from(*bytes) {
                    ips.push(IpAddr::from(b));
                }
            }
            _ => {}
        }
    }
    let identity = identity.ok_or("client certificate names no lbfabric identity")?;
    Ok(Verified {
        identity,
        ips,
        issued_at_ms: lb_proto::pki::issued_at_ms(cert.raw_serial()),
        expires_at: std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(
                u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0),
            ),
    })
}

/// One accepted TLS connection and its peer.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: Peer,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
