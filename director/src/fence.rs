//! The fence: the kernel stops this host answering for a VIP when its lease
//! ends, even if the agent is stalled (SIGSTOP, a frozen cgroup, CPU
//! starvation) or dead, and whatever the address does.
//!
//! Two nftables tables named `lbfabric_fence` (families `arp` and `inet`)
//! hold the VIPs this director guards (every VIP it may ever hold) and, in
//! verdict maps, the VIPs it holds now, each sent to one of a few **slot**
//! chains. A slot stands for one lease end: its chain lets a packet through
//! only while the slot's `alive` set has its element, whose **timeout** is
//! the time that lease has left, and drops it otherwise. The rules drop,
//! for a guarded VIP that is not held (or whose slot has run out),
//! - ARP replies (output, family arp) and neighbour advertisements (output,
//!   the target address at ICMPv6 offset 8, matched as raw bytes: this nft
//!   has no `icmpv6 taddr`), so no client learns this host's MAC for it;
//! - inbound traffic to it (prerouting, before IPVS and conntrack), so a
//!   client with a stale neighbour entry is not served by two hosts.
//!
//! Why slots rather than a timeout on each VIP: the VIPs' leases end
//! together (they come from the same grants), so a renewal rewrites one
//! element per slot and family instead of every VIP — a renewal with 1,000
//! VIPs was the director's largest periodic work. VIPs whose leases end
//! apart (granted by different controllers for a moment) take separate
//! slots; beyond [`SLOTS`] ends, a group shares the slot of the nearest end
//! and the earlier of the two counts, so no VIP is ever let through past
//! its own lease.
//!
//! The agent renews the slots on every renewal and changes the maps and
//! the guarded sets by what changed (all of it every minute, which also
//! repairs a hand edit); a stalled agent does not, and the kernel expires
//! the slots at the lease end on its own. The address's `valid_lft` (set
//! by the VIP loop) is the second line: the kernel deletes the address
//! within four thirds of a lease and a second after the lease ends.
//!
//! The tables, chains and sets are made by `nft`; their elements are
//! written over nfnetlink ([`lb_hostnet::nftables`]), each write one kernel
//! transaction, so no set is ever seen half-way. Element timeouts cannot be
//! updated in place on the kernels we support (6.1): a slot is renewed by
//! flushing its set and adding the element again, in the same transaction.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use lb_hostnet::nftables::{Element, Family, Nftables, SetOp, SetRef};
use lb_hostnet::NetError;

use crate::nft::{self, NftError};

/// The maps and the guarded sets are written whole this often (between,
/// only what changed), which also repairs a hand edit. Not more often: with
/// 1,000 VIPs that is 4,000 elements out and in again, 100 ms of the VM's
/// emulated CPU. A table deleted by hand is seen at the next write (it
/// fails) and made again at once.
const REWRITE_EVERY: Duration = Duration::from_secs(60);

/// The tables' name (in families `arp` and `inet`).
pub const TABLE: &str = "lbfabric_fence";

/// An empty set that names the tables' layout (see [`plan`]).
const LAYOUT: &str = "layout_slots";

