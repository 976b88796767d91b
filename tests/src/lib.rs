//! lb-testkit: what the integration tests need to run the real thing.
//!
//! - [`bin`] finds the workspace's binaries (`lb-controller`, `lbctl`) in the
//!   target directory the test itself was built into.
//! - [`ControllerProc`] runs one controller as a child process on
//!   127.0.0.1 with its own data directory; it can be SIGKILLed and restarted
//!   on the same address and data.
//! - [`lbctl`] runs the CLI against a controller, as an operator would.
//! - [`require`] turns a missing prerequisite into a skip locally and into a
//!   failure when `LB_REQUIRE_PRIVILEGED_TESTS=1` (as CI sets it).
//! - [`netns`] builds test networks; [`fabric`] the whole fabric on one (for
//!   the VM), with observers of what clients see; [`vm`] is the IPVS VM;
//!   [`proc`] owns child processes; [`fuzz`] is the mutation harness.

pub mod browser;
pub mod fabric;
pub mod fuzz;
pub mod metrics;
pub mod netns;
pub mod package;
pub mod proc;
pub mod scale;
pub mod vm;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use lb_proto::pb;
use lb_proto::pb::cluster_admin_client::ClusterAdminClient;
use lb_proto::pb::service_admin_client::ServiceAdminClient;
use tonic::transport::Channel;

/// Environment variable that makes every skipped prerequisite a failure.
pub const REQUIRE_ENV: &str = "LB_REQUIRE_PRIVILEGED_TESTS";

/// Returns true when a prerequisite is met. When it is not, the test should
/// return early — unless CI demands it, in which case this panics.
pub fn require(met: bool, what: &str) -> bool {
    if met {
        return true;
    }
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{what} is required ({REQUIRE_ENV}=1) but missing");
    }
    eprintln!("SKIPPED: {what} is missing (set {REQUIRE_ENV}=1 to make this a failure)");
    false
}

/// Path of a workspace binary built into the same target directory as the
/// running executable: a test (`target/<profile>/deps/`) or a tool
/// (`target/<profile>/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let dir = exe.parent().expect("executable has a directory");
    let found = [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "{name} not found beside {}: build the binaries first (cargo build --workspace --bins)",
            exe.display()
        )
    })
}

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// How often [`wait_for`] checks: every 20 ms, and every 200 ms in the VM,
/// where a check (a process spawned from 9p, a TLS handshake) costs tens of
/// times more and polling at the host's pace starved the very processes
/// under test (a controller election slowed by the test's own polling).
pub fn poll_interval() -> Duration {
    if vm::in_vm() {
        Duration::from_millis(200)
    } else {
        Duration::from_millis(20)
    }
}

/// Polls `check` every [`poll_interval`] until it returns `Some`, or fails
/// after `within`.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let every = poll_interval();
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Controllers serving TLS, by address: the directory with the cluster's
/// CA (and its key) and the admin credentials (the first node's pki). The
/// helpers below ([`channel`], [`lbctl`], [`agent_tls`]) look addresses up
/// here, so a test talks to a TLS controller the way it talks to a
/// plaintext one.
static TLS_DIRS: std::sync::Mutex<BTreeMap<String, PathBuf>> =
    std::sync::Mutex::new(BTreeMap::new());

/// The pki directory behind the first of `controllers` (comma-separated), if TLS.
pub fn tls_dir(controllers: &str) -> Option<PathBuf> {
    let first = controllers.split(',').next()?.trim();
    TLS_DIRS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(first)
        .cloned()
}

/// The client settings for `addr`: TLS as admin when it serves TLS.
pub fn admin_tls(addr: &str) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    match tls_dir(addr) {
        Some(dir) => Ok(Some(
            lb_proto::pki::Credentials::from_dir(&dir, "admin")?.client_config(),
        )),
        None => Ok(None),
    }
}

