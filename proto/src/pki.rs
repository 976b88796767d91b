//! The fabric's own certificate authority, and the identities it vouches for.
//!
//! Every certificate the CA issues names one identity in a URI subject
//! alternative name, `spiffe://lbfabric/<role>/<name>` (role: admin,
//! controller, director or realserver), which the controller reads back to
//! decide what a caller may do. Controller certificates also carry the DNS
//! name [`SERVER_NAME`]: clients verify that name against the pinned CA, so
//! any address of any controller works without per-address certificates.
//! Realserver certificates carry the agent's address as an IP SAN, binding
//! the agent to it.
//!
//! Files (PEM) live in one directory: `ca.pem`, `ca.key` (only where
//! certificates are issued), and `<name>.pem` / `<name>.key` per identity.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// The DNS name every controller certificate carries and clients verify.
pub const SERVER_NAME: &str = "controller.lbfabric";

/// How long the CA is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of an issued certificate.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    // Not a `source`: the message already says it, and chains would repeat it.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{what}: {source}")]
    Cert { what: String, source: rcgen::Error },
    #[error("{0}")]
    Invalid(String),
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Cert { what, source }
}

/// What a certificate's holder is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Controller,
    Director,
    Realserver,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Controller => "controller",
            Role::Director => "director",
            Role::Realserver => "realserver",
        }
    }

    pub fn parse(word: &str) -> Option<Role> {
        [
            Role::Admin,
            Role::Controller,
            Role::Director,
            Role::Realserver,
        ]
        .into_iter()
        .find(|r| r.as_str() == word)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

impl Identity {
    pub fn new(role: Role, name: impl Into<String>) -> Self {
        Identity {
            role,
            name: name.into(),
        }
    }

    /// `spiffe://lbfabric/director/d1`.
    pub fn uri(&self) -> String {
        format!("spiffe://lbfabric/{}/{}", self.role, self.name)
    }

    pub fn from_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix("spiffe://lbfabric/")?;
        let (role, name) = rest.split_once('/')?;
        let role = Role::parse(role)?;
        (!name.is_empty() && !name.contains('/')).then(|| Identity::new(role, name))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The CA: its certificate, and its key when this node may issue.
pub struct Ca {
    pub cert_pem: String,
    issuer: Option<(rcgen::Certificate, KeyPair)>,
}

/// A PEM file's text.
pub fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|error| PkiError::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// Writes a PEM file atomically, readable by its owner only when `secret`
/// (a key).
pub fn write_pem(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |error| PkiError::Io {
        path: path.to_path_buf(),
        error,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

impl Ca {
    /// Loads the CA from `dir` (`ca.pem`, and `ca.key` if present), or
    /// creates one there when `create` and there is none.
    pub fn open(dir: &Path, create: bool) -> Result<Ca, PkiError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if !cert_path.exists() {
            if !create {
                return Err(PkiError::Invalid(format!(
                    "{}: no CA certificate",
                    cert_path.display()
                )));
            }
            let key = KeyPair::generate().map_err(cert_err("generating the CA key"))?;
            let mut params =
                CertificateParams::new(Vec::<String>::new()).map_err(cert_err("CA parameters"))?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "lbfabric CA");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + CA_LIFETIME;
            let cert = params
                .self_signed(&key)
                .map_err(cert_err("signing the CA"))?;
            write_pem(&key_path, &key.serialize_pem(), true)?;
            write_pem(&cert_path, &cert.pem(), false)?;
        }
        let cert_pem = read(&cert_path)?;
        let key_pem = key_path.exists().then(|| read(&key_path)).transpose()?;
        Ca::from_pem(cert_pem, key_pem.as_deref())
    }

    /// The CA from its certificate and, to issue, its key (PEM).
    pub fn from_pem(cert_pem: String, key_pem: Option<&str>) -> Result<Ca, PkiError> {
        let issuer = match key_pem {
            Some(key_pem) => {
                let key = KeyPair::from_pem(key_pem).map_err(cert_err("the CA key"))?;
                // The same subject and key sign exactly as the original CA did.
                let params = CertificateParams::from_ca_cert_pem(&cert_pem)
                    .map_err(cert_err("the CA certificate"))?;
                let cert = params
                    .self_signed(&key)
                    .map_err(cert_err("loading the CA"))?;
                Some((cert, key))
            }
            None => None,
        };
        Ok(Ca { cert_pem, issuer })
    }

    /// The CA key (PEM), where this node has it.
    pub fn key_pem(&self) -> Option<String> {
        self.issuer.as_ref().map(|(_, key)| key.serialize_pem())
    }

    /// Signs a certificate for `identity` over the key in a PKCS#10 request
    /// (PEM). The request's signature proves its sender holds the key;
    /// whatever names it asks for are ignored: the CA decides them.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ips: &[IpAddr],
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(cert_err("certificate request"))?;
        self.sign(identity, ips, lifetime, &csr.public_key)
    }

    pub fn can_issue(&self) -> bool {
        self.issuer.is_some()
    }

    /// A new key and a certificate for `identity`, valid for `lifetime`.
    /// Controllers get [`SERVER_NAME`] (server and client use); others are
    /// clients only. `ips` become IP SANs.
    pub fn issue(
        &self,
        identity: &Identity,
        ips: &[IpAddr],
        lifetime: Duration,
    ) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(cert_err("generating a key"))?;
        let cert_pem = self.sign(identity, ips, lifetime, &key)?;
        Ok(Issued {
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a certificate for `identity` over `public_key`.
    pub fn sign(
        &self,
        identity: &Identity,
        ips: &[IpAddr],
        lifetime: Duration,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<String, PkiError> {
        let (ca_cert, ca_key) = self
            .issuer
            .as_ref()
            .ok_or_else(|| PkiError::Invalid("this node has no CA key (ca.key)".into()))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(cert_err("parameters"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.to_string());
        params.distinguished_name = dn;
        let uri = identity
            .uri()
            .try_into()
            .map_err(cert_err(format!("identity {identity}")))?;
        params.subject_alt_names.push(SanType::URI(uri));
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if identity.role == Role::Controller {
            let name = SERVER_NAME
                .try_into()
                .map_err(cert_err("the controller name"))?;
            params.subject_alt_names.push(SanType::DnsName(name));
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(serial_now()?);
        let now = time::OffsetDateTime::now_utc();
        // Slack for controllers whose clocks run a little behind the signer's.
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + lifetime;
        let cert = params
            .signed_by(public_key, ca_cert, ca_key)
            .map_err(cert_err(format!("signing for {identity}")))?;
        Ok(cert.pem())
    }

    /// Issues `name.pem` / `name.key` for `identity` into `dir` (with a copy
    /// of `ca.pem`) unless they are there already with more than a third of
    /// their life left: a controller restarted late in its certificate's
    /// life renews its own and the admin's.
    pub fn ensure(
        &self,
        dir: &Path,
        file: &str,
        identity: &Identity,
        ips: &[IpAddr],
    ) -> Result<(), PkiError> {
        let (cert, key) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        );
        if !dir.join("ca.pem").exists() {
            write_pem(&dir.join("ca.pem"), &self.cert_pem, false)?;
        }
        if cert.exists() && key.exists() {
            let (issued, expires) = lifetime(&read(&cert)?)?;
            let life = expires.duration_since(issued).unwrap_or_default();
            let left = expires
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            if left > life / 3 {
                return Ok(());
            }
        }
        let issued = self.issue(identity, ips, DEFAULT_CERT_LIFETIME)?;
        write_pem(&key, &issued.key_pem, true)?;
        write_pem(&cert, &issued.cert_pem, false)
    }
}

/// A fresh serial number that records when the certificate was issued:
/// `0x01`, the issue time in Unix milliseconds (8 bytes, big-endian), then 8
/// random bytes. Revocation compares that time (see [`issued_at_ms`]), so a
/// node re-admitted after a revocation gets a certificate that counts again
/// while its old ones stay refused.
fn serial_now() -> Result<rcgen::SerialNumber, PkiError> {
    let mut bytes = vec![SERIAL_VERSION];
    bytes.extend_from_slice(&unix_ms(std::time::SystemTime::now()).to_be_bytes());
    bytes.extend_from_slice(&random_bytes::<8>()?);
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

const SERIAL_VERSION: u8 = 1;

/// When a certificate with this serial number was issued, if this fabric's
/// CA issued it (see `serial_now`).
pub fn issued_at_ms(serial: &[u8]) -> Option<u64> {
    match serial {
        [SERIAL_VERSION, rest @ ..] if rest.len() == 16 => {
            let ms: [u8; 8] = rest[..8].try_into().ok()?;
            Some(u64::from_be_bytes(ms))
        }
        _ => None,
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], PkiError> {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| PkiError::Invalid("the system's random source failed".into()))?;
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The SHA-256 fingerprint (hex) of the first certificate in `pem`: what a
/// join token pins the CA by.
pub fn fingerprint(pem: &str) -> Result<String, PkiError> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("certificate: {e}")))?;
    Ok(sha256_hex(der.as_ref()))
}

/// A new key and a certificate request over it (both PEM), for an agent
/// that asks the controllers for a certificate.
pub fn request() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(cert_err("generating a key"))?;
    let csr = CertificateParams::new(Vec::<String>::new())
        .map_err(cert_err("parameters"))?
        .serialize_request(&key)
        .map_err(cert_err("certificate request"))?;
    let csr = csr.pem().map_err(cert_err("certificate request"))?;
    Ok((csr, key.serialize_pem()))
}

/// When a certificate (the first in `cert_pem`) was issued and when it
/// expires. The issue time comes from the serial number where this fabric's
/// CA made it, else from its start of validity (which for ours is a few
/// minutes earlier, for clock skew).
pub fn lifetime(
    cert_pem: &str,
) -> Result<(std::time::SystemTime, std::time::SystemTime), PkiError> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| PkiError::Invalid(format!("certificate: {e}")))?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        std::time::UNIX_EPOCH + Duration::from_secs(secs)
    };
    let issued = match issued_at_ms(cert.raw_serial()) {
        Some(ms) => std::time::UNIX_EPOCH + Duration::from_millis(ms),
        None => at(cert.validity().not_before),
    };
    Ok((issued, at(cert.validity().not_after)))
}

