//! Join tokens.

use std::fmt;

use super::ca::random_bytes;
use super::ca::{hex, sha256_hex};
use super::PkiError;

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
