//! A connection to the controller cluster that follows leader redirects.
//!
//! `--controller` may list several addresses ([`Controllers`], parsed once).
//! One [`Follower`] decides where to go after a failure, for everyone: the
//! address in the `x-lb-leader` metadata when there is one (unless that
//! leader just failed), else the next listed address after a backoff. The
//! agents' streams run on it through [`follow_leader`]; lbctl's unary calls
//! through [`Controller::call`], within one deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Response, Status};

/// Metadata key the controller puts the leader's address in.
pub const LEADER_METADATA: &str = "x-lb-leader";
/// Metadata key of a rate-limited call's wait (milliseconds): the call was
/// refused before it was handled, so sending it again then is safe.
pub const RETRY_AFTER_METADATA: &str = "retry-after-ms";

/// The wait a `RESOURCE_EXHAUSTED` answer asks for, if it names one.
pub fn retry_after(status: &Status) -> Option<Duration> {
    (status.code() == Code::ResourceExhausted)
        .then(|| status.metadata().get(RETRY_AFTER_METADATA))
        .flatten()
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .map(Duration::from_millis)
}

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
    Ok(connect_lazy(&endpoint(addr, tls)?))
}

/// How long sent data may stay unacknowledged before the kernel gives the
/// connection up (`TCP_USER_TIMEOUT`): a peer that vanished while a report
/// or a Raft message was in flight is dropped in seconds, whatever the
/// HTTP/2 pings do, rather than after TCP's retransmissions (minutes).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(3);
const TCP_KEEPALIVE: Duration = Duration::from_secs(5);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// `endpoint`'s channel, connected lazily over TCP with the settings of
/// [`endpoint`] plus [`TCP_USER_TIMEOUT`] (tonic's own connector has no
/// setting for it; its TLS and connect timeout still apply).
pub fn connect_lazy(endpoint: &Endpoint) -> Channel {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(TCP_KEEPALIVE));
    http.set_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL));
    http.set_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES));
    http.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
    endpoint.connect_with_connector_lazy(http)
}

/// How every client here reaches a controller at `addr`: `http`, or with
/// `tls` `https`; a 2 s connect timeout (callers may set their own), no
/// Nagle delay, and keepalives — HTTP/2 pings every second, answered within
/// a second, and TCP keepalive — so that a controller host that died without
/// a reset is noticed in seconds, not when TCP gives up minutes later
/// ([`connect_lazy`] adds the TCP user timeout).
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
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(1))
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .tcp_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL))
        .tcp_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(|e| bad(&e))?;
    }
    Ok(endpoint)
}

/// The controller addresses `--controller` lists (`a:1,b:2`), parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controllers(Vec<String>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("controller: no address given (a comma-separated list of host:port)")]
pub struct NoController;

impl std::str::FromStr for Controllers {
    type Err = NoController;

    fn from_str(list: &str) -> Result<Self, NoController> {
        let addrs: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect();
        if addrs.is_empty() {
            return Err(NoController);
        }
        Ok(Controllers(addrs))
    }
}

impl Controllers {
    pub fn addrs(&self) -> &[String] {
        &self.0
    }
}

impl std::fmt::Display for Controllers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Where to go after a failure, as [`Follower::failed`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// To the leader a controller named: at once.
    Leader(String),
    /// To the next listed controller, after `delay`.
    Other { delay: Duration },
}

/// Which controller to talk to: follows leader redirects, skips a leader
/// that recently failed at the transport level (followers keep naming a
/// dead leader until they elect a new one, and following such a hint again
/// would only burn time), otherwise rotates through the list, backing off
/// from `first` to `max`.
#[derive(Debug)]
pub struct Follower {
    addrs: Vec<String>,
    target: String,
    next: usize,
    unreachable: std::collections::BTreeMap<String, Instant>,
    backoff: Backoff,
}

/// Exponential backoff from `first` to `max`, each delay with jitter
/// (between half and all of it), so that agents that lost a controller
/// together do not retry in step. The delays are backon's: its jitter adds
/// up to the delay again, so it counts from half of each.
#[derive(Debug)]
pub struct Backoff {
    schedule: backon::ExponentialBuilder,
    delays: backon::ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        use backon::BackoffBuilder as _;
        let schedule = backon::ExponentialBuilder::new()
            .with_min_delay(first / 2)
            .with_max_delay(max / 2)
            .with_jitter()
            .without_max_times();
        Backoff {
            delays: schedule.build(),
            schedule,
            max,
        }
    }

    /// The next delay; the one after it doubles, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        // Never ends: no limit on the number of tries.
        self.delays.next().unwrap_or(self.max)
    }

    /// Starts over from `first`.
    pub fn reset(&mut self) {
        use backon::BackoffBuilder as _;
        self.delays = self.schedule.build();
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        self.max
    }
}

