//! lbctl: the operator's command line for an lbfabric fabric.
//!
//! [`cli`] declares the commands, [`spec`] turns words into API messages,
//! [`output`] renders answers; `lb_proto::client` reaches the controller leader.

pub mod cli;
pub mod export;
pub mod import;
pub mod output;
pub mod spec;

use std::time::Duration;

use anyhow::{bail, Context};
use lb_proto::pb;
use lb_proto::pb::cluster_admin_client::ClusterAdminClient;
use lb_proto::pb::service_admin_client::ServiceAdminClient;
use tokio_stream::StreamExt;

use crate::cli::*;
use lb_proto::client::Controller;

/// Runs one lbctl command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Commands that need no controller.
    match &cli.command {
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "lbctl", &mut std::io::stdout());
            return Ok(());
        }
        Command::Pki(cmd) => return pki(cmd),
        Command::Import {
            format,
            files,
            dry_run: true,
            ..
        } => {
            let (imported, services) = read_imports(*format, files)?;
            return show_import(cli.output, &imported, &services);
        }
        _ => {}
    }
    let tls = match &cli.credentials {
        Some(dir) => Some(
            lb_proto::pki::Credentials::from_dir(dir, "admin")
                .with_context(|| format!("--credentials {}", dir.display()))?
                .client_config(),
        ),
        None => cli.tls.client_config()?,
    };
    let plaintext = tls.is_none();
    let mut ctl = Controller::new(&cli.controller, Duration::from_secs(cli.timeout))?.with_tls(tls);
    let out = cli.output;
    let done = match cli.command {
        Command::Service(cmd) => service(&mut ctl, out, cmd).await,
        Command::Realserver(cmd) => realserver(&mut ctl, out, cmd).await,
        Command::Director(DirectorCmd::List) => directors(&mut ctl, out).await,
        Command::Director(DirectorCmd::Stats { node, rate }) => {
            director_stats(&mut ctl, out, node.as_deref(), rate).await
        }
        Command::Cluster(cmd) => cluster(&mut ctl, out, cmd).await,
        Command::Status { stats, rate } => status(&mut ctl, out, stats, rate).await,
        Command::Watch { from_revision } => watch(&mut ctl, out, from_revision).await,
        Command::Import {
            format,
            files,
            replace,
            ..
        } => import(&mut ctl, out, format, &files, replace).await,
        Command::Export { format, director } => export(&mut ctl, format, director.as_deref()).await,
        Command::Completion { .. } | Command::Pki(_) => Ok(()),
        Command::Node(NodeCmd::Revoke { node }) => revoke(&mut ctl, out, node).await,
        Command::Token(cmd) => token(&mut ctl, out, cmd).await,
    };
    done.map_err(|e| with_tls_hint(e, plaintext))
}

/// Calls `$method` of a `$client` through the leader-following connection;
/// the request is cloned for each retry.
macro_rules! call {
    ($ctl:expr, $client:ident, $method:ident, $req:expr) => {{
        let req = $req;
        api($ctl
            .call(|ch| {
                let req = req.clone();
                async move { $client::new(ch).$method(req).await }
            })
            .await)
    }};
}

/// Status errors read `CODE: message`, e.g. `InvalidArgument: service.endpoint.port: …`.
fn api<T>(r: Result<T, tonic::Status>) -> anyhow::Result<T> {
    r.map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
}

/// `error` with a hint when its cause looks like lbctl and the controller
/// disagreeing about TLS (`plaintext`: lbctl spoke without it).
fn with_tls_hint(error: anyhow::Error, plaintext: bool) -> anyhow::Error {
    const CREDENTIALS: &str = "lbctl needs the admin credentials: --credentials DIR (or LB_CREDENTIALS=DIR), where DIR holds ca.pem, admin.pem and admin.key: a bootstrapping controller's <data-dir>/pki, or what `lbctl pki admin-cert` wrote";
    let text = error.to_string();
    // A plaintext request to a TLS port fails below gRPC, in ways that vary
    // with timing ("transport error", an HTTP/2 error, "operation was
    // canceled"); a controller that is down or busy says so differently.
    let below_grpc = ["Unknown:", "Internal:", "Cancelled:", "Unavailable:"]
        .iter()
        .any(|code| text.starts_with(code))
        && !["connect", "leader"].iter().any(|m| text.contains(m));
    let hint = if text.contains("no client certificate") {
        CREDENTIALS.to_string()
    } else if plaintext && below_grpc {
        format!(
            "if the controller serves TLS (it does unless it listens on loopback), {CREDENTIALS}"
        )
    } else if !plaintext && text.contains("InvalidContentType") {
        "the controller serves plaintext (it listens on loopback, or runs with --insecure): drop --credentials/--ca or LB_CREDENTIALS".to_string()
    } else {
        return error;
    };
    anyhow::anyhow!("{text}\n  hint: {hint}")
}

