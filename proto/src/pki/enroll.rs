//! How an agent gets its certificate: with a join token the first time, by
//! renewal after that.
//!
//! Joining pins the CA by the fingerprint inside the token, so there is no
//! trust on first use: the agent opens one TLS connection that accepts the
//! controller only if it presents a CA certificate with that fingerprint
//! (controllers send it after their own) and its certificate verifies
//! against it. From then on the agent talks to the controllers as any
//! client does, trusting that CA. It sends a certificate request over a key
//! it made itself (the key never leaves the host) and keeps the answer in
//! `--pki-dir`: `ca.pem`, and `node.pem` holding the certificate and key
//! together, so that replacing them is one atomic rename.
//!
//! Renewal asks for a new certificate (over a new key) once two thirds of
//! the current one's life has passed, authenticating with the current one;
//! the agent then reconnects with it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::RootCertStore;
use tokio::sync::watch;
use tonic::transport::ClientTlsConfig;

use crate::client::{Controller, Controllers};
use crate::pb;
use crate::pki::{self, Credentials, JoinToken, PkiError, Role};
use crate::process::TlsFlags;

/// The agent's own certificate and key, in `--pki-dir`.
const NODE_FILE: &str = "node.pem";
const CA_FILE: &str = "ca.pem";

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The controller did not prove it is under the pinned CA.
    #[error("{addr}: {detail}")]
    Pin { addr: String, detail: String },
    #[error("{addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("the controllers refused: {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
}

/// Where an agent's TLS settings come from.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentTlsFlags {
    #[command(flatten)]
    pub files: TlsFlags,
    /// A join token from `lbctl token create`. Used once, when --pki-dir
    /// holds no certificate yet: the agent gets one for its node id and
    /// renews it from then on.
    #[arg(long, env = "LB_JOIN_TOKEN", conflicts_with = "ca")]
    pub join_token: Option<String>,
    /// Where the agent keeps the CA and the certificate it got by joining.
    #[arg(long, env = "LB_PKI_DIR", default_value = "/var/lib/lbfabric/pki")]
    pub pki_dir: PathBuf,
}

/// The TLS settings an agent connects with now. Renewal replaces them and
/// tells the sessions (see [`AgentTls::changed`]) to reconnect.
#[derive(Clone)]
pub struct AgentTls {
    current: Arc<RwLock<Option<ClientTlsConfig>>>,
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTls")
            .field("tls", &self.current().is_some())
            .field("generation", &*self.generation.borrow())
            .finish()
    }
}

impl AgentTls {
    pub fn fixed(tls: Option<ClientTlsConfig>) -> AgentTls {
        AgentTls {
            current: Arc::new(RwLock::new(tls)),
            generation: watch::channel(0).0,
        }
    }

    /// The settings for a new connection; `None`: plaintext.
    pub fn current(&self) -> Option<ClientTlsConfig> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Fires when the certificate was renewed.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn replace(&self, tls: ClientTlsConfig) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tls);
        self.generation.send_modify(|g| *g += 1);
    }
}

/// Who the agent is, for its certificate.
#[derive(Debug, Clone)]
pub struct Enrollee {
    pub role: Role,
    pub node_id: String,
    /// A realserver's own address.
    pub address: Option<IpAddr>,
}

/// The agent's TLS settings: `--ca/--cert/--key` as given; else the
/// certificate in `--pki-dir` (joining with `--join-token` first if there is
/// none), renewed in the background; else plaintext.
pub async fn setup(
    flags: &AgentTlsFlags,
    controllers: &Controllers,
    who: &Enrollee,
) -> Result<AgentTls, EnrollError> {
    if flags.files.ca.is_some() {
        let files = &flags.files;
        let watch = pki::FileWatch::new(
            [&files.ca, &files.cert, &files.key]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
        );
        let tls = AgentTls::fixed(files.client_config()?);
        tokio::spawn(reload_forever(tls.clone(), files.clone(), watch));
        return Ok(tls);
    }
    let dir = &flags.pki_dir;
    if !dir.join(NODE_FILE).exists() {
        let Some(token) = &flags.join_token else {
            let remote = controllers.addrs().iter().any(|a| !is_loopback(a));
            if remote {
                tracing::warn!(pki_dir = %dir.display(), "no certificate and no --join-token: connecting in plaintext, which a controller off loopback refuses; create a token with `lbctl token create`");
            }
            return Ok(AgentTls::fixed(None));
        };
        let token: JoinToken = token.parse()?;
        join(controllers, &token, who, dir).await?;
    }
    let creds = load(dir)?;
    let tls = AgentTls::fixed(Some(creds.client_config()));
    tokio::spawn(renew_forever(tls.clone(), controllers.clone(), dir.clone()));
    Ok(tls)
}

