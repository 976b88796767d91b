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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a PEM file atomically, readable by its owner only when `secret`
/// (a key).
pub fn write_pem(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
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
        let issuer = if key_path.exists() {
            let key = KeyPair::from_pem(&read(&key_path)?)
                .map_err(cert_err(key_path.display().to_string()))?;
            // The same subject and key sign exactly as the original CA did.
            let params = CertificateParams::from_ca_cert_pem(&cert_pem)
                .map_err(cert_err(cert_path.display().to_string()))?;
            let cert = params
                .self_signed(&key)
                .map_err(cert_err("loading the CA"))?;
            Some((cert, key))
        } else {
            None
        };
        Ok(Ca { cert_pem, issuer })
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
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + lifetime;
        let cert = params
            .signed_by(public_key, ca_cert, ca_key)
            .map_err(cert_err(format!("signing for {identity}")))?;
        Ok(cert.pem())
    }

    /// Issues `name.pem` / `name.key` for `identity` into `dir` (with a copy
    /// of `ca.pem`) unless they are there already.
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
            return Ok(());
        }
        let issued = self.issue(identity, ips, DEFAULT_CERT_LIFETIME)?;
        write_pem(&key, &issued.key_pem, true)?;
        write_pem(&cert, &issued.cert_pem, false)
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
        // Without the key, the CA can be trusted but not issue.
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        assert!(!Ca::open(dir.path(), false).unwrap().can_issue());
    }
}
