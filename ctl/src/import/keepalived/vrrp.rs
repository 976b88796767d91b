//! `vrrp_instance` and `vrrp_script`: who owns which VIP, and the floating
//! VIPs keepalived keeps in front of a proxy on the director itself.
//!
//! An instance's priority orders the directors for its VIPs (see the
//! parent module). A VIP that no `virtual_server` uses is a floating VIP —
//! keepalived's most common use, nginx or HAProxy on both directors — and
//! becomes a local service (`--mode local`, any port) whose check is the
//! instance's first `track_script`, run by each director on itself: while
//! it fails there, that director may not hold the VIP. keepalived lowers
//! the priority by the script's `weight` instead; lbfabric's directors have
//! no priority to lower, so a failing script always hands the VIP over.

use lb_proto::pb;

use super::syntax::Node;
use super::{sanitize_name, seconds, Found, ImportError, Reader};

/// A VRRP instance's VIPs and the script it tracks.
pub(super) struct Floating {
    line: usize,
    directive: String,
    instance: String,
    vips: Vec<String>,
    script: Option<String>,
}

impl Reader<'_> {
    pub(super) fn vrrp_script(&mut self, n: &Node) -> Result<(), ImportError> {
        let name = self.arg(n, 0)?.to_string();
        let mut h = pb::HealthCheck {
            r#type: "exec".into(),
            // keepalived's defaults: every second, one result flips it.
            interval: seconds("1"),
            rise: Some(1),
            fall: Some(1),
            ..Default::default()
        };
        let mut timeout = None;
        for c in n.children() {
            match c.key.as_str() {
                // One string, run by a shell as keepalived runs it.
                "script" => {
                    h.exec_command = "/bin/sh".into();
                    h.exec_args = vec!["-c".into(), c.args.join(" ")];
                }
                "interval" => h.interval = Some(self.duration(c)?),
                "timeout" => timeout = Some(self.duration(c)?),
                "rise" => h.rise = Some(self.number(c, 0)?),
                "fall" => h.fall = Some(self.number(c, 0)?),
                "weight" => self.out.note(
                    c.line,
                    &c.directive(),
                    "a failing script makes the director unfit for the VIP (no priority to lower)",
                ),
                _ => self
                    .out
                    .note(c.line, &c.directive(), "not an lbfabric setting"),
            }
        }
        if h.exec_command.is_empty() {
            return Err(self.error(n, "a vrrp_script needs a script"));
        }
        let ms = |d: &prost_types::Duration| d.seconds * 1000 + i64::from(d.nanos) / 1_000_000;
        h.timeout = match (timeout, h.interval) {
            (Some(t), Some(i)) if ms(&t) <= ms(&i) => Some(t),
            // lbfabric's timeout may not exceed the interval.
            (_, interval) => interval,
        };
        self.scripts.insert(name, h);
        Ok(())
    }

    pub(super) fn vrrp(&mut self, n: &Node) -> Result<(), ImportError> {
        let mut priority = 100; // keepalived's default
        let mut vips = Vec::new();
        let mut script = None;
        for c in n.children() {
            match c.key.as_str() {
                "priority" => match c.args.first().and_then(|p| p.parse().ok()) {
                    Some(p) => priority = p,
                    None => self
                        .out
                        .note(c.line, &c.directive(), "not a number; ignored"),
                },
                "virtual_ipaddress" => {
                    for a in c.children() {
                        // `10.0.0.1/24 dev eth0 label eth0:1`: the address is the VIP.
                        // `10.0.0.1 label eth0:1` may repeat an address.
                        let addr = a.key.split('/').next().unwrap_or_default().to_string();
                        if !vips.contains(&addr) {
                            vips.push(addr);
                        }
                    }
                }
                "track_script" => {
                    for t in c.children() {
                        if script.is_some() {
                            self.out.note(
                                t.line,
                                &t.directive(),
                                "a second tracked script: lbfabric runs one check per service",
                            );
                        } else if self.scripts.contains_key(&t.key) {
                            script = Some(t.key.clone());
                        } else {
                            return Err(self.error(t, format!("no vrrp_script {}", t.key)));
                        }
                    }
                }
                "notify" | "notify_master" | "notify_backup" | "notify_fault" | "notify_stop" => {
                    self.out.note(
                        c.line,
                        &c.directive(),
                        "a director setting: lb-director --on-vip-change PROGRAM runs it with VIP OLD NEW EPOCH (states MASTER, BACKUP) when a VIP comes or goes",
                    )
                }
                _ => self.out.note(
                    c.line,
                    &c.directive(),
                    "VRRP detail: the controller's leases replace it (lb-controller --lease-ms)",
                ),
            }
        }
        if self.router_id.is_none() {
            self.out.note(
                n.line,
                &n.directive(),
                "no global_defs { router_id }: the priorities name no director, so no preference",
            );
        }
        for vip in &vips {
            self.owners.insert(vip.clone(), priority);
        }
        self.floating.push(Floating {
            line: n.line,
            directive: n.directive(),
            instance: n.args.first().cloned().unwrap_or_default(),
            vips,
            script,
        });
        Ok(())
    }

    /// A local service for each VIP no virtual server uses.
    pub(super) fn floating_services(&mut self) {
        let used = |services: &[Found], vip: &str| {
            services.iter().any(|f| match &f.service.virtual_address {
                Some(pb::service::VirtualAddress::Endpoint(e)) => e.address == vip,
                Some(pb::service::VirtualAddress::Fwmark(m)) => m.address == vip,
                None => false,
            })
        };
        for f in std::mem::take(&mut self.floating) {
            let check = f.script.as_ref().and_then(|s| self.scripts.get(s)).cloned();
            // Not a virtual server's, nor floated by an earlier instance.
            let free: Vec<&String> = f
                .vips
                .iter()
                .filter(|v| !used(&self.out.services, v))
                .collect();
            for vip in free {
                if check.is_none() {
                    self.out.note(
                        f.line,
                        &f.directive,
                        format!(
                            "{vip}: no track_script, so nothing but the director's death moves it"
                        ),
                    );
                }
                let service = pb::Service {
                    name: sanitize_name(&format!("{}-{vip}", f.instance)),
                    virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
                        address: vip.clone(),
                        port: 0,
                        protocol: "tcp".into(),
                    })),
                    mode: "local".into(),
                    health_check: check.clone(),
                    ..Default::default()
                };
                self.out.services.push(Found {
                    file: self.file.to_string(),
                    line: f.line,
                    directive: f.directive.clone(),
                    service,
                });
            }
        }
    }
}
