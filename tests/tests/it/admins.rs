//! Named admin identities: `lbctl admin create` gets a certificate from the
//! leader, `admin list` shows it, and `admin revoke` ends it at once — an
//! open `lbctl watch` under it ends, its next call is refused — while the
//! other admins go on. A certificate made offline for the name before the
//! revocation is refused too; one made after it counts.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lb_testkit::{bin, lbctl_ok, words, ControllerProc};

/// lbctl under the admin credentials in `creds`.
fn as_admin(creds: &Path, addr: &str, args: &[&str]) -> Output {
    Command::new(bin("lbctl"))
        .arg("--credentials")
        .arg(creds)
        .args(["--controller", addr])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running lbctl")
}

fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn a_revoked_admin_is_refused_at_once_also_on_an_open_watch() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = ControllerProc::start(1, dir.path(), true, &["--tls"])?;
    node.wait_leader().await?;
    let a = node.addr.clone();
    let alice = dir.path().join("alice");
    let made = lbctl_ok(
        &a,
        &[
            "admin",
            "create",
            "alice",
            "--out",
            alice.to_str().unwrap(),
            "--days",
            "30",
        ],
    )?;
    assert!(made.contains("admin alice"), "{made}");
    // Before the revocation, offline from the CA's key (break-glass).
    let offline = dir.path().join("alice-offline");
    let ca_dir = node.data_dir.join("pki");
    lbctl_ok(
        &a,
        &[
            "pki",
            "admin-cert",
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--name",
            "alice",
            "--out",
            offline.to_str().unwrap(),
        ],
    )?;

    let o = as_admin(
        &alice,
        &a,
        &words("service create web --vip 10.0.0.1:80/tcp"),
    );
    assert!(o.status.success(), "alice cannot write: {}", said(&o));
    let list: serde_json::Value =
        serde_json::from_str(&lbctl_ok(&a, &words("admin list -o json"))?)?;
    let row = &list["admins"][0];
    assert_eq!(row["name"], "alice", "{list}");
    assert_eq!(row["issuedBy"], "admin", "{list}");
    assert!(row.get("revokedAtMs").is_none(), "{list}");
    // Nobody revokes the certificate they call with.
    let o = as_admin(&alice, &a, &words("admin revoke alice"));
    assert!(
        !o.status.success() && said(&o).contains("lock yourself out"),
        "{}",
        said(&o)
    );

    // alice watches; a change shows the stream is open and live.
    let mut watch = Command::new(bin("lbctl"))
        .arg("--credentials")
        .arg(&alice)
        .args(["--controller", &a, "watch"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    lbctl_ok(&a, &words("service create api --vip 10.0.0.2:80/tcp"))?;
    let mut seen = String::new();
    let mut stdout = watch.stdout.take().expect("stdout");
    let mut byte = [0u8; 1];
    while !seen.contains('\n') {
        anyhow::ensure!(stdout.read(&mut byte)? == 1, "the watch ended early");
        seen.push(byte[0] as char);
    }
    assert!(seen.contains("api"), "{seen}");

    lbctl_ok(&a, &words("admin revoke alice"))?;
    let revoked = Instant::now();
    let status = loop {
        if let Some(s) = watch.try_wait()? {
            break s;
        }
        anyhow::ensure!(
            revoked.elapsed() < Duration::from_secs(10),
            "alice's watch still open 10 s after the revocation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let ended = revoked.elapsed();
    let mut err = String::new();
    watch
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)?;
    println!(
        "alice's watch ended {ended:?} after `lbctl admin revoke` returned: {}",
        err.trim()
    );
    assert!(!status.success());
    assert!(
        err.contains("the certificate of admin alice is revoked"),
        "{err}"
    );
    assert!(ended < Duration::from_secs(2), "{ended:?}");

    for creds in [&alice, &offline] {
        let o = as_admin(creds, &a, &words("service list"));
        assert!(!o.status.success(), "a revoked certificate listed services");
        assert!(
            said(&o).contains("Unauthenticated") && said(&o).contains("admin alice is revoked"),
            "{}",
            said(&o)
        );
    }
    // The other admins go on; the list shows the revocation.
    let list: serde_json::Value =
        serde_json::from_str(&lbctl_ok(&a, &words("admin list -o json"))?)?;
    assert!(
        list["admins"][0]["revokedAtMs"]
            .as_str()
            .is_some_and(|t| t != "0"),
        "{list}"
    );
    println!("{}", lbctl_ok(&a, &words("admin list"))?);
    // A certificate made for the name after the revocation counts again.
    let again = dir.path().join("alice-again");
    lbctl_ok(
        &a,
        &["admin", "create", "alice", "--out", again.to_str().unwrap()],
    )?;
    let o = as_admin(&again, &a, &words("service list"));
    assert!(o.status.success(), "{}", said(&o));
    Ok(())
}
