//! Network topologies for tests: namespaces joined by veth pairs and a
//! bridge, processes run inside them, and tiny HTTP backends that answer with
//! their name. Works on the host (namespaces are available there) and inside
//! the IPVS VM.
//!
//! Everything a [`Topology`] creates carries its own prefix and is removed
//! when it is dropped — also when the test panics. Bridges live in a namespace
//! of their own, so nothing is added to the caller's network namespace.
//!
//! Building a topology is dozens of `ip` commands. Under the VM's emulated
//! CPU every process costs about 0.1 s, so a fabric took 11 s to wire up one
//! `ip` at a time. The wiring is therefore queued (see `Wiring`) and run as a
//! few `ip -batch` processes before anything that looks at or runs in the
//! topology.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Moves the calling thread into the network namespace `full` (a name
/// from [`Topology::ns`], once wired): for what opens a socket in its
/// caller's namespace, such as the director's fence. Only that thread
/// moves; use one of its own.
pub fn enter(full: &str) -> anyhow::Result<()> {
    use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
    use std::os::fd::AsFd;
    let file = std::fs::File::open(format!("/run/netns/{full}"))
        .with_context(|| format!("opening namespace {full}"))?;
    move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
        .with_context(|| format!("entering namespace {full}"))?;
    Ok(())
}

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
    /// Interfaces [`Topology::plug_caller`] put in the caller's namespace.
    caller_links: Vec<String>,
    children: Vec<Child>,
    wiring: RefCell<Wiring>,
}

/// `ip` commands queued by the builder methods, not run yet. They run in
/// three steps, each as few processes as can be: the namespaces; every
/// interface (created from the caller's namespace straight into its own with
/// `netns`); then each namespace's configuration in one batch, in the order it
/// was queued. Configuration never depends on another namespace's, only on
/// interfaces, so the grouping keeps every dependency.
#[derive(Default)]
struct Wiring {
    namespaces: Vec<String>,
    interfaces: Vec<String>,
    /// Each namespace's commands (None: the caller's), namespaces in the
    /// order they were first named.
    config: Vec<(Option<String>, Vec<String>)>,
}

impl Wiring {
    fn configure(&mut self, ns: Option<&str>, command: String) {
        match self.config.iter_mut().find(|(n, _)| n.as_deref() == ns) {
            Some((_, lines)) => lines.push(command),
            None => self.config.push((ns.map(String::from), vec![command])),
        }
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let namespaces = std::mem::take(&mut self.namespaces);
        if !namespaces.is_empty() {
            let lines = namespaces.iter().map(|ns| format!("netns add {ns}"));
            ip_batch(&[], &lines.collect::<Vec<_>>())?;
        }
        let interfaces = std::mem::take(&mut self.interfaces);
        if !interfaces.is_empty() {
            ip_batch(&[], &interfaces)?;
        }
        for (ns, lines) in std::mem::take(&mut self.config) {
            match ns {
                Some(ns) => ip_batch(&["-n", &ns], &lines)?,
                None => ip_batch(&[], &lines)?,
            }
        }
        Ok(())
    }
}