/// Lease ends the tables tell apart (see the module doc).
pub const SLOTS: usize = 8;
const ALIVE: [&str; SLOTS] = [
    "alive0", "alive1", "alive2", "alive3", "alive4", "alive5", "alive6", "alive7",
];
const SLOT: [&str; SLOTS] = [
    "slot0", "slot1", "slot2", "slot3", "slot4", "slot5", "slot6", "slot7",
];

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("VIP fence (nftables table {TABLE}): {0} (the director needs nftables' nft tool)")]
    Nft(#[from] NftError),
    #[error("VIP fence (nftables table {TABLE}): {0}")]
    Netlink(#[from] NetError),
}

/// The tables, their sets, maps, slot chains and rules, created afresh.
fn tables() -> String {
    let mut arp_slots = String::new();
    let mut inet_slots = String::new();
    for (alive, slot) in ALIVE.iter().zip(SLOT) {
        arp_slots.push_str(&format!(
            "\tset {alive} {{ typeof arp operation; flags timeout; }}\n\tchain {slot} {{\n\t\tarp operation @{alive} accept\n\t\tdrop\n\t}}\n"
        ));
        inet_slots.push_str(&format!(
            "\tset {alive} {{ typeof meta nfproto; flags timeout; }}\n\tchain {slot} {{\n\t\tmeta nfproto @{alive} accept\n\t\tdrop\n\t}}\n"
        ));
    }
    format!(
        "table arp {TABLE}
delete table arp {TABLE}
table inet {TABLE}
delete table inet {TABLE}
table arp {TABLE} {{
\tset {LAYOUT} {{ type ipv4_addr; }}
\tset guarded {{ type ipv4_addr; }}
\tmap held {{ type ipv4_addr : verdict; }}
{arp_slots}\tchain out {{
\t\ttype filter hook output priority filter; policy accept;
\t\tarp operation reply arp saddr ip vmap @held
\t\tarp operation reply arp saddr ip @guarded drop
\t}}
}}
table inet {TABLE} {{
\tset {LAYOUT} {{ type ipv4_addr; }}
\tset guarded4 {{ type ipv4_addr; }}
\tset guarded6 {{ type ipv6_addr; }}
\tset na_guarded {{ typeof @th,64,128; }}
\tmap held4 {{ type ipv4_addr : verdict; }}
\tmap held6 {{ type ipv6_addr : verdict; }}
\tmap na_held {{ typeof @th,64,128 : verdict; }}
{inet_slots}\tchain in {{
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tip daddr vmap @held4
\t\tip daddr @guarded4 drop
\t\tip6 daddr vmap @held6
\t\tip6 daddr @guarded6 drop
\t}}
\tchain out {{
\t\ttype filter hook output priority filter; policy accept;
\t\ticmpv6 type nd-neighbor-advert @th,64,128 vmap @na_held
\t\ticmpv6 type nd-neighbor-advert @th,64,128 @na_guarded drop
\t}}
}}
"
    )
}

/// The guarded sets' elements in nft's language, for the script that
/// creates the tables: they are guarded from the start, so the moment
/// before the held maps are written drops rather than lets through.
fn guarded_script(guarded: &BTreeSet<IpAddr>) -> String {
    let mut out = String::new();
    let mut add = |family: &str, set: &str, items: Vec<String>| {
        if !items.is_empty() {
            out.push_str(&format!(
                "add element {family} {TABLE} {set} {{ {} }}\n",
                items.join(", ")
            ));
        }
    };
    let v4: Vec<String> = guarded
        .iter()
        .filter(|a| a.is_ipv4())
        .map(|a| a.to_string())
        .collect();
    let v6: Vec<std::net::Ipv6Addr> = guarded
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        })
        .collect();
    add("arp", "guarded", v4.clone());
    add("inet", "guarded4", v4);
    add(
        "inet",
        "guarded6",
        v6.iter().map(|a| a.to_string()).collect(),
    );
    // The raw NA target: the address as one 128-bit number.
    let raw = |a: &std::net::Ipv6Addr| format!("0x{:032x}", u128::from(*a));
    add("inet", "na_guarded", v6.iter().map(raw).collect());
    out
}

