//! The real-kernel test bed: runs a command inside a small qemu VM that boots
//! a Debian kernel (which has IPVS, ipip, veth, bridge as modules): the
//! newest under /boot, Debian's 6.12 from bookworm-backports as
//! `scripts/setup.sh` installs it, or `LB_VM_KERNEL`'s.
//!
//! The development machines' own kernel lacks IPVS and ipip, so everything
//! that touches them runs here. How it works:
//!
//! - **Cache** (`target/lb-vm/cache/<kernel>/`): the ELF `vmlinux` extracted
//!   from `/boot/vmlinuz-*` (booted directly through its PVH entry, which
//!   saves the in-guest decompression), and a tiny initramfs: static busybox,
//!   the virtio/9p modules in dependency order, and an `/init` script. Both
//!   are rebuilt when the kernel, the module list or the init script change.
//! - **Boot**: qemu TCG (the host's KVM flavour cannot run a stock kernel),
//!   machine q35, no network device. The host root is shared read-only over
//!   virtio-9p and becomes the guest's root, so every host binary (test
//!   binaries included) runs unchanged; the workspace is shared read-write at
//!   its own path; /tmp, /run, /var/tmp and /var/log are tmpfs. The root
//!   export spans several host filesystems (/proc, /sys, /dev…); without
//!   `multidevs=remap` their inode numbers collide in the guest and a mount
//!   on /sys lands on /proc.
//! - **Run**: after `switch_root`, PID 1 is `lb-vm guest`, which reads the
//!   request (argv, env, cwd) from a run directory in the workspace, runs the
//!   command with its stdout/stderr going to files there, records the exit
//!   status, and powers the VM off. The host side streams those files while
//!   the VM runs and exits with the command's status.
//! - **Under systemd** (`lb-vm run --systemd`): PID 1 hands over to the
//!   host's systemd, which runs the command as a unit ([`systemd`]), for
//!   tests of the packaged units.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

mod cpio;
mod kernel;
pub mod systemd;

use cpio::Cpio;
pub use kernel::find_kernel;
use kernel::{extract_vmlinux, module_file, MODULE_SUFFIXES};

/// Modules the initramfs loads to reach the 9p root; the rest autoload later
/// from the host root's /lib/modules.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// The initramfs's /init: mount the shares, switch to the host root, hand over
/// to `lb-vm guest`. Any failure powers the VM off so the host never hangs.
const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
fail() { echo "lb-vm init: $*"; echo o > /proc/sysrq-trigger; $B sleep 10; }
$B mkdir -p /proc /sys /dev /newroot
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
for m in $($B cat /modules.order); do $B insmod /modules/$m || fail "insmod $m"; done
$B mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /newroot || fail "mount host root"
for d in run tmp var/tmp var/log; do $B mount -t tmpfs tmpfs "/newroot/$d" || fail "tmpfs /$d"; done
# After the tmpfs mounts, so a workspace under /tmp is not hidden by them.
$B mkdir -p "/newroot$LBVM_WORK" 2>/dev/null
# cache=loose: nothing on the host changes the workspace while the VM runs,
# and without a page cache every exec re-reads the binary over 9p (~0.6 s
# per agent start, more under load — longer than a director's lease).
$B mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=512000 work "/newroot$LBVM_WORK" || fail "mount workspace"
for d in proc sys dev; do $B mount --move /$d /newroot/$d || fail "move /$d"; done
exec $B switch_root /newroot "$LBVM_GUEST" guest "$LBVM_RUN"
"#;

/// What the guest runs, written by the host into the run directory.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    /// Boot systemd as PID 1 and run the command as a unit of it.
    #[serde(default)]
    pub systemd: bool,
}

/// Environment passed into the guest: the test's own knobs and cargo's.
fn passed_env(name: &str) -> bool {
    ["LB_", "RUST_", "CARGO_", "NEXTEST"]
        .iter()
        .any(|p| name.starts_with(p))
        || name == "PATH"
        || name == "NO_COLOR"
}

/// Where the VM's files live and which kernel it boots.
#[derive(Debug, Clone)]
pub struct Vm {
    /// The workspace, shared read-write at the same path.
    pub share: PathBuf,
    pub kernel_version: String,
    pub cache: PathBuf,
    /// `lb-vm` itself, run as PID 1 in the guest.
    pub guest: PathBuf,
    pub memory_mb: u32,
    /// PID 1 is systemd, the command one of its units (see [`systemd`]).
    pub systemd: bool,
}

