//! Request and reply bytes against the layouts of `include/uapi/linux/ip_vs.h`
//! and `struct nlattr` (u16 length incl. the 4-byte header, u16 type,
//! payload padded to 4 bytes).

use std::io::Cursor;
use std::net::IpAddr;

use neli::{FromBytesWithInput, ToBytes};

use super::wire::*;
use super::*;

fn bytes<M: ToBytes>(msg: &M) -> Vec<u8> {
    let mut c = Cursor::new(Vec::new());
    msg.to_bytes(&mut c).expect("serialize");
    c.into_inner()
}

/// One attribute as the kernel lays it out.
fn nla(t: u16, payload: &[u8]) -> Vec<u8> {
    let len = (4 + payload.len()) as u16;
    let mut out = Vec::new();
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&t.to_ne_bytes());
    out.extend_from_slice(payload);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

/// A nest as requests carry it: the type has NLA_F_NESTED (1 << 15, uapi
/// linux/netlink.h) set, which the kernel masks off when it parses.
fn nest_nla(t: u16, payload: &[u8]) -> Vec<u8> {
    nla(t | 0x8000, payload)
}

fn genl(cmd: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![cmd, 1, 0, 0];
    for a in attrs {
        out.extend_from_slice(a);
    }
    out
}

fn addr16(ip: &str) -> Vec<u8> {
    inet_addr(ip.parse().unwrap())
}

fn tcp_web() -> ServiceSpec {
    ServiceSpec {
        key: ServiceKey::Endpoint {
            addr: "10.0.0.1".parse().unwrap(),
            port: 80,
            protocol: IPPROTO_TCP,
        },
        scheduler: "wlc".into(),
        flags: SVC_F_PERSISTENT,
        timeout: 30,
        netmask: 0xffff_ff00,
    }
}

fn web_service_attrs() -> Vec<u8> {
    [
        nla(1, &AF_INET.to_ne_bytes()),
        nla(2, &IPPROTO_TCP.to_ne_bytes()),
        nla(3, &addr16("10.0.0.1")),
        nla(4, &[0, 80]),
        nla(6, b"wlc\0"),
        nla(7, &[1u32.to_ne_bytes(), u32::MAX.to_ne_bytes()].concat()),
        nla(8, &30u32.to_ne_bytes()),
        nla(9, &[255, 255, 255, 0]),
    ]
    .concat()
}

#[test]
fn new_service_matches_the_uapi_layout() {
    let got = bytes(&request::new_service(&tcp_web()).unwrap());
    let want = genl(Cmd::NewService.into(), &[nest_nla(1, &web_service_attrs())]);
    assert_eq!(got, want);
    // The flags attribute is struct ip_vs_flags: 8 bytes, flags then mask.
    assert_eq!(&want[4 + 4 + 8 + 8 + 20 + 8 + 8..][..4], &[12, 0, 7, 0]);
    assert_eq!(
        &want[4..8],
        &[84, 0, 1, 0x80],
        "IPVS_CMD_ATTR_SERVICE, nested, 80 bytes inside"
    );
}

#[test]
fn set_and_del_service() {
    let got = bytes(&request::set_service(&tcp_web()).unwrap());
    assert_eq!(
        got,
        genl(Cmd::SetService.into(), &[nest_nla(1, &web_service_attrs())])
    );
    let got = bytes(&request::del_service(&tcp_web().key).unwrap());
    let key = [
        nla(1, &AF_INET.to_ne_bytes()),
        nla(2, &IPPROTO_TCP.to_ne_bytes()),
        nla(3, &addr16("10.0.0.1")),
        nla(4, &[0, 80]),
    ]
    .concat();
    assert_eq!(got, genl(Cmd::DelService.into(), &[nest_nla(1, &key)]));
}

#[test]
fn ipv6_service_netmask_is_a_host_order_prefix_length() {
    let spec = ServiceSpec {
        key: ServiceKey::Endpoint {
            addr: "2001:db8::1".parse().unwrap(),
            port: 443,
            protocol: IPPROTO_UDP,
        },
        scheduler: "sh".into(),
        flags: SVC_F_PERSISTENT | SVC_F_SCHED1 | SVC_F_SCHED2,
        timeout: 300,
        netmask: 64,
    };
    let got = bytes(&request::new_service(&spec).unwrap());
    let inner = [
        nla(1, &AF_INET6.to_ne_bytes()),
        nla(2, &IPPROTO_UDP.to_ne_bytes()),
        nla(3, &addr16("2001:db8::1")),
        nla(4, &443u16.to_be_bytes()),
        nla(6, b"sh\0"),
        nla(
            7,
            &[(1u32 | 8 | 16).to_ne_bytes(), u32::MAX.to_ne_bytes()].concat(),
        ),
        nla(8, &300u32.to_ne_bytes()),
        nla(9, &64u32.to_ne_bytes()),
    ]
    .concat();
    assert_eq!(got, genl(Cmd::NewService.into(), &[nest_nla(1, &inner)]));
}

