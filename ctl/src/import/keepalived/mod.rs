//! keepalived.conf → services.
//!
//! `virtual_server IP PORT`, `virtual_server fwmark N` and `virtual_server
//! group NAME` (one service per member of the `virtual_server_group`) become
//! services; `real_server` blocks their realservers. keepalived checks each
//! realserver with its own checker block, lbfabric each service with one
//! check: the first realserver's check becomes the service's, and any other
//! that differs is noted. keepalived's checker semantics map as: delay_loop →
//! interval, connect_timeout → timeout, retry/nb_get_retry N → fall N+1 (the
//! first failure plus N retries), rise 1 (keepalived puts a server back on
//! its first success).
//!
//! `vrrp_instance` blocks say which director owns which VIP: the directors
//! named by `global_defs { router_id }`, ordered by VRRP priority, become the
//! services' preferred owners (several files, one per director, merge). A
//! VIP no virtual server uses — keepalived's floating VIP in front of a
//! proxy — becomes a local service, its `track_script` the check ([`vrrp`]).

use std::collections::BTreeMap;

use lb_proto::pb;

use super::syntax::{self, Node};
use super::{endpoint_name, sanitize_name, seconds, Found, ImportError, Imported};

mod keywords;
mod vrrp;

use keywords::KEYWORDS;

/// keepalived's defaults where lbfabric's differ.
const DEFAULT_DELAY_LOOP: &str = "60";
const DEFAULT_CONNECT_TIMEOUT: &str = "5";
const DEFAULT_RETRY: u32 = 1;

pub fn parse(file: &str, text: &str) -> Result<Imported, ImportError> {
    let (tokens, comments) = syntax::lex(text, false);
    let nodes = syntax::parse(file, &tokens, &|w| KEYWORDS.contains(&w))?;
    let mut r = Reader {
        file,
        out: Imported::default(),
        groups: BTreeMap::new(),
        owners: BTreeMap::new(),
        scripts: BTreeMap::new(),
        floating: Vec::new(),
        router_id: None,
        hints: comments
            .iter()
            .filter_map(|(line, c)| {
                let name = c.strip_prefix("lbfabric service ")?.trim();
                Some((*line, name.to_string()))
            })
            .collect(),
    };
    // Groups, router id and VRRP first: virtual servers refer to them, and
    // VRRP instances to their scripts.
    for n in &nodes {
        match n.key.as_str() {
            "global_defs" => r.global_defs(n),
            "virtual_server_group" => r.group(n)?,
            "vrrp_script" => r.vrrp_script(n)?,
            _ => {}
        }
    }
    for n in nodes.iter().filter(|n| n.key == "vrrp_instance") {
        r.vrrp(n)?;
    }
    for n in &nodes {
        match n.key.as_str() {
            "global_defs" | "virtual_server_group" | "vrrp_instance" | "vrrp_script" => {}
            "virtual_server" => r.virtual_server(n)?,
            "vrrp_sync_group" => r.out.note(
                n.line,
                &n.directive(),
                "VRRP is replaced by the controller's per-VIP owner election; nothing to import",
            ),
            "include" => r.out.note(
                n.line,
                &n.directive(),
                "not followed: import the included file too (give several files)",
            ),
            _ => r
                .out
                .note(n.line, &n.directive(), "not an lbfabric setting"),
        }
    }
    r.floating_services();
    let Reader {
        mut out,
        owners,
        router_id,
        ..
    } = r;
    if let Some(director) = router_id {
        for (vip, priority) in owners {
            out.owners.push(super::VrrpOwner {
                vip,
                director: director.clone(),
                priority,
            });
        }
    }
    super::unique_names(&mut out.services);
    Ok(out)
}

/// A member of a `virtual_server_group`.
#[derive(Debug, Clone)]
enum Member {
    Endpoint(String, u32),
    Fwmark(u32),
}

struct Reader<'a> {
    file: &'a str,
    out: Imported,
    groups: BTreeMap<String, Vec<Member>>,
    /// VIP → this director's VRRP priority for it.
    owners: BTreeMap<String, u32>,
    /// `vrrp_script` checks, by name, and the VRRP instances' VIPs with
    /// their tracked script: what becomes a local service (see [`vrrp`]).
    scripts: BTreeMap<String, pb::HealthCheck>,
    floating: Vec<vrrp::Floating>,
    router_id: Option<String>,
    /// Comment lines `# lbfabric service NAME` (written by `lbctl export`).
    hints: BTreeMap<usize, String>,
}

