//! Tests that need a real IPVS/ipip kernel. They run inside the VM test bed:
//!
//!   scripts/vm-test.sh            (or, by hand:)
//!   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/target/debug/lb-vm run --" \
//!       cargo test -p lb-testkit --test vm
//!
//! Run anywhere else, each test skips — or fails under LB_REQUIRE_PRIVILEGED_TESTS=1.

mod backup;
mod checks;
mod director;
mod fabric;
mod failover;
mod forwarding;
mod import;
mod ipv6;
mod ipvs_client;
mod ipvs_netlink;
mod meta;
mod parity;
mod reconcile;
mod scale;

/// True when the test may run: inside the VM.
fn in_vm() -> bool {
    lb_testkit::require(
        lb_testkit::vm::in_vm(),
        "the IPVS VM (run through scripts/vm-test.sh)",
    )
}

/// `ipvsadm -Sn`: the kernel's IPVS table as restore lines, sorted.
fn ipvsadm_save() -> Vec<String> {
    let out = std::process::Command::new("ipvsadm")
        .arg("-Sn")
        .output()
        .expect("ipvsadm");
    assert!(out.status.success(), "ipvsadm -Sn failed");
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

/// Expected restore lines, sorted like [`ipvsadm_save`].
fn sorted(lines: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Runs ipvsadm with space-separated arguments (a hand edit, or a fixture).
fn ipvsadm(args: &str) {
    let ok = std::process::Command::new("ipvsadm")
        .args(args.split_whitespace())
        .status()
        .expect("ipvsadm")
        .success();
    assert!(ok, "ipvsadm {args}");
}

pub(crate) use lb_testkit::proc::Proc;
