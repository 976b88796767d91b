//! Prometheus metrics, the same way in every process: a
//! [`prometheus_client`] registry under the `lbfabric_` prefix, served as
//! OpenMetrics text at `GET /metrics` on `--metrics-listen`.
//!
//! Two kinds of figure live in a registry. Events (a VIP moved, a check
//! flipped, a reconcile ran) are counters and histograms the code updates
//! where they happen. State (who owns a VIP, the kernel's counters, the
//! Raft term) is read at scrape time by a [`Collector`] from the structure
//! that already holds it, so there is no second copy to keep in step; the
//! [`Scrape`] helper writes such families.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::{Registry, Unit};

/// The label set of every family here: label names are fixed strings,
/// values whatever the fabric names (a service, a VIP, a director).
pub type Labels = Vec<(&'static str, String)>;

/// A family keyed by [`Labels`].
pub type Counters = Family<Labels, Counter>;

/// The OpenMetrics text format, which Prometheus asks for first.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The classic Prometheus text format, for every other client (curl,
/// `promtool check metrics`, older scrapers).
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A registry whose metrics are all named `lbfabric_…`.
pub fn registry() -> Registry {
    Registry::with_prefix("lbfabric")
}

/// Buckets for durations from 100 µs to about 26 s (powers of 2): a Raft
/// write on loopback, a reconcile of thousands of services on an emulated
/// CPU and a slow health check all fall inside.
pub fn duration_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 19,
    ))
}

/// The registry encoded as OpenMetrics text.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "{flag} {addr}: {source} (another process on the port? pick another address, or `off`)"
    )]
    Bind {
        flag: &'static str,
        addr: String,
        source: std::io::Error,
    },
}

/// OpenMetrics text turned into the classic format: the two differ, for
/// what lbfabric writes, only in that a classic counter family is named
/// with its `_total` suffix and that `# UNIT` and `# EOF` do not exist.
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                let _ = writeln!(out, "{prefix}{name}{suffix} {tail}");
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// An agent's metrics flags: off unless asked for (an agent runs on every
/// director and realserver; the operator opens the port where it scrapes).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentFlags {
    /// Where to serve Prometheus metrics (GET /metrics), e.g.
    /// 127.0.0.1:9471; `off` (the default) serves none.
    #[arg(long, env = "LB_METRICS_LISTEN", default_value = "off")]
    pub metrics_listen: String,
    /// Write the bound metrics address to this file once listening (useful with port 0).
    #[arg(long, env = "LB_METRICS_ADDR_FILE")]
    pub metrics_addr_file: Option<std::path::PathBuf>,
}

impl AgentFlags {
    pub async fn listen(&self) -> Result<Option<tokio::net::TcpListener>, MetricsError> {
        let file = self.metrics_addr_file.as_deref();
        listen("--metrics-listen", &self.metrics_listen, file).await
    }
}

/// The listener of an HTTP flag such as `--metrics-listen ADDR` (`None`
/// for `off`), its bound address written to `addr_file` if given; an error
/// names the flag and the address.
pub async fn listen(
    flag: &'static str,
    addr: &str,
    addr_file: Option<&std::path::Path>,
) -> Result<Option<tokio::net::TcpListener>, MetricsError> {
    if addr == "off" {
        return Ok(None);
    }
    let bind = |source| MetricsError::Bind {
        flag,
        addr: addr.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
    if let Some(path) = addr_file {
        let bound = listener.local_addr().map_err(bind)?;
        crate::process::write_addr_file(path, bound).map_err(bind)?;
    }
    Ok(Some(listener))
}

/// The `/metrics` route, to serve alone ([`serve`]) or beside other pages.
pub fn routes(registry: Arc<Registry>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let registry = registry.clone();
            async move {
                // Content negotiation as Prometheus' own clients do it.
                let openmetrics = headers
                    .get_all(axum::http::header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains("application/openmetrics-text"));
                match encode(&registry) {
                    Ok(text) if openmetrics => (
                        axum::http::StatusCode::OK,
                        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
                        text,
                    ),
                    Ok(text) => (
                        axum::http::StatusCode::OK,
                        [(axum::http::header::CONTENT_TYPE, CLASSIC_CONTENT_TYPE)],
                        classic(&text),
                    ),
                    Err(_) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(axum::http::header::CONTENT_TYPE, "text/plain")],
                        "encoding the metrics failed\n".to_string(),
                    ),
                }
            }
        }),
    )
}

