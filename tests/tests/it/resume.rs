//! The directors' configuration streams at work (issue #16): a director
//! that was cut off while the configuration changed catches up by delta,
//! and one whose controller lost the history (restarted) gets a snapshot.
//! What the director did is read from its log, which names each stream's
//! first update after (re)connecting; that it caught up is read from the
//! controllers (`lbctl director list -o json`).
//!
//! The floating fabric (`lb-director --no-ipvs`, three controllers, the
//! default timers) shares its addresses with `floating.rs`: nextest runs
//! these tests alone (`.config/nextest.toml`).

use std::time::Duration;

use lb_testkit::fabric::Fabric;
use lb_testkit::netns::can_create_namespaces;
use lb_testkit::{require, wait_for, words};

fn privileged() -> bool {
    require(
        can_create_namespaces() && lb_testkit::which("nft").is_some(),
        "root, network namespaces and nft (the director's fence, the partition)",
    )
}

/// Lines of `node`'s log that contain `what`.
fn lines(f: &Fabric, node: &str, what: &str) -> Vec<String> {
    std::fs::read_to_string(f.log(node))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .map(String::from)
        .collect()
}

const SNAPSHOT: &str = "configuration received in full";
const DELTA: &str = "configuration resumed by delta";

/// The cluster's revision, and the one `node` reports applied.
fn revisions(f: &Fabric, node: &str) -> Option<(u64, u64)> {
    let out = f.lbctl(&words("director list -o json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let number = |v: &serde_json::Value| v.as_str()?.parse::<u64>().ok();
    let d = v["directors"]
        .as_array()?
        .iter()
        .find(|d| d["nodeId"] == node)?;
    Some((number(&v["revision"])?, number(&d["appliedRevision"])?))
}

async fn caught_up(f: &Fabric, node: &str) -> anyhow::Result<u64> {
    wait_for(
        Duration::from_secs(30),
        &format!("{node} to apply the cluster's revision"),
        || async {
            let (cluster, applied) = revisions(f, node)?;
            (applied == cluster).then_some(applied)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_director_catches_up_by_delta_and_by_snapshot_once_the_history_is_gone(
) -> anyhow::Result<()> {
    if !privileged() {
        return Ok(());
    }
    let (mut f, _d1, _d2) = Fabric::floating(&[], &[], &[]).await?;
    f.prepare_cut("d2")?;
    // One snapshot from each controller to start with.
    wait_for(
        Duration::from_secs(30),
        "d2's first snapshot from each of the three controllers",
        || async { (lines(&f, "d2", SNAPSHOT).len() >= 3).then_some(()) },
    )
    .await?;
    caught_up(&f, "d2").await?;

    // Cut off, d2 misses five changes.
    let lost_before = lines(&f, "d2", "controller stream lost").len();
    f.cut("d2")?;
    for i in 0..5 {
        let create = format!(
            "service create extra{i} --vip 10.0.0.{}:80/tcp --mode dr",
            120 + i
        );
        f.lbctl(&words(&create))?;
    }
    wait_for(
        Duration::from_secs(30),
        "d2 to lose its three streams",
        || async {
            (lines(&f, "d2", "controller stream lost").len() >= lost_before + 3).then_some(())
        },
    )
    .await?;
    let (cluster, applied) = revisions(&f, "d2").unwrap_or_default();
    assert!(
        applied < cluster,
        "d2 applied {applied} of {cluster} while cut off"
    );

    // Healed: each stream resumes from the revision it held, by delta.
    f.heal("d2")?;
    let deltas = wait_for(
        Duration::from_secs(30),
        "d2 to resume by delta from each of the three controllers",
        || async {
            let d = lines(&f, "d2", DELTA);
            (d.len() >= 3).then_some(d)
        },
    )
    .await?;
    println!("after healing:\n{}", deltas.join("\n"));
    assert!(
        deltas
            .iter()
            .all(|l| l.contains("changed=5") && l.contains("removed=0")),
        "each delta carries the five new services: {deltas:?}"
    );
    assert_eq!(
        lines(&f, "d2", SNAPSHOT).len(),
        3,
        "no snapshot after healing: {:?}",
        lines(&f, "d2", SNAPSHOT)
    );
    let revision = caught_up(&f, "d2").await?;
    println!("d2 caught up to revision {revision}");

    // A restarted controller has no history: at the next change it sends
    // everything (until then the director holds its revision already).
    let third = f.controllers[2].addr.clone();
    f.controllers[2].restart()?;
    f.lbctl(&words(
        "service create extra9 --vip 10.0.0.129:80/tcp --mode dr",
    ))?;
    let snapshot = wait_for(
        Duration::from_secs(30),
        "a snapshot from the restarted controller",
        || async {
            let s = lines(&f, "d2", SNAPSHOT);
            (s.len() > 3).then(|| s[3].clone())
        },
    )
    .await?;
    println!("after the restart: {snapshot}");
    assert!(snapshot.contains(&third), "{snapshot}");
    assert!(
        snapshot.contains("services=7"),
        "web and the six: {snapshot}"
    );
    caught_up(&f, "d2").await?;
    Ok(())
}
