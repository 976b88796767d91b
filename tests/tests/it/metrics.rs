//! Every process's Prometheus metrics, as an operator's tools see them:
//! fetched with curl, linted by `promtool check metrics`, scraped by a real
//! Prometheus, and changed by what happens in the fabric — a health check
//! that fails and passes again, a director cut off whose VIP moves, a
//! refused call. The fabric is the host one of `floating.rs` (it shares
//! its addresses, so nextest runs this test alone as well).

use std::time::Duration;

use lb_proto::pki::Role;
use lb_testkit::fabric::{director_metrics, Fabric, AGENT_METRICS_PORT, DR_VIP};
use lb_testkit::metrics::{promtool_check, scrape, sum, value};
use lb_testkit::netns::can_create_namespaces;
use lb_testkit::proc::Proc;
use lb_testkit::{agent_tls, bin, require, wait_for, words};

fn privileged() -> bool {
    require(
        can_create_namespaces()
            && lb_testkit::which("nft").is_some()
            && lb_testkit::which("curl").is_some()
            && lb_testkit::which("promtool").is_some()
            && lb_testkit::which("prometheus").is_some(),
        "root, network namespaces, nft, curl and the prometheus package (promtool)",
    )
}

/// Scrapes `addr` until `check` finds what it wants in the text.
async fn until<T>(addr: &str, what: &str, check: impl Fn(&str) -> Option<T>) -> anyhow::Result<T> {
    let check = &check;
    wait_for(Duration::from_secs(20), what, || async move {
        let text = scrape(addr).ok()?;
        check(&text)
    })
    .await
}

