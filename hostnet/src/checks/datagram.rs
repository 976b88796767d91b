//! The checks without a connection: a UDP exchange (keepalived's
//! UDP_CHECK), a DNS query (DNS_CHECK, the message built and read by
//! simple-dns) and an ICMP echo (PING_CHECK, through surge-ping, which
//! uses an unprivileged ping socket where the host allows one and a raw
//! socket otherwise).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use lb_proto::model::{DnsProbe, DnsType, UdpProbe};
use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, RCODE, TYPE};
use tokio::net::UdpSocket;

/// The largest datagram read back.
const MAX_REPLY: usize = 65_535;

/// Query and echo identifiers: distinct between checks in flight, which
/// is all they need (each check's socket only hears its own peer).
static NEXT_ID: AtomicU16 = AtomicU16::new(1);

fn next_id() -> u16 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A UDP socket connected to `addr`: the kernel hands it only `addr`'s
/// datagrams, and an ICMP error from there as `ECONNREFUSED`.
async fn connected(addr: SocketAddr) -> Result<UdpSocket, String> {
    if addr.port() == 0 {
        return Err("no port to check (set the check's port)".into());
    }
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(any)
        .await
        .map_err(|e| format!("UDP socket: {e}"))?;
    sock.connect(addr)
        .await
        .map_err(|e| format!("UDP to {addr}: {e}"))?;
    Ok(sock)
}

/// Sends the payload; judges the reply (or the silence) within `timeout`.
pub(super) async fn udp(addr: SocketAddr, u: &UdpProbe, timeout: Duration) -> Result<(), String> {
    let sock = connected(addr).await?;
    sock.send(&u.payload)
        .await
        .map_err(|e| format!("UDP to {addr}: {e}"))?;
    let mut buf = vec![0u8; MAX_REPLY];
    let reply = match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
        // Silence: keepalived's UDP_CHECK passes it unless a reply is required.
        Err(_) if u.expect.is_none() => return Ok(()),
        Err(_) => return Err(format!("no reply within {} ms", timeout.as_millis())),
        Ok(Err(e)) => return Err(format!("UDP from {addr}: {e}")),
        Ok(Ok(n)) => &buf[..n],
    };
    match &u.expect {
        Some(want) if !reply.starts_with(want) => Err(format!(
            "reply of {} bytes does not start with the {} expected",
            reply.len(),
            want.len()
        )),
        _ => Ok(()),
    }
}

/// One query; the matching reply must answer it.
pub(super) async fn dns(addr: SocketAddr, d: &DnsProbe) -> Result<(), String> {
    let id = next_id();
    let qtype = TYPE::from(d.query_type.code());
    // simple-dns writes the root as an empty name.
    let name = d.name.strip_suffix('.').unwrap_or(&d.name);
    let qname = Name::new(name).map_err(|e| format!("name {:?}: {e}", d.name))?;
    let mut query = Packet::new_query(id);
    query.set_flags(PacketFlag::RECURSION_DESIRED);
    query
        .questions
        .push(Question::new(qname, qtype.into(), CLASS::IN.into(), false));
    let bytes = query
        .build_bytes_vec()
        .map_err(|e| format!("building the query: {e}"))?;
    let sock = connected(addr).await?;
    sock.send(&bytes)
        .await
        .map_err(|e| format!("DNS to {addr}: {e}"))?;
    let mut buf = vec![0u8; MAX_REPLY];
    loop {
        let n = sock
            .recv(&mut buf)
            .await
            .map_err(|e| format!("DNS from {addr}: {e}"))?;
        // A late answer to an earlier query, or garbage: wait on.
        let Ok(reply) = Packet::parse(&buf[..n]) else {
            continue;
        };
        if reply.id() != id || !reply.has_flags(PacketFlag::RESPONSE) {
            continue;
        }
        return dns_verdict(d, &reply);
    }
}

