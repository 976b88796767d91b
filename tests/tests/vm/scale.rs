//! The director at scale against a real kernel (issue #16, AC3): 1,000
//! services × 10 realservers imported at once are programmed from empty
//! exactly (`ipvsadm -Sn` equals the imported table, line for line), in
//! batched netlink requests; one change afterwards is one operation, and
//! only its line changes. The figures printed are under emulation; the
//! comparison with `ipvsadm -R` is `lb-scale-bench`'s.

use std::time::{Duration, Instant};

use super::director::{empty_kernel_and_controller, start_director};
use super::{ipvsadm, ipvsadm_save, sorted};
use lb_testkit::{lbctl_ok, wait_for, words};

const SERVICES: usize = 1_000;

#[tokio::test]
async fn a_thousand_services_are_programmed_exactly_and_one_change_touches_only_its_line(
) -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let (dir, node) = empty_kernel_and_controller().await?;
    let a = node.addr.clone();
    let table = lb_testkit::scale::ipvsadm_table(SERVICES, 10);
    let file = dir.path().join("rules");
    std::fs::write(&file, table.join("\n") + "\n")?;
    let imported = lbctl_ok(&a, &["import", "ipvsadm", &file.to_string_lossy()])?;
    println!("{}", imported.lines().next().unwrap_or_default());

    let log = dir.path().join("director.log");
    let _director = start_director(&a, &log);
    let started = Instant::now();
    let want = sorted(&table.iter().map(String::as_str).collect::<Vec<_>>());
    let programmed = wait_for(
        Duration::from_secs(600),
        "1,000 services × 10 realservers in the kernel",
        || async { (ipvsadm_save() == want).then(|| started.elapsed()) },
    )
    .await;
    let programmed = match programmed {
        Ok(t) => t,
        Err(e) => {
            let have = ipvsadm_save();
            let missing: Vec<&String> = want.iter().filter(|l| !have.contains(l)).take(5).collect();
            let extra: Vec<&String> = have.iter().filter(|l| !want.contains(l)).take(5).collect();
            panic!(
                "{e}: {} lines, want {}; missing e.g. {missing:?}, extra e.g. {extra:?}",
                have.len(),
                want.len()
            );
        }
    };

    // One realserver's weight: that line, and only it, changes.
    let before = ipvsadm_save();
    let t = Instant::now();
    lbctl_ok(
        &a,
        &words("realserver update vs-10.100.0.0-8000-tcp 192.168.3.1:8000 --weight 5"),
    )?;
    let old = "-a -t 10.100.0.0:8000 -r 192.168.3.1:8000 -g -w 1";
    let new = "-a -t 10.100.0.0:8000 -r 192.168.3.1:8000 -g -w 5";
    let mut expected = before.clone();
    expected.retain(|l| l != old);
    expected.push(new.to_string());
    expected.sort();
    let changed = wait_for(
        Duration::from_secs(120),
        "the one change in the kernel",
        || async { (ipvsadm_save() == expected).then(|| t.elapsed()) },
    )
    .await?;
    let text = std::fs::read_to_string(&log)?;
    let rounds: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("reconciled revision="))
        .collect();
    println!(
        "{SERVICES} services × 10 realservers: programmed from empty in {programmed:?}; \
         one weight change in the kernel {changed:?} after lbctl; rounds that changed \
         anything:\n{}",
        rounds.join("\n")
    );
    // One round programmed the table, one made the change; nothing else
    // (no drift to repair, nothing done twice).
    assert_eq!(rounds.len(), 2, "{rounds:#?}");
    let ops = table.len();
    assert!(
        rounds[0].contains(&format!("changes={ops} failed=0")),
        "{}",
        rounds[0]
    );
    assert!(
        rounds[1].contains("changes=1 failed=0"),
        "the change's round made one operation: {}",
        rounds[1]
    );
    ipvsadm("-C");
    Ok(())
}
