//! Three controller processes formed with lbctl; the leader is SIGKILLed.
//!
//! Shows: a new leader within 2 s, no acknowledged write lost, writes go on,
//! and the killed node catches up after restart — through a snapshot, because
//! the log it missed has been purged meanwhile.

use std::time::{Duration, Instant};

use lb_proto::pb;
use lb_testkit::{lbctl_ok, wait_for, words, ControllerProc};

/// Snapshot often and keep no log behind it, so a node that misses a few
/// dozen writes can only catch up from a snapshot.
const COMPACTION: &[&str] = &["--snapshot-every", "40", "--keep-logs", "0"];

fn service(i: usize) -> pb::Service {
    pb::Service {
        name: format!("svc{i}"),
        virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
            address: format!("10.1.{}.{}", i / 200, i % 200 + 1),
            port: 80,
            protocol: "tcp".into(),
        })),
        mode: "nat".into(),
        ..Default::default()
    }
}

async fn names_on(node: &ControllerProc, stale: bool) -> anyhow::Result<Vec<String>> {
    let mut admin = node.admin().await?;
    let list = admin
        .list_services(pb::ListServicesRequest {
            stale,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(list.services.into_iter().map(|s| s.name).collect())
}

#[tokio::test]
async fn leader_kill_elects_fast_loses_nothing_and_rejoins_by_snapshot() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut nodes = vec![
        ControllerProc::start(1, dir.path(), true, COMPACTION)?,
        ControllerProc::start(2, dir.path(), false, COMPACTION)?,
        ControllerProc::start(3, dir.path(), false, COMPACTION)?,
    ];
    nodes[0].wait_leader().await?;

    // Form the cluster the way an operator would.
    let first = nodes[0].addr.clone();
    for n in &nodes[1..] {
        lbctl_ok(
            &first,
            &["cluster", "add-learner", &n.node_id.to_string(), &n.addr],
        )?;
    }
    for n in &nodes[1..] {
        lbctl_ok(&first, &["cluster", "promote", &n.node_id.to_string()])?;
    }
    let status = lbctl_ok(&nodes[2].addr, &["cluster", "status", "-o", "json"])?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    let voters = status["members"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["role"] == "voter").count());
    assert_eq!(voters, Some(3), "{status}");

    // Writes through every node: followers redirect lbctl to the leader.
    let mut acked = Vec::new();
    for i in 0..24 {
        let via = &nodes[i % 3].addr;
        let vip = format!("10.1.0.{}:80/tcp", i + 1);
        lbctl_ok(
            via,
            &[
                "service",
                "create",
                &format!("svc{i}"),
                "--vip",
                &vip,
                "--mode",
                "nat",
            ],
        )?;
        acked.push(format!("svc{i}"));
    }

    // Find and kill the leader.
    let mut leader_idx = None;
    for (i, n) in nodes.iter().enumerate() {
        if n.status().await.is_some_and(|s| s.state == "leader") {
            leader_idx = Some(i);
        }
    }
    let k = leader_idx.expect("a leader");
    let killed_last_log = nodes[k]
        .status()
        .await
        .map(|s| s.last_log_index)
        .unwrap_or_default();
    let killed_id = nodes[k].node_id;
    nodes[k].kill();
    let t0 = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != k).collect();
    let new_leader = wait_for(Duration::from_secs(10), "a new leader", || {
        let nodes = &nodes;
        let survivors = &survivors;
        async move {
            for &i in survivors {
                if let Some(s) = nodes[i].status().await {
                    if s.state == "leader" && s.node_id != killed_id {
                        return Some(i);
                    }
                }
            }
            None
        }
    })
    .await?;
    let election = t0.elapsed();
    println!(
        "leader {killed_id} killed; node {} leads after {election:?}",
        nodes[new_leader].node_id
    );
    assert!(
        election < Duration::from_secs(2),
        "new leader took {election:?}"
    );

    // Every acknowledged write is still there (linearizable read on the new leader).
    let names = names_on(&nodes[new_leader], false).await?;
    for name in &acked {
        assert!(
            names.contains(name),
            "acknowledged {name} lost; have {names:?}"
        );
    }

    // Writes continue, enough to snapshot and purge past what the killed node had.
    let mut admin = nodes[new_leader].admin().await?;
    for i in 24..150 {
        admin
            .create_service(pb::CreateServiceRequest {
                service: Some(service(i)),
            })
            .await?;
        acked.push(format!("svc{i}"));
    }
    let purged = wait_for(
        Duration::from_secs(10),
        "the leader to purge its log",
        || async {
            nodes[new_leader]
                .status()
                .await
                .filter(|s| s.purged_index > killed_last_log)
                .map(|s| s.purged_index)
        },
    )
    .await?;
    println!("killed node stopped at log index {killed_last_log}; leader purged up to {purged}");

    // The killed node returns on its old address and data, and catches up.
    nodes[k].restart()?;
    let leader_status = nodes[new_leader].status().await.expect("leader status");
    wait_for(
        Duration::from_secs(20),
        "the restarted node to catch up",
        || async {
            nodes[k].status().await.filter(|s| {
                s.revision >= leader_status.revision
                    && s.last_applied_index >= leader_status.last_applied_index
            })
        },
    )
    .await?;
    let log = nodes[k].log_text();
    assert!(
        log.contains("installing snapshot"),
        "restarted node did not install a snapshot:\n{log}"
    );
    let names = names_on(&nodes[k], true).await?;
    assert_eq!(
        names.len(),
        acked.len(),
        "restarted node has {} services, want {}",
        names.len(),
        acked.len()
    );
    for name in &acked {
        assert!(names.contains(name), "{name} missing on the restarted node");
    }

    // And it takes part again: a write through it is redirected and lands.
    lbctl_ok(
        &nodes[k].addr,
        &words("service create after --vip 10.9.9.9:80/tcp --mode nat"),
    )?;
    let names = names_on(&nodes[new_leader], false).await?;
    assert!(names.contains(&"after".to_string()));
    Ok(())
}

