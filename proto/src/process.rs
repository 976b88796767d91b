//! What every lbfabric process does the same way: stop on SIGINT or
//! SIGTERM, read `--labels key=value` flags, the TLS flags of a client of
//! the controllers, and raise its scheduling priority (`--nice`).

use std::collections::BTreeMap;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a SIGTERM handler, SIGINT still stops the process.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

/// `key=value` items (as given to `--labels`), checked as labels are.
pub fn label_flags(
    flag: &str,
    items: &[String],
) -> Result<BTreeMap<String, String>, crate::FieldError> {
    let mut labels = BTreeMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            return Err(crate::FieldError::new(
                flag,
                format!("{item:?}: expected key=value"),
            ));
        };
        labels.insert(k.to_string(), v.to_string());
    }
    crate::convert::labels(flag, labels)
}

/// Milliseconds in `2s`, `500ms`, `1.5s`, `1m`, `24h`, `30d` (a leading `-`
/// gives a negative number, for the API to refuse by name).
pub fn duration_ms(text: &str) -> Result<i64, String> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let units = [
        ("ms", 1.0),
        ("s", 1_000.0),
        ("m", 60_000.0),
        ("h", 3_600_000.0),
        ("d", 86_400_000.0),
    ];
    let (value, scale_ms) = units
        .iter()
        .find_map(|(unit, scale)| body.strip_suffix(unit).map(|v| (v, *scale)))
        .ok_or_else(|| format!("duration {text:?} needs a unit: ms, s, m, h or d"))?;
    let value: f64 = value
        .parse()
        .map_err(|_| format!("duration {text:?} is not a number"))?;
    if !value.is_finite() || value * scale_ms > i64::MAX as f64 / 2.0 {
        return Err(format!("duration {text:?} is too long"));
    }
    let ms = (value * scale_ms).round() as i64;
    Ok(if negative { -ms } else { ms })
}

/// A positive duration flag (`30d`, `10s`), for clap.
pub fn duration_flag(text: &str) -> Result<std::time::Duration, String> {
    match duration_ms(text)? {
        ms if ms > 0 => Ok(std::time::Duration::from_millis(ms.unsigned_abs())),
        _ => Err(format!("duration {text:?} must be positive")),
    }
}

/// How a client reaches the controllers over TLS: the fabric's CA, and the
/// certificate and key that say who it is. Without `--ca`, plaintext.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFlags {
    /// The fabric's CA certificate (PEM; a controller's <data-dir>/pki/ca.pem).
    /// Turns on TLS to the controllers.
    #[arg(long, env = "LB_CA", global = true)]
    pub ca: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), issued by that CA.
    #[arg(long, env = "LB_CERT", global = true, requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// The key of --cert (PEM).
    #[arg(long, env = "LB_KEY", global = true, requires = "cert")]
    pub key: Option<std::path::PathBuf>,
}

impl TlsFlags {
    /// tonic's client settings, or `None` for plaintext.
    pub fn client_config(
        &self,
    ) -> Result<Option<tonic::transport::ClientTlsConfig>, crate::pki::PkiError> {
        let Some(ca) = &self.ca else {
            if self.cert.is_some() {
                return Err(crate::pki::PkiError::Invalid(
                    "--cert needs --ca (the CA that issued the controllers' certificates)".into(),
                ));
            }
            return Ok(None);
        };
        let creds =
            crate::pki::Credentials::from_files(ca, self.cert.as_deref(), self.key.as_deref())?;
        Ok(Some(creds.client_config()))
    }
}

/// The `--nice` the lease-keeping daemons (controllers, directors) run at
/// unless told otherwise: a lease a few hundred milliseconds long must not
/// lapse because ordinary work (nice 0) kept the CPUs busy. keepalived
/// answers the same threat with `vrrp_priority`.
pub const DAEMON_NICE: i32 = -10;