async fn service(ctl: &mut Controller, out: Output, cmd: ServiceCmd) -> anyhow::Result<()> {
    match cmd {
        ServiceCmd::Create { name, spec } => {
            if spec.vip.is_none() && spec.fwmark.is_none() {
                bail!("service create: give --vip ADDRESS:PORT[/PROTO] or --fwmark MARK");
            }
            let mut svc = pb::Service {
                name,
                ..Default::default()
            };
            apply_flags(&mut svc, &spec)?;
            let resp = call!(
                ctl,
                ServiceAdminClient,
                create_service,
                pb::CreateServiceRequest { service: Some(svc) }
            )?;
            show_service(out, &resp, "created")
        }
        ServiceCmd::List { stale } => {
            let resp = call!(
                ctl,
                ServiceAdminClient,
                list_services,
                pb::ListServicesRequest { stale }
            )?;
            if out == Output::Json {
                return output::json(&resp, "lb.v1.ListServicesResponse");
            }
            let rows: Vec<Vec<String>> = resp
                .services
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        output::virtual_address(s),
                        s.scheduler.clone(),
                        s.mode.clone(),
                        output::persistence(s),
                        s.realservers.len().to_string(),
                        s.mod_revision.to_string(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "NAME",
                    "VIRTUAL ADDRESS",
                    "SCHED",
                    "MODE",
                    "PERSIST",
                    "REALSERVERS",
                    "REVISION",
                ],
                &rows,
            );
            Ok(())
        }
        ServiceCmd::Get { name, stale } => {
            let resp = call!(
                ctl,
                ServiceAdminClient,
                get_service,
                pb::GetServiceRequest {
                    name: name.clone(),
                    stale
                }
            )?;
            show_service(out, &resp, "")
        }
        ServiceCmd::Update { name, spec } => {
            let current = call!(
                ctl,
                ServiceAdminClient,
                get_service,
                pb::GetServiceRequest {
                    name: name.clone(),
                    stale: false
                }
            )?;
            let mut svc = current.service.context("controller returned no service")?;
            let expected = svc.mod_revision;
            apply_flags(&mut svc, &spec)?;
            let resp = call!(
                ctl,
                ServiceAdminClient,
                update_service,
                pb::UpdateServiceRequest {
                    service: Some(svc),
                    expected_mod_revision: expected
                }
            )?;
            show_service(out, &resp, "updated")
        }
        ServiceCmd::Delete { name } => {
            let resp = call!(
                ctl,
                ServiceAdminClient,
                delete_service,
                pb::DeleteServiceRequest { name: name.clone() }
            )?;
            match out {
                Output::Json => output::json(&resp, "lb.v1.DeleteServiceResponse"),
                Output::Table => {
                    println!("service {name} deleted (revision {})", resp.revision);
                    Ok(())
                }
            }
        }
    }
}

fn show_service(out: Output, resp: &pb::ServiceResponse, verb: &str) -> anyhow::Result<()> {
    match out {
        Output::Json => output::json(resp, "lb.v1.ServiceResponse"),
        Output::Table => {
            let svc = resp
                .service
                .as_ref()
                .context("controller returned no service")?;
            if !verb.is_empty() {
                println!("service {} {verb} (revision {})", svc.name, resp.revision);
            }
            output::service_detail(svc, resp.revision);
            Ok(())
        }
    }
}

