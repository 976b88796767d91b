//! Disaster recovery with a director in the real kernel: a three-node
//! cluster with the fabric's services and 1,000 more (`lbctl import
//! ipvsadm`) programmed into d1's IPVS table; `lbctl cluster backup`;
//! every controller killed; `lb-controller --restore` on node 1's address
//! (a fresh data directory). d1, which kept running, re-attaches with its
//! certificate: its IPVS table is the same line for line and it changed
//! nothing in it, it holds the VIPs again, and the restored controller
//! lists the same services at the same revision.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lb_testkit::fabric::*;
use lb_testkit::proc::Proc;
use lb_testkit::{bin, wait_for, words};

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_controller_takes_over_and_the_director_keeps_its_table() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let mut f = Fabric::new(&VM_CONTROLLER_TIMERS).await?;
    f.create_services()?;
    // Four imports of 250: one entry of 1,000 services takes the emulated
    // followers about a heartbeat (500 ms) to take in, and openraft allows
    // an AppendEntries no more (see `lb_controller::network::BINARY_RPC`).
    let lines = lb_testkit::scale::ipvsadm_table(1000, 2);
    let t = Instant::now();
    for (i, part) in lines.chunks(250 * 3).enumerate() {
        let table = f.dir.path().join(format!("table-{i}"));
        std::fs::write(&table, part.join("\n") + "\n")?;
        f.lbctl(&["import", "ipvsadm", table.to_str().unwrap()])?;
    }
    println!("imported 1,000 services in {:?}", t.elapsed());
    let _d1 = f.start_director("d1", &VM_DIRECTOR_HEARTBEAT)?;
    f.wait_held("d1", &VIPS, Duration::from_secs(60)).await?;
    let started = Instant::now();
    wait_for(
        Duration::from_secs(120),
        "1,004 services in d1's kernel",
        || async {
            (f.ipvs("d1").iter().filter(|l| l.starts_with("-A")).count() == 1004).then_some(())
        },
    )
    .await?;
    println!(
        "d1 programmed 1,004 services × 2 in {:?}",
        started.elapsed()
    );
    let before = f.ipvs("d1");
    let listed = f.lbctl(&words("service list -o json"))?;

    let file = f.dir.path().join("fabric.backup");
    println!(
        "{}",
        f.lbctl(&["cluster", "backup", file.to_str().unwrap()])?
            .trim()
    );
    let node1 = f.controllers[0].addr.clone();
    for c in &mut f.controllers {
        c.kill();
    }
    let changes_before = std::fs::read_to_string(f.log("d1"))?
        .matches("ipvs changed")
        .count();

    // The disaster: every controller gone. Node 1's host comes back with
    // nothing but the backup, on the same address.
    let fresh = f.dir.path().join("restored");
    let log = std::fs::File::create(f.dir.path().join("restored.log"))?;
    let restored = Proc(
        Command::new(bin("lb-controller"))
            .args([
                "--node-id",
                "1",
                "--listen",
                &node1,
                "--metrics-listen",
                "off",
            ])
            .arg("--data-dir")
            .arg(&fresh)
            .arg("--restore")
            .arg(&file)
            .args(VM_CONTROLLER_TIMERS)
            .env("NO_COLOR", "1")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()?,
    );
    let restored_at = Instant::now();
    // lbctl as the restored node's admin (its CA is the backup's).
    let lbctl = |args: &[&str]| -> Option<String> {
        let out = Command::new(bin("lbctl"))
            .arg("--credentials")
            .arg(fresh.join("pki"))
            .args(["--controller", &node1])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    wait_for(
        Duration::from_secs(60),
        "the restored controller serving",
        || async { lbctl(&words("service list -o json")) },
    )
    .await?;
    let after = lbctl(&words("service list -o json")).unwrap_or_default();
    assert_eq!(after, listed, "the restored services differ");
    // d1 re-attaches by itself (node 1's address is in its list) and
    // holds its VIPs again under the restored owners.
    f.wait_held("d1", &VIPS, Duration::from_secs(60)).await?;
    let back = restored_at.elapsed();
    wait_for(
        Duration::from_secs(30),
        "d1 live at the restored controller",
        || async {
            let list = lbctl(&words("director list -o json"))?;
            let v: serde_json::Value = serde_json::from_str(&list).ok()?;
            v["directors"]
                .as_array()?
                .iter()
                .any(|d| d["nodeId"] == "d1" && d["connected"] == true)
                .then_some(())
        },
    )
    .await?;
    // A resync period (1 s) and more for it to touch anything it would.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let changes = std::fs::read_to_string(f.log("d1"))?
        .matches("ipvs changed")
        .count()
        - changes_before;
    println!("restored: d1 holds its VIPs {back:?} after the restore began; {changes} IPVS changes since the backup");
    assert_eq!(f.ipvs("d1"), before, "d1's IPVS table changed");
    assert_eq!(changes, 0, "d1 reprogrammed IPVS after the restore");
    drop(restored);
    Ok(())
}
