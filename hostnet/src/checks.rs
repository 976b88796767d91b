//! Health checks of this host's own endpoints, as keepalived's checkers do
//! them from the director: TCP connect, HTTP GET (HTTP/1.1 through hyper;
//! status, body regex, MD5 digest of the body) and a command's exit status, each with an interval, a
//! timeout and rise/fall counts. A backend starts healthy (keepalived's
//! default) and changes state only after `rise` passes or `fall` failures in
//! a row; the agent reports every change at once.
//!
//! HTTPS checks speak TLS (rustls) but, like keepalived's `SSL_GET`, do not
//! verify the certificate: the agent probes its own endpoint by address,
//! while the certificate names the public site. The handshake's signatures
//! are still checked, so the server must hold the certificate's key.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use lb_proto::model::{HealthCheck, HttpProbe, Probe, Service, VirtualAddress};
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Most of a response body read for a check.
const MAX_BODY: usize = 1 << 20;

/// One check to run: a service's check against this host's endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    /// The backend judged, as the service lists it (realserver address and port).
    pub backend: SocketAddr,
    /// Where the probe goes: the backend's address, at the check's port if set.
    pub addr: SocketAddr,
    pub check: HealthCheck,
}

/// The target for `backend` of service `s`, if it has a check.
pub fn target(s: &Service, backend: SocketAddr) -> Option<Target> {
    let check = s.health_check.as_ref()?;
    // The check's own port, else the realserver's, else the VIP's.
    let vip_port = match s.address {
        VirtualAddress::Endpoint { port, .. } => port,
        VirtualAddress::Fwmark { .. } => 0,
    };
    let port = [check.port, backend.port(), vip_port]
        .into_iter()
        .find(|p| *p != 0)
        .unwrap_or(0);
    Some(Target {
        service: s.name.clone(),
        backend,
        addr: SocketAddr::new(backend.ip(), port),
        check: check.clone(),
    })
}

/// The checks the services ask of the host at `rip`, by service name.
pub fn targets(services: &[Service], rip: IpAddr) -> BTreeMap<String, Target> {
    services
        .iter()
        .filter_map(|s| {
            let rs = s.realservers.iter().find(|r| r.address == rip)?;
            Some((s.name.clone(), target(s, SocketAddr::new(rip, rs.port))?))
        })
        .collect()
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

/// Called when a target's verdict flips (`true`: passing) and, with `true`,
/// when a target is dropped.
pub type OnChange = Arc<dyn Fn(&Target, bool) + Send + Sync>;

/// Runs each target's check on its own interval until `stop`: a task per
/// target, restarted (healthy again) when its check changes.
pub async fn run(
    mut targets: watch::Receiver<Vec<Target>>,
    on_change: OnChange,
    mut stop: watch::Receiver<bool>,
) {
    let mut running: BTreeMap<(String, SocketAddr), (Target, tokio::task::JoinHandle<()>)> =
        BTreeMap::new();
    loop {
        let want: BTreeMap<(String, SocketAddr), Target> = targets
            .borrow_and_update()
            .iter()
            .map(|t| ((t.service.clone(), t.addr), t.clone()))
            .collect();
        running.retain(|key, (t, task)| {
            let keep = want.get(key) == Some(t);
            if !keep {
                task.abort();
                on_change(t, true);
            }
            keep
        });
        for (key, t) in want {
            running.entry(key).or_insert_with(|| {
                let task = tokio::spawn(check_task(t.clone(), on_change.clone()));
                (t, task)
            });
        }
        tokio::select! {
            r = targets.changed() => if r.is_err() { break },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for (_, (_, task)) in running {
        task.abort();
    }
}

async fn check_task(t: Target, on_change: OnChange) {
    let mut verdict = Verdict::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(t.check.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = probe(&t).await;
        if verdict.record(result.is_ok(), t.check.rise, t.check.fall) {
            match &result {
                Ok(()) => {
                    tracing::info!(service = %t.service, target = %t.addr, "health check passes: up")
                }
                Err(why) => {
                    tracing::warn!(service = %t.service, target = %t.addr, error = %why, "health check fails: down")
                }
            }
            on_change(&t, verdict.healthy);
        }
    }
}

/// Runs one check once; `Err` says why it failed.
pub async fn probe(t: &Target) -> Result<(), String> {
    let timeout = Duration::from_millis(t.check.timeout_ms);
    let run = async {
        match &t.check.probe {
            Probe::Tcp => connect(t.addr).await.map(drop),
            Probe::Http(h) => http(t.addr, h).await,
            Probe::Https(h) => https(t.addr, h).await,
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
    let conn = connect(addr).await?;
    get(conn, addr, h).await
}

async fn https(addr: SocketAddr, h: &HttpProbe) -> Result<(), String> {
    let conn = connect(addr).await?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    // SNI carries the check's Host when it names one, else the address.
    let name = match &h.host {
        Some(host) => {
            ServerName::try_from(host.clone()).map_err(|e| format!("host {host:?}: {e}"))?
        }
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, conn)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    get(tls, addr, h).await
}

/// Sends the GET on an open connection (HTTP/1.1, with hyper: chunked
/// bodies, keep-alive servers and the rest of the protocol as a browser
/// sees them) and judges the answer, whose body is read up to 1 MiB.
async fn get<C: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    conn: C,
    addr: SocketAddr,
    h: &HttpProbe,
) -> Result<(), String> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper::body::Bytes;
    use hyper::header::{CONNECTION, HOST, USER_AGENT};

    let host = h.host.clone().unwrap_or_else(|| addr.to_string());
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(conn))
            .await
            .map_err(|e| format!("HTTP with {addr}: {e}"))?;
    let request = hyper::Request::get(h.path.as_str())
        .header(HOST, host)
        .header(USER_AGENT, "lbfabric-check")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("path {:?}: {e}", h.path))?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("the answer: {e}"))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    // The connection is driven beside the request, in this task.
    let mut answer = std::pin::pin!(answer);
    let mut connection = std::pin::pin!(connection);
    let (status, body) = tokio::select! {
        a = &mut answer => a?,
        c = &mut connection => {
            c.map_err(|e| format!("HTTP with {addr}: {e}"))?;
            answer.await?
        }
    };
    http_verdict(h, status, &body)
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

/// Accepts any certificate chain (see the module docs), but checks that the
/// handshake was signed with the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    lb_proto::handshake_signatures!(0);
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
}