/// Writes the given flags onto a service message; absent flags leave fields alone.
fn apply_flags(svc: &mut pb::Service, f: &ServiceFlags) -> anyhow::Result<()> {
    if let Some(vip) = &f.vip {
        svc.virtual_address = Some(pb::service::VirtualAddress::Endpoint(spec::vip(vip)?));
    }
    if let Some(mark) = f.fwmark {
        svc.virtual_address = Some(pb::service::VirtualAddress::Fwmark(pb::Fwmark {
            mark,
            family: f.family.clone().unwrap_or_default(),
            address: f.mark_address.clone().unwrap_or_default(),
            protocol: f.mark_protocol.clone().unwrap_or_default(),
            ports: f.mark_ports.clone(),
        }));
    }
    set_given(&mut svc.scheduler, &f.scheduler);
    set_given(&mut svc.mode, &f.mode);
    set_given(&mut svc.tunnel_type, &f.tunnel_type);
    if !f.scheduler_flags.is_empty() {
        svc.scheduler_flags = f.scheduler_flags.clone();
    }
    if f.persistence.is_some() || f.netmask.is_some() {
        let p = svc.persistence.get_or_insert_with(Default::default);
        if let Some(t) = f.persistence {
            p.timeout_seconds = t;
            if t == 0 && f.netmask.is_none() {
                p.netmask.clear();
            }
        }
        set_given(&mut p.netmask, &f.netmask);
    }
    if let Some(o) = f.one_packet {
        svc.one_packet = o;
    }
    if f.default_weight.is_some() {
        svc.default_weight = f.default_weight;
    }
    if !f.selector.is_empty() {
        svc.realserver_selector = f
            .selector
            .iter()
            .map(|l| spec::label(l))
            .collect::<anyhow::Result<_>>()?;
    }
    if !f.realservers.is_empty() {
        svc.realservers = f
            .realservers
            .iter()
            .map(|r| {
                let (address, port) =
                    spec::address_port(r).with_context(|| format!("--realserver {r:?}"))?;
                Ok(pb::RealServer {
                    address,
                    port,
                    ..Default::default()
                })
            })
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(s) = &f.sorry_server {
        let (address, port) =
            spec::address_port(s).with_context(|| format!("--sorry-server {s:?}"))?;
        svc.sorry_server = Some(pb::Backend { address, port });
    }
    if let Some(q) = f.quorum {
        svc.quorum = q;
    }
    if let Some(h) = f.hysteresis {
        svc.hysteresis = h;
    }
    if !f.director_selector.is_empty() || !f.prefer_director.is_empty() {
        let d = svc.directors.get_or_insert_with(Default::default);
        if !f.director_selector.is_empty() {
            d.selector = f
                .director_selector
                .iter()
                .map(|l| spec::label(l))
                .collect::<anyhow::Result<_>>()?;
        }
        if !f.prefer_director.is_empty() {
            d.preferred = f.prefer_director.clone();
        }
    }
    apply_check(svc, &f.check)
}

/// Overwrites `field` with the flag's value when the flag was given.
fn set_given(field: &mut String, flag: &Option<String>) {
    if let Some(v) = flag {
        field.clone_from(v);
    }
}

fn apply_check(svc: &mut pb::Service, c: &CheckFlags) -> anyhow::Result<()> {
    if c.check.as_deref() == Some("none") {
        svc.health_check = None;
        return Ok(());
    }
    let any = c.check.is_some()
        || c.check_interval.is_some()
        || c.check_timeout.is_some()
        || c.check_rise.is_some()
        || c.check_fall.is_some()
        || c.check_port.is_some()
        || c.check_path.is_some()
        || !c.check_status.is_empty()
        || c.check_regex.is_some()
        || c.check_digest.is_some()
        || c.check_host.is_some()
        || c.check_command.is_some()
        || !c.check_args.is_empty()
        || c.check_inhibit.is_some();
    if !any {
        return Ok(());
    }
    let h = svc.health_check.get_or_insert_with(Default::default);
    if let Some(t) = &c.check {
        h.r#type = t.clone();
    }
    if let Some(i) = &c.check_interval {
        h.interval = Some(spec::duration(i).context("--check-interval")?);
    }
    if let Some(t) = &c.check_timeout {
        h.timeout = Some(spec::duration(t).context("--check-timeout")?);
    }
    if c.check_rise.is_some() {
        h.rise = c.check_rise;
    }
    if c.check_fall.is_some() {
        h.fall = c.check_fall;
    }
    if let Some(p) = c.check_port {
        h.port = p;
    }
    set_given(&mut h.http_path, &c.check_path);
    set_given(&mut h.http_body_regex, &c.check_regex);
    set_given(&mut h.http_digest, &c.check_digest);
    set_given(&mut h.http_host, &c.check_host);
    set_given(&mut h.exec_command, &c.check_command);
    if !c.check_status.is_empty() {
        h.http_status = c.check_status.clone();
    }
    if !c.check_args.is_empty() {
        h.exec_args = c.check_args.clone();
    }
    if let Some(i) = c.check_inhibit {
        h.inhibit_on_failure = i;
    }
    Ok(())
}

async fn realserver(ctl: &mut Controller, out: Output, cmd: RealserverCmd) -> anyhow::Result<()> {
    match cmd {
        RealserverCmd::Add {
            service,
            address,
            fields,
        } => {
            let (addr, port) = spec::realserver(&address)?;
            let rs = pb::RealServer {
                address: addr,
                port,
                weight: fields.weight,
                upper_threshold: fields.upper_threshold.unwrap_or(0),
                lower_threshold: fields.lower_threshold.unwrap_or(0),
                admin_state: fields.state.clone().unwrap_or_default(),
            };
            let resp = call!(
                ctl,
                ServiceAdminClient,
                add_real_server,
                pb::AddRealServerRequest {
                    service,
                    realserver: Some(rs)
                }
            )?;
            show_service(out, &resp, "updated")
        }
        RealserverCmd::Update {
            service,
            address,
            fields,
        } => {
            let (addr, port) = spec::realserver(&address)?;
            let req = pb::UpdateRealServerRequest {
                service,
                address: addr,
                port,
                weight: fields.weight,
                upper_threshold: fields.upper_threshold,
                lower_threshold: fields.lower_threshold,
                admin_state: fields.state,
            };
            let resp = call!(ctl, ServiceAdminClient, update_real_server, req)?;
            show_service(out, &resp, "updated")
        }
        RealserverCmd::Remove { service, address } => {
            let (addr, port) = spec::realserver(&address)?;
            let req = pb::RemoveRealServerRequest {
                service,
                address: addr,
                port,
            };
            let resp = call!(ctl, ServiceAdminClient, remove_real_server, req)?;
            show_service(out, &resp, "updated")
        }
        RealserverCmd::Drain { node } => set_drain(ctl, node, true).await,
        RealserverCmd::Enable { node } => set_drain(ctl, node, false).await,
        RealserverCmd::List { service, stale } => {
            let req = pb::ListRealServersRequest {
                service: service.unwrap_or_default(),
                stale,
            };
            let resp = call!(ctl, ServiceAdminClient, list_real_servers, req)?;
            if out == Output::Json {
                return output::json(&resp, "lb.v1.ListRealServersResponse");
            }
            let rows: Vec<Vec<String>> = resp
                .realservers
                .iter()
                .filter_map(|e| {
                    let rs = e.realserver.as_ref()?;
                    Some(vec![
                        e.service.clone(),
                        output::endpoint(&rs.address, rs.port),
                        rs.weight.unwrap_or(1).to_string(),
                        rs.admin_state.clone(),
                        rs.upper_threshold.to_string(),
                        rs.lower_threshold.to_string(),
                        e.health.clone(),
                        output::source(&e.agent),
                    ])
                })
                .collect();
            output::table(
                &[
                    "SERVICE",
                    "REALSERVER",
                    "WEIGHT",
                    "STATE",
                    "UPPER",
                    "LOWER",
                    "HEALTH",
                    "SOURCE",
                ],
                &rows,
            );
            Ok(())
        }
    }
}

async fn set_drain(ctl: &mut Controller, node_id: String, drain: bool) -> anyhow::Result<()> {
    let req = pb::SetAgentDrainRequest {
        node_id: node_id.clone(),
        drain,
    };
    let resp = call!(ctl, ServiceAdminClient, set_agent_drain, req)?;
    let what = if drain {
        "draining (weight 0)"
    } else {
        "enabled"
    };
    println!(
        "realserver agent {node_id} {what} (revision {})",
        resp.revision
    );
    Ok(())
}

async fn list_directors(ctl: &mut Controller) -> anyhow::Result<pb::ListDirectorsResponse> {
    call!(
        ctl,
        ServiceAdminClient,
        list_directors,
        pb::ListDirectorsRequest {}
    )
}

async fn directors(ctl: &mut Controller, out: Output) -> anyhow::Result<()> {
    let resp = list_directors(ctl).await?;
    if out == Output::Json {
        return output::json(&resp, "lb.v1.ListDirectorsResponse");
    }
    let rows: Vec<Vec<String>> = resp
        .directors
        .iter()
        .map(|d| {
            let owns: Vec<String> = d
                .owns
                .iter()
                .map(|l| format!("{}@{}", l.vip, l.epoch))
                .collect();
            vec![
                d.node_id.clone(),
                if d.live { "live" } else { "dead" }.to_string(),
                if d.connected { "connected" } else { "lost" }.to_string(),
                format!("{:.1}s", d.last_seen_ms as f64 / 1000.0),
                d.applied_revision.to_string(),
                d.changes_applied.to_string(),
                or_dash(owns.join(",")),
                d.errors.len().to_string(),
                or_dash(d.foreign_services.join(",")),
            ]
        })
        .collect();
    output::table(
        &[
            "NODE",
            "LIVE",
            "STREAM",
            "LAST SEEN",
            "APPLIED",
            "CHANGES",
            "OWNS",
            "ERRORS",
            "FOREIGN",
        ],
        &rows,
    );
    Ok(())
}

/// `lbctl director stats`: per director, one row per service and one per realserver.
async fn director_stats(
    ctl: &mut Controller,
    out: Output,
    node: Option<&str>,
    rate: bool,
) -> anyhow::Result<()> {
    let mut resp = list_directors(ctl).await?;
    if let Some(node) = node {
        resp.directors.retain(|d| d.node_id == node);
        if resp.directors.is_empty() {
            bail!("director {node} not found (see lbctl director list)");
        }
    }
    if out == Output::Json {
        return output::json(&resp, "lb.v1.ListDirectorsResponse");
    }
    let figures = |c: &Option<pb::Counters>| -> Vec<String> {
        let c = c.unwrap_or_default();
        let v = if rate {
            [
                c.conns_per_second,
                c.in_packets_per_second,
                c.out_packets_per_second,
                c.in_bytes_per_second,
                c.out_bytes_per_second,
            ]
        } else {
            [
                c.conns,
                c.in_packets,
                c.out_packets,
                c.in_bytes,
                c.out_bytes,
            ]
        };
        v.iter().map(ToString::to_string).collect()
    };
    let headers: &[&str] = if rate {
        &[
            "SERVICE / REALSERVER",
            "ACTIVE",
            "INACT",
            "CPS",
            "INPPS",
            "OUTPPS",
            "INBPS",
            "OUTBPS",
        ]
    } else {
        &[
            "SERVICE / REALSERVER",
            "ACTIVE",
            "INACT",
            "CONNS",
            "INPKTS",
            "OUTPKTS",
            "INBYTES",
            "OUTBYTES",
        ]
    };
    for (i, d) in resp.directors.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let Some(stats) = &d.stats else {
            println!("director {}: no counters reported yet", d.node_id);
            continue;
        };
        println!(
            "director {} (counters read {:.1}s ago)",
            d.node_id,
            d.stats_age_ms as f64 / 1000.0
        );
        let mut rows = Vec::new();
        for s in &stats.services {
            let (active, inactive) = s.realservers.iter().fold((0, 0), |(a, i), r| {
                (
                    a + u64::from(r.active_conns),
                    i + u64::from(r.inactive_conns),
                )
            });
            let mut row = vec![s.service.clone(), active.to_string(), inactive.to_string()];
            row.extend(figures(&s.counters));
            rows.push(row);
            for r in &s.realservers {
                let mut row = vec![
                    format!("  -> {}", output::endpoint(&r.address, r.port)),
                    r.active_conns.to_string(),
                    r.inactive_conns.to_string(),
                ];
                row.extend(figures(&r.counters));
                rows.push(row);
            }
        }
        output::table(headers, &rows);
    }
    Ok(())
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s
    }
}

