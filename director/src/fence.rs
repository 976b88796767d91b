//! The fence: the kernel stops this host answering for a VIP when its lease
//! ends, even if the agent is stalled (SIGSTOP, a frozen cgroup, CPU
//! starvation) or dead, and whatever the address does.
//!
//! Two nftables tables named `lbfabric_fence` (families `arp` and `inet`)
//! hold the VIPs this director guards (every VIP it may ever hold) and the
//! VIPs it holds now, each **element with a timeout**: the time its lease
//! has left. The rules drop, for a guarded VIP that is not held,
//! - ARP replies (output, family arp) and neighbour advertisements (output,
//!   the target address at ICMPv6 offset 8, matched as raw bytes: this nft
//!   has no `icmpv6 taddr`), so no client learns this host's MAC for it;
//! - inbound traffic to it (prerouting, before IPVS and conntrack), so a
//!   client with a stale neighbour entry is not served by two hosts.
//!
//! The agent refreshes the held elements on every renewal (the guarded ones
//! when they change, and every 10 s); a stalled agent does
//! not, and the kernel expires them at the lease end on its own. The
//! address's `valid_lft` (set by the VIP loop) is the second line: the
//! kernel deletes the address about a second after the lease ends.
//!
//! Why `nft` and not nf_tables netlink by hand: a refresh is one `nft -f`
//! script (flush the sets, add the elements) that the kernel commits as
//! one transaction, so the held set is never seen empty half-way; element
//! timeouts cannot be updated in place on the kernels we support (6.1), and
//! a flush-and-add in one transaction is the portable way. The cost is one
//! process per refresh (a few per second at the default timers).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::nft::{self, NftError};

/// A renewal sets the held sets only; the guarded ones are set when they
/// change and at least this often, which also repairs a hand edit.
const SET_GUARDED_EVERY: Duration = Duration::from_secs(10);

/// The tables' name (in families `arp` and `inet`).
pub const TABLE: &str = "lbfabric_fence";

#[derive(Debug, thiserror::Error)]
#[error("VIP fence (nftables table {TABLE}): {0} (the director needs nftables' nft tool)")]
pub struct FenceError(#[from] NftError);

/// The tables, their sets and rules, created afresh.
fn tables() -> String {
    format!(
        "table arp {TABLE}
delete table arp {TABLE}
table inet {TABLE}
delete table inet {TABLE}
table arp {TABLE} {{
\tset guarded {{ type ipv4_addr; }}
\tset held {{ type ipv4_addr; flags timeout; }}
\tchain out {{
\t\ttype filter hook output priority filter; policy accept;
\t\tarp operation reply arp saddr ip @guarded arp saddr ip != @held drop
\t}}
}}
table inet {TABLE} {{
\tset guarded4 {{ type ipv4_addr; }}
\tset held4 {{ type ipv4_addr; flags timeout; }}
\tset guarded6 {{ type ipv6_addr; }}
\tset held6 {{ type ipv6_addr; flags timeout; }}
\tset na_guarded {{ typeof @th,64,128; }}
\tset na_held {{ typeof @th,64,128; flags timeout; }}
\tchain in {{
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tip daddr @guarded4 ip daddr != @held4 drop
\t\tip6 daddr @guarded6 ip6 daddr != @held6 drop
\t}}
\tchain out {{
\t\ttype filter hook output priority filter; policy accept;
\t\ticmpv6 type nd-neighbor-advert @th,64,128 @na_guarded @th,64,128 != @na_held drop
\t}}
}}
"
    )
}

/// One set's elements: `{ a, b }`, each with its timeout when given.
fn elements<'a>(items: impl Iterator<Item = (String, Option<Duration>)> + 'a) -> Option<String> {
    let list: Vec<String> = items
        .map(|(e, timeout)| match timeout {
            Some(t) => format!("{e} timeout {}ms", t.as_millis().max(1)),
            None => e,
        })
        .collect();
    (!list.is_empty()).then(|| format!("{{ {} }}", list.join(", ")))
}

/// An IPv6 address as the 128-bit integer the raw-payload sets hold.
fn raw6(addr: &IpAddr) -> Option<String> {
    match addr {
        IpAddr::V6(v6) => Some(format!("0x{:032x}", u128::from(*v6))),
        IpAddr::V4(_) => None,
    }
}

