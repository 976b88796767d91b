//! Fuzz targets for the decoders that read bytes from outside: the API's
//! validation of protobuf messages (anything a client sends), what a joining
//! agent sends before it has a certificate (its token and its certificate
//! request), and the director's reading of IPVS netlink replies. No input may panic; each
//! target runs a few seconds in CI and 600 s for the closing notes:
//!
//!   LB_FUZZ_SECS=600 cargo test -p lb-testkit --test fuzz -- --nocapture --test-threads 1
//!
//! The importers' fuzzer is `ctl/tests/fuzz.rs`.

use std::io::Cursor;

use lb_director::ipvs::wire::{Cmd, CmdAttr};
use lb_proto::model::{RealServerPatch, Service};
use lb_proto::pb;
use lb_testkit::fuzz::{run, Rng};
use neli::genl::Genlmsghdr;
use neli::FromBytesWithInput;
use prost::Message as _;

/// Words that reach every branch of the validation: valid and invalid
/// addresses, vocabularies, netmasks, labels, paths.
const WORDS: &[&str] = &[
    "",
    "web",
    "a",
    "-x",
    "x.y_z",
    "10.0.0.1",
    "10.0.0.300",
    "0.0.0.0",
    "255.255.255.255",
    "224.0.0.1",
    "::",
    "::1",
    "2001:db8::1",
    "fe80::1%eth0",
    "[2001:db8::1]",
    "tcp",
    "udp",
    "sctp",
    "icmp",
    "rr",
    "wlc",
    "mh",
    "sh",
    "twos",
    "bogus",
    "nat",
    "dr",
    "tun",
    "ipip",
    "gre",
    "inet",
    "inet6",
    "255.255.255.0",
    "255.0.255.0",
    "/24",
    "24",
    "0",
    "129",
    "-1",
    "sh-port",
    "sh-fallback",
    "mh-port",
    "flag-1",
    "http",
    "https",
    "exec",
    "dns",
    "ping",
    "A",
    "SOA",
    "0a0B",
    "0g",
    "a..b",
    "none",
    "/healthz",
    "relative/path",
    "/bin/true",
    "(",
    "[a-",
    ".*",
    "0123456789abcdef0123456789abcdef",
    "xyz",
    "active",
    "draining",
    "disabled",
    "é",
    "\u{0}",
    "a=b",
    "k",
    "v",
];

const NUMBERS: &[u32] = &[
    0,
    1,
    2,
    53,
    80,
    100,
    443,
    65_535,
    65_536,
    2_678_400,
    2_678_401,
    4_294_967_295,
];

fn word(rng: &mut Rng) -> String {
    if rng.chance(40) {
        return "x".repeat(rng.below(300));
    }
    rng.pick(WORDS).to_string()
}

fn number(rng: &mut Rng) -> u32 {
    if rng.chance(4) {
        rng.next_u64() as u32
    } else {
        *rng.pick(NUMBERS)
    }
}

fn duration(rng: &mut Rng) -> Option<prost_types::Duration> {
    rng.chance(2).then(|| prost_types::Duration {
        seconds: *rng.pick(&[-1i64, 0, 1, 2, 3600, 3601, i64::MAX]),
        nanos: *rng.pick(&[0i32, 1, 500_000_000, 999_999_999, -1, i32::MAX]),
    })
}

fn realserver(rng: &mut Rng) -> pb::RealServer {
    pb::RealServer {
        address: word(rng),
        port: number(rng),
        weight: rng.chance(2).then(|| number(rng)),
        upper_threshold: number(rng),
        lower_threshold: number(rng),
        admin_state: word(rng),
    }
}