/// `lbctl status`: the ipvsadm-like view of every service, then the VIPs.
async fn status(ctl: &mut Controller, out: Output, stats: bool, rate: bool) -> anyhow::Result<()> {
    let resp = call!(ctl, ServiceAdminClient, get_status, pb::GetStatusRequest {})?;
    if out == Output::Json {
        return output::json(&resp, "lb.v1.FabricStatus");
    }
    let figures: &[&str] = match (stats, rate) {
        (true, _) => &["CONNS", "INPKTS", "OUTPKTS", "INBYTES", "OUTBYTES"],
        (_, true) => &["CPS", "INPPS", "OUTPPS", "INBPS", "OUTBPS"],
        _ => &["ACTIVE", "INACT"],
    };
    let numbers = |c: &Option<pb::Counters>, active: u64, inactive: u64| -> Vec<String> {
        let c = c.unwrap_or_default();
        let v: Vec<u64> = match (stats, rate) {
            (true, _) => vec![
                c.conns,
                c.in_packets,
                c.out_packets,
                c.in_bytes,
                c.out_bytes,
            ],
            (_, true) => vec![
                c.conns_per_second,
                c.in_packets_per_second,
                c.out_packets_per_second,
                c.in_bytes_per_second,
                c.out_bytes_per_second,
            ],
            _ => vec![active, inactive],
        };
        v.iter().map(ToString::to_string).collect()
    };
    let mut headers = vec![
        "PROT",
        "VIRTUAL SERVICE / -> REALSERVER",
        "SCHED / FORWARD",
        "WEIGHT",
    ];
    headers.extend_from_slice(figures);
    headers.extend_from_slice(&["HEALTH", "STATE", "OWNER / SOURCE"]);
    let mut rows = Vec::new();
    for st in &resp.services {
        let Some(s) = &st.service else { continue };
        let (prot, address) = match &s.virtual_address {
            Some(pb::service::VirtualAddress::Endpoint(e)) => (
                e.protocol.to_ascii_uppercase(),
                output::endpoint(&e.address, e.port),
            ),
            Some(pb::service::VirtualAddress::Fwmark(f)) => ("FWM".to_string(), f.mark.to_string()),
            None => ("-".to_string(), "-".to_string()),
        };
        let mut sched = s.scheduler.clone();
        if !s.scheduler_flags.is_empty() {
            sched.push_str(&format!(" ({})", s.scheduler_flags.join(",")));
        }
        if let Some(p) = s.persistence.as_ref().filter(|p| p.timeout_seconds > 0) {
            sched.push_str(&format!(" persistent {}", p.timeout_seconds));
            if !p.netmask.is_empty() {
                sched.push_str(&format!(" mask {}", p.netmask));
            }
        }
        if s.one_packet {
            sched.push_str(" ops");
        }
        let owner = match (st.owner.as_str(), st.held) {
            ("", _) => "-".to_string(),
            (o, true) => format!("{o}@{} held", st.epoch),
            (o, false) => format!("{o}@{} taking", st.epoch),
        };
        let (active, inactive) = st.realservers.iter().fold((0, 0), |(a, i), b| {
            (
                a + u64::from(b.active_conns),
                i + u64::from(b.inactive_conns),
            )
        });
        let mut row = vec![
            prot,
            format!("{address} ({})", s.name),
            sched,
            String::new(),
        ];
        row.extend(numbers(&st.counters, active, inactive));
        row.extend([String::new(), String::new(), owner]);
        rows.push(row);
        let forward = match s.mode.as_str() {
            "nat" => "Masq",
            "tun" => "Tunnel",
            _ => "Route",
        };
        for b in &st.realservers {
            let Some(rs) = &b.realserver else { continue };
            let mut row = vec![
                String::new(),
                format!("  -> {}", output::endpoint(&rs.address, rs.port)),
                forward.to_string(),
                rs.weight.unwrap_or(1).to_string(),
            ];
            row.extend(numbers(
                &b.counters,
                u64::from(b.active_conns),
                u64::from(b.inactive_conns),
            ));
            row.extend([
                b.health.clone(),
                rs.admin_state.clone(),
                output::source(&b.agent),
            ]);
            rows.push(row);
        }
    }
    output::table(&headers, &rows);
    println!();
    let live = |name: &str| resp.live_directors.iter().any(|d| d == name);
    let rows: Vec<Vec<String>> = resp
        .vips
        .iter()
        .map(|v| {
            let state = match (v.owner.is_empty(), v.held) {
                (true, _) => "unassigned",
                (false, true) => "held",
                // Assigned, the owner not (yet) holding it: taking over, or gone.
                (false, false) if live(&v.owner) => "taking",
                (false, false) => "owner dead",
            };
            vec![
                v.vip.clone(),
                or_dash(v.owner.clone()),
                v.epoch.to_string(),
                state.to_string(),
                v.services.join(","),
            ]
        })
        .collect();
    output::table(&["VIP", "OWNER", "EPOCH", "STATE", "SERVICES"], &rows);
    println!(
        "revision {}, {} of {} directors live",
        resp.revision, resp.directors_live, resp.directors
    );
    Ok(())
}

