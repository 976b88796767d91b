//! lbctl's own surface: completion scripts that a shell really completes
//! with, and help that shows examples.

use std::process::Command;

fn lbctl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(args)
        .output()
        .expect("running lbctl");
    assert!(out.status.success(), "lbctl {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn bash_completes_subcommands_and_formats() {
    let script = lbctl(&["completion", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lbctl.bash");
    std::fs::write(&path, script).unwrap();
    // What bash offers after `lbctl imp<TAB>` and `lbctl import <TAB>`.
    // bash calls the function with the command, the current and the previous word.
    let complete = |words: &str, cword: usize| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; _lbctl lbctl \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; echo \"${{COMPREPLY[@]}}\"",
                path.display()
            ))
            .output()
            .expect("bash");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(complete("lbctl imp", 1).trim(), "import");
    let formats = complete("lbctl import ''", 2);
    for f in ["keepalived", "piranha", "ipvsadm"] {
        assert!(formats.contains(f), "{formats}");
    }
}

#[test]
fn zsh_and_fish_scripts_name_the_commands() {
    let zsh = lbctl(&["completion", "zsh"]);
    assert!(
        zsh.starts_with("#compdef lbctl"),
        "{}",
        &zsh[..80.min(zsh.len())]
    );
    let fish = lbctl(&["completion", "fish"]);
    assert!(fish.contains("complete -c lbctl") && fish.contains("import"));
}

#[test]
fn help_shows_examples() {
    let help = lbctl(&["import", "--help"]);
    assert!(help.contains("lbctl import keepalived /etc/keepalived/keepalived.conf --dry-run"));
    let help = lbctl(&["status", "--help"]);
    assert!(help.contains("--stats") && help.contains("Examples:"));
}

/// Against no controller, the error names the addresses tried and how to
/// point lbctl elsewhere (a port bound and closed again: nothing listens).
#[test]
fn no_controller_says_where_lbctl_looked() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let out = Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(["--controller", &addr, "--timeout", "2", "service", "list"])
        .env_remove("LB_CONTROLLER")
        .output()
        .expect("running lbctl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("no controller answered at {addr}"))
            && err.contains("--controller HOST:PORT")
            && err.contains("LB_CONTROLLER"),
        "{err}"
    );
}

/// `lbctl … | head`: a reader that has gone before lbctl writes (its end
/// of the pipe closed before lbctl starts, so the first write fails) ends
/// lbctl quietly with success, as it would `ipvsadm` or `ls`.
#[test]
fn a_reader_that_went_away_ends_lbctl_quietly() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ipvsadm-save.txt"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .args(["import", "ipvsadm", fixture, "--dry-run"])
        .stdout(writer)
        .output()
        .expect("running lbctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}