/// A service that passes validation, to mutate a field or two of: errors
/// then come from deep in the rules, not from the first field.
fn valid_service() -> pb::Service {
    pb::Service {
        name: "web".into(),
        virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
            address: "10.0.0.1".into(),
            port: 80,
            protocol: "tcp".into(),
        })),
        scheduler: "wlc".into(),
        mode: "nat".into(),
        realservers: vec![pb::RealServer {
            address: "10.0.0.2".into(),
            port: 8080,
            weight: Some(1),
            ..Default::default()
        }],
        health_check: Some(pb::HealthCheck {
            r#type: "http".into(),
            http_path: "/".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Either a wholly random service or a valid one with some fields replaced.
fn service(rng: &mut Rng) -> pb::Service {
    let random = random_service(rng);
    if rng.chance(2) {
        return random;
    }
    let mut s = valid_service();
    for _ in 0..=rng.below(2) {
        match rng.below(12) {
            0 => s.name = random.name.clone(),
            1 => s.virtual_address = random.virtual_address.clone(),
            2 => s.scheduler = random.scheduler.clone(),
            3 => s.scheduler_flags = random.scheduler_flags.clone(),
            4 => s.mode = random.mode.clone(),
            5 => s.persistence = random.persistence.clone(),
            6 => s.realservers = random.realservers.clone(),
            7 => s.health_check = random.health_check.clone(),
            8 => s.sorry_server = random.sorry_server.clone(),
            9 => (s.quorum, s.hysteresis) = (random.quorum, random.hysteresis),
            10 => s.directors = random.directors.clone(),
            _ => s.one_packet = random.one_packet,
        }
    }
    s
}

fn random_service(rng: &mut Rng) -> pb::Service {
    let virtual_address = match rng.below(3) {
        0 => Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
            address: word(rng),
            port: number(rng),
            protocol: word(rng),
        })),
        1 => Some(pb::service::VirtualAddress::Fwmark(pb::Fwmark {
            mark: number(rng),
            family: word(rng),
            address: word(rng),
            protocol: word(rng),
            ports: (0..rng.below(70)).map(|_| number(rng)).collect(),
        })),
        _ => None,
    };
    let labels = |rng: &mut Rng| (0..rng.below(3)).map(|_| (word(rng), word(rng))).collect();
    pb::Service {
        name: word(rng),
        virtual_address,
        scheduler: word(rng),
        scheduler_flags: (0..rng.below(3)).map(|_| word(rng)).collect(),
        mode: word(rng),
        tunnel_type: word(rng),
        persistence: rng.chance(2).then(|| pb::Persistence {
            timeout_seconds: number(rng),
            netmask: word(rng),
        }),
        one_packet: rng.chance(2),
        realservers: (0..rng.below(4)).map(|_| realserver(rng)).collect(),
        realserver_selector: labels(rng),
        default_weight: rng.chance(2).then(|| number(rng)),
        health_check: rng.chance(2).then(|| pb::HealthCheck {
            r#type: word(rng),
            interval: duration(rng),
            timeout: duration(rng),
            rise: rng.chance(2).then(|| number(rng)),
            fall: rng.chance(2).then(|| number(rng)),
            port: number(rng),
            http_path: word(rng),
            http_status: (0..rng.below(3)).map(|_| number(rng)).collect(),
            http_body_regex: word(rng),
            http_digest: word(rng),
            http_host: word(rng),
            exec_command: word(rng),
            exec_args: (0..rng.below(3)).map(|_| word(rng)).collect(),
            inhibit_on_failure: rng.chance(2),
            udp_payload: word(rng),
            udp_expect: word(rng),
            dns_type: word(rng),
            dns_name: word(rng),
            dns_expect: word(rng),
        }),
        sorry_server: rng.chance(3).then(|| pb::Backend {
            address: word(rng),
            port: number(rng),
        }),
        quorum: number(rng),
        hysteresis: number(rng),
        directors: rng.chance(2).then(|| pb::DirectorPlacement {
            selector: labels(rng),
            preferred: (0..rng.below(3)).map(|_| word(rng)).collect(),
        }),
        create_revision: rng.next_u64(),
        mod_revision: rng.next_u64(),
    }
}