async fn cluster(ctl: &mut Controller, out: Output, cmd: ClusterCmd) -> anyhow::Result<()> {
    let status = match cmd {
        ClusterCmd::Status => call!(ctl, ClusterAdminClient, status, pb::ClusterStatusRequest {})?,
        ClusterCmd::AddLearner { node_id, address } => call!(
            ctl,
            ClusterAdminClient,
            add_learner,
            pb::AddLearnerRequest { node_id, address }
        )?,
        ClusterCmd::Promote { node_id } => call!(
            ctl,
            ClusterAdminClient,
            promote,
            pb::PromoteRequest { node_id }
        )?,
        ClusterCmd::Remove { node_id } => call!(
            ctl,
            ClusterAdminClient,
            remove,
            pb::RemoveMemberRequest { node_id }
        )?,
    };
    if out == Output::Json {
        return output::json(&status, "lb.v1.ClusterStatus");
    }
    let leader = if status.has_leader {
        format!("leader {} at {}", status.leader_id, status.leader_address)
    } else {
        "no leader".to_string()
    };
    println!(
        "node {} is {} (term {}), {leader}",
        status.node_id, status.state, status.term
    );
    println!(
        "revision {}, log last {} applied {} snapshot {} purged {}",
        status.revision,
        status.last_log_index,
        status.last_applied_index,
        status.snapshot_index,
        status.purged_index
    );
    let rows: Vec<Vec<String>> = status
        .members
        .iter()
        .map(|m| vec![m.node_id.to_string(), m.address.clone(), m.role.clone()])
        .collect();
    output::table(&["ID", "ADDRESS", "ROLE"], &rows);
    Ok(())
}

