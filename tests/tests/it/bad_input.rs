//! The bad-input corpus: every rule answers with the right code and names the
//! field, and a rejected request changes neither the services nor the revision.

use lb_proto::pb;
use lb_proto::pb::service_admin_client::ServiceAdminClient;
use lb_testkit::ControllerProc;
use tonic::transport::Channel;
use tonic::Code;

fn endpoint(address: &str, port: u32, protocol: &str) -> Option<pb::service::VirtualAddress> {
    Some(pb::service::VirtualAddress::Endpoint(pb::Endpoint {
        address: address.into(),
        port,
        protocol: protocol.into(),
    }))
}

fn rs(address: &str, port: u32) -> pb::RealServer {
    pb::RealServer {
        address: address.into(),
        port,
        ..Default::default()
    }
}

/// A valid NAT service; each case breaks one thing.
fn good(name: &str) -> pb::Service {
    pb::Service {
        name: name.into(),
        virtual_address: endpoint("10.20.0.1", 80, "tcp"),
        scheduler: "wlc".into(),
        mode: "nat".into(),
        realservers: vec![rs("10.30.0.1", 8080)],
        ..Default::default()
    }
}

async fn state(admin: &mut ServiceAdminClient<Channel>) -> pb::ListServicesResponse {
    admin
        .list_services(pb::ListServicesRequest {
            stale: false,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
}

#[tokio::test]
async fn bad_input_is_rejected_by_field_and_changes_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = ControllerProc::start(1, dir.path(), true, &[])?;
    let mut admin = node.admin().await?;
    let mut existing = good("web");
    existing.virtual_address = endpoint("10.20.0.9", 80, "tcp");
    lb_testkit::wait_for(
        std::time::Duration::from_secs(10),
        "the first write",
        || {
            let mut admin = admin.clone();
            let svc = existing.clone();
            async move {
                admin
                    .create_service(pb::CreateServiceRequest { service: Some(svc) })
                    .await
                    .ok()
            }
        },
    )
    .await?;

    let create = |mutate: fn(&mut pb::Service)| {
        let mut s = good("new");
        mutate(&mut s);
        s
    };
    let service_cases: Vec<(&str, pb::Service, Code, &str)> = vec![
        (
            "bad VIP",
            create(|s| s.virtual_address = endpoint("10.20.0", 80, "tcp")),
            Code::InvalidArgument,
            "service.endpoint.address",
        ),
        (
            "empty VIP",
            create(|s| s.virtual_address = endpoint("", 80, "tcp")),
            Code::InvalidArgument,
            "service.endpoint.address",
        ),
        (
            "port 0",
            create(|s| s.virtual_address = endpoint("10.20.0.1", 0, "tcp")),
            Code::InvalidArgument,
            "service.endpoint.port",
        ),
        (
            "port > 65535",
            create(|s| s.virtual_address = endpoint("10.20.0.1", 65536, "tcp")),
            Code::InvalidArgument,
            "service.endpoint.port",
        ),
        (
            "unknown protocol",
            create(|s| s.virtual_address = endpoint("10.20.0.1", 80, "icmp")),
            Code::InvalidArgument,
            "service.endpoint.protocol",
        ),
        (
            "unknown scheduler",
            create(|s| s.scheduler = "fastest".into()),
            Code::InvalidArgument,
            "service.scheduler",
        ),
        (
            "weight 70000",
            create(|s| s.realservers[0].weight = Some(70000)),
            Code::InvalidArgument,
            "service.realservers[0].weight",
        ),
        (
            "DR changes the port",
            create(|s| s.mode = "dr".into()),
            Code::InvalidArgument,
            "service.realservers[0].port",
        ),
        (
            "TUN changes the port",
            create(|s| s.mode = "tun".into()),
            Code::InvalidArgument,
            "service.realservers[0].port",
        ),
        (
            "IPv4 VIP, IPv6 realserver",
            create(|s| s.realservers[0] = rs("2001:db8::1", 8080)),
            Code::InvalidArgument,
            "service.realservers[0].address",
        ),
        (
            "fwmark 0",
            create(|s| {
                s.virtual_address = Some(pb::service::VirtualAddress::Fwmark(pb::Fwmark {
                    mark: 0,
                    ..Default::default()
                }))
            }),
            Code::InvalidArgument,
            "service.fwmark.mark",
        ),
        (
            "bad netmask",
            create(|s| {
                s.persistence = Some(pb::Persistence {
                    timeout_seconds: 30,
                    netmask: "255.0.255.0".into(),
                })
            }),
            Code::InvalidArgument,
            "service.persistence.netmask",
        ),
        (
            "netmask too long",
            create(|s| {
                s.persistence = Some(pb::Persistence {
                    timeout_seconds: 30,
                    netmask: "33".into(),
                })
            }),
            Code::InvalidArgument,
            "service.persistence.netmask",
        ),
        // Bad health check specs (issue #5): refused before any agent sees them.
        (
            "negative check interval",
            create(|s| {
                s.health_check = Some(pb::HealthCheck {
                    r#type: "tcp".into(),
                    interval: Some(prost_types::Duration {
                        seconds: -2,
                        nanos: 0,
                    }),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "service.health_check.interval",
        ),
        (
            "check rise 0",
            create(|s| {
                s.health_check = Some(pb::HealthCheck {
                    r#type: "tcp".into(),
                    rise: Some(0),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "service.health_check.rise",
        ),
        (
            "bad body regex",
            create(|s| {
                s.health_check = Some(pb::HealthCheck {
                    r#type: "http".into(),
                    http_body_regex: "status: (ok".into(),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "service.health_check.http_body_regex",
        ),
        (
            "check script not an absolute path",
            create(|s| {
                s.health_check = Some(pb::HealthCheck {
                    r#type: "exec".into(),
                    exec_command: "check_web.sh".into(),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "service.health_check.exec_command",
        ),
        (
            "no virtual address",
            create(|s| s.virtual_address = None),
            Code::InvalidArgument,
            "service.virtual_address",
        ),
        (
            "bad name",
            create(|s| s.name = "Web Server".into()),
            Code::InvalidArgument,
            "service.name",
        ),
        (
            "duplicate name",
            create(|s| s.name = "web".into()),
            Code::AlreadyExists,
            "service web",
        ),
        (
            "duplicate VIP",
            create(|s| s.virtual_address = endpoint("10.20.0.9", 80, "tcp")),
            Code::AlreadyExists,
            "10.20.0.9:80/tcp",
        ),
    ];

    let before = state(&mut admin).await;
    assert_eq!(before.services.len(), 1);
    let check = |label: &str,
                 r: Result<tonic::Response<pb::ServiceResponse>, tonic::Status>,
                 code: Code,
                 needle: &str| {
        let status = match r {
            Ok(_) => panic!("{label}: accepted"),
            Err(s) => s,
        };
        assert_eq!(status.code(), code, "{label}: {}", status.message());
        assert!(
            status.message().contains(needle),
            "{label}: {:?} does not name {needle:?}",
            status.message()
        );
    };

    for (label, svc, code, needle) in service_cases {
        let r = admin
            .create_service(pb::CreateServiceRequest { service: Some(svc) })
            .await;
        check(label, r, code, needle);
        assert_eq!(
            state(&mut admin).await,
            before,
            "{label}: state or revision changed"
        );
    }

    // Updates and realserver calls on what is (or is not) there.
    let mut ghost = good("ghost");
    ghost.virtual_address = endpoint("10.20.0.2", 80, "tcp");
    check(
        "update unknown service",
        admin
            .update_service(pb::UpdateServiceRequest {
                service: Some(ghost),
                expected_mod_revision: 0,
            })
            .await,
        Code::NotFound,
        "service ghost",
    );
    let stale_update = admin
        .update_service(pb::UpdateServiceRequest {
            service: Some(existing.clone()),
            expected_mod_revision: 999,
        })
        .await;
    check(
        "update from a stale revision",
        stale_update,
        Code::Aborted,
        "mod_revision",
    );
    let mut to_dr = existing.clone();
    to_dr.mode = "dr".into();
    check(
        "update to DR with a remapped port",
        admin
            .update_service(pb::UpdateServiceRequest {
                service: Some(to_dr),
                expected_mod_revision: 0,
            })
            .await,
        Code::InvalidArgument,
        "service.realservers[0].port",
    );
    let delete = admin
        .delete_service(pb::DeleteServiceRequest {
            name: "ghost".into(),
        })
        .await;
    assert_eq!(
        delete.as_ref().map_err(|s| s.code()).err(),
        Some(Code::NotFound),
        "{delete:?}"
    );
    let add = |service: &str, r: pb::RealServer| pb::AddRealServerRequest {
        service: service.into(),
        realserver: Some(r),
    };
    check(
        "realserver for unknown service",
        admin
            .add_real_server(add("ghost", rs("10.30.0.2", 8080)))
            .await,
        Code::NotFound,
        "service ghost",
    );
    check(
        "realserver weight 70000",
        admin
            .add_real_server(add(
                "web",
                pb::RealServer {
                    weight: Some(70000),
                    ..rs("10.30.0.2", 8080)
                },
            ))
            .await,
        Code::InvalidArgument,
        "realserver.weight",
    );
    check(
        "IPv6 realserver on IPv4 service",
        admin
            .add_real_server(add("web", rs("2001:db8::2", 8080)))
            .await,
        Code::InvalidArgument,
        "realserver.address",
    );
    check(
        "duplicate realserver",
        admin
            .add_real_server(add("web", rs("10.30.0.1", 8080)))
            .await,
        Code::InvalidArgument,
        "duplicate realserver",
    );
    check(
        "bad realserver address",
        admin
            .add_real_server(add("web", rs("10.30.0.300", 8080)))
            .await,
        Code::InvalidArgument,
        "realserver.address",
    );
    let patch = |weight| pb::UpdateRealServerRequest {
        service: "web".into(),
        address: "10.30.0.1".into(),
        port: 8080,
        weight: Some(weight),
        ..Default::default()
    };
    check(
        "patch weight 70000",
        admin.update_real_server(patch(70000)).await,
        Code::InvalidArgument,
        "weight",
    );
    check(
        "patch unknown realserver",
        admin
            .update_real_server(pb::UpdateRealServerRequest {
                port: 9999,
                ..patch(1)
            })
            .await,
        Code::NotFound,
        "realserver 10.30.0.1:9999",
    );
    check(
        "remove unknown realserver",
        admin
            .remove_real_server(pb::RemoveRealServerRequest {
                service: "web".into(),
                address: "10.30.0.7".into(),
                port: 8080,
            })
            .await,
        Code::NotFound,
        "10.30.0.7:8080",
    );

    assert_eq!(
        state(&mut admin).await,
        before,
        "a rejected call changed state or revision"
    );
    Ok(())
}