/// What a client can send to ServiceAdmin, through the same conversions the
/// handlers use: generated messages, and their encodings with flipped bytes.
#[test]
fn api_validation_never_panics() {
    let mut valid = 0u64;
    run("validation", 3, |rng, input| {
        let msg = service(rng);
        let mut bytes = msg.encode_to_vec();
        if rng.chance(2) {
            rng.mutate_bytes(&mut bytes);
        }
        input.extend_from_slice(&bytes);
        if let Ok(decoded) = pb::Service::decode(bytes.as_slice()) {
            if let Ok(s) = Service::try_from(decoded) {
                valid += 1;
                // Valid services convert back and validate again.
                Service::try_from(pb::Service::from(&s)).expect("a valid service stays valid");
            }
        }
        let _ = lb_proto::convert::realserver("realserver", realserver(rng));
        let _ = RealServerPatch::try_from(&pb::UpdateRealServerRequest {
            service: word(rng),
            address: word(rng),
            port: number(rng),
            weight: rng.chance(2).then(|| number(rng)),
            upper_threshold: rng.chance(2).then(|| number(rng)),
            lower_threshold: rng.chance(2).then(|| number(rng)),
            admin_state: rng.chance(2).then(|| word(rng)),
        });
        let _ = lb_proto::convert::realserver_key(&word(rng), number(rng));
    });
    println!("fuzz validation: {valid} services were valid");
    // The generator must reach past the decoder into the rules.
    assert!(
        valid > 0,
        "no generated service was valid: the fuzzer tested only refusals"
    );
}

/// One netlink attribute: u16 length (header included), u16 type, payload
/// padded to 4 bytes.
fn nla(t: u16, payload: &[u8]) -> Vec<u8> {
    let len = (4 + payload.len()).min(usize::from(u16::MAX)) as u16;
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&t.to_ne_bytes());
    out.extend_from_slice(payload);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

/// Attributes of plausible types with payloads of telling sizes, nested now
/// and then (stats inside a service or a destination).
fn attrs(rng: &mut Rng, depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(12) {
        let t = rng.below(20) as u16 | if rng.chance(8) { 0x8000 } else { 0 };
        let payload = if depth < 2 && rng.chance(5) {
            attrs(rng, depth + 1)
        } else {
            let len = *rng.pick(&[0usize, 1, 2, 3, 4, 8, 12, 16, 20, 24]);
            (0..len).map(|_| rng.next_u64() as u8).collect()
        };
        out.extend(nla(t, &payload));
    }
    out
}

/// Payload sizes the kernel uses for each attribute type of a service (1),
/// a destination (2) and a daemon (3); 0 marks a nested stats block.
fn sizes(outer: u16) -> &'static [usize] {
    match outer & 0x7fff {
        1 => &[2, 2, 16, 2, 4, 4, 8, 4, 4, 0, 4, 0],
        2 => &[16, 2, 4, 4, 4, 4, 4, 4, 4, 0, 2, 0, 1, 2, 2],
        _ => &[4, 16, 4, 4, 4, 16, 2, 1],
    }
}

/// Attributes laid out as the kernel does: every type with its usual size,
/// families set to AF_INET or AF_INET6, a scheduler name, stats nested.
fn well_formed(rng: &mut Rng, outer: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, size) in sizes(outer).iter().enumerate() {
        if rng.chance(5) {
            continue;
        }
        let t = i as u16 + 1;
        let payload: Vec<u8> = match (outer & 0x7fff, t, size) {
            (_, _, 0) => (1..=11u16)
                .flat_map(|s| nla(s, &rng.next_u64().to_ne_bytes()))
                .collect(),
            (1, 1, _) | (2, 11, _) => (*rng.pick(&[2u16, 10, 2, 10, 0, 7])).to_ne_bytes().to_vec(),
            (1, 6, _) => rng.pick(&[&b"wlc\0"[..], b"rr\0", b"x", b""]).to_vec(),
            (2, 3, _) => rng.below(5).to_ne_bytes()[..4].to_vec(),
            // A daemon: its state (master 1, backup 2, or neither), its
            // interface's name and a sync id around the 0..=255 the
            // reader accepts.
            (3, 1, _) => (*rng.pick(&[1u32, 2, 1, 2, 0, 3])).to_ne_bytes().to_vec(),
            (3, 2, _) => {
                let mut name = rng.pick(&[&b"eth0"[..], b"bond0.100", b"x", b""]).to_vec();
                name.resize(16, 0);
                name
            }
            (3, 3, _) => (rng.below(300) as u32).to_ne_bytes().to_vec(),
            _ => (0..*size).map(|_| rng.next_u64() as u8).collect(),
        };
        out.extend(nla(t, &payload));
    }
    out
}

