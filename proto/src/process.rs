//! What every lbfabric process does the same way: stop on SIGINT or
//! SIGTERM, read `--labels key=value` flags, and the TLS flags of a client
//! of the controllers.

use std::collections::BTreeMap;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a SIGTERM handler, SIGINT still stops the process.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

/// `key=value` items (as given to `--labels`), checked as labels are.
pub fn label_flags(
    flag: &str,
    items: &[String],
) -> Result<BTreeMap<String, String>, crate::FieldError> {
    let mut labels = BTreeMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            return Err(crate::FieldError::new(
                flag,
                format!("{item:?}: expected key=value"),
            ));
        };
        labels.insert(k.to_string(), v.to_string());
    }
    crate::convert::labels(flag, labels)
}

/// How a client reaches the controllers over TLS: the fabric's CA, and the
/// certificate and key that say who it is. Without `--ca`, plaintext.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFlags {
    /// The fabric's CA certificate (PEM; a controller's <data-dir>/pki/ca.pem).
    /// Turns on TLS to the controllers.
    #[arg(long, env = "LB_CA", global = true)]
    pub ca: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), issued by that CA.
    #[arg(long, env = "LB_CERT", global = true, requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// The key of --cert (PEM).
    #[arg(long, env = "LB_KEY", global = true, requires = "cert")]
    pub key: Option<std::path::PathBuf>,
}

impl TlsFlags {
    /// tonic's client settings, or `None` for plaintext.
    pub fn client_config(
        &self,
    ) -> Result<Option<tonic::transport::ClientTlsConfig>, crate::pki::PkiError> {
        let Some(ca) = &self.ca else {
            if self.cert.is_some() {
                return Err(crate::pki::PkiError::Invalid(
                    "--cert needs --ca (the CA that issued the controllers' certificates)".into(),
                ));
            }
            return Ok(None);
        };
        let creds =
            crate::pki::Credentials::from_files(ca, self.cert.as_deref(), self.key.as_deref())?;
        Ok(Some(creds.client_config()))
    }
}
