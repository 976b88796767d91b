//! The live dashboard in a real headless Chromium (WebDriver): the page the
//! leader serves shows the fabric as it is — the service, the director
//! holding its VIP, the realserver — and changes without a reload when an
//! operator drains the realserver. The fabric is the host one of
//! `floating.rs` (its shared addresses make nextest run this test alone).

use std::time::{Duration, Instant};

use lb_testkit::browser::Browser;
use lb_testkit::fabric::{Fabric, DR_VIP};
use lb_testkit::netns::can_create_namespaces;
use lb_testkit::{require, wait_for, which, words};

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_fabric_and_follows_a_drain_live() -> anyhow::Result<()> {
    if !require(
        can_create_namespaces()
            && which("nft").is_some()
            && which("chromium").is_some()
            && which("chromedriver").is_some(),
        "root, network namespaces, nft, chromium and chromium-driver",
    ) {
        return Ok(());
    }
    let (f, _d1, _d2) = Fabric::floating(&[], &[], &words("--realserver 10.0.0.2:80")).await?;
    let leader = f.leader().await?;
    // The controllers serve TLS (they listen on 10.0.0.1): the dashboard
    // is HTTPS under the controller's certificate, which the fabric's CA
    // vouches for.
    let c = &f.controllers[leader];
    let url = format!("https://{}/", c.http);
    let ca = c.pki.as_ref().expect("a TLS fabric").join("ca.pem");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .arg(format!("{url}api/status"))
        .output()?;
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && status.contains("\"revision\""),
        "{status}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let browser = tokio::task::spawn_blocking(Browser::start).await??;
    let browser = std::sync::Arc::new(browser);
    let b = browser.clone();
    let url2 = url.clone();
    tokio::task::spawn_blocking(move || b.goto(&url2)).await??;

    let text = |browser: &std::sync::Arc<Browser>| {
        let b = browser.clone();
        async move {
            tokio::task::spawn_blocking(move || b.text())
                .await
                .ok()?
                .ok()
        }
    };
    // The service, its VIP held by d1, the realserver in service.
    // The page as last read, to show if a wait fails.
    let last = std::sync::Mutex::new(String::new());
    let shown = wait_for(
        Duration::from_secs(30),
        "the page showing d1 holding the VIP",
        || async {
            let t = text(&browser).await?;
            *last.lock().unwrap() = t.clone();
            // Leadership moved since (a busy machine): the page says where.
            // Or Chromium dropped the load with its own error page
            // (ERR_NETWORK_CHANGED: tests running beside this one add and
            // remove interfaces in the host's namespace): load it again.
            if t.contains("not the leader") || t.contains("ERR_NETWORK_CHANGED") {
                let now = f.leader().await.ok()?;
                let b = browser.clone();
                let url = format!("https://{}/", f.controllers[now].http);
                tokio::task::spawn_blocking(move || b.goto(&url))
                    .await
                    .ok()?
                    .ok()?;
                return None;
            }
            let vip_row = t.lines().find(|l| l.starts_with(DR_VIP))?.to_string();
            (vip_row.contains("d1") && vip_row.contains("held") && t.contains("→ 10.0.0.2:80"))
                .then_some(t)
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}; the page read:\n{}", last.lock().unwrap()))?;
    let rs_row = |t: &str| {
        t.lines()
            .find(|l| l.contains("→ 10.0.0.2:80"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(shown.contains("web"), "{shown}");
    assert!(rs_row(&shown).contains("active"), "{}", rs_row(&shown));
    assert!(shown.contains("live"), "the directors' liveness: {shown}");

    // Drained with lbctl: the open page follows, no reload.
    f.lbctl(&words("realserver update web 10.0.0.2:80 --state draining"))?;
    let written = Instant::now();
    let after = wait_for(
        Duration::from_secs(10),
        "the page showing the drain",
        || async {
            let t = text(&browser).await?;
            rs_row(&t).contains("draining").then_some(t)
        },
    )
    .await?;
    let took = written.elapsed();
    println!(
        "the dashboard showed the drain {} ms after lbctl's write returned; realserver row: {:?}",
        took.as_millis(),
        rs_row(&after)
    );
    assert!(
        took < Duration::from_secs(1),
        "the page took {took:?} to show the drain"
    );
    assert!(
        after.contains("realserver_updated web"),
        "the change in the event list: {after}"
    );
    let shot = f.dir.path().join("dashboard.png");
    let b = browser.clone();
    let path = shot.clone();
    tokio::task::spawn_blocking(move || b.screenshot(&path)).await??;
    if let Ok(keep) = std::env::var("LB_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&shot, keep)?;
    }
    Ok(())
}