/// Replies as the kernel could send them to the director: a generic
/// netlink header, a service, destination or daemon attribute holding
/// random attributes, then flipped bytes.
#[test]
fn ipvs_netlink_replies_never_panic() {
    // How deep the inputs get: decoded as a message, read as each object.
    let mut decoded_count = 0u64;
    let (mut services, mut dests, mut daemons) = (0u64, 0u64, 0u64);
    run("netlink", 3, |rng, input| {
        let mut raw = vec![rng.below(18) as u8, 1, 0, 0];
        let outer = *rng.pick(&[1u16, 2, 3, 0x8001, 0x8002, 0x8003]);
        let inner = if rng.chance(2) {
            well_formed(rng, outer)
        } else {
            attrs(rng, 0)
        };
        raw.extend(nla(outer, &inner));
        if rng.chance(3) {
            raw.extend(attrs(rng, 1));
        }
        if rng.chance(2) {
            rng.mutate_bytes(&mut raw);
        }
        input.extend_from_slice(&raw);
        let decoded =
            Genlmsghdr::<Cmd, CmdAttr>::from_bytes_with_input(&mut Cursor::new(&raw), raw.len());
        if let Ok(msg) = decoded {
            decoded_count += 1;
            services += u64::from(lb_director::ipvs::parse_service(&msg).is_some());
            dests += u64::from(
                lb_director::ipvs::parse_dest(&msg, *rng.pick(&[2u16, 10, 0, 7])).is_some(),
            );
            daemons += u64::from(lb_director::ipvs::parse_daemon(&msg).is_some());
        }
    });
    println!("fuzz netlink: {decoded_count} decoded as messages; read as {services} services, {dests} destinations, {daemons} daemons");
    // Every reader was reached with input it accepted, not only refusals.
    assert!(decoded_count > 0, "no input decoded as a netlink message");
    assert!(
        services > 0 && dests > 0 && daemons > 0,
        "a reader was never reached: {services} services, {dests} destinations, {daemons} daemons"
    );
}

/// What `Enrollment/Join` reads from a caller that has no certificate yet:
/// the token text and the PKCS#10 request (PEM), which the CA parses,
/// checks the signature of, and signs.
#[test]
fn join_inputs_never_panic() {
    use lb_proto::pki::{Ca, Identity, JoinToken, Role};
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::open(dir.path(), true).expect("CA");
    let (csr, _key) = lb_proto::pki::request().expect("request");
    let der = pem::parse(&csr).expect("pem").into_contents();
    let token = JoinToken::generate(&lb_proto::pki::sha256_hex(b"ca"))
        .expect("token")
        .to_string();
    let who = Identity::new(Role::Realserver, "rs1");
    let (mut tokens, mut signed) = (0u64, 0u64);
    run("join", 3, |rng, input| {
        let mut text = token.clone().into_bytes();
        rng.mutate_bytes(&mut text);
        input.extend_from_slice(&text);
        if String::from_utf8_lossy(&text).parse::<JoinToken>().is_ok() {
            tokens += 1;
        }
        // A request mutated as DER (reaching the X.509 parser), or as text.
        let request = if rng.chance(2) {
            let mut bytes = der.clone();
            rng.mutate_bytes(&mut bytes);
            pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bytes))
        } else {
            let mut bytes = csr.clone().into_bytes();
            rng.mutate_bytes(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        };
        input.extend_from_slice(request.as_bytes());
        let ips = ["10.0.0.21".parse().expect("ip")];
        if ca
            .sign_request(&request, &who, &ips, std::time::Duration::from_secs(60))
            .is_ok()
        {
            signed += 1;
        }
    });
    println!("fuzz join: {tokens} tokens parsed, {signed} requests signed");
    assert!(
        tokens > 0 && signed > 0,
        "the token parser or the signer was never reached with good input: {tokens} tokens, {signed} signed"
    );
}