/// Whether a reply to the query passes: NOERROR, a record of the type
/// asked, and the expected value among them when there is one.
fn dns_verdict(d: &DnsProbe, reply: &Packet<'_>) -> Result<(), String> {
    if reply.rcode() != RCODE::NoError {
        return Err(format!(
            "{} {}: {:?}",
            d.query_type.as_str(),
            d.name,
            reply.rcode()
        ));
    }
    let qtype = TYPE::from(d.query_type.code());
    let values: Vec<String> = reply
        .answers
        .iter()
        .filter(|rr| rr.rdata.type_code() == qtype)
        .map(|rr| value(&rr.rdata))
        .collect();
    if values.is_empty() {
        return Err(format!(
            "no {} record for {} in the answer",
            d.query_type.as_str(),
            d.name
        ));
    }
    let Some(want) = &d.expect else {
        return Ok(());
    };
    let same = |v: &String| match d.query_type {
        DnsType::A | DnsType::Aaaa => v.parse::<IpAddr>().ok() == want.parse::<IpAddr>().ok(),
        DnsType::Txt => v == want,
        _ => v
            .trim_end_matches('.')
            .eq_ignore_ascii_case(want.trim_end_matches('.')),
    };
    if values.iter().any(same) {
        Ok(())
    } else {
        Err(format!(
            "{} {}: {values:?}, expected {want:?}",
            d.query_type.as_str(),
            d.name
        ))
    }
}

/// A record's value as an operator writes it: the address, the name, the
/// text.
fn value(rdata: &RData<'_>) -> String {
    match rdata {
        RData::A(a) => Ipv4Addr::from(a.address).to_string(),
        RData::AAAA(a) => Ipv6Addr::from(a.address).to_string(),
        RData::CNAME(n) => n.0.to_string(),
        RData::NS(n) => n.0.to_string(),
        RData::PTR(n) => n.0.to_string(),
        RData::MX(mx) => mx.exchange.to_string(),
        RData::TXT(txt) => String::try_from(txt.clone()).unwrap_or_default(),
        other => format!("{other:?}"),
    }
}

/// One echo request; the reply must come within `timeout`.
pub(super) async fn ping(ip: IpAddr, timeout: Duration) -> Result<(), String> {
    use surge_ping::{Client, Config, PingIdentifier, PingSequence, ICMP};
    let config = match ip {
        IpAddr::V4(_) => Config::default(),
        IpAddr::V6(_) => Config::builder().kind(ICMP::V6).build(),
    };
    let client = Client::new(&config).map_err(|e| format!("ICMP socket: {e}"))?;
    let mut pinger = client.pinger(ip, PingIdentifier(next_id())).await;
    pinger.timeout(timeout);
    pinger
        .ping(PingSequence(0), b"lbfabric-check")
        .await
        .map(drop)
        .map_err(|e| format!("ping {ip}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(records: &[(&str, RData<'static>)], rcode: RCODE) -> Vec<u8> {
        let mut p = Packet::new_reply(7);
        *p.rcode_mut() = rcode;
        for (name, rdata) in records {
            p.answers.push(simple_dns::ResourceRecord::new(
                Name::new_unchecked(name),
                CLASS::IN,
                60,
                rdata.clone(),
            ));
        }
        p.build_bytes_vec().unwrap()
    }

    fn probe(t: DnsType, expect: Option<&str>) -> DnsProbe {
        DnsProbe {
            query_type: t,
            name: "svc.test".into(),
            expect: expect.map(String::from),
        }
    }

    #[test]
    fn dns_answers_are_judged_by_type_rcode_and_value() {
        let a = RData::A(simple_dns::rdata::A {
            address: u32::from(Ipv4Addr::new(192, 0, 2, 7)),
        });
        let cname = RData::CNAME(simple_dns::rdata::CNAME(Name::new_unchecked("web.test")));
        let bytes = reply(&[("svc.test", cname), ("web.test", a)], RCODE::NoError);
        let p = Packet::parse(&bytes).unwrap();
        assert_eq!(dns_verdict(&probe(DnsType::A, None), &p), Ok(()));
        assert_eq!(
            dns_verdict(&probe(DnsType::A, Some("192.0.2.7")), &p),
            Ok(())
        );
        assert_eq!(
            dns_verdict(&probe(DnsType::Cname, Some("WEB.test.")), &p),
            Ok(())
        );
        let e = dns_verdict(&probe(DnsType::A, Some("192.0.2.8")), &p).unwrap_err();
        assert!(e.contains("192.0.2.7") && e.contains("192.0.2.8"), "{e}");
        let e = dns_verdict(&probe(DnsType::Aaaa, None), &p).unwrap_err();
        assert!(e.contains("no AAAA record"), "{e}");
        let bytes = reply(&[], RCODE::NameError);
        let e = dns_verdict(&probe(DnsType::A, None), &Packet::parse(&bytes).unwrap()).unwrap_err();
        assert!(e.contains("NameError"), "{e}");
    }
}
