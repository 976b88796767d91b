//! Every health check kind flips a real backend out of the director's IPVS
//! table and back (issue #17): tcp, http (chunked body, regex, MD5), https
//! (openssl's own server), exec, udp, dns and ping. The backend is
//! 192.168.50.23 (rs3, no realserver agent), so the director runs the
//! check; each test stops what the check probes, waits for the kernel to
//! drop the realserver, starts it again and waits for it to return.

use std::process::Command;
use std::time::{Duration, Instant};

use lb_testkit::fabric::*;
use lb_testkit::proc::signal;
use lb_testkit::{bin, wait_for, words};

const VIP: &str = "10.0.0.105";
const RS: &str = "192.168.50.23";
/// Check every 500 ms (the VM's CPU is emulated); two failures take a
/// backend out, so that one late answer on a busy host does not.
const CHECK: &str = "--check-interval 500ms --check-timeout 400ms --check-fall 2 --check-rise 1";

/// One controller, the service (NAT, one realserver on rs3 at `port`,
/// checked by `check`), d1 owning it; waits until the realserver is in
/// d1's table. Returns the line that shows it there.
async fn service(f: &Fabric, proto: &str, port: u16, check: &[&str]) -> anyhow::Result<String> {
    let create = format!(
        "service create chk --vip {VIP}:{port}/{proto} --mode nat --scheduler rr \
         --realserver {RS}:{port} --prefer-director d1 {CHECK}"
    );
    let create = words(&create);
    f.lbctl(&[&create[..], check].concat())?;
    let flag = if proto == "udp" { "-u" } else { "-t" };
    Ok(format!("-a {flag} {VIP}:{port} -r {RS}:{port} -m -w 1"))
}

fn in_table(f: &Fabric, line: &str) -> bool {
    f.ipvs("d1").iter().any(|l| l == line)
}

/// With d1 running and the backend serving: in the table; `stop` takes it
/// out, `start` puts it back. Prints how long each took.
async fn flips(
    f: &mut Fabric,
    kind: &str,
    line: &str,
    stop: impl FnOnce(&mut Fabric) -> anyhow::Result<()>,
    start: impl FnOnce(&mut Fabric) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let _d1 = f.start_director("d1", &VM_DIRECTOR_HEARTBEAT)?;
    let r = async {
        let within = Duration::from_secs(30);
        wait_for(within, &format!("{kind}: {line} in d1's table"), || async {
            in_table(f, line).then_some(())
        })
        .await?;
        // The owner's verdicts count: d1 owns the VIP once it holds it.
        wait_for(within, &format!("{kind}: d1 holding {VIP}"), || async {
            let addrs = f.t.sh("d1", "ip -o -4 addr show dev eth0").ok()?;
            addrs.contains(&format!("{VIP}/32")).then_some(())
        })
        .await?;
        stop(f)?;
        let stopped = Instant::now();
        wait_for(within, &format!("{kind}: out of d1's table"), || async {
            (!in_table(f, line)).then_some(())
        })
        .await?;
        let out = stopped.elapsed();
        let list = f.lbctl(&["realserver", "list", "chk"])?;
        anyhow::ensure!(
            list.lines().any(|l| l.contains(RS) && l.contains(" down ")),
            "{kind}: lbctl does not show the backend down:\n{list}"
        );
        start(f)?;
        let started = Instant::now();
        wait_for(within, &format!("{kind}: back in d1's table"), || async {
            in_table(f, line).then_some(())
        })
        .await?;
        println!(
            "{kind} check: out of the table {out:?} after the stop, back {:?} after the start",
            started.elapsed()
        );
        Ok(())
    }
    .await;
    f.failed.set(r.is_err());
    r
}

/// Stops a server.
fn kill(pid: u32) -> impl FnOnce(&mut Fabric) -> anyhow::Result<()> {
    move |_| {
        signal(pid, "KILL");
        Ok(())
    }
}

async fn fabric() -> anyhow::Result<Fabric> {
    Fabric::with_controllers(1, &VM_CONTROLLER_TIMERS).await
}

fn lb_http() -> String {
    bin("lb-http").to_string_lossy().into_owned()
}

#[tokio::test]
async fn tcp_check_flips_the_backend() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let mut f = fabric().await?;
    let http = lb_http();
    let pid =
        f.t.server("rs3", &[&http, "serve", "rs3", "0.0.0.0:9001"], "ready")?;
    let line = service(&f, "tcp", 9001, &["--check", "tcp"]).await?;
    flips(&mut f, "tcp", &line, kill(pid), |f| {
        f.t.server("rs3", &[&http, "serve", "rs3", "0.0.0.0:9001"], "ready")
            .map(drop)
    })
    .await
}

