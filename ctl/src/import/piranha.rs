//! Piranha lvs.cf → services.
//!
//! Each `virtual NAME { … }` block is one service named NAME; its `server`
//! blocks are the realservers. The global `network` (nat, direct, tunnel)
//! is every service's forwarding mode. nanny's checks map onto lbfabric's:
//! `send "GET /path …"` is an http check of that path (an `expect` of an
//! HTTP status line gives the status), `send_program` an exec check, and
//! nothing sent a TCP connect. nanny's `timeout` (seconds dead before
//! removal) and `reentry` (seconds alive before coming back) become fall and
//! rise at a 2 s interval.

use lb_proto::pb;

use super::syntax::{self, Node};
use super::{sanitize_name, Found, ImportError, Imported};

const KEYWORDS: &[&str] = &[
    "serial_no",
    "primary",
    "primary_private",
    "primary_shared",
    "backup",
    "backup_private",
    "backup_shared",
    "backup_active",
    "service",
    "heartbeat",
    "heartbeat_port",
    "keepalive",
    "deadtime",
    "rsh_command",
    "network",
    "nat_router",
    "nat_nmask",
    "debug_level",
    "syncdaemon",
    "syncd_iface",
    "syncd_id",
    "tcp_timeout",
    "tcpfin_timeout",
    "udp_timeout",
    "monitor_links",
    "virtual",
    "failover",
    "active",
    "address",
    "vip_nmask",
    "fwmark",
    "port",
    "persistent",
    "pmask",
    "send",
    "expect",
    "use_regex",
    "send_program",
    "load_monitor",
    "scheduler",
    "protocol",
    "timeout",
    "reentry",
    "quiesce_server",
    "server",
    "weight",
    "sorry_server",
    "hard_shutdown",
];

/// The check interval the nanny timings are counted in.
const INTERVAL_SECS: u32 = 2;

pub fn parse(file: &str, text: &str) -> Result<Imported, ImportError> {
    let (tokens, _) = syntax::lex(text, true);
    let nodes = syntax::parse(file, &tokens, &|w| KEYWORDS.contains(&w))?;
    let mut r = Reader {
        file,
        out: Imported::default(),
    };
    let mut mode = "nat".to_string(); // Piranha's default network
    for n in &nodes {
        if n.key == "network" {
            mode = match r.arg(n, 0)?.to_ascii_lowercase().as_str() {
                "nat" => "nat".into(),
                "direct" => "dr".into(),
                "tunnel" => "tun".into(),
                other => {
                    return Err(r.error(
                        n,
                        format!("unknown network {other:?}; expected nat, direct or tunnel"),
                    ))
                }
            };
        }
    }
    for n in &nodes {
        match n.key.as_str() {
            "network" => {}
            "virtual" => r.virtual_block(n, &mode)?,
            "failover" => r.out.note(
                n.line,
                &n.directive(),
                "failover services (fos) are not load balanced; nothing to import",
            ),
            "primary" | "backup" | "backup_active" | "primary_private" | "backup_private" => {
                r.out.note(
                    n.line,
                    &n.directive(),
                    "directors register themselves with lbfabric; set preferences with --prefer-director",
                )
            }
            "heartbeat" | "heartbeat_port" | "keepalive" | "deadtime" => r.out.note(
                n.line,
                &n.directive(),
                "pulse's heartbeat is replaced by the controller's leases (lb-controller --lease-ms)",
            ),
            "nat_router" | "nat_nmask" => r.out.note(
                n.line,
                &n.directive(),
                "the NAT router address is not managed by lbfabric; keep it on the directors' network setup",
            ),
            "syncdaemon" => r.out.note(
                n.line,
                &n.directive(),
                "directors configure the IPVS sync daemon themselves",
            ),
            _ => r.out.note(n.line, &n.directive(), "not an lbfabric setting"),
        }
    }
    super::unique_names(&mut r.out.services);
    Ok(r.out)
}

struct Reader<'a> {
    file: &'a str,
    out: Imported,
}