/// Reasons the VM cannot be used on this machine.
pub fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    for tool in ["qemu-system-x86_64", "xz"] {
        if crate::which(tool).is_none() {
            missing.push(format!("{tool} (run scripts/setup.sh)"));
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        missing.push("/bin/busybox (busybox-static)".into());
    }
    if find_kernel().is_err() {
        missing.push("a Debian kernel with IPVS under /boot (linux-image-amd64)".into());
    }
    missing
}

/// True inside the test VM (`lb-vm guest` sets it).
pub fn in_vm() -> bool {
    std::env::var("LB_IN_VM").is_ok_and(|v| v == "1")
}

impl Vm {
    /// The VM for the workspace `share`, with `guest` the path of `lb-vm`.
    pub fn new(share: PathBuf, guest: PathBuf) -> anyhow::Result<Vm> {
        let kernel_version = find_kernel()?;
        let cache = share.join("target/lb-vm/cache").join(&kernel_version);
        Ok(Vm {
            share,
            kernel_version,
            cache,
            guest,
            memory_mb: 1024,
            systemd: false,
        })
    }

    fn modules_dir(&self) -> PathBuf {
        PathBuf::from(format!("/lib/modules/{}", self.kernel_version))
    }

    /// Builds (or reuses) the extracted kernel and the initramfs.
    pub fn prepare(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(&self.cache)
            .with_context(|| format!("creating {}", self.cache.display()))?;
        let vmlinuz = PathBuf::from(format!("/boot/vmlinuz-{}", self.kernel_version));
        let modules = self.boot_modules()?;
        let stamp = format!(
            "{:?}\n{}\n{}\n",
            fingerprint(&vmlinuz)?,
            modules
                .iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
            INIT_SCRIPT
        );
        let vmlinux = self.cache.join("vmlinux");
        let initramfs = self.cache.join("initramfs.cpio");
        let stamp_path = self.cache.join("inputs");
        if std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str())
            && vmlinux.is_file()
            && initramfs.is_file()
        {
            return Ok((vmlinux, initramfs));
        }
        extract_vmlinux(&vmlinuz, &vmlinux)?;
        self.build_initramfs(&modules, &initramfs)?;
        std::fs::write(&stamp_path, stamp)?;
        Ok((vmlinux, initramfs))
    }

    /// The boot modules and their dependencies, dependencies first.
    fn boot_modules(&self) -> anyhow::Result<Vec<PathBuf>> {
        let dir = self.modules_dir();
        let dep =
            std::fs::read_to_string(dir.join("modules.dep")).context("reading modules.dep")?;
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in dep.lines() {
            if let Some((module, rest)) = line.split_once(':') {
                deps.insert(
                    module.to_string(),
                    rest.split_whitespace().map(String::from).collect(),
                );
            }
        }
        let by_name = |name: &str| -> Option<String> {
            let names = [format!("/{}", name.replace('_', "-")), format!("/{name}")];
            deps.keys()
                .find(|k| {
                    MODULE_SUFFIXES.iter().any(|(suffix, _)| {
                        k.strip_suffix(suffix)
                            .is_some_and(|stem| names.iter().any(|n| stem.ends_with(n.as_str())))
                    })
                })
                .cloned()
        };
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        fn visit(
            m: &str,
            deps: &BTreeMap<String, Vec<String>>,
            seen: &mut BTreeSet<String>,
            order: &mut Vec<String>,
        ) {
            if !seen.insert(m.to_string()) {
                return;
            }
            for d in deps.get(m).into_iter().flatten() {
                visit(d, deps, seen, order);
            }
            order.push(m.to_string());
        }
        for name in BOOT_MODULES {
            match by_name(name) {
                Some(path) => visit(&path, &deps, &mut seen, &mut order),
                None if builtin.contains(&format!("/{name}.ko")) => {}
                None => bail!("module {name} not found for kernel {}", self.kernel_version),
            }
        }
        Ok(order.into_iter().map(|m| dir.join(m)).collect())
    }

    fn build_initramfs(&self, modules: &[PathBuf], out: &Path) -> anyhow::Result<()> {
        let mut cpio = Cpio::default();
        for d in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
            cpio.dir(d);
        }
        cpio.file("init", 0o755, INIT_SCRIPT.as_bytes().to_vec());
        cpio.file(
            "bin/busybox",
            0o755,
            std::fs::read("/bin/busybox").context("reading /bin/busybox")?,
        );
        let mut order = String::new();
        for m in modules {
            let (name, bytes) = module_file(m)?;
            cpio.file(&format!("modules/{name}"), 0o644, bytes);
            order.push_str(&name);
            order.push('\n');
        }
        cpio.file("modules.order", 0o644, order.into_bytes());
        let tmp = out.with_extension("tmp");
        std::fs::write(&tmp, cpio.finish())?;
        std::fs::rename(&tmp, out)?;
        Ok(())
    }

    /// Runs `argv` in a fresh VM; streams its output; returns its exit status.
    ///
    /// A guest kernel panic (not a failing command: the kernel itself) boots
    /// a fresh VM and runs the command again, up to [`PANIC_ATTEMPTS`] in
    /// all. Under multi-threaded TCG, Debian's kernel now and then dies on a
    /// static-key site that another vCPU is patching (`RIP` one byte into a
    /// jump label's NOP, at boot in `sched_clock_cpu` or later in a
    /// netfilter hook): qemu's cross-vCPU code modification, not the command.
    /// Each panic's console is printed, so a panic that comes back every time
    /// still fails, visibly.
    pub fn run(&self, argv: &[String], timeout: Duration) -> anyhow::Result<i32> {
        let (vmlinux, initramfs) = self.prepare()?;
        let mut attempt = 1;
        loop {
            match self.boot(&vmlinux, &initramfs, argv, timeout)? {
                Ended::Command(code) => return Ok(code),
                Ended::GuestPanic(console) if attempt < PANIC_ATTEMPTS => {
                    eprintln!(
                        "lb-vm: the guest kernel panicked (attempt {attempt} of {PANIC_ATTEMPTS}); \
                         running the command again in a fresh VM; console:\n{console}"
                    );
                    attempt += 1;
                }
                Ended::GuestPanic(console) => {
                    eprintln!(
                        "lb-vm: the guest kernel panicked in all {PANIC_ATTEMPTS} attempts; console:\n{console}"
                    );
                    return Ok(125);
                }
            }
        }
    }

    /// Boots one VM for `argv` and waits for it to stop.
    fn boot(
        &self,
        vmlinux: &Path,
        initramfs: &Path,
        argv: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Ended> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let run_dir = self
            .share
            .join("target/lb-vm/runs")
            .join(format!("{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&run_dir)?;
        let request = Request {
            argv: argv.to_vec(),
            env: std::env::vars().filter(|(k, _)| passed_env(k)).collect(),
            cwd: std::env::current_dir()?,
            systemd: self.systemd,
        };
        std::fs::write(
            run_dir.join("request.json"),
            serde_json::to_vec_pretty(&request)?,
        )?;
        for f in ["stdout", "stderr"] {
            std::fs::File::create(run_dir.join(f))?;
        }
        let console = std::fs::File::create(run_dir.join("console.log"))?;
        // mitigations=off: the guest runs nothing but our tests, and under
        // emulation the kernel's speculation mitigations (retpolines and
        // the like, more of them with each stable update) cost time that
        // the fabric tests' timers then lack.
        let cmdline = format!(
            "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off rdinit=/init LBVM_WORK={} LBVM_RUN={} LBVM_GUEST={}",
            self.share.display(),
            run_dir.display(),
            self.guest.display()
        );
        // One vCPU per host core (multi-threaded TCG): the fabric tests run
        // controllers, directors and traffic at once.
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get().min(4))
            .unwrap_or(1)
            .to_string();
        let mut qemu = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg,thread=multi",
                "-machine",
                "q35",
                "-cpu",
                "max",
            ])
            .args(["-smp", &cpus])
            .args(["-m", &self.memory_mb.to_string()])
            .args([
                "-nographic",
                "-nodefaults",
                "-no-reboot",
                "-serial",
                "stdio",
                "-nic",
                "none",
            ])
            .arg("-kernel")
            .arg(vmlinux)
            .arg("-initrd")
            .arg(initramfs)
            .args(["-append", &cmdline])
            .args([
                "-virtfs",
                "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            ])
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=work,security_model=none,multidevs=remap",
                self.share.display()
            ))
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .spawn()
            .context("starting qemu-system-x86_64")?;

        let mut out = Follower::new(run_dir.join("stdout"));
        let mut err = Follower::new(run_dir.join("stderr"));
        let deadline = Instant::now() + timeout;
        let exited: Option<ExitStatus> = loop {
            out.forward(&mut std::io::stdout())?;
            err.forward(&mut std::io::stderr())?;
            if let Some(s) = qemu.try_wait()? {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = qemu.kill();
                let _ = qemu.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        out.forward(&mut std::io::stdout())?;
        err.forward(&mut std::io::stderr())?;
        let status = std::fs::read_to_string(run_dir.join("status")).ok();
        let console = run_dir.join("console.log");
        let ended = match (
            exited,
            status.as_deref().map(str::trim).map(str::parse::<i32>),
        ) {
            (_, Some(Ok(code))) => Ended::Command(code),
            (None, _) => {
                eprintln!(
                    "lb-vm: timed out after {timeout:?}; console:\n{}",
                    tail(&console)
                );
                Ended::Command(124)
            }
            (Some(_), _) if guest_panicked(&console) => Ended::GuestPanic(tail(&console)),
            (Some(s), _) => {
                eprintln!(
                    "lb-vm: the VM stopped ({s}) without a command status; console:\n{}",
                    tail(&console)
                );
                Ended::Command(125)
            }
        };
        if std::env::var_os("LB_VM_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        Ok(ended)
    }
}

/// PID 1 in the guest: run the request, record its status, power off; or,
/// when the request asks for systemd, hand PID 1 over to it (which then runs
/// `lb-vm guest-run`, below, as a unit).
pub fn guest_main(run_dir: &Path) -> ! {
    let wants_systemd = std::fs::read(run_dir.join("request.json"))
        .ok()
        .and_then(|r| serde_json::from_slice::<Request>(&r).ok())
        .is_some_and(|r| r.systemd);
    if wants_systemd {
        let e = systemd::boot(run_dir);
        let _ = std::fs::write(run_dir.join("stderr"), format!("lb-vm guest: {e:#}\n"));
        power_off(run_dir, 126);
    }
    guest_finish(run_dir)
}

/// Runs the request and powers the VM off with its status.
pub fn guest_finish(run_dir: &Path) -> ! {
    let code = match guest_run(run_dir) {
        Ok(code) => code,
        Err(e) => {
            let _ = std::fs::write(run_dir.join("stderr"), format!("lb-vm guest: {e:#}\n"));
            126
        }
    };
    power_off(run_dir, code)
}

fn power_off(run_dir: &Path, code: i32) -> ! {
    let _ = std::fs::write(run_dir.join("status"), code.to_string());
    // The workspace share is cached: flush it to the host before powering off.
    let _ = Command::new("sync")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .status();
    let _ = std::fs::write("/proc/sysrq-trigger", "o");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn guest_run(run_dir: &Path) -> anyhow::Result<i32> {
    let request: Request = serde_json::from_slice(&std::fs::read(run_dir.join("request.json"))?)?;
    // Loopback up, so tests can use 127.0.0.1 in the guest's root namespace.
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .status();
    let (program, args) = request.argv.split_first().context("empty command")?;
    let stdout = std::fs::OpenOptions::new()
        .append(true)
        .open(run_dir.join("stdout"))?;
    let stderr = std::fs::OpenOptions::new()
        .append(true)
        .open(run_dir.join("stderr"))?;
    let status = Command::new(program)
        .args(args)
        .env_clear()
        .envs(&request.env)
        .env("LB_IN_VM", "1")
        .env("HOME", "/tmp")
        .current_dir(&request.cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .status()
        .with_context(|| format!("running {program}"))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Size and mtime: enough to notice a new kernel package.
fn fingerprint(path: &Path) -> anyhow::Result<(u64, u64)> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mtime = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok((meta.len(), mtime))
}

/// How one VM ended.
enum Ended {
    /// The command's exit status (or lb-vm's own 124 timeout / 125 lost status).
    Command(i32),
    /// The guest kernel panicked; the console's tail.
    GuestPanic(String),
}

/// Boots a VM may take in all when its kernel panics (see [`Vm::run`]).
const PANIC_ATTEMPTS: u32 = 3;

/// Whether the guest kernel reported a panic on the console (with `panic=-1`
/// the VM then stops at once).
fn guest_panicked(console: &Path) -> bool {
    std::fs::read_to_string(console).is_ok_and(|text| text.contains("Kernel panic - not syncing"))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Forwards what is appended to a file.
struct Follower {
    path: PathBuf,
    offset: u64,
}

impl Follower {
    fn new(path: PathBuf) -> Self {
        Follower { path, offset: 0 }
    }

    fn forward(&mut self, to: &mut impl Write) -> anyhow::Result<()> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Ok(());
        };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        to.write_all(&buf)?;
        to.flush()?;
        Ok(())
    }
}
