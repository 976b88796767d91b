//! Importers: keepalived.conf, Piranha lvs.cf and `ipvsadm --save` text
//! turned into lbfabric services.
//!
//! Each importer reads the whole file into services (wire messages, as lbctl
//! would send them) plus a [`Note`] for every directive it read but cannot
//! map, with its line. It never half-imports: anything truly malformed (an
//! unclosed block, a word where a number belongs) is an [`ImportError`] naming
//! the file, the line and the directive. Every service is then validated by
//! the same rules the controller applies ([`lb_proto::convert`]), so a dry
//! run finds what the controller would refuse, and reports it by line.
//!
//! Real files are messy, so the shared lexer ([`syntax`]) is forgiving:
//! `#` and `!` comments, CRLF, tabs, braces without spaces, quoted words, and
//! whole blocks on one line all read the same.

pub mod ipvsadm;
pub mod keepalived;
pub mod piranha;
pub(crate) mod syntax;

use std::collections::BTreeSet;
use std::fmt;

use lb_proto::model::Service;
use lb_proto::pb;

/// A file that cannot be imported: where, which directive, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {directive}: {message}")]
pub struct ImportError {
    pub file: String,
    pub line: usize,
    pub directive: String,
    pub message: String,
}

/// A directive read but not carried over (or only approximately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub file: String,
    pub line: usize,
    pub directive: String,
    pub reason: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.directive, self.reason
        )
    }
}

/// One service read from a file, and the line that defined it.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub file: String,
    pub line: usize,
    /// The directive that defined it, for messages (`virtual_server 10.0.0.1 80`).
    pub directive: String,
    pub service: pb::Service,
}

/// keepalived: a director (the file's router_id) may own a VIP, with this
/// VRRP priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpOwner {
    pub vip: String,
    pub director: String,
    pub priority: u32,
}

/// What an importer read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imported {
    pub services: Vec<Found>,
    pub notes: Vec<Note>,
    pub owners: Vec<VrrpOwner>,
}

impl Imported {
    pub(crate) fn note(&mut self, line: usize, directive: &str, reason: impl Into<String>) {
        self.notes.push(Note {
            file: String::new(),
            line,
            directive: directive.to_string(),
            reason: reason.into(),
        });
    }

    /// Validates every service by the controller's rules; the first that
    /// breaks one is reported with its line.
    pub fn validate(&self) -> Result<Vec<Service>, ImportError> {
        let mut names = BTreeSet::new();
        // Virtual address → the index of the service that has it.
        let mut addresses = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(self.services.len());
        for f in &self.services {
            let err = |message: String| ImportError {
                file: f.file.clone(),
                line: f.line,
                directive: f.directive.clone(),
                message,
            };
            if !names.insert(f.service.name.clone()) {
                return Err(err(format!(
                    "service name {:?} is used twice",
                    f.service.name
                )));
            }
            let service = Service::try_from(f.service.clone()).map_err(|e| err(e.to_string()))?;
            // The controller refuses a batch with two services on one address.
            if let Some(&i) = addresses.get(&service.address) {
                let first: &Found = &self.services[i];
                return Err(err(format!(
                    "virtual address {} is already defined at {}:{}",
                    service.address, first.file, first.line
                )));
            }
            addresses.insert(service.address, out.len());
            out.push(service);
        }
        Ok(out)
    }
}

/// The formats `lbctl import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// keepalived.conf (virtual_server, virtual_server_group, vrrp_instance).
    Keepalived,
    /// Piranha's lvs.cf.
    Piranha,
    /// `ipvsadm --save` / `ipvsadm -Sn` output.
    Ipvsadm,
}

/// Reads `text` (from `file`, for messages) in `format`.
pub fn parse(format: Format, file: &str, text: &str) -> Result<Imported, ImportError> {
    let mut imported = match format {
        Format::Keepalived => keepalived::parse(file, text),
        Format::Piranha => piranha::parse(file, text),
        Format::Ipvsadm => ipvsadm::parse(file, text),
    }?;
    for n in &mut imported.notes {
        n.file = file.to_string();
    }
    for f in &mut imported.services {
        f.file = file.to_string();
    }
    Ok(merge(vec![imported]))
}

