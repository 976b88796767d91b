//! The IPVS services this agent programmed, kept in `--state-dir` beside
//! the lease file.
//!
//! The reconciler removes a kernel service only when lbfabric manages it —
//! desired now, or desired before — and leaves every other one alone as
//! *foreign* (an operator's own `ipvsadm -A`). A service deleted from the
//! configuration while the agent was down is desired by nobody when the
//! agent comes back: without a record of what the previous process
//! programmed it would look foreign and stay in the kernel for good. The
//! file is that record, rewritten whenever the managed set changes. Like
//! the IPVS table it describes it lives on tmpfs (`/run/lbfabric`): a
//! reboot clears both.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::ipvs::ServiceKey;
use crate::lease_file::{read, write, StateFileError};

/// `<dir>/director-<node>.services`.
#[derive(Debug, Clone)]
pub struct ServicesFile {
    path: PathBuf,
}

impl ServicesFile {
    pub fn new(dir: &Path, node_id: &str) -> Self {
        ServicesFile {
            path: dir.join(format!("director-{node_id}.services")),
        }
    }

    /// What a previous process programmed; empty without a file.
    pub fn load(&self) -> Result<BTreeSet<ServiceKey>, StateFileError> {
        let Some(text) = read(&self.path)? else {
            return Ok(BTreeSet::new());
        };
        decode(&text).map_err(|(line, reason)| StateFileError::Parse {
            path: self.path.clone(),
            line,
            reason,
        })
    }

    pub fn save(&self, keys: &BTreeSet<ServiceKey>) -> Result<(), StateFileError> {
        write(&self.path, &encode(keys))
    }
}

/// One line per service: `endpoint PROTOCOL ADDRESS PORT` (the protocol as
/// its IPPROTO number) or `fwmark MARK FAMILY`.
fn encode(keys: &BTreeSet<ServiceKey>) -> String {
    let mut out = String::from("# lbfabric director: the IPVS services this node programmed\n");
    for key in keys {
        match key {
            ServiceKey::Endpoint {
                addr,
                port,
                protocol,
            } => out.push_str(&format!("endpoint {protocol} {addr} {port}\n")),
            ServiceKey::Fwmark { mark, af } => out.push_str(&format!("fwmark {mark} {af}\n")),
        }
    }
    out
}

/// Parses [`encode`]'s text; errors are (line number, reason).
fn decode(text: &str) -> Result<BTreeSet<ServiceKey>, (usize, String)> {
    let mut keys = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let num = |what: &str, v: &str| -> Result<u32, (usize, String)> {
            v.parse().map_err(|e| (n, format!("{what} {v:?}: {e}")))
        };
        let small = |what: &str, v: &str| -> Result<u16, (usize, String)> {
            v.parse().map_err(|e| (n, format!("{what} {v:?}: {e}")))
        };
        let key = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["endpoint", protocol, addr, port] => ServiceKey::Endpoint {
                addr: addr
                    .parse::<IpAddr>()
                    .map_err(|e| (n, format!("address {addr:?}: {e}")))?,
                port: small("port", port)?,
                protocol: small("protocol", protocol)?,
            },
            ["fwmark", mark, af] => ServiceKey::Fwmark {
                mark: num("mark", mark)?,
                af: small("family", af)?,
            },
            _ => return Err((n, format!("unknown line {line:?}"))),
        };
        keys.insert(key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_saved_is_loaded_and_a_bad_line_is_named() {
        let dir = std::env::temp_dir().join(format!("lb-services-{}", std::process::id()));
        let file = ServicesFile::new(&dir, "d1");
        assert!(file.load().unwrap().is_empty(), "no file yet");
        let keys = BTreeSet::from([
            ServiceKey::Endpoint {
                addr: "10.0.0.100".parse().unwrap(),
                port: 80,
                protocol: 6,
            },
            ServiceKey::Endpoint {
                addr: "2001:db8::100".parse().unwrap(),
                port: 53,
                protocol: 17,
            },
            ServiceKey::Fwmark { mark: 7, af: 10 },
        ]);
        file.save(&keys).unwrap();
        assert_eq!(file.load().unwrap(), keys);
        std::fs::write(dir.join("director-d1.services"), "fwmark x 2\n").unwrap();
        let e = file.load().unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            e.ends_with("line 1: mark \"x\": invalid digit found in string"),
            "{e}"
        );
    }
}
