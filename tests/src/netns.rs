//! Network topologies for tests: namespaces joined by veth pairs and a
//! bridge, processes run inside them, and tiny HTTP backends that answer with
//! their name. Works on the host (namespaces are available there) and inside
//! the IPVS VM.
//!
//! Everything a [`Topology`] creates carries its own prefix and is removed
//! when it is dropped — also when the test panics. Bridges live in a namespace
//! of their own, so nothing is added to the caller's network namespace.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// True when this process may create network namespaces.
pub fn can_create_namespaces() -> bool {
    // A name of this process's own: tests run in parallel processes.
    let probe = format!("lb-probe-{}", std::process::id());
    crate::which("ip").is_some()
        && Command::new("ip")
            .args(["netns", "add", &probe])
            .output()
            .is_ok_and(|o| o.status.success())
        && Command::new("ip")
            .args(["netns", "del", &probe])
            .output()
            .is_ok_and(|o| o.status.success())
}

pub struct Topology {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    pub fn new() -> Topology {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Topology {
            prefix: format!("lbt{}-{n}", std::process::id()),
            namespaces: Vec::new(),
            children: Vec::new(),
        }
    }

    /// The full name of namespace `name` (for `ip netns exec`).
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Creates a namespace with its loopback up.
    pub fn add_ns(&mut self, name: &str) -> anyhow::Result<String> {
        let full = self.ns(name);
        run(Command::new("ip").args(["netns", "add", &full]))?;
        self.namespaces.push(full.clone());
        run(Command::new("ip").args(["-n", &full, "link", "set", "lo", "up"]))?;
        Ok(full)
    }

    /// Creates a bridge (in a namespace of its own, named `name`) to plug hosts into.
    pub fn add_bridge(&mut self, name: &str) -> anyhow::Result<()> {
        let ns = self.add_ns(name)?;
        run(Command::new("ip").args(["-n", &ns, "link", "add", "br0", "type", "bridge"]))?;
        run(Command::new("ip").args(["-n", &ns, "link", "set", "br0", "up"]))?;
        Ok(())
    }

    /// Plugs namespace `host` into `bridge` as interface `ifname` with `cidr` (e.g. 10.0.0.2/24).
    pub fn plug(
        &mut self,
        host: &str,
        bridge: &str,
        ifname: &str,
        cidr: &str,
    ) -> anyhow::Result<()> {
        let (h, b) = (self.ns(host), self.ns(bridge));
        let port = format!("p-{host}-{ifname}");
        anyhow::ensure!(
            port.len() <= 15,
            "interface name {port} is too long; use shorter host names"
        );
        run(Command::new("ip").args([
            "-n", &b, "link", "add", &port, "type", "veth", "peer", "name", ifname, "netns", &h,
        ]))?;
        run(Command::new("ip").args(["-n", &b, "link", "set", &port, "master", "br0", "up"]))?;
        self.sh(
            host,
            &format!("ip addr add {cidr} dev {ifname} && ip link set {ifname} up"),
        )?;
        Ok(())
    }

    /// Plugs the *calling* process's namespace into `bridge` as `ifname` with
    /// `cidr`, for processes that tests drive directly (e.g. controllers the
    /// agents in the namespaces must reach). The interface goes away with the
    /// bridge's namespace.
    pub fn plug_caller(&mut self, bridge: &str, ifname: &str, cidr: &str) -> anyhow::Result<()> {
        let b = self.ns(bridge);
        let port = format!("p-caller-{ifname}");
        anyhow::ensure!(port.len() <= 15, "interface name {port} is too long");
        run(Command::new("ip").args([
            "-n",
            &b,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            &std::process::id().to_string(),
        ]))?;
        run(Command::new("ip").args(["-n", &b, "link", "set", &port, "master", "br0", "up"]))?;
        run(Command::new("ip").args(["addr", "add", cidr, "dev", ifname]))?;
        run(Command::new("ip").args(["link", "set", ifname, "up"]))?;
        Ok(())
    }

    /// A command that runs `program` inside namespace `name`; the caller owns the child.
    pub fn command(&self, name: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(name)]).arg(program);
        c
    }

    /// Joins two namespaces directly with a veth pair.
    pub fn link(
        &mut self,
        a: &str,
        if_a: &str,
        cidr_a: &str,
        b: &str,
        if_b: &str,
        cidr_b: &str,
    ) -> anyhow::Result<()> {
        let (na, nb) = (self.ns(a), self.ns(b));
        run(Command::new("ip").args([
            "-n", &na, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", &nb,
        ]))?;
        self.sh(
            a,
            &format!("ip addr add {cidr_a} dev {if_a} && ip link set {if_a} up"),
        )?;
        self.sh(
            b,
            &format!("ip addr add {cidr_b} dev {if_b} && ip link set {if_b} up"),
        )?;
        Ok(())
    }

    /// `program` run inside namespace `name`, as an argument list (for
    /// code that runs a tool itself, such as the director's `nft`).
    pub fn wrapped(&self, name: &str, program: &str) -> Vec<String> {
        ["ip", "netns", "exec", &self.ns(name), program]
            .map(String::from)
            .to_vec()
    }

    /// Runs a command inside namespace `name`.
    pub fn exec(&self, name: &str, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(name)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {args:?} in {name}"))
    }

    /// Runs a shell script inside namespace `name`; fails with its stderr.
    pub fn sh(&self, name: &str, script: &str) -> anyhow::Result<String> {
        let out = self.exec(name, &["sh", "-ec", script])?;
        if !out.status.success() {
            bail!(
                "in {name}: `{script}` failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a long-running process inside namespace `name`; it is killed on drop.
    pub fn spawn(&mut self, name: &str, args: &[&str]) -> anyhow::Result<&mut Child> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(name)])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {args:?} in {name}"))?;
        self.children.push(child);
        let last = self.children.len() - 1;
        Ok(&mut self.children[last])
    }

    /// Starts an HTTP backend in `name` answering with `answer`; returns its
    /// PID once it listens.
    pub fn http_backend(&mut self, name: &str, answer: &str, listen: &str) -> anyhow::Result<u32> {
        let bin = crate::bin("lb-http");
        let bin = bin.to_str().context("lb-http path")?.to_string();
        let child = self.spawn(name, &[&bin, "serve", answer, listen])?;
        let pid = child.id();
        let stdout = child.stdout.take().context("backend stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        anyhow::ensure!(
            line.trim() == "ready",
            "backend {answer} in {name} did not start"
        );
        Ok(pid)
    }

    /// Makes `count` HTTP requests from namespace `name`; one body (or `ERR …`) each.
    pub fn http_get(&self, name: &str, url: &str, count: usize) -> anyhow::Result<Vec<String>> {
        let bin = crate::bin("lb-http");
        let out = self.exec(
            name,
            &[
                bin.to_str().context("lb-http path")?,
                "get",
                url,
                &count.to_string(),
            ],
        )?;
        anyhow::ensure!(
            out.status.success(),
            "lb-http get failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting a namespace deletes its interfaces, and with them their veth peers.
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
