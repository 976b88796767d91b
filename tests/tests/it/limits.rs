//! The API's limits as a client meets them: a request over 4 MiB is
//! refused whole (nothing applied), a connection's 65th concurrent stream
//! waits for one of the 64 to end, and a unary call still running after
//! 30 s ends with DEADLINE_EXCEEDED.

use std::time::{Duration, Instant};

use lb_proto::pb;
use lb_testkit::proc::signal;
use lb_testkit::{start_cluster, ControllerProc};

fn service(i: usize, padding: usize) -> pb::Service {
    pb::Service {
        name: format!("svc{i}"),
        virtual_address: Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
            address: format!("10.7.{}.{}", i / 200, i % 200 + 1),
            port: 80,
            protocol: "tcp".into(),
        })),
        mode: "nat".into(),
        // Size only: the request is refused before anything reads it.
        scheduler: if padding > 0 {
            "x".repeat(padding)
        } else {
            "rr".into()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn a_request_over_4_mib_is_refused_whole() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = ControllerProc::start(1, dir.path(), true, &[])?;
    node.wait_leader().await?;
    // The client may send more than the server accepts.
    let mut admin = node.admin().await?.max_encoding_message_size(64 << 20);
    let services: Vec<pb::Service> = (0..5).map(|i| service(i, 1 << 20)).collect();
    let err = admin
        .apply_services(pb::ApplyServicesRequest {
            services,
            ..Default::default()
        })
        .await
        .expect_err("a 5 MiB request");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err}");
    assert!(err.message().contains("4194304"), "names the limit: {err}");
    let list = admin
        .list_services(pb::ListServicesRequest::default())
        .await?
        .into_inner();
    assert!(
        list.services.is_empty(),
        "half applied: {:?}",
        list.services
    );
    Ok(())
}

#[tokio::test]
async fn the_65th_stream_of_a_connection_waits_for_one_to_end() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = ControllerProc::start(1, dir.path(), true, &[])?;
    node.wait_leader().await?;
    // One channel is one HTTP/2 connection.
    let admin = node.admin().await?;
    let mut watches = Vec::new();
    for _ in 0..64 {
        let mut a = admin.clone();
        let stream = a
            .watch_events(pb::WatchEventsRequest::default())
            .await?
            .into_inner();
        watches.push(stream);
    }
    let mut a = admin.clone();
    let blocked =
        tokio::spawn(async move { a.list_services(pb::ListServicesRequest::default()).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !blocked.is_finished(),
        "a 65th stream was served beside 64 open ones"
    );
    drop(watches.pop());
    let answered = tokio::time::timeout(Duration::from_secs(10), blocked).await???;
    assert!(answered.into_inner().services.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_call_running_past_30_s_ends_with_deadline_exceeded() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nodes = start_cluster(3, dir.path(), &[]).await?;
    nodes[0].wait_leader().await?;
    // A channel of its own: the test kit's gives up after 10 s itself.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", nodes[0].addr))?
        .connect()
        .await?;
    let mut admin = pb::service_admin_client::ServiceAdminClient::new(channel);
    // Without its followers the leader cannot commit: the write waits.
    let followers: Vec<u32> = nodes[1..].iter().filter_map(ControllerProc::pid).collect();
    for pid in &followers {
        signal(*pid, "STOP");
    }
    let started = Instant::now();
    let err = admin
        .create_service(pb::CreateServiceRequest {
            service: Some(service(1, 0)),
        })
        .await
        .expect_err("no quorum");
    let took = started.elapsed();
    for pid in &followers {
        signal(*pid, "CONT");
    }
    println!("the write ended after {took:?}: {err}");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert!(
        took >= Duration::from_secs(29) && took < Duration::from_secs(60),
        "{took:?}"
    );
    Ok(())
}
