//! Health checks of this host's own endpoints, as keepalived's checkers do
//! them from the director: TCP connect, HTTP GET (HTTP/1.1 through hyper;
//! status, body regex, MD5 digest of the body; [`http`]), a command's exit
//! status, a UDP exchange, a DNS query and an ICMP echo ([`datagram`]), each
//! with an interval, a timeout and rise/fall counts. A backend starts healthy (keepalived's
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

use lb_proto::model::{HealthCheck, Probe, Service, VirtualAddress};
use tokio::net::TcpStream;
use tokio::sync::watch;

mod datagram;
mod http;

pub use http::http_verdict;

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

/// Called after every probe with its result (`true`: passed) and how long
/// it took: for metrics.
pub type OnProbe = Arc<dyn Fn(&Target, bool, Duration) + Send + Sync>;

/// Runs each target's check on its own interval until `stop`: a task per
/// target, restarted (healthy again) when its check changes.
pub async fn run(
    mut targets: watch::Receiver<Vec<Target>>,
    (on_change, on_probe): (OnChange, Option<OnProbe>),
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
                let task = tokio::spawn(check_task(t.clone(), on_change.clone(), on_probe.clone()));
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

async fn check_task(t: Target, on_change: OnChange, on_probe: Option<OnProbe>) {
    let mut verdict = Verdict::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(t.check.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = std::time::Instant::now();
        let result = probe(&t).await;
        if let Some(f) = &on_probe {
            f(&t, result.is_ok(), started.elapsed());
        }
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
            Probe::Http(h) => http::http(t.addr, h).await,
            Probe::Https(h) => http::https(t.addr, h).await,
            Probe::Exec { command, args } => exec(command, args).await,
            // Silence passes a UDP check without an expected reply: it
            // waits out the timeout itself.
            Probe::Udp(u) => datagram::udp(t.addr, u, timeout).await,
            Probe::Dns(d) => datagram::dns(t.addr, d).await,
            Probe::Ping => datagram::ping(t.addr.ip(), timeout).await,
        }
    };
    if matches!(t.check.probe, Probe::Udp(_)) {
        return run.await;
    }
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", t.check.timeout_ms)),
    }
}

pub(super) async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    if addr.port() == 0 {
        return Err("no port to check (set the check's port)".into());
    }
    TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))
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
mod tests;