/// Serves `router` on `listener` in a task until the process ends; logs
/// where, so an operator finds the port.
pub fn serve(listener: tokio::net::TcpListener, router: axum::Router) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(metrics = ?addr, "serving metrics at /metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    });
}

/// Writes metric families at scrape time (inside a [`Collector`]).
pub struct Scrape<'a>(DescriptorEncoder<'a>);

impl<'a> Scrape<'a> {
    pub fn new(encoder: DescriptorEncoder<'a>) -> Self {
        Scrape(encoder)
    }

    /// A gauge family: one sample per row. Nothing is written for no rows.
    pub fn gauges<V>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        rows: impl IntoIterator<Item = (Labels, V)>,
    ) -> std::fmt::Result
    where
        V: prometheus_client::encoding::EncodeGaugeValue + Clone + std::fmt::Debug,
        ConstGauge<V>: prometheus_client::encoding::EncodeMetric,
    {
        let rows = rows.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
        self.family(name, help, unit, rows)
    }

    /// One gauge without labels.
    pub fn gauge<V>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        value: V,
    ) -> std::fmt::Result
    where
        V: prometheus_client::encoding::EncodeGaugeValue + Clone + std::fmt::Debug,
        ConstGauge<V>: prometheus_client::encoding::EncodeMetric,
    {
        self.gauges(name, help, unit, [(Labels::new(), value)])
    }

    /// A counter family (totals kept elsewhere, such as the kernel's):
    /// the samples are named `NAME_total`.
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        rows: impl IntoIterator<Item = (Labels, u64)>,
    ) -> std::fmt::Result {
        let rows = rows.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
        self.family(name, help, unit, rows)
    }

    /// One family of `rows`' metrics, of their type; nothing for no rows.
    fn family<M: prometheus_client::encoding::EncodeMetric>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        rows: impl IntoIterator<Item = (Labels, M)>,
    ) -> std::fmt::Result {
        let mut rows = rows.into_iter().peekable();
        let Some((_, first)) = rows.peek() else {
            return Ok(());
        };
        let kind = first.metric_type();
        let mut family = self.0.encode_descriptor(name, help, unit.as_ref(), kind)?;
        for (labels, metric) in rows {
            metric.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// A gRPC status code as gRPC names it (`PERMISSION_DENIED`), for labels.
pub fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        let _ = write!(out, "{}", c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_are_named_as_grpc_names_them() {
        assert_eq!(
            code_name(tonic::Code::PermissionDenied),
            "PERMISSION_DENIED"
        );
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(
            code_name(tonic::Code::ResourceExhausted),
            "RESOURCE_EXHAUSTED"
        );
    }

    #[derive(Debug)]
    struct Fixed;
    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
            let mut s = Scrape::new(encoder);
            s.gauges(
                "vip_epoch",
                "Epoch",
                None,
                [(vec![("vip", "10.0.0.1".to_string())], 3u64)],
            )?;
            s.gauges::<u64>("empty", "Nothing", None, [])?;
            s.counters(
                "ipvs_connections",
                "Connections",
                None,
                [(vec![("service", "web".to_string())], 7)],
            )
        }
    }

    #[test]
    fn scraped_families_are_prefixed_and_counters_end_in_total() {
        let mut r = registry();
        r.register_collector(Box::new(Fixed));
        let text = encode(&r).expect("encode");
        assert!(
            text.contains("lbfabric_vip_epoch{vip=\"10.0.0.1\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("lbfabric_ipvs_connections_total{service=\"web\"} 7"),
            "{text}"
        );
        assert!(!text.contains("empty"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        let old = classic(&text);
        assert!(
            old.contains("# TYPE lbfabric_ipvs_connections_total counter\n"),
            "{old}"
        );
        assert!(
            old.contains("# HELP lbfabric_ipvs_connections_total Connections\n"),
            "{old}"
        );
        assert!(old.contains("# TYPE lbfabric_vip_epoch gauge\n"), "{old}");
        assert!(!old.contains("# EOF"), "{old}");
    }
}