/// Flags for an agent (`--ca --cert --key`) of the cluster at `controllers`:
/// a certificate issued now for `role`/`name` with `ips`; none for plaintext.
pub fn agent_tls(
    controllers: &str,
    role: lb_proto::pki::Role,
    name: &str,
    ips: &[std::net::IpAddr],
) -> anyhow::Result<Vec<String>> {
    let Some(dir) = tls_dir(controllers) else {
        return Ok(Vec::new());
    };
    let ca = lb_proto::pki::Ca::open(&dir, false)?;
    let out = dir.join("issued").join(name);
    ca.ensure(&out, name, &lb_proto::pki::Identity::new(role, name), ips)?;
    let path = |f: String| out.join(f).to_string_lossy().into_owned();
    Ok(vec![
        "--ca".into(),
        path("ca.pem".into()),
        "--cert".into(),
        path(format!("{name}.pem")),
        "--key".into(),
        path(format!("{name}.key")),
    ])
}

/// One `lb-controller` child process.
pub struct ControllerProc {
    pub node_id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    /// With TLS: the cluster's CA and admin credentials (the first node's pki).
    pub pki: Option<PathBuf>,
    /// Where its Prometheus metrics are served (on loopback, a free port).
    pub metrics: String,
    /// Where its dashboard is served (on loopback, a free port).
    pub http: String,
    log: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl ControllerProc {
    /// Starts a controller on 127.0.0.1 (a free port) with its data in `dir`.
    /// `bootstrap` initializes a new one-node cluster; otherwise the node
    /// waits to be added. `extra` are more `lb-controller` flags.
    pub fn start(
        node_id: u64,
        dir: &Path,
        bootstrap: bool,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_at("127.0.0.1", node_id, dir, bootstrap, extra)
    }

    /// Like [`ControllerProc::start`], listening on `ip` (a free port) — an
    /// address agents in other network namespaces can reach.
    pub fn start_at(
        ip: &str,
        node_id: u64,
        dir: &Path,
        bootstrap: bool,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if !bootstrap {
            extra.push("--no-bootstrap".into());
        }
        // As lb-controller decides: TLS unless loopback, or asked for.
        let loopback = ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
        let tls = extra.iter().any(|e| e == "--tls")
            || (!loopback && !extra.iter().any(|e| e == "--insecure"));
        let data_dir = dir.join(format!("node{node_id}"));
        // Every node of a test cluster shares `dir`; node 1 holds the CA.
        let ca_dir = dir.join("node1").join("pki");
        if tls && !bootstrap {
            let ca = lb_proto::pki::Ca::open(&ca_dir, false)
                .context("a joining TLS controller needs node 1's CA: start node 1 first")?;
            let me =
                lb_proto::pki::Identity::new(lb_proto::pki::Role::Controller, node_id.to_string());
            ca.ensure(&data_dir.join("pki"), "controller", &me, &[ip.parse()?])?;
        }
        let mut p = ControllerProc {
            node_id,
            addr: format!("{ip}:0"),
            data_dir,
            pki: tls.then_some(ca_dir),
            metrics: String::new(),
            http: String::new(),
            log: dir.join(format!("node{node_id}.log")),
            extra,
            child: None,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let addr_file = self.data_dir.with_extension("addr");
        let _ = std::fs::remove_file(&addr_file);
        let metrics_file = self.data_dir.with_extension("metrics");
        let _ = std::fs::remove_file(&metrics_file);
        let http_file = self.data_dir.with_extension("http");
        let _ = std::fs::remove_file(&http_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("opening controller log")?;
        let child = Command::new(bin("lb-controller"))
            .arg("--node-id")
            .arg(self.node_id.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(&self.addr)
            .arg("--addr-file")
            .arg(&addr_file)
            // Its own port: several controllers share the host.
            .args(["--metrics-listen", "127.0.0.1:0", "--metrics-addr-file"])
            .arg(&metrics_file)
            .args(["--http-listen", "127.0.0.1:0", "--http-addr-file"])
            .arg(&http_file)
            .args(&self.extra)
            .env(
                "RUST_LOG",
                // Benchmarks ask for more (e.g. lb_controller=debug: each write's phases).
                std::env::var("LB_CONTROLLER_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning lb-controller")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !addr_file.exists() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "lb-controller {} exited early ({status}):\n{}",
                    self.node_id,
                    self.log_text()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "lb-controller {} did not start",
                self.node_id
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.addr = std::fs::read_to_string(&addr_file)?.trim().to_string();
        // Written before the address file.
        self.metrics = std::fs::read_to_string(&metrics_file)?.trim().to_string();
        self.http = std::fs::read_to_string(&http_file)?.trim().to_string();
        if let Some(pki) = &self.pki {
            TLS_DIRS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(self.addr.clone(), pki.clone());
        }
        Ok(())
    }

    /// SIGKILL: no shutdown path runs, as when a host dies.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again on the same address and data directory.
    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        // The bootstrap decision was made on the first start; a restart reuses the data.
        self.spawn()
    }

    /// Like [`ControllerProc::restart`], after a clean shutdown (SIGTERM),
    /// as `systemctl restart` does.
    pub fn restart_gracefully(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            Command::new("kill").arg(c.id().to_string()).status()?;
            let _ = c.wait();
        }
        self.spawn()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn admin(&self) -> anyhow::Result<ServiceAdminClient<Channel>> {
        Ok(ServiceAdminClient::new(channel(&self.addr).await?))
    }

    pub async fn cluster(&self) -> anyhow::Result<ClusterAdminClient<Channel>> {
        Ok(ClusterAdminClient::new(channel(&self.addr).await?))
    }

    /// Waits (up to 10 s) until this node says it is the leader.
    pub async fn wait_leader(&self) -> anyhow::Result<pb::ClusterStatus> {
        let what = format!("node {} to lead", self.node_id);
        wait_for(Duration::from_secs(10), &what, || async {
            self.status().await.filter(|s| s.state == "leader")
        })
        .await
    }

    /// This node's view of the cluster, or `None` if it does not answer.
    pub async fn status(&self) -> Option<pb::ClusterStatus> {
        let mut c = self.cluster().await.ok()?;
        c.status(pb::ClusterStatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }
}

impl Drop for ControllerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gRPC channel to `addr` (host:port), connected now; over TLS as admin
/// when the controller there serves TLS.
pub async fn channel(addr: &str) -> anyhow::Result<Channel> {
    let tls = admin_tls(addr)?;
    let endpoint = lb_proto::client::endpoint(addr, tls.as_ref())?.timeout(Duration::from_secs(10));
    Ok(endpoint.connect().await?)
}

/// An argument list written as one line: `words("service create web --vip
/// 10.0.0.1:80/tcp")`. For lists of plain words; build lists with values in
/// them as arrays.
pub fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Runs `lbctl --controller <controller> <args…>` (as admin over TLS when
/// the controller serves TLS).
pub fn lbctl(controller: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("lbctl"));
    if let Some(dir) = tls_dir(controller) {
        cmd.arg("--credentials").arg(dir);
    }
    cmd.arg("--controller")
        .arg(controller)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("running lbctl")
}

/// Runs lbctl and returns its stdout, failing with stderr when it exits non-zero.
pub fn lbctl_ok(controller: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = lbctl(controller, args);
    if !out.status.success() {
        bail!(
            "lbctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `a,b,c`: the addresses of `nodes`, as `--controller` takes them.
pub fn addresses(nodes: &[ControllerProc]) -> String {
    nodes
        .iter()
        .map(|n| n.addr.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts `n` controllers under `dir` and joins them into one cluster through
/// `ClusterAdmin` (node 1 bootstraps, the others are added and promoted).
pub async fn start_cluster(
    n: u64,
    dir: &Path,
    extra: &[&str],
) -> anyhow::Result<Vec<ControllerProc>> {
    start_cluster_at("127.0.0.1", n, dir, extra).await
}

/// [`start_cluster`] with every node listening on `ip`.
pub async fn start_cluster_at(
    ip: &str,
    n: u64,
    dir: &Path,
    extra: &[&str],
) -> anyhow::Result<Vec<ControllerProc>> {
    let mut nodes = vec![ControllerProc::start_at(ip, 1, dir, true, extra)?];
    for id in 2..=n {
        nodes.push(ControllerProc::start_at(ip, id, dir, false, extra)?);
    }
    nodes[0].wait_leader().await?;
    let mut admin = nodes[0].cluster().await?;
    for node in &nodes[1..] {
        admin
            .add_learner(pb::AddLearnerRequest {
                node_id: node.node_id,
                address: node.addr.clone(),
            })
            .await?;
        admin
            .promote(pb::PromoteRequest {
                node_id: node.node_id,
            })
            .await?;
    }
    Ok(nodes)
}
