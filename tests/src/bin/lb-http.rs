//! A tiny HTTP server and client for network tests, run inside namespaces.
//!
//!   lb-http serve NAME ADDR:PORT      answer every request with "NAME\n"; prints "ready" once listening
//!   lb-http get URL [COUNT] [GAP_MS]  make COUNT requests (new connection each), print one body (or ERR …) per line
//!
//! Only the Rust standard library: it starts fast in the VM, where every exec counts.

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

fn get_once(host_port: &str, path: &str) -> Result<String, String> {
    let addr = host_port
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut conn =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))
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
        ["get", url, rest @ ..] => {
            let count: usize = rest.first().and_then(|c| c.parse().ok()).unwrap_or(1);
            let gap: u64 = rest.get(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            let Some(target) = url.strip_prefix("http://") else {
                eprintln!("lb-http get: only http:// URLs");
                return ExitCode::FAILURE;
            };
            let (host_port, path) = match target.find('/') {
                Some(i) => (&target[..i], &target[i..]),
                None => (target, "/"),
            };
            let host_port = if host_port.contains(':') && !host_port.ends_with(']') {
                host_port.to_string()
            } else {
                format!("{host_port}:80")
            };
            for i in 0..count {
                match get_once(&host_port, path) {
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
            eprintln!("usage: lb-http serve NAME ADDR:PORT | lb-http get URL [COUNT] [GAP_MS]");
            ExitCode::FAILURE
        }
    }
}