fn fwmark_key() -> ServiceKey {
    ServiceKey::Fwmark {
        mark: 7,
        af: AF_INET,
    }
}

fn fwmark_key_attrs() -> Vec<u8> {
    [nla(1, &AF_INET.to_ne_bytes()), nla(5, &7u32.to_ne_bytes())].concat()
}

#[test]
fn destination_commands_carry_the_service_then_the_destination() {
    let dest = DestSpec {
        addr: "10.0.2.11".parse().unwrap(),
        port: 8080,
        forward: Forward::Masquerade,
        weight: 2,
        upper_threshold: 100,
        lower_threshold: 10,
    };
    let full = [
        nla(1, &addr16("10.0.2.11")),
        nla(2, &8080u16.to_be_bytes()),
        nla(3, &CONN_F_MASQ.to_ne_bytes()),
        nla(4, &2u32.to_ne_bytes()),
        nla(5, &100u32.to_ne_bytes()),
        nla(6, &10u32.to_ne_bytes()),
        nla(11, &AF_INET.to_ne_bytes()),
    ]
    .concat();
    for (msg, cmd) in [
        (
            request::new_dest(&fwmark_key(), &dest).unwrap(),
            Cmd::NewDest,
        ),
        (
            request::set_dest(&fwmark_key(), &dest).unwrap(),
            Cmd::SetDest,
        ),
    ] {
        assert_eq!(
            bytes(&msg),
            genl(
                cmd.into(),
                &[nest_nla(1, &fwmark_key_attrs()), nest_nla(2, &full)]
            )
        );
    }
    let key_only = [nla(1, &addr16("10.0.2.11")), nla(2, &8080u16.to_be_bytes())].concat();
    let got = bytes(&request::del_dest(&fwmark_key(), &dest).unwrap());
    assert_eq!(
        got,
        genl(
            Cmd::DelDest.into(),
            &[nest_nla(1, &fwmark_key_attrs()), nest_nla(2, &key_only)]
        )
    );
}

#[test]
fn tunnel_destinations_name_the_tunnel_type() {
    let dest = DestSpec {
        addr: "10.0.3.11".parse().unwrap(),
        port: 80,
        forward: Forward::Tunnel,
        weight: 1,
        upper_threshold: 0,
        lower_threshold: 0,
    };
    let got = bytes(&request::new_dest(&fwmark_key(), &dest).unwrap());
    let tail = [
        nla(11, &AF_INET.to_ne_bytes()),
        nla(13, &[TUNNEL_TYPE_IPIP]),
    ]
    .concat();
    assert!(got.ends_with(&tail), "{got:?}");
    assert!(got
        .windows(8)
        .any(|w| w == nla(3, &CONN_F_TUNNEL.to_ne_bytes()).as_slice()));
}

#[test]
fn dumps_and_info_requests() {
    assert_eq!(
        bytes(&request::get_services().unwrap()),
        genl(Cmd::GetService.into(), &[])
    );
    assert_eq!(
        bytes(&request::get_info().unwrap()),
        genl(Cmd::GetInfo.into(), &[])
    );
    assert_eq!(
        bytes(&request::get_dests(&fwmark_key()).unwrap()),
        genl(Cmd::GetDest.into(), &[nest_nla(1, &fwmark_key_attrs())])
    );
}

fn decode(raw: &[u8]) -> Message {
    Message::from_bytes_with_input(&mut Cursor::new(raw), raw.len()).expect("decode")
}

#[test]
fn service_reply_decodes_with_stats_and_without_the_hashed_flag() {
    let stats = [
        nla(StatsAttr::Conns.into(), &5u64.to_ne_bytes()),
        nla(StatsAttr::Inpkts.into(), &40u64.to_ne_bytes()),
        nla(StatsAttr::Outpkts.into(), &0u64.to_ne_bytes()),
        nla(StatsAttr::Inbytes.into(), &4000u64.to_ne_bytes()),
    ]
    .concat();
    let inner = [
        nla(1, &AF_INET.to_ne_bytes()),
        nla(2, &IPPROTO_TCP.to_ne_bytes()),
        nla(3, &addr16("10.0.0.1")),
        nla(4, &[0, 80]),
        nla(6, b"wlc\0"),
        nla(
            7,
            &[
                (SVC_F_PERSISTENT | SVC_F_HASHED).to_ne_bytes(),
                u32::MAX.to_ne_bytes(),
            ]
            .concat(),
        ),
        nla(8, &30u32.to_ne_bytes()),
        nla(9, &[255, 255, 255, 0]),
        nla(12, &stats),
    ]
    .concat();
    let reply = decode(&genl(Cmd::NewService.into(), &[nla(1, &inner)]));
    let svc = parse_service(&reply).expect("service");
    assert_eq!(svc.spec, tcp_web());
    assert_eq!(
        (svc.stats.conns, svc.stats.in_pkts, svc.stats.in_bytes),
        (5, 40, 4000)
    );
}

