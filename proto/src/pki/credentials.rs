//! PEM files for a TLS client or server.

use std::path::Path;

use super::{read, PkiError, SERVER_NAME};

#[derive(Debug, Clone)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
}

/// At least one certificate in `pem`, and only good ones.
fn certificates(pem: &str, path: &str) -> Result<(), PkiError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> =
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(()),
        Ok(_) => Err(PkiError::Invalid(format!("{path}: no certificate in it"))),
        Err(e) => Err(PkiError::Invalid(format!("{path}: {e}"))),
    }
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
        let creds = Credentials {
            ca_pem: read(ca)?,
            cert_pem: cert.map(read).transpose()?,
            key_pem: key.map(read).transpose()?,
        };
        // Checked here, so that a bad file is named when it is read, not
        // at the first handshake (and a reload keeps what it had).
        let name = |p: Option<&Path>| p.map(|p| p.display().to_string()).unwrap_or_default();
        certificates(&creds.ca_pem, &ca.display().to_string())?;
        if let Some(c) = &creds.cert_pem {
            certificates(c, &name(cert))?;
        }
        if let Some(k) = &creds.key_pem {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::PrivateKeyDer::from_pem_slice(k.as_bytes())
                .map_err(|e| PkiError::Invalid(format!("{}: no private key: {e}", name(key))))?;
        }
        Ok(creds)
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