/// A join token: an agent presents it once to get its certificate.
///
/// Written `lbj1.<id>.<secret>.<ca>`: the id names the token in the
/// replicated state (`lbctl token list`), the secret proves the holder got
/// it from an operator (the controllers keep only its SHA-256), and `ca` is
/// the SHA-256 fingerprint of the fabric's CA certificate, which the agent
/// pins: it trusts the controllers only if they present that CA.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
    pub ca_sha256: String,
}

impl fmt::Debug for JoinToken {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("ca_sha256", &self.ca_sha256)
            .finish_non_exhaustive()
    }
}

const TOKEN_PREFIX: &str = "lbj1";

impl JoinToken {
    /// A new token for the CA whose fingerprint is `ca_sha256`.
    pub fn generate(ca_sha256: &str) -> Result<JoinToken, PkiError> {
        Ok(JoinToken {
            id: hex(&random_bytes::<5>()?),
            secret: hex(&random_bytes::<16>()?),
            ca_sha256: ca_sha256.to_string(),
        })
    }

    /// What the controllers keep instead of the secret.
    pub fn secret_sha256(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.id, self.secret, self.ca_sha256
        )
    }
}

impl std::str::FromStr for JoinToken {
    type Err = PkiError;

    fn from_str(text: &str) -> Result<JoinToken, PkiError> {
        let bad = |why: &str| {
            PkiError::Invalid(format!(
                "join token: {why} (expected {TOKEN_PREFIX}.<id>.<secret>.<CA sha256>, as `lbctl token create` prints it)"
            ))
        };
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [prefix, id, secret, ca] = parts[..] else {
            return Err(bad("not four dot-separated parts"));
        };
        if prefix != TOKEN_PREFIX {
            return Err(bad(&format!("unknown prefix {prefix:?}")));
        }
        let is_hex =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex(id, 10) {
            return Err(bad("the id is not 10 hex digits"));
        }
        if !is_hex(secret, 32) {
            return Err(bad("the secret is not 32 hex digits"));
        }
        if !is_hex(ca, 64) {
            return Err(bad("the CA fingerprint is not 64 hex digits"));
        }
        Ok(JoinToken {
            id: id.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
            ca_sha256: ca.to_ascii_lowercase(),
        })
    }
}