/// The script that makes the sets `guarded` and `held` (each VIP with the
/// time its lease has left), as one transaction. `guarded: None` leaves
/// the guarded sets as they are: a renewal changes only the held ones, and
/// with 1,000 VIPs each set is a thousand elements for `nft` to parse.
pub fn refresh(guarded: Option<&BTreeSet<IpAddr>>, held: &BTreeMap<IpAddr, Duration>) -> String {
    // Each family's elements once: the arp and inet tables share the IPv4 ones.
    let plain = |a: &IpAddr| (a.to_string(), None);
    let timed = |(a, t): (&IpAddr, &Duration)| (a.to_string(), Some(*t));
    let held4 = elements(held.iter().filter(|(a, _)| a.is_ipv4()).map(timed));
    let held6 = elements(held.iter().filter(|(a, _)| a.is_ipv6()).map(timed));
    let na_held = elements(held.iter().filter_map(|(a, t)| Some((raw6(a)?, Some(*t)))));
    let mut sets = vec![
        ("arp", "held", held4.clone()),
        ("inet", "held4", held4),
        ("inet", "held6", held6),
        ("inet", "na_held", na_held),
    ];
    if let Some(guarded) = guarded {
        let guarded4 = elements(guarded.iter().filter(|a| a.is_ipv4()).map(plain));
        sets.extend([
            ("arp", "guarded", guarded4.clone()),
            ("inet", "guarded4", guarded4),
            (
                "inet",
                "guarded6",
                elements(guarded.iter().filter(|a| a.is_ipv6()).map(plain)),
            ),
            (
                "inet",
                "na_guarded",
                elements(guarded.iter().filter_map(|a| Some((raw6(a)?, None)))),
            ),
        ]);
    }
    let mut out = String::new();
    for (family, set, items) in sets {
        out.push_str(&format!("flush set {family} {TABLE} {set}\n"));
        if let Some(items) = items {
            out.push_str(&format!("add element {family} {TABLE} {set} {items}\n"));
        }
    }
    out
}

/// The fence on this host.
#[derive(Debug)]
pub struct Fence {
    /// The command that runs nft (`["nft"]`, or wrapped).
    nft: Vec<String>,
    installed: bool,
    /// The guarded VIPs the tables have and when they were set (`None`:
    /// not known).
    guarded: Option<(BTreeSet<IpAddr>, Instant)>,
}

impl Fence {
    pub fn new(nft: Vec<String>) -> Self {
        Fence {
            nft,
            installed: false,
            guarded: None,
        }
    }

    /// Sets what is guarded and held (with the time each lease has left).
    /// The tables are created on first use, and again after a refresh
    /// failed (someone deleted them, say).
    pub fn set(
        &mut self,
        guarded: &BTreeSet<IpAddr>,
        held: &BTreeMap<IpAddr, Duration>,
    ) -> Result<(), FenceError> {
        if self.installed {
            let same = matches!(&self.guarded,
                Some((g, at)) if g == guarded && at.elapsed() < SET_GUARDED_EVERY);
            let script = refresh((!same).then_some(guarded), held);
            match nft::run(&self.nft, "refresh", &["-f", "-"], Some(&script)) {
                Ok(_) => {
                    if !same {
                        self.guarded = Some((guarded.clone(), Instant::now()));
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "VIP fence refresh failed: creating its tables again")
                }
            }
        }
        let all = format!("{}{}", tables(), refresh(Some(guarded), held));
        (self.installed, self.guarded) = (false, None);
        nft::run(&self.nft, "create the tables", &["-f", "-"], Some(&all))?;
        (self.installed, self.guarded) = (true, Some((guarded.clone(), Instant::now())));
        Ok(())
    }

    /// Takes the fence away (a clean stop that handed every VIP over).
    pub fn remove(&mut self) -> Result<(), FenceError> {
        let script = format!(
            "table arp {TABLE}\ndelete table arp {TABLE}\ntable inet {TABLE}\ndelete table inet {TABLE}\n"
        );
        (self.installed, self.guarded) = (false, None);
        nft::run(&self.nft, "delete the tables", &["-f", "-"], Some(&script))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_sets_every_set_in_one_script() {
        let v4: IpAddr = "10.0.0.100".parse().unwrap();
        let v6: IpAddr = "2001:db8::100".parse().unwrap();
        let other: IpAddr = "10.0.0.101".parse().unwrap();
        let guarded = BTreeSet::from([v4, v6, other]);
        let held = BTreeMap::from([
            (v4, Duration::from_millis(450)),
            (v6, Duration::from_micros(10)),
        ]);
        let script = refresh(Some(&guarded), &held);
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines.len(), 16, "{script}");
        assert!(
            lines.contains(&"add element arp lbfabric_fence guarded { 10.0.0.100, 10.0.0.101 }")
        );
        assert!(lines.contains(&"add element arp lbfabric_fence held { 10.0.0.100 timeout 450ms }"));
        assert!(
            lines.contains(&"add element inet lbfabric_fence held6 { 2001:db8::100 timeout 1ms }"),
            "never a zero timeout (no timeout at all): {script}"
        );
        assert!(lines.contains(
            &"add element inet lbfabric_fence na_held { 0x20010db8000000000000000000000100 timeout 1ms }"
        ));
        // Nothing held: the held sets are only flushed.
        let script = refresh(Some(&guarded), &BTreeMap::new());
        assert!(script.contains("flush set arp lbfabric_fence held\n"));
        assert!(!script.contains("lbfabric_fence held {"), "{script}");
        // A renewal with the guarded VIPs unchanged: only the held sets.
        let script = refresh(None, &held);
        assert_eq!(script.lines().count(), 8, "{script}");
        assert!(!script.contains("guarded"), "{script}");
        assert!(
            script.contains("add element inet lbfabric_fence held4 { 10.0.0.100 timeout 450ms }")
        );
    }
}
