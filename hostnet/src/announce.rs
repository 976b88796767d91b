//! Telling the segment that an address now lives here: gratuitous ARP for
//! IPv4, unsolicited neighbour advertisement for IPv6.
//!
//! Neighbours cache the old owner's MAC for a VIP; until they hear otherwise
//! they keep sending to a director that no longer holds it. A gratuitous ARP
//! (an ARP request whose sender and target are both the VIP, broadcast) and
//! an unsolicited NA with the Override flag (to all-nodes) make them replace
//! the entry at once — Linux accepts both as overrides of an existing entry.
//!
//! The frames are built by pure functions ([`gratuitous_arp`],
//! [`unsolicited_na`]) so that unit tests can check them byte for byte
//! against RFC 826 / RFC 4861; [`announce`] only sends them.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6};

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

use crate::NetError;

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const ND_NEIGHBOR_ADVERT: u8 = 136;
/// NA flags word: Router 0x80, Solicited 0x40, Override 0x20 (first byte).
const NA_FLAG_OVERRIDE: u8 = 0x20;
const ND_OPT_TARGET_LL_ADDR: u8 = 2;
/// ff02::1, all nodes on the link.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The ARP payload (28 bytes) of a gratuitous ARP request for `ip` from `mac`.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut f = [0u8; 28];
    f[0..2].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[2..4].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[4] = 6; // hardware address length
    f[5] = 4; // protocol address length
    f[6..8].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    f[8..14].copy_from_slice(&mac);
    f[14..18].copy_from_slice(&ip.octets());
    // Target hardware address stays zero: nobody in particular is asked.
    f[24..28].copy_from_slice(&ip.octets());
    f
}

/// The ICMPv6 message (32 bytes) of an unsolicited NA for `target` with
/// `mac` as its link-layer address. The checksum is left zero: the kernel
/// fills it in for raw ICMPv6 sockets.
pub fn unsolicited_na(mac: [u8; 6], target: Ipv6Addr) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = ND_NEIGHBOR_ADVERT;
    m[4] = NA_FLAG_OVERRIDE;
    m[8..24].copy_from_slice(&target.octets());
    m[24] = ND_OPT_TARGET_LL_ADDR;
    m[25] = 1; // option length in units of 8 bytes
    m[26..32].copy_from_slice(&mac);
    m
}

/// Sends one announcement of `ip` on interface `ifindex` whose MAC is `mac`.
pub fn announce(ifindex: u32, mac: [u8; 6], ip: IpAddr) -> Result<(), NetError> {
    let object = format!("{ip} on interface {ifindex}");
    let fail = |op: &'static str| {
        let object = object.clone();
        move |e: io::Error| NetError::Kernel {
            op,
            object,
            errno: e.raw_os_error().unwrap_or(0),
        }
    };
    match ip {
        IpAddr::V4(v4) => {
            let proto = Protocol::from(i32::from(ETH_P_ARP.to_be()));
            let sock = Socket::new(Domain::PACKET, Type::DGRAM, Some(proto))
                .map_err(fail("open packet socket for gratuitous ARP"))?;
            let to = link_broadcast(ifindex, ETH_P_ARP);
            sock.send_to(&gratuitous_arp(mac, v4), &to)
                .map_err(fail("send gratuitous ARP"))?;
        }
        IpAddr::V6(v6) => {
            let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
                .map_err(fail("open ICMPv6 socket for unsolicited NA"))?;
            // RFC 4861 7.1.2: receivers drop NAs whose hop limit is not 255.
            sock.set_multicast_hops_v6(255)
                .map_err(fail("set hop limit for unsolicited NA"))?;
            sock.set_multicast_if_v6(ifindex)
                .map_err(fail("set interface for unsolicited NA"))?;
            let to = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, ifindex));
            sock.send_to(&unsolicited_na(mac, v6), &to)
                .map_err(fail("send unsolicited NA"))?;
        }
    }
    Ok(())
}

/// `struct sockaddr_ll` for the Ethernet broadcast address on `ifindex`.
///
/// socket2 has no safe constructor for link-layer addresses, so this is the
/// crate's one `unsafe` block: it writes a fully initialised `sockaddr_ll`
/// into zeroed storage large enough for any address and reports its length.
#[allow(unsafe_code)]
fn link_broadcast(ifindex: u32, protocol: u16) -> SockAddr {
    let mut ll = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: protocol.to_be(),
        sll_ifindex: i32::try_from(ifindex).unwrap_or(0),
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: [0; 8],
    };
    ll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let mut storage = SockAddrStorage::zeroed();
    let len = std::mem::size_of::<libc::sockaddr_ll>();
    // SAFETY: sockaddr_storage is at least as large and as aligned as
    // sockaddr_ll (both are kernel ABI types); the whole sockaddr_ll is
    // written, and the length passed matches what was written, with the
    // family set to AF_PACKET as SockAddr::new requires.
    unsafe {
        std::ptr::write(
            (&mut storage as *mut SockAddrStorage).cast::<libc::sockaddr_ll>(),
            ll,
        );
        SockAddr::new(storage, len as libc::socklen_t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn gratuitous_arp_is_a_request_for_the_senders_own_address() {
        let f = gratuitous_arp(MAC, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(
            f.to_vec(),
            [
                &[0x00, 0x01][..], // htype Ethernet
                &[0x08, 0x00],     // ptype IPv4
                &[6, 4],           // hlen, plen
                &[0x00, 0x01],     // op request
                &MAC,              // sender MAC
                &[10, 0, 0, 100],  // sender IP
                &[0; 6],           // target MAC unknown
                &[10, 0, 0, 100],  // target IP = sender IP
            ]
            .concat()
        );
    }

    #[test]
    fn unsolicited_na_overrides_and_carries_the_mac() {
        let target: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let m = unsolicited_na(MAC, target);
        assert_eq!(m[0], 136, "type NA");
        assert_eq!(m[1], 0, "code");
        assert_eq!(&m[2..4], &[0, 0], "checksum left to the kernel");
        assert_eq!(
            &m[4..8],
            &[0x20, 0, 0, 0],
            "Override only: not router, not solicited"
        );
        assert_eq!(&m[8..24], &target.octets());
        assert_eq!(
            &m[24..26],
            &[2, 1],
            "target link-layer address option, 8 bytes"
        );
        assert_eq!(&m[26..32], &MAC);
    }

    #[test]
    fn link_broadcast_is_a_packet_address() {
        let a = link_broadcast(7, ETH_P_ARP);
        assert_eq!(i32::from(a.family()), libc::AF_PACKET);
        assert_eq!(a.len() as usize, std::mem::size_of::<libc::sockaddr_ll>());
    }
}
