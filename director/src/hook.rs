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
//!
//! The quorum hook (`--on-quorum-change PROGRAM`), keepalived's
//! `quorum_up` / `quorum_down`, runs on the director holding a service's
//! VIP when the service goes below quorum or back, with the arguments
//! `SERVICE UP|DOWN VIP` (also `LB_SERVICE`, `LB_QUORUM`, `LB_VIP`,
//! `LB_NODE_ID`), in the same queue.

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

/// A service's quorum changed while this director held its VIP
/// (keepalived's `quorum_up` / `quorum_down`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumChange {
    pub service: String,
    pub vip: IpAddr,
    /// Back at quorum (`UP`) or below it (`DOWN`).
    pub up: bool,
}

/// What the hooks are told of, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Vip(VipChange),
    Quorum(QuorumChange),
}

/// Where events go to be run.
pub type Hooks = mpsc::UnboundedSender<Event>;

/// The operator's programs: `--on-vip-change`, `--on-quorum-change`.
#[derive(Debug, Clone, Default)]
pub struct Programs {
    pub vip: Option<PathBuf>,
    pub quorum: Option<PathBuf>,
}

impl Programs {
    pub fn any(&self) -> bool {
        self.vip.is_some() || self.quorum.is_some()
    }
}

/// Checks a hook program when the agent starts (`flag` names it): one that
/// cannot run would otherwise show up only at the first failover.
pub fn check(flag: &str, program: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(program).map_err(|e| format!("{flag} {}: {e}", program.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "{flag} {}: must be an executable file",
            program.display()
        ));
    }
    Ok(())
}

/// Runs each event sent, one after another, with the program for its kind
/// (none: skipped); returns once every sender is gone and the queue is
/// empty.
pub async fn run(programs: Programs, node_id: String, mut events: mpsc::UnboundedReceiver<Event>) {
    while let Some(e) = events.recv().await {
        let (program, what, args, env) = match &e {
            Event::Vip(c) => {
                let (vip, epoch) = (c.vip.to_string(), c.epoch.to_string());
                let (old, new) = (c.old.as_str().to_string(), c.new.as_str().to_string());
                let env = [
                    ("LB_VIP", vip.clone()),
                    ("LB_OLD_STATE", old.clone()),
                    ("LB_NEW_STATE", new.clone()),
                    ("LB_EPOCH", epoch.clone()),
                ];
                (
                    &programs.vip,
                    "VIP-change",
                    vec![vip, old, new, epoch],
                    env.to_vec(),
                )
            }
            Event::Quorum(q) => {
                let state = if q.up { "UP" } else { "DOWN" }.to_string();
                let vip = q.vip.to_string();
                let env = [
                    ("LB_SERVICE", q.service.clone()),
                    ("LB_QUORUM", state.clone()),
                    ("LB_VIP", vip.clone()),
                ];
                (
                    &programs.quorum,
                    "quorum",
                    vec![q.service.clone(), state, vip],
                    env.to_vec(),
                )
            }
        };
        let Some(program) = program else {
            continue;
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&args)
            .envs(env)
            .env("LB_NODE_ID", &node_id)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let program = program.display();
        let args = args.join(" ");
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(%program, args, error = %e, "the {what} hook could not start");
                continue;
            }
        };
        match tokio::time::timeout(TIMEOUT, child.wait()).await {
            Ok(Ok(status)) if status.success() => {
                tracing::info!(%program, args, "{what} hook ran")
            }
            Ok(Ok(status)) => {
                tracing::warn!(%program, args, %status, "the {what} hook failed")
            }
            Ok(Err(e)) => tracing::warn!(%program, args, error = %e, "the {what} hook"),
            Err(_) => {
                let _ = child.kill().await;
                tracing::warn!(%program, args, "the {what} hook ran for {TIMEOUT:?}: killed");
            }
        }
    }
}
