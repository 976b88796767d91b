//! 10,000 services (100,000 realservers) on one controller: the import
//! lands whole, and every listing works though the whole configuration is
//! twice gRPC's 4 MiB message limit (the controller answers in pages).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use lb_testkit::{bin, lbctl_ok, ControllerProc};

const SERVICES: usize = 10_000;

fn table(n: usize) -> String {
    let mut text = lb_testkit::scale::ipvsadm_table(n, 10).join("\n");
    text.push('\n');
    text
}

fn json(text: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(text)?)
}

#[tokio::test]
async fn ten_thousand_services_list_whole() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = ControllerProc::start(1, dir.path(), true, &[])?;
    let a = node.addr.clone();
    node.wait_leader().await?;
    let file = dir.path().join("rules");
    std::fs::File::create(&file)?.write_all(table(SERVICES).as_bytes())?;
    let path = file.to_string_lossy().into_owned();
    let out = lbctl_ok(&a, &["import", "ipvsadm", &path])?;
    assert!(
        out.starts_with(&format!(
            "imported {SERVICES} services (revision {SERVICES})"
        )),
        "{}",
        out.lines().next().unwrap_or_default()
    );

    let list = json(&lbctl_ok(&a, &["service", "list", "-o", "json"])?)?;
    let names: Vec<&str> = list["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names.len(), SERVICES, "service list");
    let mut sorted = names.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), SERVICES, "a service listed twice");
    assert_eq!(list["revision"].as_str(), Some("10000"));

    let status = json(&lbctl_ok(&a, &["status", "-o", "json"])?)?;
    let services = status["services"].as_array().map_or(0, Vec::len);
    assert_eq!(services, SERVICES, "lbctl status");
    let vips = status["vips"].as_array().map_or(0, Vec::len);
    assert_eq!(vips, SERVICES / 10, "lbctl status: VIPs");
    // Narrowed to one VIP: its ten services and only that VIP.
    let one = json(&lbctl_ok(
        &a,
        &["status", "--vip", "10.100.0.7", "-o", "json"],
    )?)?;
    let ports: Vec<u64> = one["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["service"]["endpoint"]["port"].as_u64())
        .collect();
    assert_eq!(ports, (8000..8010).collect::<Vec<u64>>(), "status --vip");
    assert_eq!(one["vips"].as_array().map_or(0, Vec::len), 1);

    let rs = json(&lbctl_ok(&a, &["realserver", "list", "-o", "json"])?)?;
    let count = rs["realservers"].as_array().map_or(0, Vec::len);
    assert_eq!(count, SERVICES * 10, "realserver list");

    // The whole history streams: one line per service created.
    let mut watcher = Command::new(bin("lbctl"))
        .args(["--controller", &a, "watch", "--from-revision", "1"])
        .stdout(Stdio::piped())
        .spawn()?;
    let lines = BufReader::new(watcher.stdout.take().expect("stdout")).lines();
    let mut seen = 0;
    for line in lines {
        let line = line?;
        seen += 1;
        assert!(
            line.starts_with(&format!("{seen} SERVICE_CREATED ")),
            "{line}"
        );
        if seen == SERVICES {
            break;
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert_eq!(seen, SERVICES, "watch --from-revision 1");
    Ok(())
}
