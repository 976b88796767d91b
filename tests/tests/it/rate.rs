//! Rate limits as a client meets them: 1,000 joins with guessed tokens
//! from one address are all refused and at most the configured rate of
//! them reaches the token check (the rest get RESOURCE_EXHAUSTED with when
//! to retry), while an agent joining from another address gets in; an
//! admin over its API rate waits, another admin does not.

use std::time::{Duration, Instant};

use lb_proto::pb;
use lb_proto::pb::enrollment_client::EnrollmentClient;
use lb_proto::pb::service_admin_client::ServiceAdminClient;
use lb_proto::pki::enroll::{self, Enrollee};
use lb_proto::pki::{Credentials, JoinToken, Role};
use lb_testkit::{lbctl_ok, ControllerProc};
use tonic::Code;

const JOIN_RATE: u64 = 30;
const API_RATE: u64 = 5;

#[tokio::test(flavor = "multi_thread")]
async fn guessed_joins_are_held_to_the_rate_and_admins_to_theirs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rates = ["--join-rate", "30", "--api-rate", "5"];
    let node = ControllerProc::start(1, dir.path(), true, &[&["--tls"][..], &rates].concat())?;
    node.wait_leader().await?;
    let a = node.addr.clone();
    let pki = node.pki.clone().expect("TLS");
    let real: JoinToken = lbctl_ok(&a, &["token", "create", "--role", "realserver"])?
        .trim()
        .parse()?;

    // The guesser, from 127.0.0.2: the CA pinned right, id and secret not.
    let ca = Credentials::from_dir(&pki, "admin")?;
    let anonymous = Credentials {
        cert_pem: None,
        key_pem: None,
        ..ca.clone()
    };
    let from_2 = lb_proto::client::endpoint(&a, Some(&anonymous.client_config()))?
        .local_address(Some("127.0.0.2".parse()?))
        .connect()
        .await?;
    let (csr_pem, _key) = lb_proto::pki::request()?;
    let started = Instant::now();
    let (mut checked, mut limited, mut hint) = (0u64, 0u64, None);
    for i in 0..1000u32 {
        let mut guess = real.clone();
        guess.id = format!("{i:010x}");
        let req = pb::JoinRequest {
            token: guess.to_string(),
            role: "realserver".into(),
            node_id: format!("guess-{i}"),
            address: "127.0.0.2".into(),
            csr_pem: csr_pem.clone(),
        };
        match EnrollmentClient::new(from_2.clone()).join(req).await {
            Ok(_) => panic!("guess {i} joined"),
            Err(s) if s.code() == Code::Unauthenticated => {
                assert!(s.message().contains("is unknown or deleted"), "{s:?}");
                checked += 1;
            }
            Err(s) if s.code() == Code::ResourceExhausted => {
                limited += 1;
                hint.get_or_insert((s.message().to_string(), lb_proto::client::retry_after(&s)));
            }
            Err(s) => panic!("guess {i}: {s:?}"),
        }
    }
    let took = started.elapsed();
    // GCRA: the burst (the rate) at once, then one per 60/rate seconds.
    let allowed = JOIN_RATE + took.as_secs() * JOIN_RATE / 60 + 1;
    let (message, wait) = hint.expect("no guess was rate limited");
    println!(
        "1000 guessed joins in {took:?}: {checked} reached the token check (at most {allowed} allowed), {limited} refused over the rate: {message}"
    );
    assert_eq!(checked + limited, 1000);
    assert!(
        checked <= allowed && checked >= JOIN_RATE,
        "{checked} reached the token check"
    );
    assert!(
        message.contains("at most 30 joins or failed authentications per minute from 127.0.0.2"),
        "{message}"
    );
    assert!(
        wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_secs(2)),
        "{wait:?}"
    );

    // Meanwhile an agent from 127.0.0.1 joins with the real token; the
    // guesser's address is still held back.
    let who = Enrollee {
        role: Role::Realserver,
        node_id: "rs1".into(),
        address: Some("127.0.0.1".parse()?),
    };
    enroll::join(&a.parse()?, &real, &who, &dir.path().join("rs1")).await?;
    let again = EnrollmentClient::new(from_2)
        .join(pb::JoinRequest::default())
        .await;
    assert_eq!(
        again.map_err(|s| s.code()).err(),
        Some(Code::ResourceExhausted)
    );

    // An admin's calls: 5 per second, 10 at once; bob has his own budget.
    lbctl_ok(
        &a,
        &[
            "admin",
            "create",
            "bob",
            "--out",
            dir.path().join("bob").to_str().unwrap(),
        ],
    )?;
    let admin = lb_proto::client::channel(&a, Some(&ca.client_config()))?;
    let bob = Credentials::from_dir(&dir.path().join("bob"), "admin")?;
    let bob = lb_proto::client::channel(&a, Some(&bob.client_config()))?;
    let list = pb::ListServicesRequest {
        stale: true,
        page_size: 1,
        page_token: String::new(),
    };
    let mut refused = 0;
    for _ in 0..30 {
        match ServiceAdminClient::new(admin.clone())
            .list_services(list.clone())
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().contains("by admin admin"), "{s:?}");
                refused += 1;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    println!("30 quick calls by one admin at --api-rate {API_RATE}: {refused} refused");
    assert!(refused >= 10, "{refused}");
    ServiceAdminClient::new(bob)
        .list_services(list.clone())
        .await?;
    // lbctl, right after the budget is spent again, waits as the answer
    // asks instead of failing.
    for _ in 0..12 {
        let _ = ServiceAdminClient::new(admin.clone())
            .list_services(list.clone())
            .await;
    }
    let t = Instant::now();
    lbctl_ok(&a, &["service", "list"])?;
    println!("lbctl after the burst: answered in {:?}", t.elapsed());
    Ok(())
}
