//! `ipvsadm --save` (`-S`, `-Sn`) output → services.
//!
//! One `-A` line per virtual service, one `-a` line per realserver, in the
//! options ipvsadm itself accepts (short and long forms). IPVS keeps the
//! forwarding method per realserver and lbfabric per service: the first
//! realserver's method is the service's, and a differing one is noted.
//! `-S` without `-n` writes names: well-known port names are read, host
//! names are refused (save with `-Sn`).

use std::collections::HashMap;

use lb_proto::pb;

use super::{endpoint_name, Found, ImportError, Imported};

/// The persistence timeout `-p` without a value gives: ipvsadm 1.31's
/// manual says 300 s, the tool sets 360 s (read back from a kernel).
const DEFAULT_PERSISTENCE: u32 = 360;

pub fn parse(file: &str, text: &str) -> Result<Imported, ImportError> {
    let mut out = Imported::default();
    // Service name → its index in `out.services`: a table of thousands of
    // services must not be searched once per line.
    let mut index: HashMap<String, usize> = HashMap::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or_default().trim();
        if content.is_empty() {
            continue;
        }
        let words: Vec<&str> = content.split_whitespace().collect();
        let words = match words.first() {
            Some(&"ipvsadm") => &words[1..],
            _ => &words[..],
        };
        let err = |message: String| ImportError {
            file: file.to_string(),
            line,
            directive: content.to_string(),
            message,
        };
        let cmd = Line::parse(words).map_err(err)?;
        match cmd.command {
            Cmd::AddService => {
                let (vaddr, name) = cmd.virtual_address().map_err(err)?;
                if index.contains_key(&name) {
                    return Err(err(format!("virtual service {name} is added twice")));
                }
                index.insert(name.clone(), out.services.len());
                let mut s = pb::Service {
                    name,
                    virtual_address: Some(vaddr),
                    scheduler: cmd.scheduler.clone().unwrap_or_else(|| "wlc".into()),
                    mode: "dr".into(), // ipvsadm's default -g
                    one_packet: cmd.ops,
                    ..Default::default()
                };
                s.scheduler_flags = sched_flags(&s.scheduler, &cmd.flags);
                if let Some(t) = cmd.persistent {
                    s.persistence = Some(pb::Persistence {
                        timeout_seconds: t,
                        netmask: cmd.netmask.clone().unwrap_or_default(),
                    });
                } else if cmd.netmask.is_some() {
                    out.note(line, content, "-M without -p has no effect");
                }
                if let Some(pe) = &cmd.pe {
                    out.note(
                        line,
                        content,
                        format!("--pe {pe}: persistence engines are not supported"),
                    );
                }
                out.services.push(Found {
                    file: file.to_string(),
                    line,
                    directive: content.to_string(),
                    service: s,
                });
            }
            Cmd::AddServer => {
                let (_, name) = cmd.virtual_address().map_err(err)?;
                let idx = *index
                    .get(&name)
                    .ok_or_else(|| err(format!("no -A line before it adds {name}")))?;
                let server = cmd
                    .server
                    .as_deref()
                    .ok_or_else(|| err("-a needs -r ADDRESS[:PORT]".into()))?;
                let (address, port) = address_port(server).map_err(err)?;
                let method = cmd.method.unwrap_or("dr");
                // The first realserver's method is the service's mode.
                let service = &mut out.services[idx].service;
                if service.realservers.is_empty() {
                    service.mode = method.to_string();
                } else if service.mode != method {
                    let m = service.mode.clone();
                    out.note(
                        line,
                        content,
                        format!(
                            "forwards by {method}, the service's first realserver by {m}; lbfabric forwards every realserver of a service the same way"
                        ),
                    );
                }
                if let Some(t) = &cmd.tun_type {
                    if t != "ipip" {
                        out.note(
                            line,
                            content,
                            format!("--tun-type {t}: only ipip tunnels are supported"),
                        );
                    }
                }
                out.services[idx].service.realservers.push(pb::RealServer {
                    address,
                    port,
                    weight: Some(cmd.weight.unwrap_or(1)),
                    upper_threshold: cmd.upper.unwrap_or(0),
                    lower_threshold: cmd.lower.unwrap_or(0),
                    admin_state: String::new(),
                });
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    AddService,
    AddServer,
}

/// The options of one `-A` or `-a` line.
#[derive(Debug)]
struct Line<'a> {
    command: Cmd,
    protocol: &'a str,
    service: &'a str,
    inet6: bool,
    scheduler: Option<String>,
    persistent: Option<u32>,
    netmask: Option<String>,
    flags: Vec<String>,
    ops: bool,
    pe: Option<&'a str>,
    server: Option<String>,
    method: Option<&'static str>,
    weight: Option<u32>,
    upper: Option<u32>,
    lower: Option<u32>,
    tun_type: Option<String>,
}

impl<'a> Line<'a> {
    fn parse(words: &[&'a str]) -> Result<Line<'a>, String> {
        let mut l = Line {
            command: Cmd::AddService,
            protocol: "",
            service: "",
            inet6: false,
            scheduler: None,
            persistent: None,
            netmask: None,
            flags: Vec::new(),
            ops: false,
            pe: None,
            server: None,
            method: None,
            weight: None,
            upper: None,
            lower: None,
            tun_type: None,
        };
        let mut command = None;
        let mut i = 0;
        let value = |i: &mut usize, opt: &str| -> Result<&'a str, String> {
            *i += 1;
            words
                .get(*i)
                .copied()
                .ok_or_else(|| format!("{opt} needs a value"))
        };
        let number = |text: &str, opt: &str| -> Result<u32, String> {
            text.parse()
                .map_err(|_| format!("{opt} {text:?} is not a whole number"))
        };
        while i < words.len() {
            let w = words[i];
            match w {
                "-A" | "--add-service" => command = Some(Cmd::AddService),
                "-a" | "--add-server" => command = Some(Cmd::AddServer),
                "-t" | "--tcp-service" => (l.protocol, l.service) = ("tcp", value(&mut i, w)?),
                "-u" | "--udp-service" => (l.protocol, l.service) = ("udp", value(&mut i, w)?),
                "--sctp-service" => (l.protocol, l.service) = ("sctp", value(&mut i, w)?),
                "-f" | "--fwmark-service" => {
                    (l.protocol, l.service) = ("fwmark", value(&mut i, w)?)
                }
                "-6" | "--ipv6" => l.inet6 = true,
                "-s" | "--scheduler" => l.scheduler = Some(value(&mut i, w)?.to_string()),
                "-p" | "--persistent" => {
                    // The timeout is optional: `-p` alone means 300 s.
                    match words.get(i + 1).and_then(|t| t.parse().ok()) {
                        Some(t) => {
                            l.persistent = Some(t);
                            i += 1;
                        }
                        None => l.persistent = Some(DEFAULT_PERSISTENCE),
                    }
                }
                "-M" | "--netmask" => l.netmask = Some(value(&mut i, w)?.to_string()),
                "-b" | "--sched-flags" => {
                    l.flags = value(&mut i, w)?.split(',').map(str::to_string).collect()
                }
                "-o" | "--ops" => l.ops = true,
                "--pe" => l.pe = Some(value(&mut i, w)?),
                "-r" | "--real-server" => l.server = Some(value(&mut i, w)?.to_string()),
                "-g" | "--gatewaying" => l.method = Some("dr"),
                "-i" | "--ipip" => l.method = Some("tun"),
                "-m" | "--masquerading" => l.method = Some("nat"),
                "-w" | "--weight" => l.weight = Some(number(value(&mut i, w)?, w)?),
                "-x" | "--u-threshold" => l.upper = Some(number(value(&mut i, w)?, w)?),
                "-y" | "--l-threshold" => l.lower = Some(number(value(&mut i, w)?, w)?),
                "--tun-type" => l.tun_type = Some(value(&mut i, w)?.to_string()),
                "--tun-port" => {
                    value(&mut i, w)?;
                }
                "--tun-nocsum" | "--tun-csum" | "--tun-remcsum" => {}
                _ => return Err(format!("unknown option {w:?}")),
            }
            i += 1;
        }
        l.command = command.ok_or("only -A (add service) and -a (add server) lines are read")?;
        if l.service.is_empty() {
            return Err("no virtual service: give -t, -u, --sctp-service or -f".into());
        }
        Ok(l)
    }

    /// The virtual address and the service name lbfabric gives it.
    fn virtual_address(&self) -> Result<(pb::service::VirtualAddress, String), String> {
        if self.protocol == "fwmark" {
            let mark: u32 = self
                .service
                .parse()
                .map_err(|_| format!("-f {:?} is not a mark number", self.service))?;
            let family = if self.inet6 { "inet6" } else { "inet" };
            let name = if self.inet6 {
                format!("fwmark-{mark}-inet6")
            } else {
                format!("fwmark-{mark}")
            };
            return Ok((
                pb::service::VirtualAddress::Fwmark(pb::Fwmark {
                    mark,
                    family: family.into(),
                    ..Default::default()
                }),
                name,
            ));
        }
        let (address, port) = address_port(self.service)?;
        if port == 0 {
            return Err(format!("{:?} needs a port", self.service));
        }
        let name = endpoint_name(&address, port, self.protocol);
        Ok((
            pb::service::VirtualAddress::Endpoint(pb::Endpoint {
                address,
                port,
                protocol: self.protocol.into(),
            }),
            name,
        ))
    }
}

/// `10.0.0.1:80`, `[2001:db8::1]:80`, `10.0.0.1` (port 0), with port names.
fn address_port(text: &str) -> Result<(String, u32), String> {
    let (address, port) = if let Some(rest) = text.strip_prefix('[') {
        let (a, p) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: missing ]"))?;
        (a, p.strip_prefix(':').unwrap_or(""))
    } else if text.matches(':').count() == 1 {
        text.split_once(':').unwrap_or((text, ""))
    } else {
        (text, "")
    };
    if address.parse::<std::net::IpAddr>().is_err() {
        return Err(format!(
            "{address:?} is a host name, not an address: save the table with ipvsadm -Sn"
        ));
    }
    let port =
        match port {
            "" => 0,
            p => p.parse().ok().or_else(|| port_name(p)).ok_or_else(|| {
                format!("port {p:?} is neither a number nor a known service name")
            })?,
        };
    Ok((address.to_string(), port))
}

/// The service names `ipvsadm -S` (without -n) prints for common ports.
fn port_name(name: &str) -> Option<u32> {
    Some(match name {
        "ftp" => 21,
        "ssh" => 22,
        "smtp" => 25,
        "domain" => 53,
        "http" | "www" => 80,
        "pop3" => 110,
        "ntp" => 123,
        "imap" | "imap2" => 143,
        "ldap" => 389,
        "https" => 443,
        "submission" => 587,
        "ldaps" => 636,
        "imaps" => 993,
        "pop3s" => 995,
        "mysql" => 3306,
        "postgresql" => 5432,
        "http-alt" => 8080,
        _ => return None,
    })
}

/// ipvsadm's generic flag names mean the scheduler's own ones.
fn sched_flags(scheduler: &str, flags: &[String]) -> Vec<String> {
    flags
        .iter()
        .filter(|f| !f.is_empty())
        .map(|f| match (scheduler, f.as_str()) {
            ("sh" | "mh", "flag-1") => format!("{scheduler}-fallback"),
            ("sh" | "mh", "flag-2") => format!("{scheduler}-port"),
            _ => f.clone(),
        })
        .collect()
}
