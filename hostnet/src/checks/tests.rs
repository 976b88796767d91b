//! The checks against real servers on loopback.

use super::*;
use lb_proto::model::HttpProbe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP server that reads a request and writes `answer`, then
/// closes the connection or (`keep_open`) holds it open, as an
/// HTTP/1.1 server with keep-alive does.
async fn http_server(answer: &'static str, keep_open: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(answer.as_bytes()).await;
                if keep_open {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    addr
}

fn http_target(addr: SocketAddr, regex: &str, digest: Option<&str>) -> Target {
    let mut t = https_target(addr, vec![200]);
    t.check.probe = Probe::Http(HttpProbe {
        path: "/healthz".into(),
        status: vec![200],
        body_regex: Some(regex.into()),
        digest: digest.map(String::from),
        host: None,
    });
    t
}

fn exec_target(command: &str, args: &[&str], timeout_ms: u64) -> Target {
    let mut t = https_target("127.0.0.1:1".parse().unwrap(), vec![200]);
    t.check.probe = Probe::Exec {
        command: command.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
    };
    t.check.timeout_ms = timeout_ms;
    t
}

#[tokio::test]
async fn exec_checks_pass_on_exit_zero_and_a_late_command_is_killed() {
    assert_eq!(
        probe(&exec_target("/bin/sh", &["-c", "exit 0"], 2000)).await,
        Ok(())
    );
    let err = probe(&exec_target("/bin/sh", &["-c", "exit 3"], 2000)).await;
    assert!(
        err.as_ref().unwrap_err().contains("exit status: 3"),
        "{err:?}"
    );
    let err = probe(&exec_target("/nonexistent/check", &[], 2000)).await;
    assert!(
        err.as_ref()
            .unwrap_err()
            .contains("running /nonexistent/check"),
        "{err:?}"
    );
    // A command still running at the timeout fails the check and is killed.
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
    let err = probe(&exec_target("/bin/sh", &["-c", &script], 300)).await;
    assert!(
        err.as_ref()
            .unwrap_err()
            .contains("no answer within 300 ms"),
        "{err:?}"
    );
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let mut running = true;
    for _ in 0..50 {
        // Gone, or a zombie waiting to be reaped: not sleeping any more.
        running = std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z "));
        if !running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!running, "the timed-out command is still running");
}

#[tokio::test]
async fn http_checks_read_chunked_bodies_and_do_not_wait_for_a_keep_alive_server() {
    // The body's digest and regex are over "hello world", not its chunks.
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let addr = http_server(chunked, false).await;
    let md5_of_hello_world = "5eb63bbbe01eeed093cb22bb8f5acdc3";
    let t = http_target(addr, "^hello world$", Some(md5_of_hello_world));
    assert_eq!(probe(&t).await, Ok(()));
    let wrong = http_target(
        addr,
        "^hello world$",
        Some("00000000000000000000000000000000"),
    );
    assert!(probe(&wrong).await.unwrap_err().contains("digest"));
    // A server that keeps the connection open: the answer is complete at
    // its Content-Length, long before the check's timeout.
    let keep = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    let t = http_target(http_server(keep, true).await, "^hello$", None);
    let started = std::time::Instant::now();
    assert_eq!(probe(&t).await, Ok(()));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // Another status fails, naming it; so does an answer that is not HTTP.
    let down = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
    let err = probe(&http_target(http_server(down, false).await, ".", None)).await;
    assert!(err.as_ref().unwrap_err().contains("503"), "{err:?}");
    let junk = http_server("SSH-2.0-OpenSSH_9.2\r\n", false).await;
    assert!(probe(&http_target(junk, ".", None)).await.is_err());
}

/// A TLS server with a self-signed certificate for another name, the way
/// a realserver's public site looks from its own address.
async fn tls_server(answer: &'static str) -> SocketAddr {
    let cert = rcgen::generate_simple_self_signed(vec!["www.example.test".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = tls.read(&mut buf).await;
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

fn https_target(addr: SocketAddr, status: Vec<u16>) -> Target {
    Target {
        service: "web".into(),
        backend: addr,
        addr,
        check: HealthCheck {
            probe: Probe::Https(HttpProbe {
                path: "/".into(),
                status,
                body_regex: Some("^hello".into()),
                digest: None,
                host: None,
            }),
            interval_ms: 1000,
            timeout_ms: 2000,
            rise: 1,
            fall: 1,
            port: 0,
            inhibit_on_failure: false,
        },
    }
}

#[tokio::test]
async fn https_checks_speak_tls_to_a_self_signed_server() {
    let addr = tls_server("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").await;
    assert_eq!(probe(&https_target(addr, vec![200])).await, Ok(()));
    let err = probe(&https_target(addr, vec![204])).await.unwrap_err();
    assert!(err.contains("status 200"), "{err}");
    // Plain HTTP to it is not an answer.
    let mut plain = https_target(addr, vec![200]);
    if let Probe::Https(h) = &plain.check.probe {
        plain.check.probe = Probe::Http(h.clone());
    }
    assert!(probe(&plain).await.is_err());
}

#[test]
fn rise_and_fall_need_streaks() {
    let mut v = Verdict::default();
    assert!(v.healthy, "starts healthy, as keepalived does");
    assert!(!v.record(false, 2, 3));
    assert!(!v.record(false, 2, 3));
    assert!(!v.record(true, 2, 3), "a pass breaks the streak");
    assert!(!v.record(false, 2, 3));
    assert!(!v.record(false, 2, 3));
    assert!(v.record(false, 2, 3), "third failure in a row");
    assert!(!v.healthy);
    assert!(!v.record(true, 2, 3));
    assert!(v.record(true, 2, 3), "second pass in a row");
    assert!(v.healthy);
}

#[test]
fn http_answers_are_judged_by_status_digest_and_regex() {
    let body = &b"hello"[..];
    let mut h = HttpProbe {
        path: "/".into(),
        status: vec![200],
        body_regex: None,
        digest: None,
        host: None,
    };
    assert_eq!(http_verdict(&h, 200, body), Ok(()));
    assert!(http_verdict(&h, 503, body)
        .unwrap_err()
        .contains("status 503"));
    // md5("hello")
    h.digest = Some("5d41402abc4b2a76b9719d911017c592".into());
    assert_eq!(http_verdict(&h, 200, body), Ok(()));
    assert!(http_verdict(&h, 200, b"bye")
        .unwrap_err()
        .contains("digest"));
    h.body_regex = Some("^h.l+o$".into());
    assert_eq!(http_verdict(&h, 200, body), Ok(()));
    h.digest = None;
    assert!(http_verdict(&h, 200, b"help")
        .unwrap_err()
        .contains("does not match"));
}

fn target_with(addr: SocketAddr, probe: Probe, timeout_ms: u64) -> Target {
    let mut t = https_target(addr, vec![200]);
    t.check.probe = probe;
    t.check.timeout_ms = timeout_ms;
    t
}

/// A UDP server on loopback answering each datagram with `prefix` and
/// the datagram.
async fn udp_server(prefix: &'static [u8]) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let reply = [prefix, &buf[..n]].concat();
            let _ = sock.send_to(&reply, from).await;
        }
    });
    addr
}

#[tokio::test]
async fn udp_checks_judge_the_reply_and_fail_on_port_unreachable() {
    use lb_proto::model::UdpProbe;
    let udp = |payload: &[u8], expect: Option<&[u8]>| {
        Probe::Udp(UdpProbe {
            payload: payload.to_vec(),
            expect: expect.map(<[u8]>::to_vec),
        })
    };
    let echo = udp_server(b"OK ").await;
    let t = |p| target_with(echo, p, 1000);
    assert_eq!(probe(&t(udp(b"ping", Some(b"OK ping")))).await, Ok(()));
    assert_eq!(probe(&t(udp(b"ping", None))).await, Ok(()));
    let err = probe(&t(udp(b"ping", Some(b"PONG")))).await.unwrap_err();
    assert!(err.contains("does not start with"), "{err}");
    // Nobody listens: the kernel's port unreachable fails the check, with
    // or without an expected reply.
    let closed = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    for p in [udp(b"x", None), udp(b"x", Some(b"y"))] {
        let err = probe(&target_with(closed, p, 1000)).await.unwrap_err();
        assert!(err.contains("refused"), "{err}");
    }
    // A silent server: passes without an expected reply, fails with one.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let quiet = silent.local_addr().unwrap();
    assert_eq!(
        probe(&target_with(quiet, udp(b"x", None), 200)).await,
        Ok(())
    );
    let err = probe(&target_with(quiet, udp(b"x", Some(b"y")), 200))
        .await
        .unwrap_err();
    assert!(err.contains("no reply within 200 ms"), "{err}");
}

/// A DNS server on loopback that answers every query for `svc.test` with
/// one A record, and others with NXDOMAIN.
async fn dns_server() -> SocketAddr {
    use simple_dns::rdata::{RData, A};
    use simple_dns::{Packet, ResourceRecord, CLASS, RCODE};
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Ok(query) = Packet::parse(&buf[..n]) else {
                continue;
            };
            let mut reply = query.clone().into_reply();
            let q = &query.questions[0];
            if q.qname.to_string() == "svc.test" {
                reply.answers.push(ResourceRecord::new(
                    q.qname.clone(),
                    CLASS::IN,
                    30,
                    RData::A(A {
                        address: u32::from(std::net::Ipv4Addr::new(192, 0, 2, 1)),
                    }),
                ));
            } else {
                *reply.rcode_mut() = RCODE::NameError;
            }
            let _ = sock.send_to(&reply.build_bytes_vec().unwrap(), from).await;
        }
    });
    addr
}