#[test]
fn fwmark_and_destination_replies_decode() {
    let inner = [
        nla(1, &AF_INET.to_ne_bytes()),
        nla(5, &7u32.to_ne_bytes()),
        nla(6, b"rr\0"),
        nla(7, &[0u32.to_ne_bytes(), u32::MAX.to_ne_bytes()].concat()),
        nla(8, &0u32.to_ne_bytes()),
        nla(9, &[255, 255, 255, 255]),
    ]
    .concat();
    let svc = parse_service(&decode(&genl(4, &[nla(1, &inner)]))).expect("service");
    assert_eq!(svc.spec.key, fwmark_key());
    assert_eq!(
        (svc.spec.scheduler.as_str(), svc.spec.netmask),
        ("rr", u32::MAX)
    );

    let dest = [
        nla(1, &addr16("10.0.3.12")),
        nla(2, &80u16.to_be_bytes()),
        nla(3, &(CONN_F_DROUTE | 0x0100).to_ne_bytes()),
        nla(4, &3u32.to_ne_bytes()),
        nla(5, &0u32.to_ne_bytes()),
        nla(6, &0u32.to_ne_bytes()),
        nla(7, &12u32.to_ne_bytes()),
        nla(8, &4u32.to_ne_bytes()),
        nla(9, &0u32.to_ne_bytes()),
        nla(11, &AF_INET.to_ne_bytes()),
    ]
    .concat();
    let d = parse_dest(&decode(&genl(8, &[nla(2, &dest)])), AF_INET).expect("dest");
    assert_eq!(d.spec.addr, "10.0.3.12".parse::<IpAddr>().unwrap());
    assert_eq!(
        (d.spec.port, d.spec.forward, d.spec.weight),
        (80, Forward::Route, 3)
    );
    assert_eq!((d.active_conns, d.inactive_conns), (12, 4));
}

#[test]
fn truncated_replies_are_rejected_not_panicking() {
    let inner = [nla(1, &AF_INET.to_ne_bytes()), nla(3, &[10, 0])].concat();
    assert!(parse_service(&decode(&genl(4, &[nla(1, &inner)]))).is_none());
    assert!(parse_dest(&decode(&genl(8, &[nla(2, &nla(2, &[0]))])), AF_INET).is_none());
}

#[test]
fn version_code_is_major_minor_patch() {
    // ip_vs.h: IP_VS_VERSION_CODE 0x010201 is 1.2.1.
    assert_eq!(Info::from_code(0x010201, 4096).version, (1, 2, 1));
}

#[test]
fn sync_daemon_commands_match_the_uapi_layout() {
    let master = SyncDaemon {
        role: SyncRole::Master,
        interface: "eth1".into(),
        sync_id: 7,
    };
    // IPVS_DAEMON_ATTR_STATE u32, _MCAST_IFN string, _SYNC_ID u32, nested
    // in IPVS_CMD_ATTR_DAEMON (3).
    let inner = [
        nla(1, &1u32.to_ne_bytes()),
        nla(2, b"eth1\0"),
        nla(3, &7u32.to_ne_bytes()),
    ]
    .concat();
    assert_eq!(
        bytes(&request::new_daemon(&master).unwrap()),
        genl(9, &[nest_nla(3, &inner)])
    );
    assert_eq!(
        bytes(&request::del_daemon(SyncRole::Backup).unwrap()),
        genl(10, &[nest_nla(3, &nla(1, &2u32.to_ne_bytes()))]),
        "a daemon is stopped by its state alone"
    );
    assert_eq!(bytes(&request::get_daemons().unwrap()), genl(11, &[]));
}

#[test]
fn sync_daemon_reply_decodes() {
    // What ip_vs_genl_dump_daemon sends: state, interface, sync id, then the
    // multicast settings (max length, port, TTL, group) this client ignores.
    let inner = [
        nla(1, &2u32.to_ne_bytes()),
        nla(2, b"eth0\0"),
        nla(3, &0u32.to_ne_bytes()),
        nla(4, &1472u16.to_ne_bytes()),
        nla(7, &8848u16.to_ne_bytes()),
        nla(8, &[1]),
        nla(5, &[224, 0, 0, 81]),
    ]
    .concat();
    assert_eq!(
        parse_daemon(&decode(&genl(11, &[nla(3, &inner)]))),
        Some(SyncDaemon {
            role: SyncRole::Backup,
            interface: "eth0".into(),
            sync_id: 0,
        })
    );
    let no_state = [nla(2, b"eth0\0"), nla(3, &0u32.to_ne_bytes())].concat();
    assert_eq!(parse_daemon(&decode(&genl(11, &[nla(3, &no_state)]))), None);
}
