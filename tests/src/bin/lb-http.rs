//! A tiny HTTP server and client for network tests, run inside namespaces.
//!
//!   lb-http serve NAME ADDR:PORT      answer every request with "NAME\n"; prints "ready" once listening
//!   lb-http get URL [COUNT] [GAP_MS]  make COUNT requests (new connection each), print one body (or ERR …) per line
//!   lb-http probe URL SECONDS EVERY_MS TIMEOUT_MS
//!                                     start a request every EVERY_MS for SECONDS, each on its own
//!                                     connection and thread; print "START_MS OK BODY" or
//!                                     "START_MS ERR WHY" per request (START_MS since the Unix epoch)
//!   lb-http hold URL SECONDS          one long-lived request: connect, print "open", send the
//!                                     request head but its last line only after SECONDS, then
//!                                     print "OK BODY" or "ERR WHY" (a reset shows as ERR)
//!   lb-http vipwatch ADDR SECONDS EVERY_MS
//!                                     sample whether ADDR is local here (binding to it works);
//!                                     print "MS 1" / "MS 0" at the start and on every change
//!                                     (followed by the previous sample's MS: the last of the
//!                                     old state), "MS end";
//!                                     "MS stall GAP_MS" when a sample came over 500 ms late
//!
//! And the servers the health-check tests flip (each prints "ready" once listening):
//!
//!   lb-http chunked NAME ADDR:PORT    as serve, the body "NAME healthy\n" sent chunked in two
//!   lb-http udp-echo ADDR:PORT        answer each datagram with "OK " and the datagram
//!   lb-http dns ADDR:PORT NAME IPV4   answer A queries for NAME with IPV4, others NXDOMAIN
//!
//! The standard library (and simple-dns for the DNS server): it starts fast
//! in the VM, where every exec counts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

fn serve(name: &str, addr: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!("ready");
    std::io::stdout().flush()?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let name = name.to_string();
        std::thread::spawn(move || {
            let _ = answer(conn, &name);
        });
    }
    Ok(())
}

fn answer(conn: TcpStream, name: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    // Read the request head; the body of a GET is empty.
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let body = format!("{name}\n");
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

fn serve_chunked(name: &str, addr: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!("ready");
    std::io::stdout().flush()?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let name = name.to_string();
        std::thread::spawn(move || {
            let mut head = [0u8; 4096];
            let _ = conn.read(&mut head);
            let first = format!("{name} ");
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\
                 Connection: close\r\n\r\n{:x}\r\n{first}\r\n8\r\nhealthy\n\r\n0\r\n\r\n",
                first.len()
            );
        });
    }
    Ok(())
}

/// A UDP server on `addr`: each datagram gets `answer`'s reply, if any.
fn udp_server(addr: &str, mut answer: impl FnMut(&[u8]) -> Option<Vec<u8>>) -> std::io::Result<()> {
    let sock = std::net::UdpSocket::bind(addr)?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        if let Some(reply) = answer(&buf[..n]) {
            sock.send_to(&reply, from)?;
        }
    }
}

fn udp_echo(addr: &str) -> std::io::Result<()> {
    udp_server(addr, |got| Some([b"OK ".as_slice(), got].concat()))
}

fn dns(addr: &str, name: &str, ip: std::net::Ipv4Addr) -> std::io::Result<()> {
    use simple_dns::rdata::{RData, A};
    use simple_dns::{Packet, ResourceRecord, CLASS, QTYPE, RCODE, TYPE};
    udp_server(addr, |got| {
        let query = Packet::parse(got).ok()?;
        let mut reply = query.clone().into_reply();
        match query.questions.first() {
            Some(q)
                if q.qtype == QTYPE::TYPE(TYPE::A)
                    && q.qname
                        .to_string()
                        .eq_ignore_ascii_case(name.trim_end_matches('.')) =>
            {
                reply.answers.push(ResourceRecord::new(
                    q.qname.clone(),
                    CLASS::IN,
                    30,
                    RData::A(A {
                        address: u32::from(ip),
                    }),
                ));
            }
            _ => *reply.rcode_mut() = RCODE::NameError,
        }
        reply.build_bytes_vec().ok()
    })
}

fn get_once(host_port: &str, path: &str, timeout: Duration) -> Result<String, String> {
    let addr = host_port
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut conn = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("malformed response")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    Ok(body.trim().to_string())
}

fn hold(host_port: &str, path: &str, seconds: u64) -> Result<String, String> {
    let addr = host_port
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut conn =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    println!("open");
    let _ = std::io::stdout().flush();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: {host_port}\r\n").map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(seconds));
    write!(conn, "Connection: close\r\n\r\n").map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (_, body) = response
        .split_once("\r\n\r\n")
        .ok_or("malformed response")?;
    Ok(body.trim().to_string())
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// `http://host[:port]/path` → ("host:port", "/path").
fn split_url(url: &str) -> Option<(String, String)> {
    let target = url.strip_prefix("http://")?;
    let (host_port, path) = match target.find('/') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, "/"),
    };
    let host_port = if host_port.contains(':') && !host_port.ends_with(']') {
        host_port.to_string()
    } else {
        format!("{host_port}:80")
    };
    Some((host_port, path.to_string()))
}