/// The body comes chunked; the check needs both its regex and its MD5.
#[tokio::test]
async fn http_check_reads_a_chunked_body_with_regex_and_digest() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let mut f = fabric().await?;
    let http = lb_http();
    let serve = |f: &mut Fabric, name: &str| {
        f.t.server("rs3", &[&http, "chunked", name, "0.0.0.0:9002"], "ready")
    };
    let pid = serve(&mut f, "rs3")?;
    // md5("rs3 healthy\n"), the whole body once the chunks are joined.
    let digest = "868bb2f712e85bc524905e9dcc77f990";
    let line = service(
        &f,
        "tcp",
        9002,
        &words(&format!(
            "--check http --check-path /health --check-regex rs3.heal+thy --check-digest {digest}"
        )),
    )
    .await?;
    // Down: the server answers 200 still, but another body (the digest and
    // the regex fail); then back with the right one.
    let wrong = std::cell::Cell::new(0);
    flips(
        &mut f,
        "http (chunked, regex, MD5)",
        &line,
        |f| {
            signal(pid, "KILL");
            wrong.set(serve(f, "rs9")?);
            Ok(())
        },
        |f| {
            signal(wrong.get(), "KILL");
            serve(f, "rs3").map(drop)
        },
    )
    .await
}

#[tokio::test]
async fn https_check_speaks_tls_to_openssl() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let mut f = fabric().await?;
    let dir = f.dir.path().to_string_lossy().into_owned();
    let (cert, key) = (format!("{dir}/rs3.pem"), format!("{dir}/rs3.key"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args([
            "-nodes", "-days", "1", "-subj", "/CN=rs3", "-keyout", &key, "-out", &cert,
        ])
        .output()?
        .status
        .success();
    anyhow::ensure!(ok, "openssl req");
    let args = [
        "openssl", "s_server", "-accept", "9443", "-cert", &cert, "-key", &key, "-www",
    ];
    let pid = f.t.server("rs3", &args, "ACCEPT")?;
    let line = service(&f, "tcp", 9443, &["--check", "https"]).await?;
    flips(&mut f, "https", &line, kill(pid), |f| {
        f.t.server("rs3", &args, "ACCEPT").map(drop)
    })
    .await
}

/// The director runs the command; it passes while a file exists.
#[tokio::test]
async fn exec_check_follows_the_commands_exit_status() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let mut f = fabric().await?;
    let http = lb_http();
    f.t.server("rs3", &[&http, "serve", "rs3", "0.0.0.0:9004"], "ready")?;
    let flag = f.dir.path().join("rs3-up");
    std::fs::write(&flag, "")?;
    let line = service(
        &f,
        "tcp",
        9004,
        &[
            "--check",
            "exec",
            "--check-command",
            "/bin/sh",
            "--check-arg",
            "-c",
            "--check-arg",
            &format!("test -e {}", flag.display()),
        ],
    )
    .await?;
    let again = flag.clone();
    flips(
        &mut f,
        "exec",
        &line,
        |_| Ok(std::fs::remove_file(&flag)?),
        |_| Ok(std::fs::write(&again, "")?),
    )
    .await
}

/// With an expected reply: the echo's "OK " prefix. Stopped, the kernel's
/// port unreachable fails it at once.
#[tokio::test]
async fn udp_check_flips_the_backend() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let mut f = fabric().await?;
    let http = lb_http();
    let pid =
        f.t.server("rs3", &[&http, "udp-echo", "0.0.0.0:9005"], "ready")?;
    let line = service(
        &f,
        "udp",
        9005,
        &words("--check udp --check-udp-payload 70696e67 --check-udp-expect 4f4b2070696e67"),
    )
    .await?;
    flips(&mut f, "udp", &line, kill(pid), |f| {
        f.t.server("rs3", &[&http, "udp-echo", "0.0.0.0:9005"], "ready")
            .map(drop)
    })
    .await
}

/// A DNS service checked by an A query with the expected address.
#[tokio::test]
async fn dns_check_flips_the_backend() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let mut f = fabric().await?;
    let http = lb_http();
    let args = [
        http.as_str(),
        "dns",
        "0.0.0.0:9006",
        "www.lb.test",
        "192.0.2.53",
    ];
    let pid = f.t.server("rs3", &args, "ready")?;
    let line = service(
        &f,
        "udp",
        9006,
        &words(
            "--check dns --check-dns-type A --check-dns-name www.lb.test --check-dns-expect 192.0.2.53",
        ),
    )
    .await?;
    flips(&mut f, "dns", &line, kill(pid), |f| {
        f.t.server("rs3", &args, "ready").map(drop)
    })
    .await
}

/// The host stops answering echo requests, then answers again.
#[tokio::test]
async fn ping_check_flips_the_backend() -> anyhow::Result<()> {
    if !super::in_vm() {
        return Ok(());
    }
    let mut f = fabric().await?;
    let http = lb_http();
    f.t.server("rs3", &[&http, "serve", "rs3", "0.0.0.0:9007"], "ready")?;
    let line = service(&f, "tcp", 9007, &["--check", "ping"]).await?;
    flips(
        &mut f,
        "ping",
        &line,
        |f| {
            f.t.sh("rs3", "sysctl -qw net.ipv4.icmp_echo_ignore_all=1")
                .map(drop)
        },
        |f| {
            f.t.sh("rs3", "sysctl -qw net.ipv4.icmp_echo_ignore_all=0")
                .map(drop)
        },
    )
    .await
}
