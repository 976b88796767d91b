//! lb-demo: lbfabric end to end on one machine, in about half a minute.
//!
//! A single-node controller (its embedded redb store in a temporary
//! directory), one director and two realserver agents with tiny HTTP
//! backends, each in its own network namespace on one bridge; a service
//! created through lbctl; a few requests that come back balanced; and
//! `lbctl status`. Everything it starts and creates is removed when it ends,
//! also on failure. It needs root and an IPVS kernel: `scripts/demo.sh` runs
//! it inside the project's VM test bed when this machine's kernel has none.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context};
use lb_testkit::fabric::{VM_CONTROLLER_TIMERS, VM_DIRECTOR_HEARTBEAT};
use lb_testkit::netns::Topology;
use lb_testkit::{bin, lbctl_ok, wait_for, ControllerProc};

const VIP: &str = "10.0.0.100";

/// Children started outside the topology (logging to files); killed on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Prints a step the way an operator would type it.
fn step(what: &str, command: &str) {
    println!("\n== {what}\n$ {command}");
}

fn lbctl(controller: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = lbctl_ok(controller, args)?;
    print!("{out}");
    Ok(out)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match demo().await {
        Ok(()) => {
            println!("\ndemo finished: namespaces removed, processes stopped.");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\ndemo failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn demo() -> anyhow::Result<()> {
    let has_ipvs = std::path::Path::new("/proc/net/ip_vs").exists()
        || Command::new("modprobe")
            .args(["-q", "ip_vs"])
            .status()
            .is_ok_and(|s| s.success());
    ensure!(
        has_ipvs,
        "this kernel has no IPVS; run scripts/demo.sh, which uses the VM test bed"
    );
    println!(
        "lbfabric demo: one controller, one director (d1), two realservers (rs1, rs2) with agents,"
    );
    println!("a client (cl), each in a network namespace on one bridge (10.0.0.0/24).");
    // Under the VM's emulated CPU a round trip can outlast the default
    // 200 ms lease (even 600 ms did, on a busy CI machine): there the
    // lease, the Raft timers and the director's reports run at the VM
    // test bed's scaled timers.
    let (controller_timers, director_timers): (&[&str], &[&str]) = match lb_testkit::vm::in_vm() {
        true => {
            println!("Running inside the lbfabric VM test bed (qemu, Debian's kernel with IPVS),");
            println!("with the lease, Raft and the director's reports at the test bed's scaled timers (lease 6 s).");
            (&VM_CONTROLLER_TIMERS, &VM_DIRECTOR_HEARTBEAT)
        }
        false => (&[], &[]),
    };

    let mut t = Topology::new();
    t.add_bridge("lan")?;
    // The controller runs here, reachable from every namespace.
    t.plug_caller("lan", "lbd0", "10.0.0.1/24")?;
    for (ns, ip) in [
        ("cl", "10.0.0.2/24"),
        ("d1", "10.0.0.11/24"),
        ("rs1", "10.0.0.21/24"),
        ("rs2", "10.0.0.22/24"),
    ] {
        t.add_ns(ns)?;
        t.plug(ns, "lan", "eth0", ip)?;
    }
    for rs in ["rs1", "rs2"] {
        t.http_backend(rs, rs, "0.0.0.0:80")?;
    }
    println!("backends: rs1 and rs2 answer HTTP on port 80 with their name.");

    let dir = tempfile::tempdir()?;
    let controller = ControllerProc::start_at("10.0.0.1", 1, dir.path(), true, controller_timers)?;
    controller.wait_leader().await?;
    let ctl = controller.addr.clone();
    let pki = controller.data_dir.join("pki");
    step(
        "a single-node controller, its store in a temporary directory; not on loopback, so it serves mTLS with a CA it made in <data-dir>/pki",
        &format!(
            "lb-controller --node-id 1 --data-dir {} --listen {ctl} {}\n$ export LB_CREDENTIALS={}   # lbctl as admin: ca.pem, admin.pem, admin.key",
            controller.data_dir.display(),
            controller_timers.join(" "),
            pki.display()
        ),
    );
    lbctl(&ctl, &["cluster", "status"])?;

    let mut procs = Procs(Vec::new());
    let state = dir.path().join("state");
    // An agent in namespace `ns`, logging to a file in the temporary directory.
    // TLS: the controller listens on 10.0.0.1, so every agent joins with a
    // token and keeps its certificate in its own --pki-dir.
    let mut start = |ns: &str, program: &str, args: &[&str], token: &str| -> anyhow::Result<()> {
        let log = std::fs::File::create(dir.path().join(format!("{ns}.log")))?;
        let child = t
            .command(ns, &bin(program))?
            .args(["--controller", &ctl, "--node-id", ns])
            .args(args)
            .args(["--join-token", token])
            .arg("--pki-dir")
            .arg(dir.path().join(format!("{ns}-pki")))
            .arg("--state-dir")
            .arg(&state)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {program} in {ns}"))?;
        procs.0.push(child);
        Ok(())
    };
    step(
        "join tokens: one for the director, one the two realserver agents share; each pins the CA by its fingerprint",
        "lbctl token create --role director\n$ lbctl token create --role realserver --uses 2",
    );
    let director_token = lbctl(&ctl, &["token", "create", "--role", "director"])?;
    let realserver_token = lbctl(
        &ctl,
        &["token", "create", "--role", "realserver", "--uses", "2"],
    )?;
    step(
        "the director agent in d1: it joins with its token, then speaks mTLS as director d1",
        &format!(
            "lb-director --controller {ctl} --node-id d1 --interface eth0 {} --join-token lbj1.…",
            director_timers.join(" ")
        ),
    );
    start(
        "d1",
        "lb-director",
        &[&["--interface", "eth0"], director_timers].concat(),
        director_token.trim(),
    )?;
    for (rs, rip) in [("rs1", "10.0.0.21"), ("rs2", "10.0.0.22")] {
        step(
            &format!("the realserver agent on {rs}"),
            &format!(
                "lb-realserver --controller {ctl} --node-id {rs} --address {rip} --labels pool=web --join-token lbj1.…"
            ),
        );
        start(
            rs,
            "lb-realserver",
            &["--address", rip, "--labels", "pool=web"],
            realserver_token.trim(),
        )?;
    }

    step(
        "a direct-routing service whose backends are the agents labelled pool=web",
        &format!(
            "lbctl service create web --vip {VIP}:80/tcp --scheduler rr --mode dr --selector pool=web --check tcp --check-interval 500ms"
        ),
    );
    lbctl(
        &ctl,
        &[
            "service",
            "create",
            "web",
            "--vip",
            &format!("{VIP}:80/tcp"),
            "--scheduler",
            "rr",
            "--mode",
            "dr",
            "--selector",
            "pool=web",
            "--check",
            "tcp",
            "--check-interval",
            "500ms",
        ],
    )?;

    // The director takes the VIP; the agents put it on lo and report healthy.
    wait_for(
        Duration::from_secs(30),
        "the fabric to converge",
        || async {
            let text = lbctl_ok(&ctl, &["status", "-o", "json"]).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let web = v["services"].as_array()?.first()?.clone();
            let up = web["realservers"]
                .as_array()?
                .iter()
                .filter(|b| b["health"] == "up")
                .count();
            let ready = ["rs1", "rs2"].iter().all(|rs| {
                t.sh(rs, "ip -o addr show dev lo")
                    .is_ok_and(|a| a.contains(&format!("{VIP}/32")))
            });
            (web["held"] == true && up == 2 && ready).then_some(())
        },
    )
    .await?;

    step(
        "six requests from the client",
        &format!("curl http://{VIP}/   (x6, from cl)"),
    );
    let answers = t.http_get("cl", &format!("http://{VIP}/"), 6)?;
    for (i, a) in answers.iter().enumerate() {
        println!("request {}: answered by {a}", i + 1);
    }
    let count = |name: &str| answers.iter().filter(|a| a.as_str() == name).count();
    ensure!(
        count("rs1") == 3 && count("rs2") == 3,
        "expected rs1 and rs2 to answer three times each (rr), got {answers:?}"
    );

    // IPVS folds its per-CPU counters every 2 s.
    wait_for(
        Duration::from_secs(15),
        "the director's counters",
        || async {
            let text = lbctl_ok(&ctl, &["status", "-o", "json"]).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let conns = v["services"][0]["counters"]["conns"]
                .as_str()?
                .parse::<u64>()
                .ok()?;
            (conns >= 6).then_some(())
        },
    )
    .await?;
    step("the fabric at a glance", "lbctl status --stats");
    lbctl(&ctl, &["status", "--stats"])?;
    step("the join tokens, used up", "lbctl token list");
    lbctl(&ctl, &["token", "list"])?;

    step(
        "what the director programmed, read from its kernel",
        "ipvsadm -Ln   (in d1)",
    );
    print!("{}", t.sh("d1", "ipvsadm -Ln")?);

    drop(procs);
    drop(controller);
    drop(t);
    Ok(())
}
