//! What a realserver host needs for the services it backs, and the code that
//! makes it so — and undoes exactly what it did.
//!
//! - DR: the VIP as a /32 (/128) on `lo`, so the host accepts packets the
//!   director forwards unchanged;
//! - TUN: the `ipip` module, `tunl0` up, the VIP on `tunl0`, and
//!   `rp_filter=0` (all + tunl0) so decapsulated packets are not dropped;
//! - DR and TUN (IPv4): `arp_ignore=1`, `arp_announce=2` (all + the RIP's
//!   interface), so the host never answers ARP for the VIP — only the
//!   director may;
//! - NAT: nothing.
//!
//! Ordering matters on the wire: ARP suppression goes in before a VIP
//! appears, and the VIPs go before the sysctls are restored. Only what the
//! agent added is removed, and a sysctl gets back the value it had before
//! the agent first changed it: a host prepared by hand (the old scripts) is
//! left as the operator made it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use std::path::PathBuf;

use lb_hostnet::{sysctl, Address, NetError, Rtnl};
use lb_proto::model::{ForwardingMode, Service};

pub const LOOPBACK: &str = "lo";
pub const TUNNEL: &str = "tunl0";

/// The host configuration the services need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// (interface, VIP).
    pub addresses: BTreeSet<(String, IpAddr)>,
    /// sysctl name → value.
    pub sysctls: BTreeMap<String, String>,
}

/// The plan for `services` on a host whose RIP is on `rip_interface`.
pub fn plan(services: &[Service], rip_interface: &str) -> Plan {
    let mut p = Plan::default();
    for s in services {
        let Some(vip) = s.vip() else { continue };
        let iface = match s.mode {
            ForwardingMode::Nat | ForwardingMode::Local => continue,
            ForwardingMode::Dr => LOOPBACK,
            ForwardingMode::Tun => {
                for i in ["all", TUNNEL] {
                    p.sysctls
                        .insert(sysctl::ipv4_conf(i, "rp_filter"), "0".into());
                }
                TUNNEL
            }
        };
        p.addresses.insert((iface.to_string(), vip));
        if vip.is_ipv4() {
            for i in ["all", rip_interface] {
                p.sysctls
                    .insert(sysctl::ipv4_conf(i, "arp_ignore"), "1".into());
                p.sysctls
                    .insert(sysctl::ipv4_conf(i, "arp_announce"), "2".into());
            }
        }
    }
    p
}

/// The warning a NAT realserver deserves when its replies would bypass the
/// directors: IPVS rewrites only what passes through it, so the default
/// route must go via a director. `None` when fine, or when nothing is known
/// about the directors yet.
pub fn nat_route_warning(
    services: &[Service],
    directors: &[IpAddr],
    gateway: Option<IpAddr>,
) -> Option<String> {
    let nat: Vec<&str> = services
        .iter()
        .filter(|s| s.mode == ForwardingMode::Nat)
        .map(|s| s.name.as_str())
        .collect();
    if nat.is_empty() || directors.is_empty() {
        return None;
    }
    let list: Vec<String> = directors.iter().map(ToString::to_string).collect();
    match gateway {
        Some(g) if directors.contains(&g) => None,
        Some(g) => Some(format!(
            "NAT services {}: the default route goes via {g}, not a director ({}); replies would bypass IPVS",
            nat.join(","),
            list.join(", ")
        )),
        None => Some(format!(
            "NAT services {}: no default route; replies must go via a director ({})",
            nat.join(","),
            list.join(", ")
        )),
    }
}

/// The IPv4 default route's gateway, from `/proc/net/route`.
pub fn default_gateway(route_table: &str) -> Option<IpAddr> {
    route_table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        if f.len() < 8 || f[1] != "00000000" || f[7] != "00000000" {
            return None;
        }
        let gw = u32::from_str_radix(f[2], 16).ok()?;
        (gw != 0).then(|| IpAddr::from(gw.to_ne_bytes()))
    })
}

/// The host's network configuration as this agent changed it.
pub struct Host {
    rtnl: Rtnl,
    /// Addresses this agent added (not ones it found in place).
    added: BTreeSet<(String, IpAddr)>,
    /// sysctls this agent changed, with the value each had before.
    saved: BTreeMap<String, String>,
    /// Where the record above survives the process (a crash, `kill -9`,
    /// an upgrade), so a restarted agent still undoes what it did.
    record: Option<PathBuf>,
    /// Changes made to the host so far (addresses added or removed,
    /// sysctls written), for metrics.
    changes: u64,
}