/// Requests at a fixed rate, whatever happens to earlier ones: a request
/// stuck on a dead director does not delay the next, so the log shows when
/// service stopped and resumed to within one interval.
fn probe(host_port: &str, path: &str, seconds: u64, every: Duration, timeout: Duration) {
    let end = std::time::Instant::now() + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    while std::time::Instant::now() < end {
        let (hp, p) = (host_port.to_string(), path.to_string());
        // A long probe must not hold a finished thread per request.
        workers.retain(|w: &std::thread::JoinHandle<()>| !w.is_finished());
        workers.push(std::thread::spawn(move || {
            let start = unix_ms();
            match get_once(&hp, &p, timeout) {
                Ok(body) => println!("{start} OK {body}"),
                Err(e) => println!("{start} ERR {e}"),
            }
        }));
        std::thread::sleep(every);
    }
    for w in workers {
        let _ = w.join();
    }
}

fn vipwatch(addr: std::net::IpAddr, seconds: u64, every: Duration) {
    let end = std::time::Instant::now() + Duration::from_secs(seconds);
    let mut last = None;
    // When the previous sample was taken: the last one of the old state.
    let mut previous: Option<u128> = None;
    while std::time::Instant::now() < end {
        let local = std::net::UdpSocket::bind((addr, 0)).is_ok();
        let now = unix_ms();
        if last != Some(local) {
            match previous {
                Some(p) => println!("{now} {} {p}", u8::from(local)),
                None => println!("{now} {}", u8::from(local)),
            }
            last = Some(local);
        }
        previous = Some(now);
        let slept = std::time::Instant::now();
        std::thread::sleep(every);
        // A sample far behind its time means this host did not run (a
        // frozen VM, CPU starvation): whatever changed meanwhile went
        // unseen, and leases may have run out with nothing wrong in the
        // fabric. Said, so that a test can tell its own host's stall apart.
        let late = slept.elapsed().saturating_sub(every);
        if late > Duration::from_millis(500) {
            println!("{} stall {}", unix_ms(), late.as_millis());
        }
    }
    println!("{} end", unix_ms());
}

/// A server's exit status, its error said.
fn report(what: &str, r: std::io::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-http {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", name, addr] => match serve(name, addr) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lb-http serve {addr}: {e}");
                ExitCode::FAILURE
            }
        },
        ["chunked", name, addr] => report(&format!("chunked {addr}"), serve_chunked(name, addr)),
        ["udp-echo", addr] => report(&format!("udp-echo {addr}"), udp_echo(addr)),
        ["dns", addr, name, ip] => match ip.parse() {
            Ok(ip) => report(&format!("dns {addr}"), dns(addr, name, ip)),
            Err(e) => {
                eprintln!("lb-http dns: {ip:?}: {e}");
                ExitCode::FAILURE
            }
        },
        ["probe", url, seconds, every, timeout] => {
            let (Some((host_port, path)), Ok(seconds), Ok(every), Ok(timeout)) = (
                split_url(url),
                seconds.parse(),
                every.parse(),
                timeout.parse(),
            ) else {
                eprintln!("lb-http probe: expected http://URL SECONDS EVERY_MS TIMEOUT_MS");
                return ExitCode::FAILURE;
            };
            let ms = Duration::from_millis;
            probe(&host_port, &path, seconds, ms(every), ms(timeout));
            ExitCode::SUCCESS
        }
        ["hold", url, seconds] => {
            let (Some((host_port, path)), Ok(seconds)) = (split_url(url), seconds.parse()) else {
                eprintln!("lb-http hold: expected http://URL SECONDS");
                return ExitCode::FAILURE;
            };
            match hold(&host_port, &path, seconds) {
                Ok(body) => println!("OK {body}"),
                Err(e) => println!("ERR {e}"),
            }
            ExitCode::SUCCESS
        }
        ["vipwatch", addr, seconds, every] => {
            let (Ok(addr), Ok(seconds), Ok(every)) = (addr.parse(), seconds.parse(), every.parse())
            else {
                eprintln!("lb-http vipwatch: expected ADDR SECONDS EVERY_MS");
                return ExitCode::FAILURE;
            };
            vipwatch(addr, seconds, Duration::from_millis(every));
            ExitCode::SUCCESS
        }
        ["get", url, rest @ ..] => {
            let count: usize = rest.first().and_then(|c| c.parse().ok()).unwrap_or(1);
            let gap: u64 = rest.get(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            let Some((host_port, path)) = split_url(url) else {
                eprintln!("lb-http get: only http:// URLs");
                return ExitCode::FAILURE;
            };
            for i in 0..count {
                match get_once(&host_port, &path, Duration::from_secs(3)) {
                    Ok(body) => println!("{body}"),
                    Err(e) => println!("ERR {e}"),
                }
                if gap > 0 && i + 1 < count {
                    std::thread::sleep(Duration::from_millis(gap));
                }
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: lb-http serve|chunked NAME ADDR:PORT | udp-echo ADDR:PORT | dns ADDR:PORT NAME IPV4 | get URL [COUNT] [GAP_MS] | hold URL SECONDS | probe URL SECONDS EVERY_MS TIMEOUT_MS | vipwatch ADDR SECONDS EVERY_MS");
            ExitCode::FAILURE
        }
    }
}