/// The controller whose metrics say it leads, with its metrics address.
async fn leader_metrics(f: &Fabric) -> anyhow::Result<String> {
    let addrs: Vec<String> = f.controllers.iter().map(|c| c.metrics.clone()).collect();
    let addrs = &addrs;
    wait_for(Duration::from_secs(20), "a leader", || async move {
        addrs.iter().find_map(|a| {
            let text = scrape(a).ok()?;
            (value(&text, "lbfabric_raft_role", &[("role", "leader")]) == Some(1.0))
                .then(|| a.clone())
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_a_health_flip_and_a_failover() -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    // `web` is backed by whatever realserver agent carries pool=web; its
    // check (tcp 8089) fails until a server listens there.
    let service = words(
        "--selector pool=web --check tcp --check-port 8089 --check-interval 200ms \
         --check-timeout 180ms --check-fall 2 --check-rise 1",
    );
    let (mut f, _d1, _d2) = Fabric::floating(&[], &[], &service).await?;
    let rs_metrics = format!("10.0.0.2:{AGENT_METRICS_PORT}");
    let tls = agent_tls(&f.addrs, Role::Realserver, "cl", &["10.0.0.2".parse()?])?;
    let agent = bin("lb-realserver");
    let state = f.dir.path().join("agents");
    let mut args: Vec<String> = [
        agent.to_string_lossy().as_ref(),
        "--state-dir",
        &state.to_string_lossy(),
        "--controller",
        &f.addrs,
        "--node-id",
        "cl",
        "--address",
        "10.0.0.2",
        "--labels",
        "pool=web",
        "--metrics-listen",
        &rs_metrics,
    ]
    .map(String::from)
    .to_vec();
    args.extend(tls);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    f.t.spawn("cl", &args)?;

    // Every endpoint passes promtool.
    let d1 = director_metrics("d1")?;
    let d2 = director_metrics("d2")?;
    let leader = leader_metrics(&f).await?;
    let rs = until(&rs_metrics, "the realserver agent's metrics", |t| {
        t.contains("lbfabric_check_up").then(|| t.to_string())
    })
    .await?;
    for (who, text) in [
        ("controller", scrape(&leader)?),
        ("d1", scrape(&d1)?),
        ("d2", scrape(&d2)?),
        ("realserver agent", rs),
    ] {
        promtool_check(&text).map_err(|e| anyhow::anyhow!("{who}: {e}\n{text}"))?;
    }

    // The health flip, as the realserver agent counts it.
    let service_is = |up: f64| {
        move |t: &str| {
            (value(t, "lbfabric_check_up", &[("service", "web")]) == Some(up)).then_some(())
        }
    };
    until(&rs_metrics, "web's check down", service_is(0.0)).await?;
    f.t.server(
        "cl",
        &[
            &bin("lb-http").to_string_lossy(),
            "serve",
            "cl",
            "0.0.0.0:8089",
        ],
        "ready",
    )?;
    until(&rs_metrics, "web's check up", service_is(1.0)).await?;
    let text = scrape(&rs_metrics)?;
    let transitions = |to: &str| {
        value(
            &text,
            "lbfabric_check_transitions_total",
            &[("service", "web"), ("to", to)],
        )
    };
    assert_eq!(transitions("down"), Some(1.0), "{text}");
    assert_eq!(transitions("up"), Some(1.0), "{text}");
    let failed = value(&text, "lbfabric_check_results_total", &[("result", "fail")]);
    assert!(failed >= Some(2.0), "{text}");
    assert!(
        sum(&text, "lbfabric_check_duration_seconds_count") >= 3.0,
        "{text}"
    );
    assert!(
        value(
            &text,
            "lbfabric_host_changes_total",
            &[("cause", "configuration")]
        ) >= Some(1.0),
        "the agent put the VIP on lo and set sysctls: {text}"
    );

    // d1 holds the VIP: the controller says so, d1's lease runs.
    let vip = [("vip", DR_VIP)];
    let owner = |director: &'static str| {
        move |t: &str| {
            let owned = value(
                t,
                "lbfabric_vip_owner",
                &[("vip", DR_VIP), ("director", director)],
            );
            (owned == Some(1.0)).then(|| value(t, "lbfabric_vip_epoch", &[("vip", DR_VIP)]))?
        }
    };
    let epoch1 = until(&leader, "d1 owning the VIP", owner("d1")).await?;
    let text = scrape(&d1)?;
    assert!(
        value(&text, "lbfabric_vip_lease_remaining_seconds", &vip) > Some(0.0),
        "{text}"
    );
    assert!(
        value(&text, "lbfabric_announcements_total", &vip) >= Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&scrape(&d2)?, "lbfabric_vip_lease_remaining_seconds", &vip),
        None
    );

    // d1 cut off from the controllers: the VIP moves, and the metrics say
    // to whom, under which epoch, and why.
    f.prepare_cut("d1")?;
    f.cut("d1")?;
    let leader = leader_metrics(&f).await?;
    let epoch2 = until(&leader, "d2 owning the VIP", owner("d2")).await?;
    assert!(epoch2 > epoch1, "epoch {epoch1} then {epoch2}");
    let text = scrape(&leader)?;
    let silent = value(
        &text,
        "lbfabric_vip_moves_total",
        &[("cause", "owner_silent")],
    );
    assert!(silent >= Some(1.0), "{text}");
    until(&d2, "d2's lease and announcement", |t| {
        let left = value(t, "lbfabric_vip_lease_remaining_seconds", &vip)?;
        let sent = value(t, "lbfabric_announcements_total", &vip)?;
        (left > 0.0 && sent >= 1.0).then_some(())
    })
    .await?;
    // d1 is cut off from this (the controllers') address: ask from the
    // client's host.
    let f = &f;
    wait_for(Duration::from_secs(20), "d1's lease over", || async {
        let t =
            f.t.sh(
                "cl",
                &format!("curl -sS --fail --max-time 5 http://{d1}/metrics"),
            )
            .ok()?;
        let held = value(&t, "lbfabric_vip_lease_remaining_seconds", &vip);
        (t.contains("lbfabric_reconcile_duration") && held.is_none()).then_some(())
    })
    .await?;

    // A refused call is counted by its code.
    let bad = lb_testkit::lbctl(
        &f.addrs,
        &words("service create bad --vip 10.0.0.999:80/tcp"),
    );
    assert!(!bad.status.success());
    until(&leader, "the refused call counted", |t| {
        let n = value(
            t,
            "lbfabric_api_rejected_requests_total",
            &[("code", "INVALID_ARGUMENT")],
        );
        (n >= Some(1.0)).then_some(())
    })
    .await?;

    // A real Prometheus scrapes them all and answers a query about the move.
    let web = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let targets: Vec<String> = f
        .controllers
        .iter()
        .map(|c| c.metrics.clone())
        .chain([d2.clone(), rs_metrics.clone()])
        .map(|a| format!("'{a}'"))
        .collect();
    let config = f.dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s }}\nscrape_configs:\n  - job_name: lbfabric\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )?;
    let _prometheus = Proc(
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                f.dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(f.dir.path().join("prometheus.log"))?)
            .spawn()?,
    );
    let query = |q: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "5", "-G"])
            .arg(format!("http://{web}/api/v1/query"))
            .args(["--data-urlencode", &format!("query={q}")])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["data"]["result"].as_array().cloned()
    };
    let up = wait_for(
        Duration::from_secs(60),
        "Prometheus scraping every target",
        || async {
            let up = query("up == 1")?;
            (up.len() == targets.len()).then_some(up)
        },
    )
    .await?;
    let moved = wait_for(
        Duration::from_secs(30),
        "Prometheus seeing d2 own the VIP",
        || async {
            let r = query(&format!(
                "lbfabric_vip_owner{{vip=\"{DR_VIP}\",director=\"d2\"}} == 1"
            ))?;
            (!r.is_empty()).then_some(r)
        },
    )
    .await?;
    println!(
        "Prometheus: {} targets up; d2 owns {DR_VIP} (epoch {epoch1} -> {epoch2}) in {} series",
        up.len(),
        moved.len()
    );
    Ok(())
}