/// PEM files for a TLS client or server: the CA to trust, and optionally our
/// own certificate and key.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
}

impl Credentials {
    /// `ca`, and `cert` + `key` when given.
    pub fn from_files(
        ca: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Credentials, PkiError> {
        if cert.is_some() != key.is_some() {
            return Err(PkiError::Invalid(
                "give both a certificate and its key, or neither".into(),
            ));
        }
        Ok(Credentials {
            ca_pem: read(ca)?,
            cert_pem: cert.map(read).transpose()?,
            key_pem: key.map(read).transpose()?,
        })
    }

    /// `dir/ca.pem`, `dir/<name>.pem`, `dir/<name>.key`.
    pub fn from_dir(dir: &Path, name: &str) -> Result<Credentials, PkiError> {
        Self::from_files(
            &dir.join("ca.pem"),
            Some(&dir.join(format!("{name}.pem"))),
            Some(&dir.join(format!("{name}.key"))),
        )
    }

    /// tonic's client settings: trust only the fabric's CA, verify the
    /// controllers' common name, present our certificate.
    pub fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        let mut c = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .domain_name(SERVER_NAME);
        if let (Some(cert), Some(key)) = (&self.cert_pem, &self.key_pem) {
            c = c.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn identity_uris() {
        let id = Identity::new(Role::Director, "d1");
        assert_eq!(id.uri(), "spiffe://lbfabric/director/d1");
        assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        assert_eq!(Identity::from_uri("spiffe://lbfabric/root/x"), None);
        assert_eq!(Identity::from_uri("spiffe://other/admin/x"), None);
        assert_eq!(Identity::from_uri("spiffe://lbfabric/admin/"), None);
    }

    #[test]
    fn a_ca_reloaded_from_disk_signs_like_the_original() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::open(dir.path(), true).unwrap();
        let again = Ca::open(dir.path(), false).unwrap();
        assert_eq!(ca.cert_pem, again.cert_pem);
        assert!(again.can_issue());
        again
            .ensure(dir.path(), "d1", &Identity::new(Role::Director, "d1"), &[])
            .unwrap();
        let creds = Credentials::from_dir(dir.path(), "d1").unwrap();
        assert!(creds
            .cert_pem
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        // Serial numbers carry the issue time.
        let pem = std::fs::read_to_string(dir.path().join("d1.pem")).unwrap();
        let (issued, until) = lifetime(&pem).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let not_before = cert.validity().not_before.timestamp() as u64 * 1000;
        let issued_ms = unix_ms(issued);
        assert!(
            issued_ms.abs_diff(not_before + 5 * 60 * 1000) < 2000,
            "issued {issued_ms}, not_before {not_before}"
        );
        let life = until.duration_since(issued).unwrap();
        assert!(
            life.abs_diff(DEFAULT_CERT_LIFETIME) < Duration::from_secs(2),
            "{life:?}"
        );
        // Without the key, the CA can be trusted but not issue.
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        assert!(!Ca::open(dir.path(), false).unwrap().can_issue());
    }
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_say_why() {
        let t = JoinToken::generate(&sha256_hex(b"ca")).unwrap();
        let text = t.to_string();
        assert!(text.starts_with("lbj1."));
        assert_eq!(text.parse::<JoinToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.secret));
        for (bad, why) in [
            ("lbj1.abc", "not four dot-separated parts"),
            (
                "lbj2.0123456789.00000000000000000000000000000000.",
                "unknown prefix",
            ),
            (
                "lbj1.01234.00000000000000000000000000000000.aa",
                "the id is not 10 hex digits",
            ),
        ] {
            let e = bad.parse::<JoinToken>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_request_is_signed_for_the_identity_the_ca_chooses() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::open(dir.path(), true).unwrap();
        let (csr, _key) = request().unwrap();
        let pem = ca
            .sign_request(
                &csr,
                &Identity::new(Role::Realserver, "rs1"),
                &["10.0.0.21".parse().unwrap()],
                Duration::from_secs(60),
            )
            .unwrap();
        let (from, until) = lifetime(&pem).unwrap();
        let life = until.duration_since(from).unwrap();
        assert!(
            life.abs_diff(Duration::from_secs(60)) < Duration::from_secs(1),
            "{life:?}"
        );
        assert!(ca
            .sign_request(
                "garbage",
                &Identity::new(Role::Director, "d"),
                &[],
                Duration::from_secs(60)
            )
            .is_err());
        // The same CA, rebuilt from its PEM, issues too.
        let again = Ca::from_pem(ca.cert_pem.clone(), ca.key_pem().as_deref()).unwrap();
        assert!(again.can_issue());
        assert_eq!(
            fingerprint(&again.cert_pem).unwrap(),
            fingerprint(&ca.cert_pem).unwrap()
        );
    }
}

/// The handshake-signature half of a rustls certificate verifier, as rustls
/// itself checks it, for the verifiers here that decide trust their own way
/// (the controller's, a joining agent's, HTTPS health checks'). Inside an
/// `impl ServerCertVerifier` or `impl ClientCertVerifier`, given the field
/// holding an `Arc<CryptoProvider>`: `lb_proto::handshake_signatures!(0);`
#[macro_export]
macro_rules! handshake_signatures {
    ($provider:tt) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            ::rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.$provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            ::rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.$provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            self.$provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

#[cfg(test)]
mod renewal_tests {
    use super::*;

    #[test]
    fn ensure_renews_a_certificate_late_in_its_life() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::open(dir.path(), true).unwrap();
        let id = Identity::new(Role::Admin, "admin");
        let short = ca.issue(&id, &[], Duration::from_secs(3)).unwrap();
        write_pem(&dir.path().join("admin.pem"), &short.cert_pem, false).unwrap();
        write_pem(&dir.path().join("admin.key"), &short.key_pem, true).unwrap();
        ca.ensure(dir.path(), "admin", &id, &[]).unwrap();
        let kept = read(&dir.path().join("admin.pem")).unwrap();
        assert_eq!(kept, short.cert_pem, "most of its life left: kept");
        std::thread::sleep(Duration::from_millis(2500));
        ca.ensure(dir.path(), "admin", &id, &[]).unwrap();
        let renewed = read(&dir.path().join("admin.pem")).unwrap();
        assert_ne!(renewed, short.cert_pem, "less than a third left: renewed");
        let (_, until) = lifetime(&renewed).unwrap();
        assert!(until > std::time::SystemTime::now() + Duration::from_secs(300 * 24 * 3600));
    }
}