/// How long a controller that failed at the transport level is not
/// followed to by a redirect.
const UNREACHABLE_FOR: Duration = Duration::from_secs(2);

impl Follower {
    pub fn new(controllers: &Controllers, first: Duration, max: Duration) -> Self {
        Follower {
            addrs: controllers.0.clone(),
            target: controllers.0[0].clone(),
            next: 0,
            unreachable: Default::default(),
            backoff: Backoff::new(first, max),
        }
    }

    /// The controller to talk to now.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// A session ended without an error (the controller closed it): come
    /// back to the same controller after the shortest delay.
    pub fn ended(&mut self) -> Duration {
        self.backoff.reset();
        self.backoff.next_delay()
    }

    /// A call or session failed with `status`: where to go next.
    pub fn failed(&mut self, status: &Status) -> Next {
        let recently_failed = |addr: &str, failed: &std::collections::BTreeMap<String, Instant>| {
            failed
                .get(addr)
                .is_some_and(|at| at.elapsed() < UNREACHABLE_FOR)
        };
        if let Some(leader) = leader_hint(status) {
            if leader != self.target && !recently_failed(&leader, &self.unreachable) {
                self.target = leader.clone();
                return Next::Leader(leader);
            }
        }
        // Transport failures carry their cause; a controller's own answer
        // ("no leader elected yet") does not.
        if std::error::Error::source(status).is_some() {
            self.unreachable.insert(self.target.clone(), Instant::now());
        }
        self.next = (self.next + 1) % self.addrs.len();
        self.target = self.addrs[self.next].clone();
        Next::Other {
            delay: self.backoff.next_delay(),
        }
    }
}

/// Notices a controller that stopped answering an agent's stream: the
/// controller answers every report, so a report left unanswered for the
/// deadline means the controller (or the path to it) is stalled, and the
/// stream is dropped for a new connection — at once, not when TCP notices.
#[derive(Debug, Clone)]
pub struct AckDeadline {
    deadline: Duration,
    /// When the oldest unanswered report went out.
    waiting_since: Option<Instant>,
}

impl AckDeadline {
    pub fn new(deadline: Duration) -> Self {
        AckDeadline {
            deadline,
            waiting_since: None,
        }
    }

    /// Waits at least `at_least` (a director: a whole lease, since a
    /// controller that answers within the lease still counts for it).
    pub fn at_least(&mut self, at_least: Duration) {
        self.deadline = self.deadline.max(at_least);
    }

    /// A report went out at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.waiting_since.get_or_insert(now);
    }

    /// The controller answered.
    pub fn heard(&mut self) {
        self.waiting_since = None;
    }

    /// `Err` once a report has waited longer than the deadline at `now`.
    pub fn check(&self, now: Instant) -> Result<(), Status> {
        match self.waiting_since {
            Some(since) if now.duration_since(since) >= self.deadline => {
                Err(Status::deadline_exceeded(format!(
                    "controller: no answer to a report within {} ms",
                    self.deadline.as_millis()
                )))
            }
            _ => Ok(()),
        }
    }
}

/// The ack deadline of an agent reporting every `heartbeat`: five
/// heartbeats, and never under a second. Dropping a stream costs a new
/// connection (a TLS handshake), so only a controller silent for that long
/// is left for another.
pub fn ack_deadline(heartbeat: Duration) -> Duration {
    (heartbeat * 5).max(Duration::from_secs(1))
}

