//! The replicated half of the fabric's PKI: join tokens, which node ids
//! have joined, revocations, and the CA itself.
//!
//! The CA key is replicated so that whichever controller leads can sign an
//! agent's certificate; it lives where the Raft log does, in every
//! controller's data directory, which already holds everything needed to
//! reprogram the fabric. Times are Unix milliseconds stamped by the leader
//! into each command, so every node applies the same decision.

use std::collections::BTreeMap;
use std::fmt;

use lb_proto::pki::Role;
use serde::{Deserialize, Serialize};

use super::Rejected;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// Node id → when it was revoked: certificates for it issued up to then
    /// are refused (a later one, after a re-join, counts).
    pub revoked: BTreeMap<String, u64>,
    /// Join tokens by id.
    pub tokens: BTreeMap<String, JoinToken>,
    /// Node ids that joined with a token, and as what.
    pub joined: BTreeMap<String, Role>,
    /// The CA, with its key.
    pub ca: Option<CaKeys>,
}

/// A join token as the controllers keep it: the secret only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub role: Role,
    /// Only this node id may use it.
    pub node_id: Option<String>,
    pub secret_sha256: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub uses_left: u32,
    /// Node ids that joined with it.
    pub joined: Vec<String>,
}

/// The CA certificate and key (PEM).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaKeys {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CaKeys {
    // The key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaKeys").finish_non_exhaustive()
    }
}

/// Expired tokens are kept this long for `lbctl token list`, then dropped.
const KEEP_EXPIRED_MS: u64 = 24 * 3600 * 1000;

/// What an agent presents to join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAttempt {
    pub token_id: String,
    pub secret_sha256: String,
    pub role: Role,
    pub node_id: String,
    pub now_ms: u64,
}

fn unauthenticated(why: String) -> Rejected {
    Rejected::Unauthenticated { why }
}

fn denied(why: String) -> Rejected {
    Rejected::PermissionDenied { why }
}

impl Security {
    /// Whether a certificate for `node` issued at `issued_at_ms` (unknown:
    /// not issued by this fabric's signer) is revoked.
    pub fn is_revoked(&self, node: &str, issued_at_ms: Option<u64>) -> bool {
        self.revoked
            .get(node)
            .is_some_and(|&at| issued_at_ms.is_none_or(|issued| issued <= at))
    }

    /// Whether `attempt` may join; changes nothing. The API checks this
    /// before proposing (so a stranger cannot fill the log with refusals)
    /// and [`Security::redeem`] again when the command applies.
    pub fn check_join(&self, a: &JoinAttempt) -> Result<(), Rejected> {
        let id = &a.token_id;
        let token = self
            .tokens
            .get(id)
            .ok_or_else(|| unauthenticated(format!("join token {id} is unknown or deleted")))?;
        if token.secret_sha256 != a.secret_sha256 {
            return Err(unauthenticated(format!(
                "join token {id}: the secret does not match"
            )));
        }
        if a.now_ms >= token.expires_at_ms {
            return Err(unauthenticated(format!(
                "join token {id} expired {}s ago; create a new one with `lbctl token create`",
                (a.now_ms - token.expires_at_ms) / 1000
            )));
        }
        if token.uses_left == 0 {
            return Err(unauthenticated(format!(
                "join token {id} is used up (joined: {})",
                token.joined.join(", ")
            )));
        }
        if token.role != a.role {
            return Err(denied(format!(
                "join token {id} is for {} agents, not {} agents",
                token.role, a.role
            )));
        }
        let node = &a.node_id;
        match &token.node_id {
            Some(only) if only != node => {
                return Err(denied(format!(
                    "join token {id} is for node {only} only, not {node}"
                )))
            }
            Some(_) => {}
            None if self.joined.contains_key(node) || self.revoked.contains_key(node) => {
                return Err(denied(format!(
                    "node id {node} has joined before; re-admit it with a token for it alone: `lbctl token create --role {} --node {node}`",
                    a.role
                )))
            }
            None => {}
        }
        match self.joined.get(node) {
            Some(role) if *role != a.role => {
                Err(denied(format!("node id {node} belongs to a {role} agent")))
            }
            _ => Ok(()),
        }
    }

    /// Uses the token for `attempt`; refused (and nothing changed) where
    /// [`Security::check_join`] refuses.
    pub fn redeem(&mut self, a: &JoinAttempt) -> Result<(), Rejected> {
        self.check_join(a)?;
        if let Some(token) = self.tokens.get_mut(&a.token_id) {
            token.uses_left -= 1;
            token.joined.push(a.node_id.clone());
        }
        self.joined.insert(a.node_id.clone(), a.role);
        Ok(())
    }

