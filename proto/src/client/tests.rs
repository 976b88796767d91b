//! The client's redirects, retries and connection handling.

use super::*;

fn controllers(list: &str) -> Controllers {
    list.parse().unwrap()
}

fn redirect(to: &str) -> Status {
    let mut s = Status::unavailable("not the leader");
    s.metadata_mut()
        .insert(LEADER_METADATA, to.parse().unwrap());
    s
}

#[test]
fn addresses_are_parsed_once_and_empty_lists_refused() {
    assert_eq!(controllers(" a:1, b:2 ,").addrs(), ["a:1", "b:2"]);
    assert_eq!(controllers("a:1,b:2").to_string(), "a:1,b:2");
    let e = " , ".parse::<Controllers>().unwrap_err();
    assert!(e.to_string().starts_with("controller: no address given"));
}

#[test]
fn follows_redirects_and_rotates_with_backoff() {
    let ms = Duration::from_millis;
    let mut f = Follower::new(&controllers("a:1,b:2,c:3"), ms(50), ms(250));
    assert_eq!(f.target(), "a:1");
    assert_eq!(f.failed(&redirect("c:3")), Next::Leader("c:3".into()));
    assert_eq!(f.target(), "c:3");
    // No hint: the next listed address, the delay doubling up to max.
    let none = Status::unavailable("no leader elected yet");
    let delay = |n: Next| match n {
        Next::Other { delay } => delay,
        other => panic!("{other:?}"),
    };
    let within = |d: Duration, full: u64| d >= ms(full / 2) && d <= ms(full);
    assert!(within(delay(f.failed(&none)), 50));
    assert_eq!(f.target(), "b:2");
    assert!(within(delay(f.failed(&none)), 100));
    assert!(within(delay(f.failed(&none)), 200));
    assert!(within(delay(f.failed(&none)), 250));
    assert!(within(f.ended(), 50));
    assert!(within(f.ended(), 50));
    // The jitter spreads agents out.
    let spread: std::collections::BTreeSet<Duration> = (0..20)
        .map(|_| Backoff::new(ms(100), ms(400)).next_delay())
        .collect();
    assert!(spread.len() > 1, "{spread:?}");
    assert!(spread.iter().all(|d| within(*d, 100)), "{spread:?}");
}

#[tokio::test]
async fn only_calls_that_surely_changed_nothing_are_sent_again() {
    assert!(never_reached_the_leader(&redirect("b:2")));
    assert!(never_reached_the_leader(&Status::unavailable(
        "no leader elected yet"
    )));
    // A port nobody listens on (bound, then closed): a connect error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let status = |addr: String| async move {
        crate::pb::service_admin_client::ServiceAdminClient::new(channel(&addr, None).unwrap())
            .get_status(crate::pb::GetStatusRequest::default())
            .await
    };
    let refused = status(format!("127.0.0.1:{port}")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(never_reached_the_leader(&refused), "{refused:?}");
    // A server that takes the request and then stays silent, not even
    // answering HTTP/2 pings (a leader too busy to): the keepalive
    // gives up after the request went out.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                // An HTTP/2 server preface: an empty SETTINGS frame.
                let _ = tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
                let mut buf = [0u8; 4096];
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    let broke = status(addr.to_string()).await.unwrap_err();
    assert_eq!(broke.code(), Code::Unavailable, "{broke:?}");
    assert!(!never_reached_the_leader(&broke), "{broke:?}");
}

#[tokio::test]
async fn a_leader_that_just_failed_is_not_followed_again() {
    let ms = Duration::from_millis;
    let mut f = Follower::new(&controllers("a:1,b:2,c:3"), ms(50), ms(250));
    // a:1 is dead: a transport error (it carries a source).
    let dead = Status::from_error(Box::new(std::io::Error::other("connection refused")));
    assert!(matches!(f.failed(&dead), Next::Other { .. }));
    assert_eq!(f.target(), "b:2");
    // b:2 has not elected a new leader yet and still names a:1.
    assert!(matches!(f.failed(&redirect("a:1")), Next::Other { .. }));
    assert_eq!(f.target(), "c:3", "rotated, not redirected");
    assert_eq!(f.failed(&redirect("b:2")), Next::Leader("b:2".into()));
}
