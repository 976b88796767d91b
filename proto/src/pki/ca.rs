//! The CA: issuing certificates, signing agents' requests, and the serial
//! numbers and fingerprints the rest of the fabric reads.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::{
    cert_err, read, write_pem, Identity, PkiError, Role, CA_LIFETIME, DEFAULT_CERT_LIFETIME,
    SERVER_NAME,
};

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
pub(crate) fn serial_now() -> Result<rcgen::SerialNumber, PkiError> {
    let mut bytes = vec![SERIAL_VERSION];
    bytes.extend_from_slice(&unix_ms(std::time::SystemTime::now()).to_be_bytes());
    bytes.extend_from_slice(&random_bytes::<8>()?);
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

pub(crate) const SERIAL_VERSION: u8 = 1;

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

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], PkiError> {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| PkiError::Invalid("the system's random source failed".into()))?;
    Ok(out)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
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