/// Runs `lines` through one `ip <options> -batch -`.
fn ip_batch(options: &[&str], lines: &[String]) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(options)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    let script = lines.join("\n") + "\n";
    child
        .stdin
        .take()
        .context("ip -batch stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip {} -batch failed: {}\n{script}",
            options.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
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
            caller_links: Vec::new(),
            children: Vec::new(),
            wiring: RefCell::default(),
        }
    }

    /// Queues `ip <command>` in namespace `name` (None: the caller's), to
    /// configure interfaces that exist (or that the builder methods create).
    pub fn ip(&self, name: Option<&str>, command: &str) {
        let ns = name.map(|n| self.ns(n));
        self.wiring
            .borrow_mut()
            .configure(ns.as_deref(), command.to_string());
    }

    /// Queues the creation of an interface: `ip link add <spec>`, run in the
    /// caller's namespace, so `spec` names the namespace(s) with `netns`.
    fn create_interface(&self, spec: String) {
        self.wiring
            .borrow_mut()
            .interfaces
            .push(format!("link add {spec}"));
    }

    /// Runs the queued wiring; every method that runs something in the
    /// topology calls this first.
    pub fn apply(&self) -> anyhow::Result<()> {
        self.wiring.borrow_mut().run()
    }

    /// The full name of namespace `name` (for `ip netns exec`).
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Creates a namespace with its loopback up.
    pub fn add_ns(&mut self, name: &str) -> anyhow::Result<String> {
        let full = self.ns(name);
        self.namespaces.push(full.clone());
        self.wiring.get_mut().namespaces.push(full.clone());
        self.ip(Some(name), "link set lo up");
        Ok(full)
    }

    /// Creates a bridge (in a namespace of its own, named `name`) to plug hosts into.
    pub fn add_bridge(&mut self, name: &str) -> anyhow::Result<()> {
        let ns = self.add_ns(name)?;
        self.create_interface(format!("br0 netns {ns} type bridge"));
        self.ip(Some(name), "link set br0 up");
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
        self.create_interface(format!(
            "{port} netns {b} type veth peer name {ifname} netns {h}"
        ));
        self.ip(Some(bridge), &format!("link set {port} master br0 up"));
        self.ip(Some(host), &format!("addr add {cidr} dev {ifname}"));
        self.ip(Some(host), &format!("link set {ifname} up"));
        Ok(())
    }

    /// Plugs the *calling* process's namespace into `bridge` as `ifname` with
    /// `cidr`, for processes that tests drive directly (e.g. controllers the
    /// agents in the namespaces must reach). The interface is deleted when the
    /// topology is dropped.
    pub fn plug_caller(&mut self, bridge: &str, ifname: &str, cidr: &str) -> anyhow::Result<()> {
        let port = format!("p-caller-{ifname}");
        anyhow::ensure!(port.len() <= 15, "interface name {port} is too long");
        let b = self.ns(bridge);
        self.create_interface(format!("{port} netns {b} type veth peer name {ifname}"));
        self.ip(Some(bridge), &format!("link set {port} master br0 up"));
        self.ip(None, &format!("addr add {cidr} dev {ifname}"));
        self.ip(None, &format!("link set {ifname} up"));
        self.caller_links.push(ifname.to_string());
        // The caller uses its own namespace directly (servers bound to
        // `cidr`), not through this topology: wire it up now.
        self.apply()
    }

    /// A command that runs `program` inside namespace `name`; the caller owns the child.
    pub fn command(&self, name: &str, program: &Path) -> anyhow::Result<Command> {
        self.apply()?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(name)]).arg(program);
        Ok(c)
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
        self.create_interface(format!(
            "{if_a} netns {na} type veth peer name {if_b} netns {nb}"
        ));
        for (ns, ifname, cidr) in [(a, if_a, cidr_a), (b, if_b, cidr_b)] {
            self.ip(Some(ns), &format!("addr add {cidr} dev {ifname}"));
            self.ip(Some(ns), &format!("link set {ifname} up"));
        }
        Ok(())
    }

    /// `program` run inside namespace `name`, as an argument list (for
    /// code that runs a tool itself, such as the director's `nft`).
    pub fn wrapped(&self, name: &str, program: &str) -> anyhow::Result<Vec<String>> {
        self.apply()?;
        Ok(["ip", "netns", "exec", &self.ns(name), program]
            .map(String::from)
            .to_vec())
    }

    /// Runs a command inside namespace `name`.
    pub fn exec(&self, name: &str, args: &[&str]) -> anyhow::Result<Output> {
        self.apply()?;
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
        self.apply()?;
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
        let pids = self.http_backends(&[(name, answer, listen)])?;
        pids.first().copied().context("no backend started")
    }

    /// [`Topology::http_backend`] for each `(namespace, answer, listen)`,
    /// all started before any is waited for (their start-ups overlap).
    pub fn http_backends(&mut self, list: &[(&str, &str, &str)]) -> anyhow::Result<Vec<u32>> {
        let bin = crate::bin("lb-http");
        let bin = bin.to_str().context("lb-http path")?.to_string();
        let mut started = Vec::new();
        for (name, answer, listen) in list {
            let child = self.spawn(name, &[&bin, "serve", answer, listen])?;
            let stdout = child.stdout.take().context("backend stdout")?;
            started.push((child.id(), stdout, name, answer));
        }
        let mut pids = Vec::new();
        for (pid, stdout, name, answer) in started {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line)?;
            anyhow::ensure!(
                line.trim() == "ready",
                "backend {answer} in {name} did not start"
            );
            pids.push(pid);
        }
        Ok(pids)
    }

    /// Starts a server in namespace `name` ([`Topology::spawn`]) and waits
    /// until it prints a line starting with `ready` (lb-http prints
    /// "ready", `openssl s_server` "ACCEPT"). Returns its PID.
    pub fn server(&mut self, name: &str, args: &[&str], ready: &str) -> anyhow::Result<u32> {
        let child = self.spawn(name, args)?;
        let pid = child.id();
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(line) if line.as_ref().is_ok_and(|l| l.starts_with(ready)) => break,
                Some(line) => drop(line?),
                None => bail!("{args:?} in {name} exited before {ready:?}"),
            }
        }
        // Keep reading, so that a chatty server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
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
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        // Deleting a namespace deletes its interfaces, and with them their
        // veth peers — but in the background: the caller's own ends go
        // first, at once, so that the next topology can reuse their names
        // and addresses. One `ip -force -batch`: a namespace never created
        // (a failed wiring) must not stop the rest from going.
        let lines: Vec<String> = self
            .caller_links
            .iter()
            .map(|link| format!("link del {link}"))
            .chain(
                self.namespaces
                    .iter()
                    .rev()
                    .map(|ns| format!("netns del {ns}")),
            )
            .collect();
        let _ = ip_batch(&["-force"], &lines);
    }
}
