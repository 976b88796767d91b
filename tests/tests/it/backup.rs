//! Disaster recovery on the host: `lbctl cluster backup` from a three-node
//! cluster with 1,000 services, every controller killed, `lb-controller
//! --restore` into a fresh data directory: the restored one-node cluster
//! lists the same services (`service list -o json` identical), continues
//! from the same revision, keeps the CA (an agent's certificate from the
//! old cluster is accepted) and takes writes. A damaged backup and a data
//! directory that already holds a store are refused, naming why.

use std::path::Path;
use std::process::Command;

use lb_testkit::{bin, lbctl_ok, start_cluster, words, ControllerProc};

/// `lb-controller --restore file` into `data_dir`, expected to be
/// refused: what it said.
fn restore_refused(data_dir: &Path, file: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin("lb-controller"))
        .args([
            "--tls",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--restore")
        .arg(file)
        .output()?;
    anyhow::ensure!(
        !out.status.success(),
        "--restore {} was taken",
        file.display()
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

fn revision(list: &serde_json::Value) -> u64 {
    list["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_restores_the_fabric_into_a_new_cluster() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut nodes = start_cluster(3, dir.path(), &["--tls"]).await?;
    let a = lb_testkit::addresses(&nodes);
    let table = dir.path().join("table");
    std::fs::write(
        &table,
        lb_testkit::scale::ipvsadm_table(1000, 2).join("\n") + "\n",
    )?;
    lbctl_ok(&a, &["import", "ipvsadm", table.to_str().unwrap()])?;
    lbctl_ok(
        &a,
        &words("realserver update vs-10.100.0.0-8000-tcp 192.168.0.1:8000 --weight 7"),
    )?;
    let before = lbctl_ok(&a, &words("service list -o json"))?;
    let listed: serde_json::Value = serde_json::from_str(&before)?;
    assert_eq!(listed["services"].as_array().map(Vec::len), Some(1000));

    let file = dir.path().join("fabric.backup");
    let said = lbctl_ok(&a, &["cluster", "backup", file.to_str().unwrap()])?;
    println!("{}", said.trim());
    assert!(
        said.contains(&format!(
            "backup of revision {}: 1000 services",
            revision(&listed)
        )),
        "{said}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file)?.permissions().mode() & 0o777,
        0o600
    );
    // A certificate from the old cluster's CA, to show it still counts.
    let pki = nodes[0].data_dir.join("pki");
    let issued = dir.path().join("ops-pki");
    lbctl_ok(
        &a,
        &[
            "pki",
            "admin-cert",
            "--ca-dir",
            pki.to_str().unwrap(),
            "--name",
            "ops",
            "--out",
            issued.to_str().unwrap(),
        ],
    )?;
    for n in &mut nodes {
        n.kill();
    }

    // Damaged: one byte short.
    let bytes = std::fs::read(&file)?;
    let cut = dir.path().join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() - 1])?;
    let err = restore_refused(&dir.path().join("never"), &cut)?;
    assert!(err.contains("cut short"), "{err}");

    let fresh = dir.path().join("restored");
    std::fs::create_dir_all(&fresh)?;
    let restored = ControllerProc::start(
        1,
        &fresh,
        true,
        &["--tls", "--restore", file.to_str().unwrap()],
    )?;
    restored.wait_leader().await?;
    let r = restored.addr.clone();
    let after = lbctl_ok(&r, &words("service list -o json"))?;
    assert_eq!(after, before, "the restored services differ");
    println!(
        "restored: {} services at revision {}",
        1000,
        revision(&serde_json::from_str(&after)?)
    );
    // The same CA: a certificate issued by the old cluster works.
    let ops = Command::new(bin("lbctl"))
        .arg("--credentials")
        .arg(&issued)
        .args([
            "--controller",
            &r,
            "service",
            "get",
            "vs-10.100.0.0-8000-tcp",
        ])
        .output()?;
    assert!(
        ops.status.success(),
        "{}",
        String::from_utf8_lossy(&ops.stderr)
    );
    // It takes writes, from the next revision on.
    lbctl_ok(&r, &words("service delete vs-10.100.0.0-8001-tcp"))?;
    let next: serde_json::Value =
        serde_json::from_str(&lbctl_ok(&r, &words("service list -o json"))?)?;
    assert_eq!(revision(&next), revision(&listed) + 1);

    // Not over a store.
    let mut again = restored;
    again.kill();
    let err = restore_refused(&again.data_dir, &file)?;
    assert!(err.contains("already holds a store"), "{err}");
    Ok(())
}