/// Keeps `session` connected to the one controller at `addr` until `stop`
/// turns true, reconnecting after `backoff` (directors keep such a stream
/// with every controller).
pub async fn keep_connected(
    addr: String,
    session: &mut impl Session,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut backoff: Backoff,
) {
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            o = session.run(&addr) => o,
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Err(status) = outcome {
            tracing::warn!(controller = %addr, error = %status.message(), "controller stream lost");
        }
        // A stream that lasted a while starts the backoff over.
        if started.elapsed() > backoff.max() {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One stream with one controller, as an agent runs it.
pub trait Session: Send {
    /// Runs a session with the controller at `addr` until it ends.
    fn run(&mut self, addr: &str) -> impl Future<Output = Result<(), Status>> + Send;
}

/// Keeps `session` connected to the controller leader until `stop` turns
/// true: follows redirects, reconnects with backoff, skips dead leaders.
/// The one session loop of both agents.
pub async fn follow_leader(
    mut follower: Follower,
    session: &mut impl Session,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let outcome = tokio::select! {
            o = session.run(follower.target()) => o,
            _ = stop.wait_for(|s| *s) => return,
        };
        let delay = match outcome {
            Ok(()) => follower.ended(),
            Err(status) => {
                let from = follower.target().to_string();
                match follower.failed(&status) {
                    Next::Leader(leader) => {
                        tracing::info!(leader = %leader, "following the controller leader");
                        continue;
                    }
                    Next::Other { delay } => {
                        tracing::warn!(controller = %from, error = %status.message(), "controller stream lost");
                        delay
                    }
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// True when an `UNAVAILABLE` call surely changed nothing, so sending it
/// again cannot apply a write twice: a controller's own answer (a redirect,
/// or no leader yet: nothing was proposed) or a connection that was never
/// made. A connection that broke once the request was out (an HTTP/2
/// keepalive timeout while a busy leader applies a large import, a reset)
/// may have carried it to the leader.
pub fn never_reached_the_leader(status: &Status) -> bool {
    if leader_hint(status).is_some() {
        return true;
    }
    let mut cause = std::error::Error::source(status);
    if cause.is_none() {
        return true;
    }
    while let Some(e) = cause {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// How long lbctl's unary calls wait for an HTTP/2 ping's answer: a leader
/// busy applying a large import may answer pings late, and a call already
/// has its own deadline, so the agents' one second would only break calls
/// that were going to succeed.
const UNARY_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Unary calls to the controller cluster that follow the leader.
pub struct Controller {
    follower: Follower,
    /// The channel to the follower's target, while it stays the target.
    channel: Option<(String, Channel)>,
    deadline: Duration,
    tls: Option<ClientTlsConfig>,
}

impl Controller {
    /// Retries within `deadline`, every 100 ms while no leader answers.
    pub fn new(controllers: &Controllers, deadline: Duration) -> Self {
        let pause = Duration::from_millis(100);
        Controller {
            follower: Follower::new(controllers, pause, pause),
            channel: None,
            deadline,
            tls: None,
        }
    }

    /// Connects over TLS with these settings.
    pub fn with_tls(mut self, tls: Option<ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    fn channel(&mut self) -> Result<Channel, Status> {
        let target = self.follower.target();
        if let Some((addr, c)) = &self.channel {
            if addr == target {
                return Ok(c.clone());
            }
        }
        let endpoint =
            endpoint(target, self.tls.as_ref())?.keep_alive_timeout(UNARY_KEEPALIVE_TIMEOUT);
        let channel = connect_lazy(&endpoint);
        self.channel = Some((target.to_string(), channel.clone()));
        Ok(channel)
    }

    /// Runs `call` against the leader (or any node, for reads), following redirects.
    pub async fn call<T, F, Fut>(&mut self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let give_up = Instant::now() + self.deadline;
        loop {
            // The deadline bounds the answer too, not only the redirects: a
            // leader without a quorum holds a write until its own deadline.
            let left = give_up.saturating_duration_since(Instant::now());
            let status = match tokio::time::timeout(left, call(self.channel()?)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) => s,
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "no answer within {} s; a write may still be applied: check (e.g. \
                         get or list) before sending it again",
                        self.deadline.as_secs()
                    )))
                }
            };
            // Over a rate limit: wait as asked when that fits the deadline.
            if let Some(wait) = retry_after(&status) {
                if Instant::now() + wait >= give_up {
                    return Err(status);
                }
                tokio::time::sleep(wait).await;
                continue;
            }
            if status.code() != Code::Unavailable || Instant::now() >= give_up {
                return Err(status);
            }
            if !never_reached_the_leader(&status) {
                return Err(Status::unavailable(format!(
                    "{}; the connection broke after the request was sent, so it may have been \
                     applied: check (e.g. get or list) before sending it again",
                    status.message()
                )));
            }
            if let Next::Other { delay } = self.follower.failed(&status) {
                // A retry that would start past the deadline is not made:
                // this error is the answer. Sleeping past it left the next
                // try no time at all, and a controller that refused every
                // connection was reported as a request that may have been
                // applied (a deadline exceeded).
                if Instant::now() + delay >= give_up {
                    return Err(status);
                }
                // Unreachable node or an election under way: try the next address.
                self.channel = None;
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
