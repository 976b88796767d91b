//! Health checks of this host's own endpoints, as keepalived's checkers do
//! them from the director: TCP connect, HTTP GET (status, body regex, MD5
//! digest of the body) and a command's exit status, each with an interval, a
//! timeout and rise/fall counts. A backend starts healthy (keepalived's
//! default) and changes state only after `rise` passes or `fall` failures in
//! a row; the agent reports every change at once.
//!
//! HTTPS checks are not run yet (they need the TLS client of the security
//! work); a service with one is reported as a check error, not as down.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lb_proto::model::{HealthCheck, HttpProbe, Probe, Service, VirtualAddress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most of a response body read for a check.
const MAX_BODY: usize = 1 << 20;

/// One check to run: a service's check against this host's endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub addr: SocketAddr,
    pub check: HealthCheck,
}

/// The checks the services ask of the host at `rip`, by service name.
pub fn targets(services: &[Service], rip: IpAddr) -> BTreeMap<String, Target> {
    let mut out = BTreeMap::new();
    for s in services {
        let Some(check) = &s.health_check else {
            continue;
        };
        let Some(rs) = s.realservers.iter().find(|r| r.address == rip) else {
            continue;
        };
        // The check's own port, else the realserver's, else the VIP's.
        let vip_port = match s.address {
            VirtualAddress::Endpoint { port, .. } => port,
            VirtualAddress::Fwmark { .. } => 0,
        };
        let port = [check.port, rs.port, vip_port]
            .into_iter()
            .find(|p| *p != 0)
            .unwrap_or(0);
        out.insert(
            s.name.clone(),
            Target {
                service: s.name.clone(),
                addr: SocketAddr::new(rip, port),
                check: check.clone(),
            },
        );
    }
    out
}

/// Rise/fall bookkeeping for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: bool,
    /// Consecutive results disagreeing with `healthy`.
    against: u32,
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict {
            healthy: true,
            against: 0,
        }
    }
}

impl Verdict {
    /// Counts one result; true when the state flips.
    pub fn record(&mut self, passed: bool, rise: u32, fall: u32) -> bool {
        if passed == self.healthy {
            self.against = 0;
            return false;
        }
        self.against += 1;
        let needed = if passed { rise } else { fall };
        if self.against >= needed.max(1) {
            self.healthy = passed;
            self.against = 0;
            return true;
        }
        false
    }
}

/// Runs one check once; `Err` says why it failed.
pub async fn probe(t: &Target) -> Result<(), String> {
    let timeout = Duration::from_millis(t.check.timeout_ms);
    let run = async {
        match &t.check.probe {
            Probe::Tcp => connect(t.addr).await.map(drop),
            Probe::Http(h) => http(t.addr, h).await,
            Probe::Https(_) => Err("https checks are not supported yet".to_string()),
            Probe::Exec { command, args } => exec(command, args).await,
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", t.check.timeout_ms)),
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    if addr.port() == 0 {
        return Err("no port to check (set the check's port)".into());
    }
    TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))
}

async fn http(addr: SocketAddr, h: &HttpProbe) -> Result<(), String> {
    let mut conn = connect(addr).await?;
    let host = h.host.clone().unwrap_or_else(|| addr.ip().to_string());
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: lbfabric-check\r\nConnection: close\r\n\r\n",
        h.path
    );
    conn.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut raw = Vec::new();
    conn.take(MAX_BODY as u64)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    let (status, body) = parse_response(&raw)?;
    http_verdict(h, status, body)
}

/// The status code and the body of an HTTP/1.x response.
pub fn parse_response(raw: &[u8]) -> Result<(u16, &[u8]), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer is not HTTP (no end of headers)")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("the answer is not HTTP (no status line)")?;
    Ok((status, &raw[end + 4..]))
}

/// Whether an answer passes the check's status, regex and digest rules.
pub fn http_verdict(h: &HttpProbe, status: u16, body: &[u8]) -> Result<(), String> {
    if !h.status.contains(&status) {
        return Err(format!("status {status}, expected {:?}", h.status));
    }
    if let Some(want) = &h.digest {
        use md5::Digest;
        let got: String = md5::Md5::digest(body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if &got != want {
            return Err(format!("body digest {got}, expected {want}"));
        }
    }
    if let Some(pattern) = &h.body_regex {
        // The controller accepted the pattern, so it compiles.
        let re = regex::bytes::Regex::new(pattern).map_err(|e| e.to_string())?;
        if !re.is_match(body) {
            return Err(format!("body does not match {pattern:?}"));
        }
    }
    Ok(())
}

async fn exec(command: &str, args: &[String]) -> Result<(), String> {
    let status = tokio::process::Command::new(command)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        // A timed-out check must not leave the command running.
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("running {command}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command} exited with {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let (status, body) = parse_response(raw).unwrap();
        assert_eq!((status, body), (200, &b"hello"[..]));
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
        assert!(parse_response(b"garbage").is_err());
    }
}
