//! The VIP-change hook (`--on-vip-change PROGRAM`): lbfabric's answer to
//! keepalived's `notify_master` / `notify_backup` scripts, which operators
//! use to page, move routes or warm caches when a director takes or gives
//! up an address.
//!
//! It runs when this director's VIP address goes on the interface (the VIP
//! is taken: `BACKUP` → `MASTER`) or comes off it (`MASTER` → `BACKUP`),
//! with the arguments `VIP OLD NEW EPOCH` and the same in the environment
//! (`LB_VIP`, `LB_OLD_STATE`, `LB_NEW_STATE`, `LB_EPOCH`, and `LB_NODE_ID`).
//! The states are keepalived's words, so that a notify script's `case` on
//! `MASTER`/`BACKUP` carries over. Runs are queued and run one at a time,
//! in the order of the changes, each killed after [`TIMEOUT`]: a hook never
//! delays the VIP loop, whose timing the lease depends on.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::sync::mpsc;

/// Longest a run may take; then it is killed and the next one runs.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A VIP's state on this director, in keepalived's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VipState {
    /// The address is on this director's interface.
    Master,
    /// It is not.
    Backup,
}

impl VipState {
    pub fn as_str(self) -> &'static str {
        match self {
            VipState::Master => "MASTER",
            VipState::Backup => "BACKUP",
        }
    }
}

/// One change of a VIP's state here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipChange {
    pub vip: IpAddr,
    pub old: VipState,
    pub new: VipState,
    pub epoch: u64,
}

/// Where changes go to be run.
pub type Hooks = mpsc::UnboundedSender<VipChange>;

/// Checks `--on-vip-change` when the agent starts: a program that cannot
/// run would otherwise show up only at the first failover.
pub fn check(program: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(program)
        .map_err(|e| format!("--on-vip-change {}: {e}", program.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "--on-vip-change {}: must be an executable file",
            program.display()
        ));
    }
    Ok(())
}

/// Runs each change sent, one after another; returns once every sender is
/// gone and the queue is empty.
pub async fn run(
    program: PathBuf,
    node_id: String,
    mut changes: mpsc::UnboundedReceiver<VipChange>,
) {
    while let Some(c) = changes.recv().await {
        let (vip, epoch) = (c.vip.to_string(), c.epoch.to_string());
        let (old, new) = (c.old.as_str(), c.new.as_str());
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args([&vip, old, new, &epoch])
            .env("LB_VIP", &vip)
            .env("LB_OLD_STATE", old)
            .env("LB_NEW_STATE", new)
            .env("LB_EPOCH", &epoch)
            .env("LB_NODE_ID", &node_id)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let program = program.display();
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(%program, vip, error = %e, "the VIP-change hook could not start");
                continue;
            }
        };
        match tokio::time::timeout(TIMEOUT, child.wait()).await {
            Ok(Ok(status)) if status.success() => {
                tracing::info!(%program, vip, old, new, epoch, "VIP-change hook ran")
            }
            Ok(Ok(status)) => {
                tracing::warn!(%program, vip, old, new, %status, "the VIP-change hook failed")
            }
            Ok(Err(e)) => tracing::warn!(%program, vip, error = %e, "the VIP-change hook"),
            Err(_) => {
                let _ = child.kill().await;
                tracing::warn!(%program, vip, old, new, "the VIP-change hook ran for {TIMEOUT:?}: killed");
            }
        }
    }
}
