//! A connection to the controller cluster that follows leader redirects.
//!
//! `--controller` may list several addresses. A call that meets `UNAVAILABLE`
//! retries at the address in the `x-lb-leader` metadata when there is one, at
//! the next listed address when the node is unreachable, and waits briefly
//! when no leader is elected yet — all within one deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Response, Status};

/// Metadata key the controller puts the leader's address in.
pub const LEADER_METADATA: &str = "x-lb-leader";

/// The leader's address from an `UNAVAILABLE` redirect, if the status carries one.
pub fn leader_hint(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// A lazily connected channel to `addr` (`host:port`, or a URI); with
/// `tls`, over TLS (`https`) verifying the controller against the pinned CA.
pub fn channel(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Channel, Status> {
    Ok(endpoint(addr, tls)?.connect_lazy())
}

/// How every client here reaches a controller at `addr`: `http`, or with
/// `tls` `https`; a 2 s connect timeout (callers may set their own), no
/// Nagle delay.
pub fn endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, Status> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("{scheme}://{addr}")
    };
    let bad = |e: &dyn std::fmt::Display| {
        Status::invalid_argument(format!("controller address {addr}: {e}"))
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| bad(&e))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(|e| bad(&e))?;
    }
    Ok(endpoint)
}

/// Splits `a:1,b:2` into addresses.
pub fn addresses(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect()
}

pub struct Controller {
    addrs: Vec<String>,
    current: usize,
    channel: Option<Channel>,
    deadline: Duration,
    tls: Option<ClientTlsConfig>,
}

impl Controller {
    pub fn new(addrs: &str, deadline: Duration) -> Result<Self, Status> {
        let addrs = addresses(addrs);
        if addrs.is_empty() {
            return Err(Status::invalid_argument("controller: no address given"));
        }
        Ok(Controller {
            addrs,
            current: 0,
            channel: None,
            deadline,
            tls: None,
        })
    }

    /// Connects over TLS with these settings.
    pub fn with_tls(mut self, tls: Option<ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    fn channel(&mut self) -> Result<Channel, Status> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let channel = channel(&self.addrs[self.current], self.tls.as_ref())?;
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    fn switch_to(&mut self, addr: String) {
        self.channel = None;
        match self.addrs.iter().position(|a| *a == addr) {
            Some(i) => self.current = i,
            None => {
                self.addrs.push(addr);
                self.current = self.addrs.len() - 1;
            }
        }
    }

    /// Runs `call` against the leader (or any node, for reads), following redirects.
    pub async fn call<T, F, Fut>(&mut self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let give_up = Instant::now() + self.deadline;
        loop {
            let status = match call(self.channel()?).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => s,
            };
            if status.code() != Code::Unavailable || Instant::now() >= give_up {
                return Err(status);
            }
            match leader_hint(&status) {
                Some(addr) => self.switch_to(addr),
                None => {
                    // Unreachable node or an election under way: try the next address.
                    self.channel = None;
                    self.current = (self.current + 1) % self.addrs.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