/// Joins what several files (one per director, as keepalived and Piranha
/// are configured) say. The same service in two files is one service; the
/// first file's definition wins and a differing one is noted. The directors
/// that may own each VIP, best VRRP priority first, become its preferred
/// owners.
pub fn merge(parts: Vec<Imported>) -> Imported {
    let mut out = Imported::default();
    // Service name → its index in `out.services`.
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for part in parts {
        out.notes.extend(part.notes);
        out.owners.extend(part.owners);
        for f in part.services {
            let same = index.get(&f.service.name).map(|&i| &out.services[i]);
            match same {
                None => {
                    index.insert(f.service.name.clone(), out.services.len());
                    out.services.push(f);
                }
                Some(first) => {
                    let placement = |s: &pb::Service| pb::Service {
                        directors: None,
                        ..s.clone()
                    };
                    if placement(&first.service) != placement(&f.service) {
                        let reason = format!(
                            "differs from {}:{}; the first definition is kept",
                            first.file, first.line
                        );
                        out.notes.push(Note {
                            file: f.file.clone(),
                            line: f.line,
                            directive: f.directive.clone(),
                            reason,
                        });
                    }
                }
            }
        }
    }
    // A VIP one file floats (a local service, see keepalived's `vrrp`) that
    // another file's virtual server uses is that service's VIP.
    let vip_of = |f: &Found| match &f.service.virtual_address {
        Some(pb::service::VirtualAddress::Endpoint(e)) => Some(e.address.clone()),
        Some(pb::service::VirtualAddress::Fwmark(m)) => Some(m.address.clone()),
        None => None,
    };
    let balanced: std::collections::HashSet<String> = out
        .services
        .iter()
        .filter(|f| f.service.mode != "local")
        .filter_map(vip_of)
        .collect();
    out.services
        .retain(|f| f.service.mode != "local" || !vip_of(f).is_some_and(|v| balanced.contains(&v)));
    // Highest priority first; a tie keeps file order.
    let mut owners = out.owners.clone();
    owners.sort_by_key(|o| std::cmp::Reverse(o.priority));
    for f in &mut out.services {
        let vip = match &f.service.virtual_address {
            Some(pb::service::VirtualAddress::Endpoint(e)) => &e.address,
            Some(pb::service::VirtualAddress::Fwmark(m)) => &m.address,
            None => continue,
        };
        let mut preferred: Vec<String> = Vec::new();
        for o in owners.iter().filter(|o| &o.vip == vip) {
            if !preferred.contains(&o.director) {
                preferred.push(o.director.clone());
            }
        }
        if !preferred.is_empty() {
            f.service
                .directors
                .get_or_insert_with(Default::default)
                .preferred = preferred;
        }
    }
    out
}

/// A service name from an address: `vs-10.0.0.1-80-tcp`,
/// `vs-2001-db8--1-443-tcp` (names allow a-z 0-9 - _ .).
pub(crate) fn endpoint_name(address: &str, port: u32, protocol: &str) -> String {
    let addr: String = address
        .chars()
        .map(|c| {
            if c == ':' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    format!("vs-{addr}-{port}-{protocol}")
}

/// Makes an arbitrary label a valid service name (lower case, a-z 0-9 - _ .,
/// at most 63 characters, starting with a letter or digit).
pub(crate) fn sanitize_name(label: &str) -> String {
    let mut name: String = label
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '_' | '.') => c,
            _ => '-',
        })
        .collect();
    while name.starts_with(['-', '_', '.']) {
        name.remove(0);
    }
    name.truncate(63);
    if name.is_empty() {
        name = "service".into();
    }
    name
}

/// Gives repeated names a numeric suffix, in order: `web`, `web-2`, `web-3`.
pub(crate) fn unique_names(found: &mut [Found]) {
    let mut seen = BTreeSet::new();
    for f in found.iter_mut() {
        let base = f.service.name.clone();
        let mut n = 2;
        while !seen.insert(f.service.name.clone()) {
            let suffix = format!("-{n}");
            let mut stem = base.clone();
            stem.truncate(63 - suffix.len());
            f.service.name = format!("{stem}{suffix}");
            n += 1;
        }
    }
}

/// Seconds as keepalived and Piranha write them (`6`, `1.5`) to a duration.
pub(crate) fn seconds(text: &str) -> Option<prost_types::Duration> {
    let secs: f64 = text.parse().ok()?;
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return None;
    }
    let ms = (secs * 1000.0).round() as i64;
    Some(prost_types::Duration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(endpoint_name("10.0.0.1", 80, "tcp"), "vs-10.0.0.1-80-tcp");
        assert_eq!(
            endpoint_name("2001:DB8::1", 443, "udp"),
            "vs-2001-db8--1-443-udp"
        );
        assert_eq!(sanitize_name("Web Farm #1"), "web-farm--1");
        assert_eq!(sanitize_name("__x"), "x");
        assert_eq!(sanitize_name("!!"), "service");
        let svc = |n: &str| Found {
            file: String::new(),
            line: 1,
            directive: String::new(),
            service: pb::Service {
                name: n.into(),
                ..Default::default()
            },
        };
        let mut f = vec![svc("a"), svc("a"), svc("a-2"), svc("a")];
        unique_names(&mut f);
        let names: Vec<&str> = f.iter().map(|f| f.service.name.as_str()).collect();
        assert_eq!(names, ["a", "a-2", "a-2-2", "a-3"]);
    }

    #[test]
    fn seconds_forms() {
        assert_eq!(seconds("6").unwrap().seconds, 6);
        assert_eq!(seconds("1.5").unwrap().nanos, 500_000_000);
        assert!(seconds("-1").is_none());
        assert!(seconds("six").is_none());
        assert!(seconds("NaN").is_none());
    }
}
