//! The lease, kept in a small file so a restarted agent continues it.
//!
//! The controller grants a lease to the *node*, not to the process. When the
//! agent is killed and started again (`kill -9`, a crash, an upgrade), the VIP
//! addresses stay on the interface — the kernel does not know the process
//! died. Without this file the new process would know neither which of them
//! it put there nor until when it may keep them: it would either drop them
//! (a traffic gap until the first acknowledged heartbeat) or keep them on no
//! authority (two owners if the VIP has moved meanwhile).
//!
//! With it, the new process holds exactly what the old one was granted,
//! until the same moment: the file names the VIPs and the lease end on
//! `CLOCK_MONOTONIC`, which all processes of one boot share. When the lease
//! runs out before a controller acknowledges the new process, the addresses
//! go, exactly as they would have in the old process. The file lives on
//! tmpfs by default (`/run/lbfabric`): a reboot clears addresses and file
//! together, and the monotonic clock restarts with them.
//!
//! The session writes the file as soon as a message changes the lease,
//! before the next report can tell the controller anything new, so the file
//! never grants more than the controller last heard this node hold.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::lease::Lease;

/// A file in `--state-dir` (this one, or [`crate::services_file`]'s).
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path}, line {line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// The file's text; `None` when there is no file.
pub(crate) fn read(path: &Path) -> Result<Option<String>, StateFileError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateFileError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Replaces the file atomically (write a sibling, rename over).
pub(crate) fn write(path: &Path, text: &str) -> Result<(), StateFileError> {
    let io = |source| StateFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Several tasks save: each writes a sibling of its own.
    static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{n}"));
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// `<dir>/director-<node>.lease`.
#[derive(Debug, Clone)]
pub struct LeaseFile {
    path: PathBuf,
    /// Orders [`LeaseFile::save_current`]'s writes (see there).
    order: Arc<Mutex<()>>,
}

/// Nanoseconds on `CLOCK_MONOTONIC`, the clock `Instant` reads on Linux.
fn monotonic_ns() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // The kernel never returns negative fields for this clock.
    u128::from(t.tv_sec.unsigned_abs()) * 1_000_000_000 + u128::from(t.tv_nsec.unsigned_abs())
}

impl LeaseFile {
    pub fn new(dir: &Path, node_id: &str) -> Self {
        LeaseFile {
            path: dir.join(format!("director-{node_id}.lease")),
            order: Arc::default(),
        }
    }

    /// The lease a previous process of this node left; `None` without a file.
    pub fn load(&self) -> Result<Option<Lease>, StateFileError> {
        let Some(text) = read(&self.path)? else {
            return Ok(None);
        };
        // Instant first: the lease end may come out a hair early, never late.
        let now = Instant::now();
        decode(&text, now, monotonic_ns())
            .map(Some)
            .map_err(|(line, reason)| StateFileError::Parse {
                path: self.path.clone(),
                line,
                reason,
            })
    }

    /// Replaces the file atomically.
    pub fn save(&self, lease: &Lease) -> Result<(), StateFileError> {
        // The shared clock first: the written end may be a hair early, never late.
        let now_ns = monotonic_ns();
        write(&self.path, &encode(lease, Instant::now(), now_ns))
    }

    /// Saves what `lease` holds now. Several threads save (the session on
    /// a grant, a background save of moved lease ends, the VIP loop): each
    /// copies the lease only once the writes before it are done, so the
    /// last write is always of the latest copy — an older copy written
    /// last could name a VIP let go of since.
    pub fn save_current(&self, lease: &Mutex<Lease>) -> Result<(), StateFileError> {
        let _turn = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        let copy = lease.lock().unwrap_or_else(PoisonError::into_inner).clone();
        self.save(&copy)
    }

    /// After the VIPs were released on a clean shutdown.
    pub fn remove(&self) -> Result<(), StateFileError> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateFileError::Io {
                path: self.path.clone(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

/// The file's text; `now`/`now_ns` are the same moment on both clocks.
/// It keeps what the lease holds now and until when, the epochs let go of
/// for good, and the addresses on the interface.
fn encode(lease: &Lease, now: Instant, now_ns: u128) -> String {
    let mut out =
        String::from("# lbfabric director lease: the next process of this node continues it\n");
    for (vip, (epoch, until)) in lease.holding(now) {
        let left = until.saturating_duration_since(now).as_nanos();
        out.push_str(&format!("vip {vip} {epoch} {}\n", now_ns + left));
    }
    for (vip, epoch) in &lease.dropped {
        out.push_str(&format!("dropped {vip} {epoch}\n"));
    }
    for vip in &lease.added {
        out.push_str(&format!("added {vip}\n"));
    }
    out
}

/// Parses [`encode`]'s text; errors are (line number, reason).
fn decode(text: &str, now: Instant, now_ns: u128) -> Result<Lease, (usize, String)> {
    let mut lease = Lease::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let addr = |a: &str| -> Result<IpAddr, (usize, String)> {
            a.parse().map_err(|e| (n, format!("address {a:?}: {e}")))
        };
        let epoch = |e: &str| -> Result<u64, (usize, String)> {
            e.parse().map_err(|err| (n, format!("epoch {e:?}: {err}")))
        };
        match fields.as_slice() {
            ["vip", a, e, ns] => {
                let ns: u128 = ns
                    .parse()
                    .map_err(|err| (n, format!("lease end {ns:?}: {err}")))?;
                let left = ns.saturating_sub(now_ns);
                let left = Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX));
                let until = now.checked_add(left).unwrap_or(now);
                lease.inherited.insert(addr(a)?, (epoch(e)?, until));
            }
            ["dropped", a, e] => {
                lease.dropped.insert(addr(a)?, epoch(e)?);
            }
            ["added", a] => {
                lease.added.insert(addr(a)?);
            }
            _ => return Err((n, format!("unknown line {line:?}"))),
        }
    }
    Ok(lease)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn v4() -> IpAddr {
        "10.0.0.100".parse().unwrap()
    }

    fn v6() -> IpAddr {
        "2001:db8::100".parse().unwrap()
    }

    fn lease(until: Instant) -> Lease {
        Lease {
            inherited: BTreeMap::from([(v4(), (3, until)), (v6(), (7, until))]),
            dropped: BTreeMap::from([("10.0.0.7".parse().unwrap(), 2)]),
            added: [v4()].into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_restarted_process_keeps_the_same_lease_end() {
        let t0 = Instant::now();
        let text = encode(&lease(t0 + Duration::from_millis(900)), t0, 5_000_000_000);
        assert!(text.contains("vip 10.0.0.100 3 5900000000\n"), "{text}");
        // The new process reads it 400 ms later on the shared clock: 500 ms are left.
        let t1 = Instant::now();
        let back = decode(&text, t1, 5_400_000_000).unwrap();
        assert_eq!(back.inherited[&v4()], (3, t1 + Duration::from_millis(500)));
        assert_eq!(back.held(t1 + Duration::from_millis(499)).len(), 2);
        assert!(back.held(t1 + Duration::from_millis(500)).is_empty());
        assert_eq!(back.dropped, lease(t0).dropped);
        assert_eq!(back.added, lease(t0).added, "what the kernel has is known");
    }

    #[test]
    fn an_expired_lease_holds_nothing() {
        let t0 = Instant::now();
        let text = encode(&lease(t0 + Duration::from_millis(100)), t0, 1_000);
        let back = decode(&text, t0, 1_000 + 200_000_000).unwrap();
        assert!(back.held(t0).is_empty(), "ran out before the restart");
        assert_eq!(back.added.len(), 1, "still known, to be removed");
    }

    #[test]
    fn a_damaged_file_names_the_line() {
        let t0 = Instant::now();
        let err = decode("# x\nvip 10.0.0.300 1 5\n", t0, 0).unwrap_err();
        assert_eq!(err.0, 2);
        assert!(err.1.contains("10.0.0.300"), "{}", err.1);
        let err = decode("vip 10.0.0.1 1 soon\n", t0, 0).unwrap_err();
        assert!(err.1.contains("lease end"), "{}", err.1);
        let err = decode("until_monotonic_ns 5\n", t0, 0).unwrap_err();
        assert!(err.1.contains("unknown line"), "{}", err.1);
    }

    #[test]
    fn save_load_remove_round_trip() {
        let dir = std::env::temp_dir().join(format!("lb-lease-{}", std::process::id()));
        let file = LeaseFile::new(&dir, "d1");
        assert!(file.load().unwrap().is_none());
        let until = Instant::now() + Duration::from_secs(5);
        file.save(&lease(until)).unwrap();
        let back = file.load().unwrap().unwrap();
        let end = back.inherited[&v4()].1;
        // Nanosecond clocks read at slightly different moments.
        assert!(end <= until + Duration::from_millis(5) && end + Duration::from_millis(5) >= until);
        file.remove().unwrap();
        assert!(file.load().unwrap().is_none());
        file.remove().unwrap();
        let _ = std::fs::remove_dir(&dir);
    }
}