/// Sets the nice value of every thread of this process (on Linux, nice is
/// per thread; threads started later inherit it from the thread that
/// starts them). Returns how many threads were changed; fails without
/// CAP_SYS_NICE when lowering it, which callers report and carry on from.
pub fn renice(nice: i32) -> std::io::Result<usize> {
    let mut changed = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let name = task?.file_name();
        let Some(tid) = name.to_str().and_then(|t| t.parse::<i32>().ok()) else {
            continue;
        };
        let Some(pid) = rustix::process::Pid::from_raw(tid) else {
            continue;
        };
        match rustix::process::setpriority_process(Some(pid), nice) {
            Ok(()) => changed += 1,
            // A thread that ended meanwhile.
            Err(rustix::io::Errno::SRCH) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(changed)
}

/// Sets the nice value of the calling thread alone (threads it starts
/// later inherit it). Raising it needs no privilege.
pub fn renice_this_thread(nice: i32) -> std::io::Result<()> {
    // On Linux, `who = 0` names the calling thread, not the whole process.
    rustix::process::setpriority_process(None, nice).map_err(Into::into)
}

/// Opts this process out of transparent huge pages (`PR_SET_THP_DISABLE`,
/// which the processes it starts inherit). With 10,000 services the
/// controller's and the director's heaps are ~100 MiB each, and where THP
/// is `always` khugepaged collapses them into huge pages at times of its
/// own, holding the process's memory map while it copies. In the VM,
/// changes ran up to 2.4× slower (40 ms against 15) in the second in which
/// khugepaged used 120 ms of CPU. A control plane gains nothing from huge
/// pages worth that; Redis and many databases advise against THP for the
/// same reason.
pub fn no_huge_pages() {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(error = %e, "could not opt out of transparent huge pages");
    }
}

/// [`renice`], logged: a refusal is a warning, not a reason to stop.
pub fn prioritize(nice: i32) {
    match renice(nice) {
        Ok(threads) => tracing::debug!(nice, threads, "scheduling priority set"),
        Err(e) => tracing::warn!(
            nice,
            error = %e,
            "could not set the scheduling priority (lowering the nice value needs CAP_SYS_NICE): \
             on a busy host, VIP leases may lapse"
        ),
    }
}

/// How the daemons write their log: `text` (journald, a terminal) or
/// `json`, one object per line for a log collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Starts the log on standard output: `RUST_LOG`, else `default`, in
/// `format`. Colours only on a terminal: under systemd the journal keeps
/// the lines, and escape codes read badly there.
pub fn init_logging(format: LogFormat, default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let log = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => log.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => log.json().flatten_event(true).init(),
    }
}

/// Tells systemd the daemon is ready (`Type=notify`), with a status line,
/// when systemd started it (`NOTIFY_SOCKET`); otherwise does nothing. Once
/// per process: the first call counts.
pub fn notify_ready(status: &str) {
    static READY: std::sync::Once = std::sync::Once::new();
    READY.call_once(|| {
        let states = [
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ];
        if let Err(e) = sd_notify::notify(&states) {
            tracing::warn!(error = %e, "telling systemd the daemon is ready");
        }
    });
}

/// Writes `addr` to `path` for whoever waits for a port-0 listener's
/// address: written then renamed, so a watcher never reads half of it.
pub fn write_addr_file(path: &std::path::Path, addr: std::net::SocketAddr) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| std::io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

/// `PROGRAM --man-page` prints the program's manual page (roff, from its
/// clap definition) and exits; the Debian package is built with them
/// (`packaging/build-deb.sh`). Looked at before the flags are parsed: a
/// daemon's required flags would refuse it.
pub fn man_page_if_asked<A: clap::CommandFactory>() {
    if std::env::args().nth(1).as_deref() != Some("--man-page") {
        return;
    }
    let mut out = std::io::stdout().lock();
    let code = match clap_mangen::Man::new(A::command()).render(&mut out) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("writing the manual page: {e}");
            1
        }
    };
    std::process::exit(code);
}