async fn watch(ctl: &mut Controller, out: Output, from_revision: u64) -> anyhow::Result<()> {
    // Resume point: the next revision to print. "Only new changes" is pinned
    // to a revision up front, so a reconnect misses nothing.
    let mut next = if from_revision == 0 {
        call!(
            ctl,
            ServiceAdminClient,
            list_services,
            pb::ListServicesRequest { stale: false }
        )?
        .revision
            + 1
    } else {
        from_revision
    };
    loop {
        let opened = call!(
            ctl,
            ServiceAdminClient,
            watch_events,
            pb::WatchEventsRequest {
                from_revision: next
            }
        );
        let mut stream = match opened {
            Ok(s) => s,
            // Unreachable or no leader for the whole --timeout: give up.
            Err(e) => return Err(e),
        };
        let lost = loop {
            match stream.next().await {
                None => break "the controller closed the stream".to_string(),
                Some(Err(s)) if s.code() == tonic::Code::OutOfRange => {
                    return Err(anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
                }
                Some(Err(s)) => break format!("{:?}: {}", s.code(), s.message()),
                Some(Ok(e)) => {
                    next = e.revision + 1;
                    print_event(out, &e)?;
                }
            }
        };
        eprintln!("watch: {lost}; resuming from revision {next}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_event(out: Output, e: &pb::Event) -> anyhow::Result<()> {
    match out {
        Output::Json => println!("{}", lb_proto::json::to_json(e, "lb.v1.Event")?),
        Output::Table => {
            let kind = pb::EventKind::try_from(e.kind)
                .map(|k| k.as_str_name())
                .unwrap_or("UNKNOWN");
            let what = match (&e.service, &e.realserver) {
                (_, Some(rs)) => output::endpoint(&rs.address, rs.port),
                (Some(s), None) => output::virtual_address(s),
                _ => String::new(),
            };
            println!("{} {} {} {}", e.revision, kind, e.service_name, what);
        }
    }
    // A pipe reader sees each event as it happens.
    std::io::Write::flush(&mut std::io::stdout())?;
    Ok(())
}

/// Reads and validates every file; nothing is sent.
fn read_imports(
    format: import::Format,
    files: &[std::path::PathBuf],
) -> anyhow::Result<(import::Imported, Vec<lb_proto::model::Service>)> {
    let mut parts = Vec::with_capacity(files.len());
    for path in files {
        let (name, text) = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading standard input")?;
            ("<stdin>".to_string(), text)
        } else {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            // Old files are often Latin-1: keep going with replacement characters.
            (
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        };
        parts.push(import::parse(format, &name, &text)?);
    }
    let imported = import::merge(parts);
    let services = imported.validate()?;
    if services.is_empty() {
        bail!(
            "no services found in {}",
            files.len().to_string() + " file(s)"
        );
    }
    Ok((imported, services))
}

/// The dry run: the services as lbctl would send them, and the notes.
fn show_import(
    out: Output,
    imported: &import::Imported,
    services: &[lb_proto::model::Service],
) -> anyhow::Result<()> {
    if out == Output::Json {
        output::json(
            &apply_request(imported, false),
            "lb.v1.ApplyServicesRequest",
        )?;
    } else {
        println!("would create {} services:", services.len());
        for (f, s) in imported.services.iter().zip(services) {
            println!();
            println!("# from {}:{} {}", f.file, f.line, f.directive);
            output::service_detail(&pb::Service::from(s), 0);
        }
    }
    print_notes(&imported.notes);
    Ok(())
}

/// The one request that applies an import.
fn apply_request(imported: &import::Imported, replace: bool) -> pb::ApplyServicesRequest {
    pb::ApplyServicesRequest {
        services: imported
            .services
            .iter()
            .map(|f| f.service.clone())
            .collect(),
        replace,
    }
}

fn print_notes(notes: &[import::Note]) {
    if notes.is_empty() {
        return;
    }
    eprintln!("\nnot carried over ({}):", notes.len());
    for n in notes {
        eprintln!("  {n}");
    }
}

async fn import(
    ctl: &mut Controller,
    out: Output,
    format: import::Format,
    files: &[std::path::PathBuf],
    replace: bool,
) -> anyhow::Result<()> {
    let (imported, _) = read_imports(format, files)?;
    let req = apply_request(&imported, replace);
    let resp = call!(ctl, ServiceAdminClient, apply_services, req)?;
    if out == Output::Json {
        output::json(&resp, "lb.v1.ApplyServicesResponse")?;
    } else {
        println!(
            "imported {} services (revision {}):",
            resp.services.len(),
            resp.revision
        );
        for s in &resp.services {
            println!("  {} {}", s.name, output::virtual_address(s));
        }
    }
    print_notes(&imported.notes);
    Ok(())
}

async fn export(
    ctl: &mut Controller,
    format: ExportFormat,
    director: Option<&str>,
) -> anyhow::Result<()> {
    let resp = call!(
        ctl,
        ServiceAdminClient,
        list_services,
        pb::ListServicesRequest { stale: false }
    )?;
    let services = resp
        .services
        .into_iter()
        .map(lb_proto::model::Service::try_from)
        .collect::<Result<Vec<_>, _>>()
        .context("the controller sent a service lbctl cannot read")?;
    let exported = match format {
        ExportFormat::Keepalived => export::keepalived(&services, director),
        ExportFormat::Ipvsadm => export::ipvsadm(&services),
    };
    print!("{}", exported.text);
    for n in &exported.notes {
        eprintln!("note: {n}");
    }
    Ok(())
}

/// `lbctl pki`: certificates made locally with the CA's key.
fn pki(cmd: &PkiCmd) -> anyhow::Result<()> {
    use lb_proto::pki::{Ca, Identity, Role};
    let (ca_dir, identity, ips, out, days) = match cmd.clone() {
        PkiCmd::Issue {
            ca_dir,
            role,
            name,
            ips,
            out,
            days,
        } => {
            let role = Role::parse(&role).with_context(|| {
                format!("--role {role:?}: expected admin, controller, director or realserver")
            })?;
            lb_proto::convert::check_name("--name", &name)?;
            (ca_dir, Identity::new(role, name), ips, out, days)
        }
        PkiCmd::AdminCert { ca_dir, out, days } => (
            ca_dir,
            Identity::new(Role::Admin, "admin"),
            Vec::new(),
            out,
            days,
        ),
    };
    let ca = Ca::open(&ca_dir, false)?;
    anyhow::ensure!(
        ca.can_issue(),
        "{}: no ca.key, so no certificate can be issued here",
        ca_dir.display()
    );
    let issued = ca.issue(&identity, &ips, Duration::from_secs(days * 24 * 3600))?;
    let file = match identity.role {
        Role::Controller => "controller".to_string(),
        _ => identity.name.clone(),
    };
    lb_proto::pki::write_pem(&out.join("ca.pem"), &ca.cert_pem, false)?;
    lb_proto::pki::write_pem(&out.join(format!("{file}.pem")), &issued.cert_pem, false)?;
    lb_proto::pki::write_pem(&out.join(format!("{file}.key")), &issued.key_pem, true)?;
    println!(
        "{identity}: {}/{file}.pem and {file}.key, valid {days} days (CA: {}/ca.pem)",
        out.display(),
        out.display()
    );
    Ok(())
}

/// `lbctl node revoke NODE`.
async fn revoke(ctl: &mut Controller, out: Output, node: String) -> anyhow::Result<()> {
    let resp = call!(
        ctl,
        ServiceAdminClient,
        revoke_node,
        pb::RevokeNodeRequest {
            node_id: node.clone()
        }
    )?;
    if out == Output::Json {
        return output::json(&resp, "lb.v1.RevokeNodeResponse");
    }
    println!(
        "node {node} revoked: its streams are closed and its certificates refused; `lbctl token create --role ROLE --node {node}` re-admits it (revoked: {})",
        resp.revoked.join(", ")
    );
    Ok(())
}

/// "in 59m" / "3m ago" for a Unix-milliseconds time.
fn from_now(at_ms: u64) -> String {
    let now = lb_proto::pki::unix_ms(std::time::SystemTime::now());
    let span = |ms: u64| match ms / 1000 {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    if at_ms >= now {
        format!("in {}", span(at_ms - now))
    } else {
        format!("{} ago", span(now - at_ms))
    }
}

/// `lbctl token create|list|delete`.
async fn token(ctl: &mut Controller, out: Output, cmd: TokenCmd) -> anyhow::Result<()> {
    let list = match cmd {
        TokenCmd::Create {
            role,
            node,
            ttl,
            uses,
        } => {
            let role = match role {
                AgentRole::Director => "director",
                AgentRole::Realserver => "realserver",
            };
            let resp = call!(
                ctl,
                ClusterAdminClient,
                create_join_token,
                pb::CreateJoinTokenRequest {
                    role: role.into(),
                    node_id: node.clone().unwrap_or_default(),
                    ttl: Some(spec::duration(&ttl).context("--ttl")?),
                    uses,
                }
            )?;
            if out == Output::Json {
                return output::json(&resp, "lb.v1.CreateJoinTokenResponse");
            }
            let info = resp.info.unwrap_or_default();
            let who = node.map_or_else(
                || "any new node id".to_string(),
                |n| format!("node {n} only"),
            );
            eprintln!(
                "join token {} for {role} agents ({who}), {} use(s), expires {}; pins CA sha256:{}",
                info.id,
                info.uses_left,
                from_now(info.expires_at_ms),
                resp.ca_sha256
            );
            println!("{}", resp.token);
            return Ok(());
        }
        TokenCmd::List => call!(
            ctl,
            ClusterAdminClient,
            list_join_tokens,
            pb::ListJoinTokensRequest {}
        )?,
        TokenCmd::Delete { id } => {
            let resp = call!(
                ctl,
                ClusterAdminClient,
                delete_join_token,
                pb::DeleteJoinTokenRequest { id: id.clone() }
            )?;
            if out == Output::Table {
                println!("join token {id} deleted");
            }
            resp
        }
    };
    if out == Output::Json {
        return output::json(&list, "lb.v1.ListJoinTokensResponse");
    }
    let rows: Vec<Vec<String>> = list
        .tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.role.clone(),
                if t.node_id.is_empty() {
                    "*".into()
                } else {
                    t.node_id.clone()
                },
                t.uses_left.to_string(),
                from_now(t.expires_at_ms),
                t.joined.join(","),
            ]
        })
        .collect();
    output::table(
        &["ID", "ROLE", "NODE", "USES LEFT", "EXPIRES", "JOINED"],
        &rows,
    );
    Ok(())
}

#[cfg(test)]
mod hint_tests {
    use super::with_tls_hint;

    fn hinted(text: &str, plaintext: bool) -> String {
        with_tls_hint(anyhow::anyhow!("{text}"), plaintext).to_string()
    }

    #[test]
    fn tls_mismatches_get_a_hint_and_other_errors_do_not() {
        // What a plaintext call to a TLS port has been seen to fail with.
        for seen in [
            "Internal: h2 protocol error: http2 error",
            "Unknown: transport error",
            "Cancelled: operation was canceled",
        ] {
            assert!(
                hinted(seen, true).contains("hint: if the controller serves TLS"),
                "{seen}"
            );
            assert!(!hinted(seen, false).contains("hint"), "{seen}");
        }
        assert!(hinted(
            "Unauthenticated: no client certificate; present a certificate issued by this fabric's CA",
            false
        )
        .contains("hint: lbctl needs the admin credentials"));
        assert!(hinted(
            "Unavailable: received corrupt message of type InvalidContentType",
            false
        )
        .contains("drop --credentials"));
        for plain in [
            "Unavailable: tcp connect error",
            "Unavailable: no leader elected yet; retry shortly",
            "InvalidArgument: service.endpoint.port: must be 1-65535",
        ] {
            assert!(!hinted(plain, true).contains("hint"), "{plain}");
        }
    }
}
