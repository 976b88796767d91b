//! Tests that need a real IPVS/ipip kernel. They run inside the VM test bed:
//!
//!   scripts/vm-test.sh            (or, by hand:)
//!   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/target/debug/lb-vm run --" \
//!       cargo test -p lb-testkit --test vm
//!
//! Run anywhere else, each test skips — or fails under LB_REQUIRE_PRIVILEGED_TESTS=1.

mod director;
mod forwarding;
mod ipvs_client;
mod ipvs_netlink;
mod meta;
mod reconcile;

/// True when the test may run: inside the VM.
fn in_vm() -> bool {
    lb_testkit::require(
        lb_testkit::vm::in_vm(),
        "the IPVS VM (run through scripts/vm-test.sh)",
    )
}
