//! A test that fails on purpose, run only on request (`--ignored`): the host
//! side checks that a failure inside the VM fails the run, output intact.

#[test]
#[ignore = "fails on purpose; run by the lb-vm runner test"]
fn fails_on_purpose() {
    println!("stdout from inside the VM");
    eprintln!("stderr from inside the VM");
    assert!(!lb_testkit::vm::in_vm(), "deliberate failure inside the VM");
}
