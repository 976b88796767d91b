//! The kernel's connection synchronisation daemon (`ipvsadm --start-daemon`).
//!
//! A *master* multicasts the state of the connections this director
//! forwards; a *backup* listens and creates the same entries, so when a VIP
//! moves here its established connections keep going to the same
//! realservers. Both may run at once, which is what a director that owns
//! some VIPs and stands by for others needs.

use neli::genl::Nlattr;
use neli::types::Buffer;

use super::wire::*;

/// `IP_VS_STATE_MASTER` / `IP_VS_STATE_BACKUP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SyncRole {
    Master,
    Backup,
}

impl SyncRole {
    pub fn state(self) -> u32 {
        match self {
            SyncRole::Master => 1,
            SyncRole::Backup => 2,
        }
    }

    fn from_state(state: u32) -> Option<SyncRole> {
        match state {
            1 => Some(SyncRole::Master),
            2 => Some(SyncRole::Backup),
            _ => None,
        }
    }
}

impl std::fmt::Display for SyncRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncRole::Master => "master",
            SyncRole::Backup => "backup",
        })
    }
}

/// One running sync daemon: role, multicast interface, sync id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyncDaemon {
    pub role: SyncRole,
    pub interface: String,
    /// Only messages with this id are accepted by a backup (0 = any).
    pub sync_id: u8,
}

impl std::fmt::Display for SyncDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sync {} on {} (id {})",
            self.role, self.interface, self.sync_id
        )
    }
}

impl SyncDaemon {
    /// The nested `IPVS_DAEMON_ATTR_*` of a NEW_DAEMON request.
    pub fn attrs(&self) -> Result<Vec<Nlattr<DaemonAttr, Buffer>>, String> {
        Ok(vec![
            attr(DaemonAttr::State, self.role.state().to_ne_bytes().to_vec())?,
            attr(DaemonAttr::McastIfn, c_string(&self.interface))?,
            attr(
                DaemonAttr::SyncId,
                u32::from(self.sync_id).to_ne_bytes().to_vec(),
            )?,
        ])
    }

    /// Reads the nested daemon of a GET_DAEMON reply.
    pub(super) fn parse(
        nested: &neli::attr::AttrHandle<
            '_,
            neli::types::GenlBuffer<DaemonAttr, Buffer>,
            Nlattr<DaemonAttr, Buffer>,
        >,
    ) -> Option<SyncDaemon> {
        let raw = |t: DaemonAttr| nested.get_attribute(t).map(|a| a.nla_payload().as_ref());
        Some(SyncDaemon {
            role: SyncRole::from_state(raw(DaemonAttr::State).and_then(u32_ne)?)?,
            interface: parse_c_string(raw(DaemonAttr::McastIfn)?),
            sync_id: u8::try_from(raw(DaemonAttr::SyncId).and_then(u32_ne)?).ok()?,
        })
    }
}