impl Reader<'_> {
    fn error(&self, n: &Node, message: impl Into<String>) -> ImportError {
        n.error(self.file, message)
    }

    fn number(&self, n: &Node, index: usize) -> Result<u32, ImportError> {
        n.number(self.file, index)
    }

    fn arg<'n>(&self, n: &'n Node, index: usize) -> Result<&'n str, ImportError> {
        n.arg(self.file, index)
    }

    fn duration(&self, n: &Node) -> Result<prost_types::Duration, ImportError> {
        let text = self.arg(n, 0)?;
        seconds(text).ok_or_else(|| self.error(n, format!("{text:?} is not a number of seconds")))
    }

    fn global_defs(&mut self, n: &Node) {
        for c in n.children() {
            match (c.key.as_str(), c.args.first()) {
                ("router_id", Some(id)) => self.router_id = Some(sanitize_name(id)),
                _ => self.out.note(
                    c.line,
                    &c.directive(),
                    "global setting with no lbfabric equivalent",
                ),
            }
        }
    }

    fn group(&mut self, n: &Node) -> Result<(), ImportError> {
        let name = self.arg(n, 0)?.to_string();
        let mut members = Vec::new();
        for c in n.children() {
            if c.key == "fwmark" {
                members.push(Member::Fwmark(self.number(c, 0)?));
                continue;
            }
            // `ADDRESS PORT` or a range `10.0.0.1-10 PORT` (last octet).
            let port = self.number(c, 0)?;
            match c.key.split_once('-') {
                Some((first, last)) if !first.contains(':') => {
                    let (prefix, start) = first
                        .rsplit_once('.')
                        .ok_or_else(|| self.error(c, "range must look like 10.0.0.1-10"))?;
                    let start: u8 = start
                        .parse()
                        .map_err(|_| self.error(c, "range must look like 10.0.0.1-10"))?;
                    let end: u8 = last
                        .parse()
                        .map_err(|_| self.error(c, "range end must be 0..255"))?;
                    if end < start {
                        return Err(self.error(c, "range ends before it starts"));
                    }
                    for octet in start..=end {
                        members.push(Member::Endpoint(format!("{prefix}.{octet}"), port));
                    }
                }
                _ => members.push(Member::Endpoint(c.key.clone(), port)),
            }
        }
        if members.is_empty() {
            self.out
                .note(n.line, &n.directive(), "empty group: no services from it");
        }
        self.groups.insert(name, members);
        Ok(())
    }

    fn virtual_server(&mut self, n: &Node) -> Result<(), ImportError> {
        let hint = self
            .hints
            .get(&n.line)
            .or_else(|| self.hints.get(&(n.line.saturating_sub(1))))
            .cloned();
        let members = match n.args.first().map(String::as_str) {
            Some("fwmark") => vec![Member::Fwmark(self.number(n, 1)?)],
            Some("group") => {
                let name = self.arg(n, 1)?;
                self.groups.get(name).cloned().ok_or_else(|| {
                    self.error(n, format!("no virtual_server_group {name} is defined"))
                })?
            }
            Some(address) => vec![Member::Endpoint(address.to_string(), self.number(n, 1)?)],
            None => return Err(self.error(n, "needs ADDRESS PORT, fwmark N or group NAME")),
        };
        let template = self.service_block(n)?;
        let group = (n.args.first().map(String::as_str) == Some("group"))
            .then(|| sanitize_name(&n.args[1]));
        let protocol = match &template.virtual_address {
            Some(pb::service::VirtualAddress::Endpoint(e)) => e.protocol.clone(),
            _ => "tcp".to_string(),
        };
        for m in members {
            let mut service = template.clone();
            let name = match &m {
                Member::Endpoint(address, port) => {
                    service.virtual_address =
                        Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
                            address: address.clone(),
                            port: *port,
                            protocol: protocol.clone(),
                        }));
                    endpoint_name(address, *port, &protocol)
                }
                Member::Fwmark(mark) => {
                    let family = if service.realservers.iter().any(|r| r.address.contains(':')) {
                        "inet6"
                    } else {
                        "inet"
                    };
                    service.virtual_address =
                        Some(pb::service::VirtualAddress::Fwmark(pb::Fwmark {
                            mark: *mark,
                            family: family.into(),
                            ..Default::default()
                        }));
                    format!("fwmark-{mark}")
                }
            };
            service.name = match (&hint, &group) {
                (Some(h), None) => sanitize_name(h),
                (_, Some(g)) => format!("{g}-{name}"),
                (None, None) => name,
            };
            service.name = sanitize_name(&service.name);
            self.out.services.push(Found {
                file: self.file.to_string(),
                line: n.line,
                directive: n.directive(),
                service,
            });
        }
        Ok(())
    }

    /// Everything inside a virtual_server block; the address is set by the caller.
    fn service_block(&mut self, n: &Node) -> Result<pb::Service, ImportError> {
        let mut s = pb::Service {
            scheduler: "wlc".into(),
            mode: "nat".into(), // keepalived's default lb_kind
            virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
                protocol: "tcp".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut delay_loop = seconds(DEFAULT_DELAY_LOOP);
        let mut virtualhost = String::new();
        let mut checks: Vec<(usize, String, Option<pb::HealthCheck>)> = Vec::new();
        for c in n.children() {
            match c.key.as_str() {
                "delay_loop" => delay_loop = Some(self.duration(c)?),
                "lb_algo" | "lvs_sched" => s.scheduler = self.arg(c, 0)?.to_ascii_lowercase(),
                "lb_kind" | "lvs_method" => s.mode = mode(self.arg(c, 0)?),
                "persistence_timeout" => {
                    let p = s.persistence.get_or_insert_with(Default::default);
                    p.timeout_seconds = self.number(c, 0)?;
                }
                "persistence_granularity" => {
                    let p = s.persistence.get_or_insert_with(Default::default);
                    p.netmask = self.arg(c, 0)?.to_string();
                }
                "protocol" => {
                    if let Some(pb::service::VirtualAddress::Endpoint(e)) = &mut s.virtual_address {
                        e.protocol = self.arg(c, 0)?.to_ascii_lowercase();
                    }
                }
                "sorry_server" => {
                    s.sorry_server = Some(pb::Backend {
                        address: self.arg(c, 0)?.to_string(),
                        port: self.number(c, 1)?,
                    })
                }
                "quorum" => s.quorum = self.number(c, 0)?,
                "hysteresis" => s.hysteresis = self.number(c, 0)?,
                "ops" => s.one_packet = true,
                "sh-port" | "sh-fallback" | "mh-port" | "mh-fallback" => {
                    s.scheduler_flags.push(c.key.clone())
                }
                "virtualhost" => virtualhost = self.arg(c, 0)?.to_string(),
                "real_server" => {
                    let (rs, check) = self.real_server(c, &s.mode)?;
                    s.realservers.push(rs);
                    checks.push((c.line, c.directive(), check));
                }
                "alpha" => self.out.note(
                    c.line,
                    &c.directive(),
                    "lbfabric counts a realserver up until its check fails (no alpha start)",
                ),
                "quorum_up" | "quorum_down" => self.out.note(
                    c.line,
                    &c.directive(),
                    "a director setting: lb-director --on-quorum-change PROGRAM runs it with SERVICE UP|DOWN VIP on the VIP's owner",
                ),
                "omega" => self.out.note(
                    c.line,
                    &c.directive(),
                    "lbfabric runs no scripts at shutdown; --on-vip-change runs as the VIPs go",
                ),
                _ => self
                    .out
                    .note(c.line, &c.directive(), "not an lbfabric setting"),
            }
        }
        // One check per service: the first realserver's; others must agree.
        let mut first: Option<&(usize, String, Option<pb::HealthCheck>)> = None;
        for entry in &checks {
            match first {
                None => first = Some(entry),
                Some(f) if f.2 != entry.2 => self.out.note(
                    entry.0,
                    &entry.1,
                    format!(
                        "its check differs from the one of line {}; lbfabric runs one check per service and keeps that one",
                        f.0
                    ),
                ),
                Some(_) => {}
            }
        }
        if let Some(mut check) = first.and_then(|f| f.2.clone()) {
            if check.interval.is_none() {
                check.interval = delay_loop;
            }
            if check.http_host.is_empty() && check.r#type.starts_with("http") {
                check.http_host = virtualhost;
            }
            let ms = |d: &Option<prost_types::Duration>| {
                d.map(|d| d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
            };
            if ms(&check.timeout) > ms(&check.interval) {
                self.out.note(
                    n.line,
                    &n.directive(),
                    "connect_timeout is longer than delay_loop; lbfabric caps the timeout at the interval",
                );
                check.timeout = check.interval;
            }
            s.health_check = Some(check);
        }
        Ok(s)
    }

    fn real_server(
        &mut self,
        n: &Node,
        service_mode: &str,
    ) -> Result<(pb::RealServer, Option<pb::HealthCheck>), ImportError> {
        let mut rs = pb::RealServer {
            address: self.arg(n, 0)?.to_string(),
            port: match n.args.get(1) {
                Some(_) => self.number(n, 1)?,
                None => 0,
            },
            weight: Some(1),
            ..Default::default()
        };
        let mut check: Option<pb::HealthCheck> = None;
        let mut inhibit = false;
        for c in n.children() {
            match c.key.as_str() {
                "weight" => rs.weight = Some(self.number(c, 0)?),
                "inhibit_on_failure" => inhibit = true,
                "uthreshold" => rs.upper_threshold = self.number(c, 0)?,
                "lthreshold" => rs.lower_threshold = self.number(c, 0)?,
                "TCP_CHECK" | "HTTP_GET" | "SSL_GET" | "MISC_CHECK" | "UDP_CHECK" | "DNS_CHECK"
                | "PING_CHECK" => {
                    if check.is_some() {
                        self.out.note(
                            c.line,
                            &c.directive(),
                            "a second checker: lbfabric runs one check per service",
                        );
                        continue;
                    }
                    check = Some(self.checker(c)?);
                }
                "lb_kind" | "lvs_method" if mode(self.arg(c, 0)?) != service_mode => self.out.note(
                    c.line,
                    &c.directive(),
                    "lbfabric forwards every realserver of a service the same way",
                ),
                "lb_kind" | "lvs_method" => {}
                _ => self
                    .out
                    .note(c.line, &c.directive(), "not an lbfabric setting"),
            }
        }
        if let Some(c) = &mut check {
            c.inhibit_on_failure = inhibit;
        } else if inhibit {
            self.out.note(
                n.line,
                &n.directive(),
                "inhibit_on_failure without a checker has nothing to inhibit",
            );
        }
        Ok((rs, check))
    }

    fn checker(&mut self, n: &Node) -> Result<pb::HealthCheck, ImportError> {
        let mut h = pb::HealthCheck {
            r#type: match n.key.as_str() {
                "TCP_CHECK" => "tcp",
                "HTTP_GET" => "http",
                "SSL_GET" => "https",
                "UDP_CHECK" => "udp",
                "DNS_CHECK" => "dns",
                "PING_CHECK" => "ping",
                _ => "exec",
            }
            .into(),
            timeout: seconds(DEFAULT_CONNECT_TIMEOUT),
            rise: Some(1),
            fall: Some(DEFAULT_RETRY + 1),
            ..Default::default()
        };
        let mut urls = 0;
        for c in n.children() {
            match c.key.as_str() {
                "connect_port" => h.port = self.number(c, 0)?,
                "connect_timeout" | "misc_timeout" => h.timeout = Some(self.duration(c)?),
                "retry" | "nb_get_retry" => h.fall = Some(self.number(c, 0)?.saturating_add(1)),
                "delay_loop" => h.interval = Some(self.duration(c)?),
                "virtualhost" => h.http_host = self.arg(c, 0)?.to_string(),
                "delay_before_retry" => self.out.note(
                    c.line,
                    &c.directive(),
                    "lbfabric retries at the check interval (delay_loop)",
                ),
                "url" if urls > 0 => self.out.note(
                    c.line,
                    &c.directive(),
                    "a second url: lbfabric checks one path; the first is kept",
                ),
                "url" => {
                    urls += 1;
                    for u in c.children() {
                        match u.key.as_str() {
                            "path" => h.http_path = self.arg(u, 0)?.to_string(),
                            "digest" => h.http_digest = self.arg(u, 0)?.to_ascii_lowercase(),
                            "status_code" => {
                                // Codes and ranges, as keepalived reads them.
                                for word in &u.args {
                                    let codes: crate::status::StatusCodes =
                                        word.parse().map_err(|e: String| self.error(u, e))?;
                                    h.http_status.extend(codes.0);
                                }
                            }
                            "regex" => h.http_body_regex = self.arg(u, 0)?.to_string(),
                            _ => self
                                .out
                                .note(u.line, &u.directive(), "not an lbfabric setting"),
                        }
                    }
                }
                "payload" => h.udp_payload = self.arg(c, 0)?.to_ascii_lowercase(),
                "require_reply" => h.udp_expect = self.arg(c, 0)?.to_ascii_lowercase(),
                "min_reply_length" | "max_reply_length" => self.out.note(
                    c.line,
                    &c.directive(),
                    "lbfabric judges a UDP reply by its first bytes (require_reply)",
                ),
                "type" => h.dns_type = self.arg(c, 0)?.to_ascii_uppercase(),
                "name" => h.dns_name = self.arg(c, 0)?.to_string(),
                "misc_path" => {
                    // One string: the program and its arguments.
                    let line = self.arg(c, 0)?;
                    let mut words = line.split_whitespace().map(str::to_string);
                    h.exec_command = words.next().unwrap_or_default();
                    h.exec_args = words.chain(c.args[1..].iter().cloned()).collect();
                }
                _ => self
                    .out
                    .note(c.line, &c.directive(), "not an lbfabric setting"),
            }
        }
        Ok(h)
    }
}

/// keepalived's NAT/DR/TUN to lbfabric's words; anything else passes
/// through for the controller's rules to name.
fn mode(kind: &str) -> String {
    kind.to_ascii_lowercase()
}
