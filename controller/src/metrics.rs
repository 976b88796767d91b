//! The controller's event metrics: what happened since the process started
//! (writes and their latency, VIP moves and why, rejected calls, open agent
//! streams). The state the fabric is in (Raft role, VIP owners, live
//! directors) is read at scrape time instead, in [`crate::http`].

use lb_proto::metrics::{
    duration_histogram, Counters, Family, Gauge, Histogram, Labels, Registry, Unit,
};

/// Why the leader moved a VIP, as the `cause` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveCause {
    /// Nobody owned it (a new VIP, or none was eligible before).
    Unowned,
    /// Its owner went silent for the lease and the margin.
    OwnerSilent,
    /// Its owner is stopping (SIGTERM hand-over).
    OwnerLeaving,
    /// Its owner no longer fits (a failing local check, labels changed).
    OwnerUnfit,
    /// A preferred director came back and took it.
    Preempted,
    /// Taken from its owner with nobody to give it to.
    Released,
}

impl MoveCause {
    pub fn label(self) -> &'static str {
        match self {
            MoveCause::Unowned => "unowned",
            MoveCause::OwnerSilent => "owner_silent",
            MoveCause::OwnerLeaving => "owner_leaving",
            MoveCause::OwnerUnfit => "owner_unfit",
            MoveCause::Preempted => "preempted",
            MoveCause::Released => "released",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    /// Replicated writes this node made (as leader), committed or not.
    pub write_seconds: Histogram,
    pub vip_moves: Counters,
    /// Calls answered with an error status, by gRPC code.
    pub rejected: Counters,
    pub streams: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            write_seconds: duration_histogram(),
            vip_moves: Counters::default(),
            rejected: Counters::default(),
            streams: Family::default(),
        }
    }
}

impl Metrics {
    /// Adds these metrics to `registry` (they stay shared with `self`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "raft_write_duration",
            "Time from a write's proposal to its commit and apply on this node (leader)",
            Unit::Seconds,
            self.write_seconds.clone(),
        );
        registry.register(
            "vip_moves",
            "VIP ownership changes the leader committed, by cause",
            self.vip_moves.clone(),
        );
        registry.register(
            "api_rejected_requests",
            "Calls answered with an error status, by gRPC code",
            self.rejected.clone(),
        );
        registry.register(
            "agent_streams_open",
            "Agent streams open on this node, by role (director, realserver)",
            self.streams.clone(),
        );
    }

    pub fn moved(&self, cause: MoveCause) {
        self.vip_moves
            .get_or_create(&vec![("cause", cause.label().to_string())])
            .inc();
    }

    /// The open-stream gauge of `role`; the caller adds and removes itself.
    pub fn stream_gauge(&self, role: &str) -> Gauge {
        self.streams
            .get_or_create(&vec![("role", role.to_string())])
            .clone()
    }

    pub fn rejected(&self, code: tonic::Code) {
        self.rejected
            .get_or_create(&vec![("code", lb_proto::metrics::code_name(code))])
            .inc();
    }
}