impl Host {
    /// Opens the host, continuing the record in `record` if a previous
    /// agent left one.
    pub fn open(record: Option<PathBuf>) -> Result<Host, NetError> {
        let (added, saved) = record
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|text| decode(&text))
            .unwrap_or_default();
        if !added.is_empty() || !saved.is_empty() {
            tracing::info!(
                addresses = added.len(),
                sysctls = saved.len(),
                "continuing the previous agent's record"
            );
        }
        Ok(Host {
            rtnl: Rtnl::open()?,
            added,
            saved,
            record,
            changes: 0,
        })
    }

    /// Writes the record (atomically: a temporary file renamed over it);
    /// removes it when there is nothing to undo.
    fn save(&self) -> Option<String> {
        let path = self.record.as_deref()?;
        let result = if self.added.is_empty() && self.saved.is_empty() {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            let tmp = path.with_extension("tmp");
            path.parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&tmp, encode(&self.added, &self.saved)))
                .and_then(|()| std::fs::rename(&tmp, path))
        };
        result
            .err()
            .map(|e| format!("saving {}: {e}", path.display()))
    }

    /// Makes the host match `plan`, repairing hand edits; returns what failed.
    pub fn converge(&mut self, plan: &Plan) -> Vec<String> {
        let mut errors = Vec::new();
        for (name, value) in &plan.sysctls {
            if let Err(e) = self.set_sysctl(name, value) {
                errors.push(e.to_string());
            }
        }
        for (iface, vip) in &plan.addresses {
            if let Err(e) = self.ensure_address(iface, *vip) {
                errors.push(e.to_string());
            }
        }
        let unwanted: Vec<(String, IpAddr)> = self
            .added
            .iter()
            .filter(|a| !plan.addresses.contains(a))
            .cloned()
            .collect();
        for (iface, vip) in unwanted {
            match self.remove_address(&iface, vip) {
                Ok(()) => {
                    self.added.remove(&(iface, vip));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        let restore: Vec<(String, String)> = self
            .saved
            .iter()
            .filter(|(name, _)| !plan.sysctls.contains_key(*name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        for (name, before) in restore {
            match sysctl::write(&name, &before) {
                Ok(_) => {
                    tracing::info!(sysctl = %name, value = %before, "sysctl restored");
                    self.saved.remove(&name);
                }
                // The interface went away: nothing left to restore.
                Err(_) if !sysctl_exists(&name) => {
                    self.saved.remove(&name);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        self.converged(errors)
    }

    /// How many changes the agent has made to the host.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Undoes everything this agent changed.
    pub fn restore(&mut self) -> Vec<String> {
        self.converge(&Plan::default())
    }

    /// The record as [`Host::converge`] left it, with any error saving it.
    fn converged(&self, mut errors: Vec<String>) -> Vec<String> {
        errors.extend(self.save());
        errors
    }

    fn set_sysctl(&mut self, name: &str, value: &str) -> Result<(), NetError> {
        if sysctl::read(name)? == value {
            return Ok(());
        }
        let before = sysctl::write(name, value)?;
        self.changes += 1;
        tracing::info!(sysctl = %name, value, before = %before, "sysctl set");
        // The first value seen is the one to restore, not one set since.
        self.saved.entry(name.to_string()).or_insert(before);
        Ok(())
    }

    fn ensure_address(&mut self, iface: &str, vip: IpAddr) -> Result<(), NetError> {
        if iface == TUNNEL {
            self.ensure_tunnel()?;
        }
        let index = self.rtnl.link_index(iface)?;
        let addr = Address {
            ifindex: index,
            addr: vip,
            prefix_len: if vip.is_ipv4() { 32 } else { 128 },
        };
        let present = self
            .rtnl
            .addresses(index)?
            .iter()
            .any(|a| a.ifindex == index && a.addr == vip);
        if !present && self.rtnl.add_address(&addr)? {
            self.changes += 1;
            tracing::info!(interface = iface, vip = %vip, "VIP added");
            self.added.insert((iface.to_string(), vip));
        }
        Ok(())
    }

    fn remove_address(&mut self, iface: &str, vip: IpAddr) -> Result<(), NetError> {
        let index = match self.rtnl.link_index(iface) {
            Ok(i) => i,
            // Gone with its interface.
            Err(NetError::NoSuchLink(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let addr = Address {
            ifindex: index,
            addr: vip,
            prefix_len: if vip.is_ipv4() { 32 } else { 128 },
        };
        if self.rtnl.del_address(&addr)? {
            self.changes += 1;
            tracing::info!(interface = iface, vip = %vip, "VIP removed");
        }
        Ok(())
    }

    /// `tunl0` exists once the ipip module is loaded; it must be up.
    fn ensure_tunnel(&mut self) -> Result<(), NetError> {
        let link = match self.rtnl.link_index(TUNNEL) {
            Ok(i) => i,
            Err(NetError::NoSuchLink(_)) => {
                load_ipip()?;
                self.rtnl.link_index(TUNNEL)?
            }
            Err(e) => return Err(e),
        };
        self.rtnl.set_up(link)
    }
}

/// The record as lines: `address IFACE VIP` and `sysctl NAME VALUE`.
fn encode(added: &BTreeSet<(String, IpAddr)>, saved: &BTreeMap<String, String>) -> String {
    let mut out = String::from("# lb-realserver: what to undo on this host\n");
    for (iface, vip) in added {
        out.push_str(&format!("address {iface} {vip}\n"));
    }
    for (name, value) in saved {
        out.push_str(&format!("sysctl {name} {value}\n"));
    }
    out
}

/// Reads a record; lines it does not understand are skipped.
#[allow(clippy::type_complexity)]
fn decode(text: &str) -> (BTreeSet<(String, IpAddr)>, BTreeMap<String, String>) {
    let mut added = BTreeSet::new();
    let mut saved = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next(), f.next()) {
            (Some("address"), Some(iface), Some(vip)) => {
                if let Ok(vip) = vip.parse() {
                    added.insert((iface.to_string(), vip));
                }
            }
            (Some("sysctl"), Some(name), Some(value)) => {
                saved.insert(name.to_string(), value.to_string());
            }
            _ => {}
        }
    }
    (added, saved)
}

fn sysctl_exists(name: &str) -> bool {
    sysctl::read(name).is_ok()
}

/// Loads the ipip module (which creates `tunl0` in every namespace).
fn load_ipip() -> Result<(), NetError> {
    let out = std::process::Command::new("modprobe")
        .arg("ipip")
        .output()
        .map_err(|e| NetError::Netlink {
            op: "modprobe",
            object: "ipip".into(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        tracing::info!("loaded the ipip module for tunl0");
        Ok(())
    } else {
        Err(NetError::Netlink {
            op: "modprobe",
            object: "ipip".into(),
            detail: format!(
                "{} (TUN services need the kernel's ipip module)",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// The interface that carries `rip`, by its addresses.
pub fn interface_of(rtnl: &Rtnl, rip: IpAddr) -> Result<Option<String>, NetError> {
    let Some(index) = rtnl
        .addresses(0)?
        .into_iter()
        .find(|a| a.addr == rip)
        .map(|a| a.ifindex)
    else {
        return Ok(None);
    };
    // /sys/class/net shows the agent's own namespace's interfaces.
    let names = std::fs::read_dir("/sys/class/net").map_err(|e| NetError::Sysctl {
        name: "/sys/class/net".into(),
        detail: e.to_string(),
    })?;
    for entry in names.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let idx = std::fs::read_to_string(entry.path().join("ifindex")).unwrap_or_default();
        if idx.trim().parse::<u32>().ok() == Some(index) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use lb_proto::pb;

    use super::*;

    fn svc(name: &str, vip: &str, mode: &str) -> Service {
        Service::try_from(pb::Service {
            name: name.into(),
            virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
                address: vip.into(),
                port: 80,
                protocol: "tcp".into(),
            })),
            mode: mode.into(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn the_record_round_trips() {
        let added: BTreeSet<(String, IpAddr)> = [
            ("lo".to_string(), "10.0.0.100".parse().unwrap()),
            ("tunl0".to_string(), "2001:db8::1".parse().unwrap()),
        ]
        .into();
        let saved: BTreeMap<String, String> =
            [("net.ipv4.conf.all.arp_ignore".to_string(), "0".to_string())].into();
        let text = encode(&added, &saved);
        assert_eq!(decode(&text), (added, saved));
        assert_eq!(decode("garbage\naddress lo notanip\n"), Default::default());
    }

    #[test]
    fn a_nat_realserver_must_route_through_a_director() {
        let nat = [svc("nat", "10.0.0.102", "nat")];
        let d: Vec<IpAddr> = vec!["192.168.50.11".parse().unwrap()];
        let via = |g: &str| Some(g.parse().unwrap());
        assert_eq!(nat_route_warning(&nat, &d, via("192.168.50.11")), None);
        let w = nat_route_warning(&nat, &d, via("192.168.50.99")).unwrap();
        assert!(
            w.contains("goes via 192.168.50.99, not a director (192.168.50.11)"),
            "{w}"
        );
        assert!(nat_route_warning(&nat, &d, None)
            .unwrap()
            .contains("no default route"));
        assert_eq!(
            nat_route_warning(&nat, &[], via("192.168.50.99")),
            None,
            "directors unknown"
        );
        let dr = [svc("dr", "10.0.0.100", "dr")];
        assert_eq!(nat_route_warning(&dr, &d, via("192.168.50.99")), None);
        if cfg!(target_endian = "little") {
            let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0B32A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0032A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";
            assert_eq!(default_gateway(table), via("192.168.50.11"));
        }
    }

    #[test]
    fn each_mode_gets_what_it_needs() {
        let p = plan(
            &[
                svc("dr", "10.0.0.100", "dr"),
                svc("tun", "10.0.0.101", "tun"),
                svc("nat", "10.0.0.102", "nat"),
                svc("dr6", "2001:db8::1", "dr"),
            ],
            "eth0",
        );
        let addrs: Vec<String> = p
            .addresses
            .iter()
            .map(|(i, a)| format!("{i} {a}"))
            .collect();
        assert_eq!(
            addrs,
            ["lo 10.0.0.100", "lo 2001:db8::1", "tunl0 10.0.0.101"]
        );
        let sysctls: Vec<String> = p.sysctls.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            sysctls,
            [
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.eth0.arp_announce=2",
                "net.ipv4.conf.eth0.arp_ignore=1",
                "net.ipv4.conf.tunl0.rp_filter=0",
            ]
        );
        assert_eq!(
            plan(&[svc("nat", "10.0.0.102", "nat")], "eth0"),
            Plan::default()
        );
    }
}
