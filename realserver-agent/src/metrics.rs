//! The realserver agent's metrics: each probe of a health check (result
//! and latency) and each verdict change, counted as they happen; the host
//! changes the agent made, split into set-up for a new configuration and
//! repairs of drift found by the periodic pass; and at scrape time each
//! service's verdict and whether the host is draining.

use std::time::Duration;

use lb_proto::metrics::{
    duration_histogram, Collector, Counters, DescriptorEncoder, Family, Histogram, Labels,
    Registry, Scrape, Unit,
};

#[derive(Debug)]
pub struct Metrics {
    check_seconds: Family<Labels, Histogram>,
    check_results: Counters,
    transitions: Counters,
    host_changes: Counters,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            check_seconds: Family::new_with_constructor(duration_histogram),
            check_results: Counters::default(),
            transitions: Counters::default(),
            host_changes: Counters::default(),
        }
    }
}

/// Why the agent changed the host.
#[derive(Debug, Clone, Copy)]
pub enum HostChange {
    /// A new or changed configuration (or the first round).
    Configuration,
    /// The configuration was the same: something else had undone the
    /// agent's work (an address removed by hand, a sysctl reset).
    Repair,
}

impl Metrics {
    pub fn probed(&self, service: &str, passed: bool, took: Duration) {
        let svc = vec![("service", service.to_string())];
        self.check_seconds
            .get_or_create(&svc)
            .observe(took.as_secs_f64());
        let result = if passed { "pass" } else { "fail" };
        let labels = vec![("service", service.to_string()), ("result", result.into())];
        self.check_results.get_or_create(&labels).inc();
    }

    pub fn flipped(&self, service: &str, up: bool) {
        let to = if up { "up" } else { "down" };
        let labels = vec![("service", service.to_string()), ("to", to.into())];
        self.transitions.get_or_create(&labels).inc();
    }

    pub fn host_changed(&self, why: HostChange, n: u64) {
        if n == 0 {
            return;
        }
        let cause = match why {
            HostChange::Configuration => "configuration",
            HostChange::Repair => "repair",
        };
        self.host_changes
            .get_or_create(&vec![("cause", cause.to_string())])
            .inc_by(n);
    }

    /// The registry: these metrics and `now`'s answers at each scrape.
    pub fn registry(&self, now: impl Fn() -> Now + Send + Sync + 'static) -> Registry {
        let mut r = lb_proto::metrics::registry();
        r.register_with_unit(
            "check_duration",
            "Time each health-check probe took, by service",
            Unit::Seconds,
            self.check_seconds.clone(),
        );
        r.register(
            "check_results",
            "Health-check probes, by service and result (pass, fail)",
            self.check_results.clone(),
        );
        r.register(
            "check_transitions",
            "Health-check verdict changes (after rise/fall), by service and new state",
            self.transitions.clone(),
        );
        r.register(
            "host_changes",
            "Addresses and sysctls the agent set or removed, by cause (configuration, repair)",
            self.host_changes.clone(),
        );
        r.register_collector(Box::new(Observed(Box::new(now))));
        r
    }
}

/// The agent's state at a scrape.
#[derive(Debug, Default)]
pub struct Now {
    /// Each service this host backs, and whether its check passes here.
    pub services: Vec<(String, bool)>,
    pub draining: bool,
}

struct Observed(Box<dyn Fn() -> Now + Send + Sync>);

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observed")
    }
}

impl Collector for Observed {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let now = (self.0)();
        let mut s = Scrape::new(encoder);
        s.gauges(
            "check_up",
            "1 while the service's health check passes on this host, 0 while it fails",
            None,
            now.services
                .iter()
                .map(|(name, up)| (vec![("service", name.clone())], i64::from(*up))),
        )?;
        s.gauge(
            "draining",
            "1 while the host drains (stopping, or drained by an operator)",
            None,
            i64::from(now.draining),
        )
    }
}