/// A VIP as its sets store it (the raw NA target too: the address bytes).
fn key(vip: &IpAddr) -> Vec<u8> {
    match vip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn set_ref(family: Family, set: &'static str) -> SetRef<'static> {
    SetRef {
        family,
        table: TABLE,
        set,
    }
}

/// The (guarded set, held map) pairs a VIP is in.
fn sets_of(vip: &IpAddr) -> [(SetRef<'static>, SetRef<'static>); 2] {
    let (a, i) = (Family::Arp, Family::Inet);
    match vip {
        IpAddr::V4(_) => [
            (set_ref(a, "guarded"), set_ref(a, "held")),
            (set_ref(i, "guarded4"), set_ref(i, "held4")),
        ],
        IpAddr::V6(_) => [
            (set_ref(i, "guarded6"), set_ref(i, "held6")),
            (set_ref(i, "na_guarded"), set_ref(i, "na_held")),
        ],
    }
}

/// Every set and map with VIPs in it.
fn vip_sets() -> Vec<SetRef<'static>> {
    let v4: IpAddr = std::net::Ipv4Addr::UNSPECIFIED.into();
    let v6: IpAddr = std::net::Ipv6Addr::UNSPECIFIED.into();
    [sets_of(&v4), sets_of(&v6)]
        .into_iter()
        .flatten()
        .flat_map(|(g, h)| [g, h])
        .collect()
}

/// A slot's elements in each family: what its chain matches on (the
/// packets a slot chain sees are ARP replies, or IPv4 / IPv6 packets).
fn alive_elements(slot: usize, left: Duration) -> [(SetRef<'static>, Vec<Element>); 2] {
    let timed = |k: Vec<u8>| Element {
        key: k,
        timeout: Some(left),
        goto: None,
    };
    let reply = ARPOP_REPLY.to_be_bytes().to_vec();
    [
        (set_ref(Family::Arp, ALIVE[slot]), vec![timed(reply)]),
        (
            set_ref(Family::Inet, ALIVE[slot]),
            vec![timed(vec![NFPROTO_IPV4]), timed(vec![NFPROTO_IPV6])],
        ),
    ]
}

/// The keys of the slots' sets: `arp operation reply`, `meta nfproto ipv4`
/// and `ipv6` (linux/if_arp.h, linux/netfilter.h).
const ARPOP_REPLY: u16 = 2;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// What the fence's sets hold, as it last wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Kernel {
    guarded: BTreeSet<IpAddr>,
    /// Each held VIP's slot.
    slots: BTreeMap<IpAddr, usize>,
    /// The slots with an element, and the time their lease had left.
    alive: BTreeMap<usize, Duration>,
}

/// The slot of each `held` VIP (each with the time its lease has left):
/// a slot per lease end, a group keeping the slot most of it had in
/// `before` (so a renewal moves no VIP); past [`SLOTS`] ends, a group joins
/// the slot of the nearest end, which takes the earlier of the two.
fn assign(
    before: &BTreeMap<IpAddr, usize>,
    held: &BTreeMap<IpAddr, Duration>,
) -> (BTreeMap<IpAddr, usize>, BTreeMap<usize, Duration>) {
    let mut groups: BTreeMap<Duration, Vec<IpAddr>> = BTreeMap::new();
    for (vip, left) in held {
        groups.entry(*left).or_default().push(*vip);
    }
    let mut groups: Vec<(Duration, Vec<IpAddr>)> = groups.into_iter().collect();
    // The largest group chooses first: the usual case is one group of all.
    groups.sort_by_key(|(left, vips)| (Reverse(vips.len()), *left));
    let mut ends: BTreeMap<usize, Duration> = BTreeMap::new();
    let mut slots = BTreeMap::new();
    for (left, vips) in groups {
        let mut had: BTreeMap<usize, usize> = BTreeMap::new();
        for slot in vips.iter().filter_map(|v| before.get(v)) {
            *had.entry(*slot).or_default() += 1;
        }
        let kept = had
            .into_iter()
            .filter(|(slot, _)| !ends.contains_key(slot))
            .max_by_key(|(slot, n)| (*n, Reverse(*slot)))
            .map(|(slot, _)| slot);
        let slot = match kept.or_else(|| (0..SLOTS).find(|s| !ends.contains_key(s))) {
            Some(slot) => {
                ends.insert(slot, left);
                slot
            }
            None => {
                let Some((slot, end)) = ends.iter_mut().min_by_key(|(_, e)| e.abs_diff(left))
                else {
                    continue; // SLOTS is not zero
                };
                *end = (*end).min(left);
                *slot
            }
        };
        slots.extend(vips.into_iter().map(|v| (v, slot)));
    }
    (slots, ends)
}

/// The set operations that take the kernel from `before` (`None`: not
/// known; everything is flushed and written) to `guarded` and `held`, and
/// what it holds then. Flushes go first, then deletions, then additions:
/// a VIP that changes slot is deleted from its map and added again.
fn plan(
    before: Option<&Kernel>,
    guarded: &BTreeSet<IpAddr>,
    held: &BTreeMap<IpAddr, Duration>,
) -> (Vec<SetOp<'static>>, Kernel) {
    let empty = Kernel::default();
    let old = before.unwrap_or(&empty);
    let (slots, alive) = assign(&old.slots, held);
    let mut flush: BTreeSet<SetRef<'static>> = BTreeSet::new();
    let mut delete: BTreeMap<SetRef<'static>, Vec<Vec<u8>>> = BTreeMap::new();
    let mut add: BTreeMap<SetRef<'static>, Vec<Element>> = BTreeMap::new();
    if before.is_none() {
        flush.extend(vip_sets());
        // Tables of another layout (an older lbfabric) lack this set: the
        // write fails and they are made again.
        flush.extend([Family::Arp, Family::Inet].map(|f| set_ref(f, LAYOUT)));
    }
    for vip in old.guarded.difference(guarded) {
        for (g, _) in sets_of(vip) {
            delete.entry(g).or_default().push(key(vip));
        }
    }
    let new_guarded = guarded
        .iter()
        .filter(|v| before.is_none() || !old.guarded.contains(v));
    for vip in new_guarded {
        for (g, _) in sets_of(vip) {
            add.entry(g).or_default().push(Element::key(key(vip)));
        }
    }
    for (vip, slot) in &old.slots {
        if before.is_some() && slots.get(vip) != Some(slot) {
            for (_, h) in sets_of(vip) {
                delete.entry(h).or_default().push(key(vip));
            }
        }
    }
    for (vip, slot) in &slots {
        if before.is_none() || old.slots.get(vip) != Some(slot) {
            for (_, h) in sets_of(vip) {
                add.entry(h).or_default().push(Element {
                    key: key(vip),
                    timeout: None,
                    goto: Some(SLOT[*slot].to_string()),
                });
            }
        }
    }
    // Every slot in use is renewed; one no longer used is emptied.
    let unused = (0..SLOTS).filter(|s| !alive.contains_key(s));
    for slot in unused.filter(|s| before.is_none() || old.alive.contains_key(s)) {
        flush.extend(alive_elements(slot, Duration::ZERO).map(|(set, _)| set));
    }
    for (slot, left) in &alive {
        for (set, elements) in alive_elements(*slot, *left) {
            flush.insert(set);
            add.entry(set).or_default().extend(elements);
        }
    }
    let mut ops: Vec<SetOp<'static>> = flush.into_iter().map(SetOp::Flush).collect();
    ops.extend(
        delete
            .into_iter()
            .map(|(set, keys)| SetOp::Delete(set, keys)),
    );
    ops.extend(
        add.into_iter()
            .map(|(set, elements)| SetOp::Add(set, elements)),
    );
    let kernel = Kernel {
        guarded: guarded.clone(),
        slots,
        alive,
    };
    (ops, kernel)
}

/// The fence on this host.
#[derive(Debug)]
pub struct Fence {
    /// The command that runs nft (`["nft"]`, or wrapped).
    nft: Vec<String>,
    /// Opened at the first write, in the calling thread's namespace.
    netlink: Option<Nftables>,
    /// What the sets hold and when they were last written whole (`None`:
    /// the tables are not known to be there).
    kernel: Option<(Kernel, Instant)>,
}

impl Fence {
    pub fn new(nft: Vec<String>) -> Self {
        Fence {
            nft,
            netlink: None,
            kernel: None,
        }
    }

    /// Sets what is guarded and held (with the time each lease has left).
    /// The tables are created on first use, and again after a write failed
    /// (someone deleted them, say).
    pub fn set(
        &mut self,
        guarded: &BTreeSet<IpAddr>,
        held: &BTreeMap<IpAddr, Duration>,
    ) -> Result<(), FenceError> {
        // Between whole writes, only what changed. A whole write also
        // continues the tables a previous process left (a restart), in one
        // transaction: made afresh, they would drop the VIPs it still holds
        // until the held maps are written.
        let known = self.kernel.take();
        let delta = known
            .as_ref()
            .filter(|(_, since)| since.elapsed() < REWRITE_EVERY);
        match self.write(delta, guarded, held) {
            Ok(()) => return Ok(()),
            Err(e) if known.is_some() => {
                tracing::warn!(error = %e, "VIP fence write failed: creating its tables again")
            }
            Err(e) => tracing::debug!(error = %e, "no VIP fence tables to continue"),
        }
        let script = format!("{}{}", tables(), guarded_script(guarded));
        nft::run(&self.nft, "create the tables", &["-f", "-"], Some(&script))?;
        self.write(None, guarded, held)
    }

    /// Writes the sets as one transaction and records what they hold:
    /// `before` is what they held and when they were last written whole
    /// (`None`: all of them are written now).
    fn write(
        &mut self,
        before: Option<&(Kernel, Instant)>,
        guarded: &BTreeSet<IpAddr>,
        held: &BTreeMap<IpAddr, Duration>,
    ) -> Result<(), FenceError> {
        let netlink = match &mut self.netlink {
            Some(n) => n,
            None => self.netlink.insert(Nftables::open()?),
        };
        let (ops, now) = plan(before.map(|(k, _)| k), guarded, held);
        netlink.commit(&ops)?;
        let whole = before.map_or_else(Instant::now, |(_, since)| *since);
        self.kernel = Some((now, whole));
        Ok(())
    }

    /// Takes the fence away (a clean stop that handed every VIP over).
    pub fn remove(&mut self) -> Result<(), FenceError> {
        let script = format!(
            "table arp {TABLE}\ndelete table arp {TABLE}\ntable inet {TABLE}\ndelete table inet {TABLE}\n"
        );
        self.kernel = None;
        nft::run(&self.nft, "delete the tables", &["-f", "-"], Some(&script))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn vips(n: u32) -> Vec<IpAddr> {
        (0..n)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect()
    }

    fn count(ops: &[SetOp<'_>]) -> (usize, usize, usize) {
        let (mut flush, mut delete, mut add) = (0, 0, 0);
        for op in ops {
            match op {
                SetOp::Flush(_) => flush += 1,
                SetOp::Delete(_, keys) => delete += keys.len(),
                SetOp::Add(_, elements) => add += elements.len(),
            }
        }
        (flush, delete, add)
    }

    #[test]
    fn a_renewal_rewrites_one_element_per_slot_and_family() {
        let all = vips(1000);
        let guarded: BTreeSet<IpAddr> = all.iter().copied().collect();
        let held = |left| all.iter().map(|v| (*v, left)).collect::<BTreeMap<_, _>>();
        let (ops, kernel) = plan(None, &guarded, &held(600 * MS));
        let (flush, delete, add) = count(&ops);
        // Every VIP and slot set flushed; each VIP guarded and held in both
        // families; slot 0's three elements (ARP, IPv4, IPv6).
        assert_eq!(
            (flush, delete, add),
            (vip_sets().len() + 2 * SLOTS + 2, 0, 4000 + 3)
        );
        assert!(kernel.slots.values().all(|s| *s == 0));
        let (ops, again) = plan(Some(&kernel), &guarded, &held(590 * MS));
        assert_eq!(count(&ops), (2, 0, 3), "{ops:?}");
        assert!(ops.contains(&SetOp::Add(
            set_ref(Family::Arp, "alive0"),
            vec![Element {
                key: vec![0, 2],
                timeout: Some(590 * MS),
                goto: None
            }]
        )));
        assert_eq!(again.alive, BTreeMap::from([(0, 590 * MS)]));
    }

    #[test]
    fn vips_whose_leases_end_apart_take_slots_of_their_own_and_come_back() {
        let all = vips(10);
        let guarded: BTreeSet<IpAddr> = all.iter().copied().collect();
        let mut held: BTreeMap<IpAddr, Duration> = all.iter().map(|v| (*v, 600 * MS)).collect();
        let (_, kernel) = plan(None, &guarded, &held);
        // One VIP is granted by fewer controllers for a moment.
        held.insert(all[3], 400 * MS);
        let (ops, apart) = plan(Some(&kernel), &guarded, &held);
        assert_eq!(apart.slots[&all[3]], 1);
        assert_eq!(apart.alive, BTreeMap::from([(0, 600 * MS), (1, 400 * MS)]));
        // Its map elements move (both families), both slots are renewed.
        assert_eq!(count(&ops), (4, 2, 2 + 6), "{ops:?}");
        held.insert(all[3], 600 * MS);
        let (ops, back) = plan(Some(&apart), &guarded, &held);
        assert_eq!(back.slots[&all[3]], 0);
        assert_eq!(back.alive.len(), 1);
        // Back to slot 0; slot 1 emptied.
        assert_eq!(count(&ops), (4, 2, 2 + 3), "{ops:?}");
    }

    #[test]
    fn more_lease_ends_than_slots_never_let_a_vip_through_past_its_own() {
        let all = vips(20);
        let held: BTreeMap<IpAddr, Duration> = all
            .iter()
            .enumerate()
            .map(|(i, v)| (*v, (100 + i as u32 * 7) * MS))
            .collect();
        let (slots, ends) = assign(&BTreeMap::new(), &held);
        assert_eq!(ends.len(), SLOTS);
        for (vip, left) in &held {
            assert!(ends[&slots[vip]] <= *left, "{vip} let through too long");
        }
    }

    #[test]
    fn guarded_and_held_change_by_what_changed() {
        let all = vips(4);
        let v6: IpAddr = "2001:db8::100".parse().unwrap();
        let guarded: BTreeSet<IpAddr> = all.iter().copied().chain([v6]).collect();
        let held = BTreeMap::from([(all[0], 600 * MS), (v6, 600 * MS)]);
        let (_, kernel) = plan(None, &guarded, &held);
        // all[1] is no longer configured; all[2] is now held too.
        let guarded: BTreeSet<IpAddr> = guarded.into_iter().filter(|v| *v != all[1]).collect();
        let mut held = held;
        held.insert(all[2], 600 * MS);
        let (ops, _) = plan(Some(&kernel), &guarded, &held);
        let deleted: Vec<String> = ops
            .iter()
            .filter_map(|op| match op {
                SetOp::Delete(set, keys) => Some(format!("{set} {keys:?}")),
                _ => None,
            })
            .collect();
        assert_eq!(
            deleted,
            [
                "arp lbfabric_fence guarded [[10, 0, 0, 1]]",
                "inet lbfabric_fence guarded4 [[10, 0, 0, 1]]"
            ]
        );
        let held_added: Vec<String> = ops
            .iter()
            .filter_map(|op| match op {
                SetOp::Add(set, e) if set.set.starts_with("held") => {
                    Some(format!("{set} {:?} {:?}", e[0].key, e[0].goto))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            held_added,
            [
                "arp lbfabric_fence held [10, 0, 0, 2] Some(\"slot0\")",
                "inet lbfabric_fence held4 [10, 0, 0, 2] Some(\"slot0\")"
            ]
        );
        assert!(guarded_script(&guarded).contains(
            "add element inet lbfabric_fence na_guarded { 0x20010db8000000000000000000000100 }"
        ));
    }
}
