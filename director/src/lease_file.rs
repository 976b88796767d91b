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

use std::fmt::Write as _;
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

/// Saves the lease whose ends moved on, on a thread of its own at the
/// lowest CPU priority (nice 19). Nearly every answer moves the ends, and
/// with 1,000 VIPs a save took 2–4 ms of the VM's emulated CPU every
/// heartbeat: at the daemons' nice -10 it took a CPU from whatever ran
/// then (a configuration change being programmed, the clients). Late or
/// skipped on a busy host, such a save costs nothing but a moment of a
/// restarted process's lease: the file's ends are never later than the
/// lease's. What else changes the lease is saved at once, by its caller.
#[derive(Debug)]
pub struct BackgroundSave {
    asked: std::sync::mpsc::SyncSender<()>,
}

/// The saving thread's nice value.
const BACKGROUND_NICE: i32 = 19;

impl BackgroundSave {
    /// Starts the thread, which ends with the last [`BackgroundSave`].
    pub fn start(file: LeaseFile, lease: Arc<Mutex<Lease>>) -> std::io::Result<Self> {
        let (asked, asks) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("lease-save".into())
            .spawn(move || {
                if let Err(e) = lb_proto::process::renice_this_thread(BACKGROUND_NICE) {
                    tracing::warn!(error = %e, "lowering the lease saver's priority");
                }
                while asks.recv().is_ok() {
                    let started = Instant::now();
                    if let Err(e) = file.save_current(&lease) {
                        tracing::warn!(error = %e, "saving the lease");
                    }
                    tracing::debug!(
                        took_us = started.elapsed().as_micros() as u64,
                        "lease ends saved"
                    );
                }
            })?;
        Ok(BackgroundSave { asked })
    }

    /// Asks for a save. One asked for and not begun yet covers this one:
    /// it copies the lease when it begins.
    pub fn ask(&self) {
        let _ = self.asked.try_send(());
    }
}

/// The file's text; `now`/`now_ns` are the same moment on both clocks.
/// It keeps what the lease holds now and until when, the epochs let go of
/// for good, and the addresses on the interface.
fn encode(lease: &Lease, now: Instant, now_ns: u128) -> String {
    let mut out =
        String::from("# lbfabric director lease: the next process of this node continues it\n");
    // Written in place, and the end as a u64 (centuries of nanoseconds):
    // formatting a u128 and a string per line took a quarter of a
    // millisecond natively for 1,000 VIPs, most of a save that took 7–14 ms
    // under the VM's emulated CPU on every heartbeat.
    let now_ns = u64::try_from(now_ns).unwrap_or(u64::MAX);
    let holding = lease.holding(now);
    out.reserve(holding.len() * 40 + (lease.dropped.len() + lease.added.len()) * 30);
    let mut num = itoa::Buffer::new();
    for (vip, (epoch, until)) in holding {
        let left =
            u64::try_from(until.saturating_duration_since(now).as_nanos()).unwrap_or(u64::MAX);
        out.push_str("vip ");
        push_ip(&mut out, vip);
        out.push(' ');
        out.push_str(num.format(epoch));
        out.push(' ');
        out.push_str(num.format(now_ns.saturating_add(left)));
        out.push('\n');
    }
    for (vip, epoch) in &lease.dropped {
        out.push_str("dropped ");
        push_ip(&mut out, *vip);
        out.push(' ');
        out.push_str(num.format(*epoch));
        out.push('\n');
    }
    for vip in &lease.added {
        out.push_str("added ");
        push_ip(&mut out, *vip);
        out.push('\n');
    }
    out
}

/// `ip` as its `Display` writes it (an IPv4 address by hand: the
/// formatter's four numbers cost more than the rest of a line).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut num = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(num.format(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
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
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.0.0.100",
            "192.168.255.9",
            "255.255.255.255",
            "::",
            "2001:db8::100",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
            assert_eq!(out.parse::<IpAddr>().unwrap(), ip);
        }
    }

    /// The nice value of this process's thread named `name`.
    fn nice_of(name: &str) -> Option<i64> {
        std::fs::read_dir("/proc/self/task").ok()?.find_map(|t| {
            let dir = t.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            (comm.trim() == name).then_some(())?;
            // Field 19 of stat; the name (field 2) may hold spaces.
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let after_name = stat.rsplit_once(')')?.1;
            after_name.split_whitespace().nth(16)?.parse().ok()
        })
    }

    #[test]
    fn moved_ends_are_saved_by_a_thread_at_the_lowest_priority() {
        let dir = std::env::temp_dir().join(format!("lb-lease-bg-{}", std::process::id()));
        let file = LeaseFile::new(&dir, "d1");
        let until = Instant::now() + Duration::from_secs(5);
        let lease = Arc::new(Mutex::new(lease(until)));
        let saver = BackgroundSave::start(file.clone(), lease.clone()).unwrap();
        saver.ask();
        saver.ask();
        let t = Instant::now();
        while file.load().unwrap().is_none() {
            assert!(t.elapsed() < Duration::from_secs(10), "not saved");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            file.load().unwrap().unwrap().added,
            lease.lock().unwrap().added
        );
        assert_eq!(nice_of("lease-save"), Some(i64::from(BACKGROUND_NICE)));
        drop(saver);
        let t = Instant::now();
        while nice_of("lease-save").is_some() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the thread outlived its saver"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        file.remove().unwrap();
        let _ = std::fs::remove_dir(&dir);
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