/// `lbctl cluster remove`: a removed controller leaves the membership and
/// the quorum, so the remaining two commit without it — also once it is
/// gone for good — and a removal of a node that is not a member names it.
#[tokio::test]
async fn a_removed_controller_leaves_the_quorum() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut nodes = lb_testkit::start_cluster(3, dir.path(), &[]).await?;
    let addrs = lb_testkit::addresses(&nodes);
    let out = lbctl_ok(&addrs, &words("cluster remove 3"))?;
    println!("{out}");
    let status = wait_for(Duration::from_secs(10), "two voters", || async {
        let s = lbctl_ok(&nodes[0].addr, &words("cluster status -o json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&s).ok()?;
        let ids: Vec<u64> = v["members"]
            .as_array()?
            .iter()
            .filter_map(|m| m["nodeId"].as_str()?.parse().ok().or(m["nodeId"].as_u64()))
            .collect();
        (ids.len() == 2 && !ids.contains(&3)).then_some(v)
    })
    .await?;
    println!("{status}");
    // Node 3 gone for good: two of two still commit.
    nodes[2].kill();
    let first_two = format!("{},{}", nodes[0].addr, nodes[1].addr);
    lbctl_ok(
        &first_two,
        &words("service create after-remove --vip 10.9.9.8:80/tcp --mode nat"),
    )?;
    // And one of the two gone: no quorum, so no write (the removal was real).
    nodes[1].kill();
    let t = Instant::now();
    let refused = lb_testkit::lbctl(
        &nodes[0].addr,
        &words("service create no-quorum --vip 10.9.9.7:80/tcp --mode nat --timeout 3"),
    );
    assert!(!refused.status.success(), "a write without a quorum");
    // lbctl's --timeout bounds the wait for the answer too.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    println!(
        "without a quorum, after {:?}: {}",
        t.elapsed(),
        String::from_utf8_lossy(&refused.stderr)
    );
    let unknown = lb_testkit::lbctl(&nodes[0].addr, &words("cluster remove 9 --timeout 3"));
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        !unknown.status.success() && said.contains("node 9 is not a member"),
        "removing a non-member: {said}"
    );
    println!("removing node 9: {said}");
    Ok(())
}