/// How often an agent with an operator's certificate files (`--ca/--cert/
/// --key`) looks whether they were replaced.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Reloads `--ca/--cert/--key` whenever one of the files changes (an
/// operator's renewal: certbot, step, a config manager) and has the
/// sessions reconnect with them. Files that do not load (a key written
/// before its certificate) keep the settings before until the next change.
async fn reload_forever(tls: AgentTls, files: TlsFlags, mut watch: pki::FileWatch) {
    loop {
        watch.changed(RELOAD_EVERY).await;
        match files.client_config() {
            Ok(Some(config)) => {
                tls.replace(config);
                tracing::info!(cert = ?files.cert, "certificate files changed: reconnecting with them");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(cert = ?files.cert, error = %e, "certificate files changed but do not load; keeping the ones before")
            }
        }
    }
}

fn is_loopback(addr: &str) -> bool {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The credentials an agent keeps in `dir` (its --pki-dir).
pub fn load(dir: &Path) -> Result<Credentials, PkiError> {
    let both = pki::read(&dir.join(NODE_FILE))?;
    let ca_pem = pki::read(&dir.join(CA_FILE))?;
    Ok(Credentials {
        ca_pem,
        cert_pem: Some(both.clone()),
        key_pem: Some(both),
    })
}

/// Writes the certificate and its key as one file, atomically.
fn store(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
    pki::write_pem(&dir.join(NODE_FILE), &format!("{cert_pem}{key_pem}"), true)
}

/// Trades the token for a certificate and keeps it in `dir`. Retries while
/// no controller answers; a refusal (expired token, wrong role…) is final.
pub async fn join(
    controllers: &Controllers,
    token: &JoinToken,
    who: &Enrollee,
    dir: &Path,
) -> Result<(), EnrollError> {
    let addrs = controllers.addrs();
    let mut attempt = 0usize;
    let ca_pem = loop {
        let addr = &addrs[attempt % addrs.len()];
        match fetch_pinned_ca(addr, &token.ca_sha256).await {
            Ok(ca) => break ca,
            Err(e @ EnrollError::Pin { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(controller = %addr, error = %e, "join: cannot reach a controller with the pinned CA yet");
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let (csr_pem, key_pem) = pki::request()?;
    let creds = Credentials {
        ca_pem: ca_pem.clone(),
        cert_pem: None,
        key_pem: None,
    };
    let mut controller =
        Controller::new(controllers, Duration::from_secs(30)).with_tls(Some(creds.client_config()));
    let req = pb::JoinRequest {
        token: token.to_string(),
        role: who.role.to_string(),
        node_id: who.node_id.clone(),
        address: who.address.map(|a| a.to_string()).unwrap_or_default(),
        csr_pem,
    };
    let answer = controller
        .call(|ch| {
            let req = req.clone();
            async move {
                pb::enrollment_client::EnrollmentClient::new(ch)
                    .join(req)
                    .await
            }
        })
        .await
        .map_err(refused)?;
    pki::write_pem(&dir.join(CA_FILE), &ca_pem, false)?;
    store(dir, &answer.cert_pem, &key_pem)?;
    tracing::info!(node_id = %who.node_id, role = %who.role, pki_dir = %dir.display(), "joined the fabric: certificate stored");
    Ok(())
}

fn refused(s: tonic::Status) -> EnrollError {
    EnrollError::Refused {
        code: s.code(),
        message: s.message().to_string(),
    }
}

/// Renews the certificate in `dir` whenever two thirds of its life has
/// passed; retries failures at a tenth of the time left (1 s to 1 min).
async fn renew_forever(tls: AgentTls, controllers: Controllers, dir: PathBuf) {
    loop {
        let (from, until) = match load(&dir)
            .and_then(|c| pki::lifetime(c.cert_pem.as_deref().unwrap_or("")))
        {
            Ok(life) => life,
            Err(e) => {
                tracing::error!(error = %e, "reading this agent's certificate; not renewing it");
                return;
            }
        };
        let renew_at = from + until.duration_since(from).unwrap_or_default() * 2 / 3;
        tokio::time::sleep(
            renew_at
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        )
        .await;
        match renew(&controllers, &dir).await {
            Ok(creds) => {
                tracing::info!(pki_dir = %dir.display(), "certificate renewed; reconnecting with it");
                tls.replace(creds.client_config());
            }
            Err(e) => {
                let left = until.duration_since(SystemTime::now()).unwrap_or_default();
                let retry = (left / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
                tracing::warn!(error = %e, retry_s = retry.as_secs(), "renewing the certificate");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// One renewal: a new key, a certificate for it, both stored.
pub async fn renew(controllers: &Controllers, dir: &Path) -> Result<Credentials, EnrollError> {
    let creds = load(dir)?;
    let (csr_pem, key_pem) = pki::request()?;
    let mut controller =
        Controller::new(controllers, Duration::from_secs(30)).with_tls(Some(creds.client_config()));
    let answer = controller
        .call(|ch| {
            let csr_pem = csr_pem.clone();
            async move {
                pb::enrollment_client::EnrollmentClient::new(ch)
                    .renew(pb::RenewRequest { csr_pem })
                    .await
            }
        })
        .await
        .map_err(refused)?;
    store(dir, &answer.cert_pem, &key_pem)?;
    load(dir).map_err(Into::into)
}

/// Opens one TLS connection to `addr` that succeeds only if the controller
/// presents a CA certificate whose SHA-256 is `pin` and a certificate that
/// CA issued for the controllers' name; returns that CA (PEM).
async fn fetch_pinned_ca(addr: &str, pin: &str) -> Result<String, EnrollError> {
    let err = |detail: String| EnrollError::Unreachable {
        addr: addr.to_string(),
        detail,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCa {
        pin: pin.to_string(),
        provider: provider.clone(),
        found: RwLock::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let hostport = addr.split("://").last().unwrap_or(addr);
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(hostport),
    )
    .await
    .map_err(|_| err("connection timed out".into()))?
    .map_err(|e| err(e.to_string()))?;
    let name = ServerName::try_from(pki::SERVER_NAME).map_err(|e| err(e.to_string()))?;
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| err("TLS handshake timed out".into()))?
    .map_err(|e| {
        // Our verifier's verdict is final; anything else may pass.
        let refused = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|t| {
                matches!(
                    t,
                    rustls::Error::General(_) | rustls::Error::InvalidCertificate(_)
                )
            });
        if refused {
            EnrollError::Pin {
                addr: addr.to_string(),
                detail: format!("TLS: {e}"),
            }
        } else {
            err(format!("TLS: {e}"))
        }
    })?;
    let der = verifier
        .found
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .ok_or_else(|| err("no CA seen".into()))?;
    Ok(pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.as_ref()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    ))
}

/// Trusts a server only through the CA with the pinned fingerprint, taken
/// from the chain the server sends.
#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    found: RwLock<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| pki::sha256_hex(c.as_ref()) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the controller does not present the CA the join token pins (sha256:{})",
                    self.pin
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("pinned CA: {e}")))?
            .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        *self
            .found
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ca.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    crate::handshake_signatures!(provider);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        assert!(is_loopback("127.0.0.1:7070"));
        assert!(is_loopback("[::1]:7070"));
        assert!(is_loopback("localhost:7070"));
        assert!(!is_loopback("10.0.0.1:7070"));
    }
}
