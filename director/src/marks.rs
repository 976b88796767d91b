//! Firewall marks for fwmark services that name their traffic.
//!
//! IPVS schedules a fwmark service only for packets that already carry the
//! mark. An LVS operator sets it with a hand-written mangle rule on each
//! director; here a fwmark service may name the traffic (VIP, protocol,
//! ports) and every director — owner and standbys alike, so a failover
//! needs no firewall change — keeps one nftables table, `inet lbfabric`,
//! holding exactly the rules the services need.
//!
//! The rules are applied with the `nft` tool rather than hand-built
//! nf_tables netlink messages: `nft -f` commits the whole table as one
//! kernel transaction (nothing is ever half-applied, and marking never
//! pauses during a replace), and the table is lbfabric's alone. Like the
//! IPVS table it is read back every round: a hand edit changes what the
//! kernel prints, and the table is replaced.

use std::borrow::Borrow;

use lb_proto::model::{Family, MarkMatch, Service, VirtualAddress};

use crate::nft::NftError;

/// The nftables table (family inet) lbfabric owns.
pub const TABLE: &str = "lbfabric";

#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    #[error("nftables mark rules: cannot run {program:?}: {source} (fwmark services that name an address need nftables' nft tool)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("nftables mark rules: {op} failed: {stderr}")]
    Nft { op: &'static str, stderr: String },
}

/// The desired content of the table, or `None` when no service needs a mark.
/// Deterministic (services in name order), so equal configurations render
/// equal text.
pub fn ruleset<S: Borrow<Service>>(services: &[S]) -> Option<String> {
    let mut marked: Vec<(&str, u32, &MarkMatch)> = services
        .iter()
        .map(Borrow::borrow)
        .filter_map(|s: &Service| match (s.address, &s.mark_match) {
            (VirtualAddress::Fwmark { mark, .. }, Some(m)) => Some((s.name.as_str(), mark, m)),
            _ => None,
        })
        .collect();
    if marked.is_empty() {
        return None;
    }
    marked.sort_by_key(|(name, _, _)| *name);
    let mut out = format!(
        "table inet {TABLE} {{\n\tchain prerouting {{\n\t\ttype filter hook prerouting priority mangle; policy accept;\n"
    );
    for (name, mark, m) in marked {
        out.push_str("\t\t");
        out.push_str(&rule(mark, m));
        // Names are [a-z0-9-_.], safe inside quotes.
        out.push_str(&format!(" comment \"service {name}\"\n"));
    }
    out.push_str("\t}\n}\n");
    Some(out)
}

/// `ip daddr 10.0.0.1 tcp dport { 80, 443 } meta mark set 0x00000007`.
fn rule(mark: u32, m: &MarkMatch) -> String {
    let daddr = match Family::of(m.address) {
        Family::Inet => "ip daddr",
        Family::Inet6 => "ip6 daddr",
    };
    let ports = match m.ports.as_slice() {
        [] => format!("meta l4proto {}", m.protocol),
        [one] => format!("{} dport {one}", m.protocol),
        many => {
            let list: Vec<String> = many.iter().map(ToString::to_string).collect();
            format!("{} dport {{ {} }}", m.protocol, list.join(", "))
        }
    };
    format!("{daddr} {} {ports} meta mark set {mark:#010x}", m.address)
}

/// Keeps the kernel's `inet lbfabric` table equal to [`ruleset`].
#[derive(Debug)]
pub struct Marks {
    /// The command that runs nft (`["nft"]`, or wrapped, e.g. in `ip netns exec`).
    nft: Vec<String>,
    /// What was applied last, and how the kernel printed it right after.
    applied: Option<(String, String)>,
    /// No service needed a mark and the kernel had no table at the last look.
    absent: bool,
}

/// What a convergence round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkChange {
    None,
    Replaced,
    Removed,
}

impl Marks {
    pub fn new(nft: Vec<String>) -> Marks {
        Marks {
            nft,
            applied: None,
            absent: false,
        }
    }

