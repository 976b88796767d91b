//! Kernel parameters under `/proc/sys`, named as `sysctl` names them
//! (`net.ipv4.conf.all.arp_ignore`).

use std::path::PathBuf;

use crate::NetError;

fn path(name: &str) -> Result<PathBuf, NetError> {
    // Interface names may contain dots; those are written as '/' by sysctl(8) users.
    if name.is_empty() || name.contains("..") || name.starts_with('.') {
        return Err(NetError::Sysctl {
            name: name.to_string(),
            detail: "not a sysctl name".into(),
        });
    }
    Ok(PathBuf::from("/proc/sys").join(name.replace('.', "/")))
}

/// Reads a parameter, trimmed.
pub fn read(name: &str) -> Result<String, NetError> {
    let p = path(name)?;
    std::fs::read_to_string(&p)
        .map(|v| v.trim().to_string())
        .map_err(|e| NetError::Sysctl {
            name: name.to_string(),
            detail: e.to_string(),
        })
}

/// Writes a parameter and returns the value it had, so callers can restore it.
pub fn write(name: &str, value: &str) -> Result<String, NetError> {
    let before = read(name)?;
    std::fs::write(path(name)?, value).map_err(|e| NetError::Sysctl {
        name: name.to_string(),
        detail: e.to_string(),
    })?;
    Ok(before)
}

/// The name of an interface's parameter: `net.ipv4.conf.<iface>.<key>`.
pub fn ipv4_conf(iface: &str, key: &str) -> String {
    format!("net.ipv4.conf.{iface}.{key}")
}
