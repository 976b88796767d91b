//! The host's established TCP connections to the services it backs, read
//! from `/proc/net/tcp` and `/proc/net/tcp6` (the agent's own network
//! namespace): what a graceful drain waits for.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_proto::model::{ForwardingMode, Service};

/// TCP state ESTABLISHED in `/proc/net/tcp`.
const ESTABLISHED: &str = "01";

/// The local endpoints clients' connections end on: the VIP for DR and TUN
/// (the host answers as the VIP), the RIP for NAT; the realserver's port.
pub fn service_endpoints(services: &[Service], rip: IpAddr) -> BTreeSet<SocketAddr> {
    let mut out = BTreeSet::new();
    for s in services {
        for rs in s.realservers.iter().filter(|r| r.address == rip) {
            let addr = match (s.mode, s.vip()) {
                (ForwardingMode::Nat, _) | (_, None) => rip,
                (_, Some(vip)) => vip,
            };
            out.insert(SocketAddr::new(addr, rs.port));
        }
    }
    out
}

/// How many established connections end on one of `locals` (port 0: any port).
pub fn established(locals: &BTreeSet<SocketAddr>) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|table| count(&table, locals))
        .sum()
}

/// Counts the matching rows of one `/proc/net/tcp*` table.
pub fn count(table: &str, locals: &BTreeSet<SocketAddr>) -> usize {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let local = parse_endpoint(f.nth(1)?)?;
            let state = f.nth(1)?;
            Some((local, state == ESTABLISHED))
        })
        .filter(|(local, est)| {
            *est && locals
                .iter()
                .any(|l| l.ip() == local.ip() && (l.port() == 0 || l.port() == local.port()))
        })
        .count()
}

/// `0100007F:0050` (IPv4) or 32 hex digits `:PORT` (IPv6); each 32-bit word
/// is in the host's byte order.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_rows_are_matched_by_local_endpoint_and_state() {
        // Two established connections to 10.0.0.100:80, one listening
        // socket on it, one established to another port.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 6400000A:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 6400000A:0050 0200000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 6400000A:0050 0200000A:C351 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 6400000A:01BB 0200000A:C352 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
";
        let vip80: BTreeSet<SocketAddr> = ["10.0.0.100:80".parse().unwrap()].into();
        // The rows above are written as a little-endian host prints them.
        if cfg!(target_endian = "little") {
            assert_eq!(count(table, &vip80), 2);
            let any: BTreeSet<SocketAddr> = ["10.0.0.100:0".parse().unwrap()].into();
            assert_eq!(count(table, &any), 3);
        }
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_endpoint("00000000000000000000000001000000:0016"),
                Some("[::1]:22".parse().unwrap())
            );
        }
    }
}