    /// Makes the table match the services: replaced when the wanted rules or
    /// the kernel's copy changed since the last round, removed when no
    /// service needs a mark.
    pub fn converge<S: Borrow<Service>>(
        &mut self,
        services: &[S],
    ) -> Result<MarkChange, MarkError> {
        let want = ruleset(services);
        if want.is_none() && self.absent {
            return Ok(MarkChange::None);
        }
        let observed = match self.list() {
            // Nothing to mark and no nft: there cannot be a table either.
            Err(MarkError::Spawn { .. }) if want.is_none() => None,
            r => r?,
        };
        self.absent = false;
        match (want, observed) {
            (None, None) => {
                // Checked once; a host without marked services is not asked again.
                self.applied = None;
                self.absent = true;
                Ok(MarkChange::None)
            }
            (None, Some(_)) => {
                self.run("delete table", &["delete", "table", "inet", TABLE], None)?;
                self.applied = None;
                tracing::info!(table = TABLE, "removed the nftables mark table");
                Ok(MarkChange::Removed)
            }
            (Some(want), observed) => {
                let in_sync = match (&self.applied, &observed) {
                    (Some((w, seen)), Some(now)) => *w == want && seen == now,
                    _ => false,
                };
                if in_sync {
                    return Ok(MarkChange::None);
                }
                // Declaring the table first makes the delete valid when it
                // does not exist yet; all three lines are one transaction.
                let script = format!("table inet {TABLE}\ndelete table inet {TABLE}\n{want}");
                self.run("replace table", &["-f", "-"], Some(&script))?;
                let seen = self.list()?.unwrap_or_default();
                if observed.is_some() {
                    tracing::info!(table = TABLE, "nftables mark table differed; replaced");
                } else {
                    tracing::info!(table = TABLE, "installed the nftables mark table");
                }
                self.applied = Some((want, seen));
                Ok(MarkChange::Replaced)
            }
        }
    }

    /// The table as the kernel prints it; `None` when it does not exist.
    fn list(&self) -> Result<Option<String>, MarkError> {
        match self.run("list table", &["list", "table", "inet", TABLE], None) {
            Ok(text) => Ok(Some(text)),
            Err(MarkError::Nft { stderr, .. }) if stderr.contains("No such file or directory") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn run(
        &self,
        op: &'static str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, MarkError> {
        crate::nft::run(&self.nft, op, args, stdin).map_err(|e| match e {
            NftError::Spawn { program, source } => MarkError::Spawn { program, source },
            NftError::Failed { op, stderr } => MarkError::Nft { op, stderr },
        })
    }
}

#[cfg(test)]
mod tests {
    use lb_proto::pb;

    use super::*;

    fn svc(name: &str, mark: u32, address: &str, protocol: &str, ports: &[u32]) -> Service {
        Service::try_from(pb::Service {
            name: name.into(),
            virtual_address: Some(pb::service::VirtualAddress::Fwmark(pb::Fwmark {
                mark,
                family: if address.contains(':') {
                    "inet6".into()
                } else {
                    String::new()
                },
                address: address.into(),
                protocol: protocol.into(),
                ports: ports.to_vec(),
            })),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn rules_name_address_protocol_ports_and_mark() {
        let services = [
            svc("web", 80, "10.0.0.1", "", &[443, 80]),
            svc("dns", 53, "2001:db8::53", "udp", &[53]),
            svc("any", 7, "10.0.0.2", "sctp", &[]),
            svc("manual", 9, "", "", &[]),
        ];
        let text = ruleset(&services).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(
            lines,
            [
                "table inet lbfabric {",
                "chain prerouting {",
                "type filter hook prerouting priority mangle; policy accept;",
                "ip daddr 10.0.0.2 meta l4proto sctp meta mark set 0x00000007 comment \"service any\"",
                "ip6 daddr 2001:db8::53 udp dport 53 meta mark set 0x00000035 comment \"service dns\"",
                "ip daddr 10.0.0.1 tcp dport { 80, 443 } meta mark set 0x00000050 comment \"service web\"",
                "}",
                "}",
            ]
        );
        assert_eq!(ruleset(&services[3..]), None, "operator-marked only");
    }
}