    pub fn add_token(&mut self, id: String, token: JoinToken) -> Result<(), Rejected> {
        if self.tokens.contains_key(&id) {
            return Err(Rejected::AlreadyExists {
                what: format!("join token {id}"),
            });
        }
        let now = token.created_at_ms;
        self.tokens
            .retain(|_, t| t.expires_at_ms.saturating_add(KEEP_EXPIRED_MS) > now);
        self.tokens.insert(id, token);
        Ok(())
    }

    pub fn delete_token(&mut self, id: &str) -> Result<(), Rejected> {
        self.tokens
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| Rejected::NotFound {
                what: format!("join token {id}"),
            })
    }

    /// Records the CA once; a different one later is refused (a cluster has
    /// one CA).
    pub fn set_ca(&mut self, ca: CaKeys) -> Result<(), Rejected> {
        match &self.ca {
            None => {
                self.ca = Some(ca);
                Ok(())
            }
            Some(have) if have.cert_pem == ca.cert_pem => Ok(()),
            Some(_) => Err(denied("the fabric already has a different CA".to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(role: Role, node: Option<&str>, uses: u32) -> JoinToken {
        JoinToken {
            role,
            node_id: node.map(String::from),
            secret_sha256: "s".into(),
            created_at_ms: 1_000,
            expires_at_ms: 10_000,
            uses_left: uses,
            joined: Vec::new(),
        }
    }

    fn attempt(node: &str, role: Role, now_ms: u64) -> JoinAttempt {
        JoinAttempt {
            token_id: "t".into(),
            secret_sha256: "s".into(),
            role,
            node_id: node.into(),
            now_ms,
        }
    }

    fn why(r: Result<(), Rejected>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn a_token_admits_what_it_says_and_no_more() {
        let mut s = Security::default();
        s.add_token("t".into(), token(Role::Realserver, None, 2))
            .unwrap();
        s.redeem(&attempt("rs1", Role::Realserver, 2_000)).unwrap();
        // The same name again: it would take over rs1's identity.
        assert!(why(s.redeem(&attempt("rs1", Role::Realserver, 2_000)))
            .contains("rs1 has joined before"));
        assert!(why(s.redeem(&attempt("d1", Role::Director, 2_000)))
            .contains("is for realserver agents, not director agents"));
        let mut wrong = attempt("rs2", Role::Realserver, 2_000);
        wrong.secret_sha256 = "x".into();
        assert!(why(s.redeem(&wrong)).contains("secret does not match"));
        assert!(why(s.redeem(&attempt("rs2", Role::Realserver, 10_000))).contains("expired"));
        s.redeem(&attempt("rs2", Role::Realserver, 2_000)).unwrap();
        let e = s
            .redeem(&attempt("rs3", Role::Realserver, 2_000))
            .unwrap_err();
        assert!(matches!(e, Rejected::Unauthenticated { .. }));
        assert!(e.to_string().contains("used up (joined: rs1, rs2)"));
        assert_eq!(s.tokens["t"].uses_left, 0);
    }

    #[test]
    fn a_revoked_node_comes_back_only_with_its_own_token_and_a_new_certificate() {
        let mut s = Security::default();
        s.revoked.insert("rs1".into(), 5_000);
        assert!(s.is_revoked("rs1", Some(4_000)));
        assert!(s.is_revoked("rs1", None));
        assert!(!s.is_revoked("rs1", Some(6_000)));
        assert!(!s.is_revoked("rs2", Some(1)));
        s.add_token("t".into(), token(Role::Realserver, None, 5))
            .unwrap();
        assert!(why(s.redeem(&attempt("rs1", Role::Realserver, 6_000)))
            .contains("lbctl token create --role realserver --node rs1"));
        s.tokens.clear();
        s.add_token("t".into(), token(Role::Realserver, Some("rs1"), 1))
            .unwrap();
        assert!(
            why(s.redeem(&attempt("rs9", Role::Realserver, 6_000))).contains("for node rs1 only")
        );
        s.redeem(&attempt("rs1", Role::Realserver, 6_000)).unwrap();
    }

    #[test]
    fn one_ca_per_fabric() {
        let mut s = Security::default();
        let ca = |c: &str| CaKeys {
            cert_pem: c.into(),
            key_pem: "k".into(),
        };
        s.set_ca(ca("a")).unwrap();
        s.set_ca(ca("a")).unwrap();
        assert!(s.set_ca(ca("b")).is_err());
        assert!(!format!("{:?}", ca("a")).contains('k'));
    }
}
