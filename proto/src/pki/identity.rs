//! What a certificate's holder is, and the identity URI that names it.

use std::fmt;

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
