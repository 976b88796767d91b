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
//!
//! - [`identity`]: roles and the identities certificates name;
//! - [`ca`]: the CA — issuing, signing requests, serial numbers that record
//!   the issue time, fingerprints;
//! - [`token`]: join tokens;
//! - [`credentials`]: PEM files for a TLS client or server;
//! - [`enroll`]: how an agent joins with a token and renews;
//! - `verify`: the handshake-signature half of the verifiers here.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod ca;
pub mod credentials;
pub mod enroll;
pub mod identity;
pub mod token;
mod verify;

pub use ca::*;
pub use credentials::Credentials;
pub use identity::{Identity, Role};
pub use token::JoinToken;

/// The DNS name every controller certificate carries and clients verify.
pub const SERVER_NAME: &str = "controller.lbfabric";

/// How long the CA is valid.
pub(crate) const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
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

pub(crate) fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Cert { what, source }
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

/// Certificate files watched for replacement (an operator's renewal, a
/// controller renewing itself): both the controller and the agents reload
/// theirs with it.
pub struct FileWatch {
    paths: Vec<std::path::PathBuf>,
    /// Size and modification time of each (`None`: unreadable) when last
    /// looked at.
    seen: Vec<Option<(u64, std::time::SystemTime)>>,
}

impl FileWatch {
    /// Looks at `paths` now: a change from here on counts (made before
    /// the files are read, a change in between is not missed).
    pub fn new(paths: Vec<std::path::PathBuf>) -> FileWatch {
        let seen = Self::stamps(&paths);
        FileWatch { paths, seen }
    }

    fn stamps(paths: &[std::path::PathBuf]) -> Vec<Option<(u64, std::time::SystemTime)>> {
        paths
            .iter()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.len(), m.modified().ok()?))
            })
            .collect()
    }

    /// Returns once one of the files has changed, looking every `every`.
    pub async fn changed(&mut self, every: std::time::Duration) {
        loop {
            tokio::time::sleep(every).await;
            let now = Self::stamps(&self.paths);
            if now != self.seen {
                self.seen = now;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
