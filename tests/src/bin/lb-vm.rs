//! lb-vm: run a command (typically a test binary) inside the real-kernel VM.
//!
//!   lb-vm run [--timeout SECS] [--systemd] -- COMMAND [ARGS…]
//!                                 boot, run, print output, exit with its status
//!                                 (--systemd: systemd is PID 1, the command its unit)
//!   lb-vm prepare                 build the cached kernel and initramfs
//!   lb-vm guest RUN_DIR           (PID 1 inside the VM)
//!   lb-vm guest-run RUN_DIR       (the command's unit under systemd)
//!
//! As cargo's target runner, each test binary runs in a fresh VM:
//!   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/target/debug/lb-vm run --" \
//!       cargo test -p lb-testkit --test vm

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use lb_testkit::vm::{guest_finish, guest_main, Vm};

fn vm() -> anyhow::Result<Vm> {
    let exe = std::env::current_exe().context("locating lb-vm")?;
    // lb-vm lives in <workspace>/target/<profile>/: share the workspace.
    let share = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .and_then(|t| t.parent())
        .map(PathBuf::from)
        .context("lb-vm must run from <workspace>/target/<profile>/")?;
    Vm::new(share, exe)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("guest") => match args.get(1) {
            Some(dir) => guest_main(&PathBuf::from(dir)),
            None => Err(anyhow::anyhow!("usage: lb-vm guest RUN_DIR")),
        },
        Some("guest-run") => match args.get(1) {
            Some(dir) => guest_finish(&PathBuf::from(dir)),
            None => Err(anyhow::anyhow!("usage: lb-vm guest-run RUN_DIR")),
        },
        Some("prepare") => vm().and_then(|vm| vm.prepare()).map(|(k, i)| {
            println!("kernel {}\ninitramfs {}", k.display(), i.display());
            0
        }),
        Some("run") => run(&args[1..]),
        _ => Err(anyhow::anyhow!(
            "usage: lb-vm run [--timeout SECS] [--systemd] -- COMMAND [ARGS…] | lb-vm prepare"
        )),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("lb-vm: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<i32> {
    let mut timeout = Duration::from_secs(600);
    let mut systemd = false;
    let mut rest = args;
    while let Some(first) = rest.first() {
        match first.as_str() {
            "--timeout" => {
                let secs: u64 = rest
                    .get(1)
                    .context("--timeout needs seconds")?
                    .parse()
                    .context("--timeout")?;
                timeout = Duration::from_secs(secs);
                rest = &rest[2..];
            }
            "--systemd" => {
                systemd = true;
                rest = &rest[1..];
            }
            "--" => {
                rest = &rest[1..];
                break;
            }
            _ => break,
        }
    }
    anyhow::ensure!(!rest.is_empty(), "lb-vm run: no command given");
    let mut argv = rest.to_vec();
    // The guest resolves the program from the same path; make it absolute.
    let program = PathBuf::from(&argv[0]);
    if program.components().count() > 1 {
        argv[0] = std::fs::canonicalize(&program)
            .with_context(|| format!("{}", program.display()))?
            .display()
            .to_string();
    }
    let mut vm = vm()?;
    vm.systemd = systemd;
    vm.run(&argv, timeout)
}
