//! Running under systemd: the units in packaging/systemd pass
//! `systemd-analyze verify` (with ExecStart pointed at the built binaries),
//! and a controller started as `Type=notify` expects tells systemd it is
//! ready once it serves, writing its log as JSON lines when asked.

use std::io::BufRead;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use lb_testkit::{bin, require, which};

#[test]
fn the_units_verify() {
    if !require(
        which("systemd-analyze").is_some(),
        "systemd-analyze (Debian package systemd)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let units = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/systemd");
    for (name, program) in [
        ("controller", "lb-controller"),
        ("director", "lb-director"),
        ("realserver", "lb-realserver"),
    ] {
        let unit = format!("lbfabric-{name}.service");
        let text = std::fs::read_to_string(format!("{units}/{unit}")).unwrap();
        let text = text.replace(
            &format!("/usr/bin/{program}"),
            &bin(program).to_string_lossy(),
        );
        let path = dir.path().join(&unit);
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{unit}: {said}"
        );
    }
}

#[test]
fn a_controller_tells_systemd_it_is_ready_and_logs_json() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify");
    let notify = UnixDatagram::bind(&socket).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut controller = Command::new(bin("lb-controller"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &socket)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let got = notify.recv(&mut buf);
    let stdout = controller.stdout.take().unwrap();
    let _ = controller.kill();
    let _ = controller.wait();
    let message =
        String::from_utf8_lossy(&buf[..got.expect("no readiness from the controller")]).to_string();
    assert!(
        message.lines().any(|l| l == "READY=1") && message.contains("STATUS=serving"),
        "{message:?}"
    );
    println!("readiness: {message:?}");
    // Every line it wrote is a JSON object with a level and a message; one
    // says it serves.
    let lines: Vec<serde_json::Value> = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    println!("{} JSON log lines, the first: {}", lines.len(), lines[0]);
    assert!(lines.iter().all(|l| l["level"].is_string()), "{lines:?}");
    assert!(
        lines.iter().any(|l| l["message"] == "controller serving"),
        "{lines:?}"
    );
}
