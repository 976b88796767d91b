//! The event stream: ordered, resumable from any kept revision, live, and
//! the same through lbctl.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use lb_proto::pb;
use lb_testkit::{bin, lbctl_ok, words, ControllerProc};
use tokio_stream::StreamExt;

#[tokio::test]
async fn watch_is_ordered_resumable_and_live() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = ControllerProc::start(1, dir.path(), true, &[])?;
    let a = node.addr.clone();
    node.wait_leader().await?;
    lbctl_ok(
        &a,
        &words("service create web --vip 10.10.1.30:80/tcp --mode nat"),
    )?;
    lbctl_ok(&a, &["realserver", "add", "web", "192.168.10.11:8080"])?;
    lbctl_ok(
        &a,
        &words("realserver update web 192.168.10.11:8080 --weight 4"),
    )?;

    // lbctl watch from revision 1 prints the history, then follows live changes.
    let mut watcher = Command::new(bin("lbctl"))
        .args(["--controller", &a, "watch", "--from-revision", "1"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(watcher.stdout.take().expect("stdout")).lines();
    let mut next = || lines.next().expect("a line").expect("utf-8");
    assert_eq!(next(), "1 SERVICE_CREATED web 10.10.1.30:80/tcp");
    assert_eq!(next(), "2 REALSERVER_ADDED web 192.168.10.11:8080");
    assert_eq!(next(), "3 REALSERVER_UPDATED web 192.168.10.11:8080");
    lbctl_ok(&a, &["service", "delete", "web"])?;
    assert_eq!(next(), "4 SERVICE_DELETED web 10.10.1.30:80/tcp");
    // The controller goes down and comes back: the watcher resumes where it was.
    node.restart()?;
    node.wait_leader().await?;
    lbctl_ok(
        &a,
        &["service", "create", "cache", "--vip", "10.10.1.32:6379/tcp"],
    )?;
    assert_eq!(next(), "5 SERVICE_CREATED cache 10.10.1.32:6379/tcp");
    let _ = watcher.kill();
    let _ = watcher.wait();

    // Resuming from revision 3 yields exactly 3, 4 and 5, then nothing until a change.
    let mut admin = node.admin().await?;
    let mut stream = admin
        .watch_events(pb::WatchEventsRequest { from_revision: 3 })
        .await?
        .into_inner();
    let mut revisions = Vec::new();
    for _ in 0..3 {
        revisions.push(stream.next().await.expect("event")?.revision);
    }
    assert_eq!(revisions, [3, 4, 5]);
    let idle = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(idle.is_err(), "an event arrived with no change: {idle:?}");
    lbctl_ok(
        &a,
        &words("service create api --vip 10.10.1.31:443/tcp --mode nat"),
    )?;
    let live = stream.next().await.expect("live event")?;
    assert_eq!(
        (live.revision, live.kind(), live.service_name.as_str()),
        (6, pb::EventKind::ServiceCreated, "api")
    );
    Ok(())
}