#[tokio::test]
async fn dns_checks_ask_a_real_server() {
    use lb_proto::model::{DnsProbe, DnsType};
    let server = dns_server().await;
    let dns = |name: &str, t: DnsType, expect: Option<&str>| {
        target_with(
            server,
            Probe::Dns(DnsProbe {
                query_type: t,
                name: name.into(),
                expect: expect.map(String::from),
            }),
            1000,
        )
    };
    assert_eq!(probe(&dns("svc.test", DnsType::A, None)).await, Ok(()));
    assert_eq!(
        probe(&dns("svc.test.", DnsType::A, Some("192.0.2.1"))).await,
        Ok(())
    );
    let err = probe(&dns("svc.test", DnsType::A, Some("192.0.2.2")))
        .await
        .unwrap_err();
    assert!(err.contains("expected \"192.0.2.2\""), "{err}");
    let err = probe(&dns("other.test", DnsType::A, None))
        .await
        .unwrap_err();
    assert!(err.contains("NameError"), "{err}");
}

#[tokio::test]
async fn ping_checks_get_an_echo_from_loopback() {
    // An ICMP socket needs the ping group range or CAP_NET_RAW.
    use socket2::{Domain, Protocol, Socket, Type};
    let icmp = [Type::DGRAM, Type::RAW]
        .into_iter()
        .any(|t| Socket::new(Domain::IPV4, t, Some(Protocol::ICMPV4)).is_ok());
    if !lb_testkit::require(icmp, "an ICMP socket (root, or the ping group range)") {
        return;
    }
    for addr in ["127.0.0.1:0", "[::1]:0"] {
        let t = target_with(addr.parse().unwrap(), Probe::Ping, 1000);
        assert_eq!(probe(&t).await, Ok(()), "{addr}");
    }
}