impl Reader<'_> {
    fn error(&self, n: &Node, message: impl Into<String>) -> ImportError {
        n.error(self.file, message)
    }

    fn arg<'n>(&self, n: &'n Node, index: usize) -> Result<&'n str, ImportError> {
        n.arg(self.file, index)
    }

    fn number(&self, n: &Node) -> Result<u32, ImportError> {
        n.number(self.file, 0)
    }

    fn flag(&self, n: &Node) -> Result<bool, ImportError> {
        Ok(self.number(n)? != 0)
    }

    fn virtual_block(&mut self, n: &Node, mode: &str) -> Result<(), ImportError> {
        let name = sanitize_name(&n.args.join("-"));
        let mut s = pb::Service {
            name,
            scheduler: "wlc".into(),
            mode: mode.into(),
            ..Default::default()
        };
        let (mut address, mut port, mut fwmark) = (String::new(), 0, None);
        let mut protocol = "tcp".to_string();
        let (mut send, mut expect, mut program) = (None, None, None);
        let mut use_regex = false;
        let (mut timeout, mut reentry) = (10, 180); // nanny's defaults
        let mut active = true;
        for c in n.children() {
            match c.key.as_str() {
                "active" => active = self.flag(c)?,
                "address" => address = self.arg(c, 0)?.to_string(),
                "port" => port = self.number(c)?,
                "fwmark" => fwmark = Some(self.number(c)?),
                "protocol" => protocol = self.arg(c, 0)?.to_ascii_lowercase(),
                "scheduler" => s.scheduler = self.arg(c, 0)?.to_ascii_lowercase(),
                "persistent" => {
                    s.persistence
                        .get_or_insert_with(Default::default)
                        .timeout_seconds = self.number(c)?
                }
                "pmask" => {
                    s.persistence.get_or_insert_with(Default::default).netmask =
                        self.arg(c, 0)?.to_string()
                }
                "send" => send = Some(self.arg(c, 0)?.to_string()),
                "expect" => expect = Some(self.arg(c, 0)?.to_string()),
                "use_regex" => use_regex = self.flag(c)?,
                "send_program" => program = Some(c.args.join(" ")),
                "timeout" => timeout = self.number(c)?,
                "reentry" => reentry = self.number(c)?,
                "server" => s.realservers.push(self.server(c)?),
                "vip_nmask" => {} // the VIP is a host address on the directors
                "quiesce_server" => self.out.note(
                    c.line,
                    &c.directive(),
                    "lbfabric does not reset connection counts when a server returns",
                ),
                "load_monitor" => self.out.note(
                    c.line,
                    &c.directive(),
                    "weights are not adjusted from realserver load",
                ),
                _ => self
                    .out
                    .note(c.line, &c.directive(), "not an lbfabric setting"),
            }
        }
        if !active {
            self.out.note(
                n.line,
                &n.directive(),
                "inactive (active = 0): not imported",
            );
            return Ok(());
        }
        s.virtual_address = Some(match fwmark {
            Some(mark) => {
                let family = if address.contains(':') {
                    "inet6"
                } else {
                    "inet"
                };
                if !address.is_empty() {
                    self.out.note(
                        n.line,
                        &n.directive(),
                        format!(
                            "fwmark {mark}: the directors mark {address} {protocol}{} themselves; other traffic your iptables rules mark needs --mark-ports",
                            if port > 0 { format!(" {port}") } else { String::new() }
                        ),
                    );
                }
                pb::service::VirtualAddress::Fwmark(pb::Fwmark {
                    mark,
                    family: family.into(),
                    protocol: if address.is_empty() {
                        String::new()
                    } else {
                        protocol.clone()
                    },
                    ports: if address.is_empty() || port == 0 {
                        Vec::new()
                    } else {
                        vec![port]
                    },
                    address,
                })
            }
            None => pb::service::VirtualAddress::Endpoint(pb::Endpoint {
                address,
                port,
                protocol,
            }),
        });
        s.health_check = Some(self.check(n, send, expect, program, use_regex, timeout, reentry));
        self.out.services.push(Found {
            file: self.file.to_string(),
            line: n.line,
            directive: n.directive(),
            service: s,
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        &mut self,
        n: &Node,
        send: Option<String>,
        expect: Option<String>,
        program: Option<String>,
        use_regex: bool,
        timeout: u32,
        reentry: u32,
    ) -> pb::HealthCheck {
        let mut h = pb::HealthCheck {
            r#type: "tcp".into(),
            interval: Some(prost_types::Duration {
                seconds: i64::from(INTERVAL_SECS),
                nanos: 0,
            }),
            fall: Some(timeout.div_ceil(INTERVAL_SECS).clamp(1, 100)),
            rise: Some(reentry.div_ceil(INTERVAL_SECS).clamp(1, 100)),
            ..Default::default()
        };
        if let Some(p) = program {
            let mut words = p.split_whitespace().map(str::to_string);
            h.r#type = "exec".into();
            h.exec_command = words.next().unwrap_or_default();
            h.exec_args = words.collect();
            if h.exec_args.iter().any(|a| a.contains("%h")) {
                self.out.note(
                    n.line,
                    "send_program",
                    "lbfabric passes no host for %h: give the program the address another way",
                );
            }
            return h;
        }
        let get = send.as_deref().and_then(|s| s.strip_prefix("GET "));
        match (get, expect.as_deref()) {
            (Some(request), expect) => {
                h.r#type = "http".into();
                h.http_path = request.split_whitespace().next().unwrap_or("/").to_string();
                // `HTTP/1.0 200 OK` names a status; a bare `HTTP` accepts the default 200.
                let status = expect.and_then(|e| {
                    let rest = e.strip_prefix("HTTP")?;
                    let code = rest.split_whitespace().nth(1)?;
                    code.parse::<u32>().ok()
                });
                match (status, expect) {
                    (Some(code), _) => h.http_status = vec![code],
                    (None, Some(e)) if e.starts_with("HTTP") => {}
                    (None, Some(e)) if use_regex => h.http_body_regex = e.to_string(),
                    (None, Some(e)) => h.http_body_regex = regex_escape(e),
                    (None, None) => {}
                }
            }
            (None, None) if send.is_none() => {}
            (None, _) => self.out.note(
                n.line,
                "send/expect",
                "lbfabric has no send/expect dialogue; the service gets a TCP connect check",
            ),
        }
        h
    }

    fn server(&mut self, n: &Node) -> Result<pb::RealServer, ImportError> {
        let mut rs = pb::RealServer {
            weight: Some(1),
            ..Default::default()
        };
        for c in n.children() {
            match c.key.as_str() {
                "address" => rs.address = self.arg(c, 0)?.to_string(),
                "port" => rs.port = self.number(c)?,
                "weight" => rs.weight = Some(self.number(c)?),
                "active" if !self.flag(c)? => rs.admin_state = "disabled".into(),
                "active" => {}
                _ => self
                    .out
                    .note(c.line, &c.directive(), "not an lbfabric setting"),
            }
        }
        if rs.address.is_empty() {
            return Err(self.error(n, "server block without an address"));
        }
        Ok(rs)
    }
}

/// Literal text as a regular expression.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
