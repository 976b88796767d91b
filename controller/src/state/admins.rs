//! Named admin identities: the admin certificates issued through the API
//! (`lbctl admin create NAME`), and revoked admin names. A revocation
//! covers every certificate of the name issued up to it, also those made
//! offline from the CA's key (`lbctl pki admin-cert --name`), whose
//! issue time the serial carries; one issued later counts again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admins {
    /// Name → its newest certificate issued through the API.
    pub issued: BTreeMap<String, AdminCert>,
    /// Name → when it was revoked.
    pub revoked: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCert {
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
    /// The admin who asked for it.
    pub issued_by: String,
}

impl Admins {
    /// Whether admin `name`'s certificate issued at `issued_at_ms`
    /// (unknown: not from this fabric's signer) is revoked.
    pub fn is_revoked(&self, name: &str, issued_at_ms: Option<u64>) -> bool {
        self.revoked
            .get(name)
            .is_some_and(|&at| issued_at_ms.is_none_or(|issued| issued <= at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_covers_what_was_issued_before_it() {
        let mut a = Admins::default();
        a.revoked.insert("alice".into(), 5_000);
        assert!(a.is_revoked("alice", Some(5_000)));
        assert!(a.is_revoked("alice", None));
        assert!(!a.is_revoked("alice", Some(5_001)));
        assert!(!a.is_revoked("bob", Some(1)));
    }
}
