//! Running the `nft` tool: one process per call, a script on stdin. `nft -f`
//! commits a whole script as one kernel transaction, so nothing is ever
//! half-applied; the mark rules ([`crate::marks`]) and the fence
//! ([`crate::fence`]) both rely on that.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{op} failed: {stderr}")]
    Failed { op: &'static str, stderr: String },
}

/// Runs `nft` (`["nft"]`, or wrapped, e.g. in `ip netns exec`) with `args`
/// and `stdin`; returns what it printed.
pub fn run(
    nft: &[String],
    op: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, NftError> {
    let (program, prefix) = nft
        .split_first()
        .map_or(("nft", &[][..]), |(p, rest)| (p.as_str(), rest));
    let spawn = |source| NftError::Spawn {
        program: program.to_string(),
        source,
    };
    let mut child = Command::new(program)
        .args(prefix)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError::Failed {
            op,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
