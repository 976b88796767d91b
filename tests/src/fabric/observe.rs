//! Observers of what clients see: a client probing a URL every few ms
//! ([`Probe`] → [`Seen`]), a director's VIP sampled every 10 ms ([`Watch`]),
//! ARP on the client's wire ([`Capture`]), and readers of lbctl's JSON.

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::Duration;

use super::Fabric;
use crate::proc::{signal, Proc};

pub fn stdout_of(p: &mut Proc) -> String {
    let mut out = String::new();
    if let Some(mut s) = p.0.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    let _ = p.0.wait();
    out
}

/// Now, in milliseconds since the Unix epoch: the clock of every
/// observer's times (a probe's request starts, a watch's changes).
pub fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// A running `lb-http probe`; its output is read as it comes (a long probe
/// writes more than a pipe holds, and its request threads would block on a
/// full pipe and pile up).
pub struct Probe {
    probing: Proc,
    output: std::thread::JoinHandle<String>,
}

/// What the client saw: requests in start order.
pub struct Seen {
    /// (start, Ok(body) | Err(why)), start in ms since the epoch.
    pub requests: Vec<(u128, Result<String, String>)>,
}

impl Probe {
    pub(super) fn start(mut probing: Proc) -> Probe {
        let stdout = probing.0.stdout.take();
        let output = std::thread::spawn(move || {
            let mut out = String::new();
            if let Some(mut s) = stdout {
                let _ = s.read_to_string(&mut out);
            }
            out
        });
        Probe { probing, output }
    }

    pub fn finish(self) -> Seen {
        let Probe {
            mut probing,
            output,
        } = self;
        let _ = probing.0.wait();
        let out = output.join().unwrap_or_default();
        let mut requests: Vec<(u128, Result<String, String>)> = out
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ' ');
                let start = parts.next()?.parse().ok()?;
                let kind = parts.next()?;
                let rest = parts.next().unwrap_or_default().to_string();
                Some((start, if kind == "OK" { Ok(rest) } else { Err(rest) }))
            })
            .collect();
        requests.sort_by_key(|r| r.0);
        Seen { requests }
    }
}

impl Seen {
    pub fn failed(&self) -> Vec<&(u128, Result<String, String>)> {
        self.requests.iter().filter(|r| r.1.is_err()).collect()
    }

    /// The longest stretch without service: from the first failed request's
    /// start to the start of the next request that succeeded (or of the
    /// last request, when none did before the probe ended).
    pub fn gap(&self) -> Duration {
        let mut worst = 0;
        let mut down_since = None;
        for (start, r) in &self.requests {
            match (r, down_since) {
                (Err(_), None) => down_since = Some(*start),
                (Ok(_), Some(since)) => {
                    worst = worst.max(start - since);
                    down_since = None;
                }
                _ => {}
            }
        }
        if let (Some(since), Some((last, _))) = (down_since, self.requests.last()) {
            worst = worst.max(last - since);
        }
        Duration::from_millis(worst as u64)
    }

    pub fn recovered(&self) -> bool {
        matches!(self.requests.last(), Some((_, Ok(_))))
    }

    pub fn summary(&self) -> String {
        format!(
            "{} requests, {} failed, longest gap {:?}",
            self.requests.len(),
            self.failed().len(),
            self.gap()
        )
    }
}

pub struct Watch(pub(super) Proc);

/// What a [`Watch`] saw.
#[derive(Debug, Default)]
pub struct Watched {
    /// Intervals [from, to) in ms during which the address was held.
    pub held: Vec<(u128, u128)>,
    /// When the watcher itself did not run, as (noticed at, for ms): its
    /// host was frozen or starved, and so were the agents on it.
    pub stalls: Vec<(u128, u128)>,
}

impl Watched {
    /// True when every gap between the held intervals began while the
    /// watcher was stalled for at least `frozen_ms` (or within a second of
    /// it resuming): its host did not run for a lease, which ends the
    /// leases on it by design, so such a gap says nothing about the fabric.
    pub fn lapsed_while_frozen(&self, frozen_ms: u128) -> bool {
        let frozen: Vec<(u128, u128)> = self
            .stalls
            .iter()
            .filter(|(_, ms)| *ms >= frozen_ms)
            .map(|(resumed, ms)| (resumed - ms, resumed + 1000))
            .collect();
        let gaps: Vec<u128> = self.held.windows(2).map(|w| w[0].1).collect();
        !gaps.is_empty()
            && gaps
                .iter()
                .all(|g| frozen.iter().any(|(from, to)| (*from..=*to).contains(g)))
    }
}

impl Watch {
    /// Intervals [from, to] in ms during which the address was held: from
    /// the first sample that saw it to the last one that did.
    pub fn finish(self) -> Vec<(u128, u128)> {
        self.finish_all().held
    }

    /// The held intervals and the watcher's own stalls.
    pub fn finish_all(mut self) -> Watched {
        Watched::parse(&stdout_of(&mut self.0))
    }
}

impl Watched {
    /// `lb-http vipwatch`'s output.
    fn parse(out: &str) -> Watched {
        let mut seen = Watched::default();
        let mut since = None;
        for line in out.lines() {
            let Some((t, what)) = line.split_once(' ') else {
                continue;
            };
            let Ok(t) = t.parse::<u128>() else { continue };
            match what.split_once(' ') {
                Some(("stall", ms)) => {
                    if let Ok(ms) = ms.parse() {
                        seen.stalls.push((t, ms));
                    }
                }
                _ => {
                    let mut words = what.split_whitespace();
                    let state = words.next().unwrap_or_default();
                    // The last sample that still saw the old state.
                    let previous = words.next().and_then(|p| p.parse::<u128>().ok());
                    match state {
                        "1" => since = Some(t),
                        "0" | "end" => {
                            if let Some(s) = since.take() {
                                seen.held.push((s, previous.unwrap_or(t)));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        seen
    }
}

/// Overlaps between two sets of held intervals: both seen holding at
/// once. A watch's interval runs from the first sample that saw the
/// address to the last one that did, so an overlap is proof, whatever the
/// sampling period; a hand-over quicker than the period is not taken for
/// two holders.
pub fn overlaps(a: &[(u128, u128)], b: &[(u128, u128)]) -> Vec<(u128, u128)> {
    let mut out = Vec::new();
    for &(a0, a1) in a {
        for &(b0, b1) in b {
            let (s, e) = (a0.max(b0), a1.min(b1));
            if s <= e {
                out.push((s, e));
            }
        }
    }
    out
}

/// From `lbctl director stats NODE -o json`: a service's connections, and
/// each realserver's (`address:port`).
pub fn service_conns(json: &str, service: &str) -> Option<(u64, Vec<(String, u64)>)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    // proto3 JSON writes 64-bit counters as strings, and leaves zeros out.
    let conns = |c: &serde_json::Value| -> u64 {
        c["conns"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let stats = v["directors"][0]["stats"]["services"]
        .as_array()?
        .iter()
        .find(|s| s["service"] == service)?;
    let realservers = stats["realservers"]
        .as_array()?
        .iter()
        .map(|r| {
            let port = r["port"].as_u64().unwrap_or(0);
            (
                format!("{}:{port}", r["address"].as_str().unwrap_or_default()),
                conns(&r["counters"]),
            )
        })
        .collect();
    Some((conns(&stats["counters"]), realservers))
}

/// `requests` balanced across `backends` (rr: each answers, alternately).
pub fn assert_balanced(answers: &[String], backends: [&str; 2], what: &str) {
    assert!(
        answers.iter().all(|a| backends.contains(&a.as_str())),
        "{what}: {answers:?}"
    );
    for pair in answers.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "{what}: rr did not alternate: {answers:?}"
        );
    }
}

/// Captures ARP on the client's interface until dropped; `lines` reads what was seen.
pub struct Capture(Proc);

impl Capture {
    /// ARP on the client's wire.
    pub fn start(f: &Fabric) -> anyhow::Result<Capture> {
        Capture::of(f, &["arp"])
    }

    /// Neighbor advertisements on the client's wire, with their source MACs.
    pub fn neighbor_advertisements(f: &Fabric) -> anyhow::Result<Capture> {
        Capture::of(f, &["-e", "icmp6 and ip6[40] == 136"])
    }

    /// The client's wire, `filter` being tcpdump's last arguments.
    fn of(f: &Fabric, filter: &[&str]) -> anyhow::Result<Capture> {
        let tcpdump = crate::which("tcpdump").ok_or_else(|| anyhow::anyhow!("tcpdump"))?;
        let mut child =
            f.t.command("cl", &tcpdump)?
                .args(["-l", "-n", "-tt", "-i", "eth0"])
                .args(filter)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
        // tcpdump says "listening on …" on stderr once capturing.
        let mut err = BufReader::new(
            child
                .stderr
                .take()
                .ok_or_else(|| anyhow::anyhow!("stderr"))?,
        );
        let mut line = String::new();
        while !line.contains("listening on") {
            line.clear();
            anyhow::ensure!(err.read_line(&mut line)? > 0, "tcpdump did not start");
        }
        Ok(Capture(Proc(child)))
    }

    pub fn lines(mut self) -> Vec<String> {
        signal(self.0 .0.id(), "INT");
        stdout_of(&mut self.0).lines().map(String::from).collect()
    }
}

/// The ARP replies for `vip` in captured lines: (ms since the epoch, MAC).
pub fn arp_replies(lines: &[String], vip: &str) -> Vec<(u128, String)> {
    let reply = format!("Reply {vip} is-at ");
    lines
        .iter()
        .filter_map(|l| {
            let (_, rest) = l.split_once(&reply)?;
            let mac = rest.split([',', ' ']).next()?.to_string();
            let secs: f64 = l.split_whitespace().next()?.parse().ok()?;
            Some(((secs * 1000.0) as u128, mac))
        })
        .collect()
}

/// Asks for `vip`'s MAC from the client every 20 ms (busybox arping, done
/// at the first reply) until dropped, so that a [`Capture`] sees who answers.
pub struct ArpAsk {
    pub(super) _asking: Proc,
}

pub fn gratuitous_arps<'a>(lines: &'a [String], vip: &str) -> Vec<&'a String> {
    let who = format!("who-has {vip} tell {vip}");
    lines.iter().filter(|l| l.contains(&who)).collect()
}

/// A VIP-change hook (`lb-director --on-vip-change`) that records its
/// runs, one line each: `NODE VIP OLD NEW EPOCH`.
pub struct HookLog {
    _dir: tempfile::TempDir,
    program: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl HookLog {
    pub fn new() -> anyhow::Result<HookLog> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let (program, log) = (dir.path().join("hook"), dir.path().join("runs"));
        std::fs::write(
            &program,
            format!("#!/bin/sh\necho \"$LB_NODE_ID $*\" >> {}\n", log.display()),
        )?;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))?;
        Ok(HookLog {
            _dir: dir,
            program,
            log,
        })
    }

    /// The director flag that installs it.
    pub fn flag(&self) -> [String; 2] {
        [
            "--on-vip-change".to_string(),
            self.program.to_string_lossy().into_owned(),
        ]
    }

    /// The director flag that installs it as the quorum hook (its lines:
    /// `NODE SERVICE UP|DOWN VIP`).
    pub fn quorum_flag(&self) -> [String; 2] {
        [
            "--on-quorum-change".to_string(),
            self.program.to_string_lossy().into_owned(),
        ]
    }

    /// The runs so far, each split into its words.
    pub fn runs(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect()
    }
}

/// The epoch of `node`'s run for `vip` that left state `old`, if any.
pub fn hook_epoch(runs: &[Vec<String>], node: &str, vip: &str, old: &str) -> Option<u64> {
    runs.iter()
        .find(|r| r.len() == 5 && r[0] == node && r[1] == vip && r[2] == old)
        .and_then(|r| r[4].parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_over_quicker_than_the_sampling_is_not_two_holders() {
        // d2 last saw the VIP at 94 and no more at 104; d1 first at 97.
        let d2 = Watched::parse("0 1\n104 0 94\n300 end\n").held;
        let d1 = Watched::parse("0 0\n97 1 87\n300 end\n").held;
        assert_eq!((d2.clone(), d1.clone()), (vec![(0, 94)], vec![(97, 300)]));
        assert!(overlaps(&d1, &d2).is_empty());
        // Both seen holding at 94: two holders.
        let d1 = Watched::parse("0 0\n94 1 84\n300 end\n").held;
        assert_eq!(overlaps(&d1, &d2), vec![(94, 94)]);
    }

    #[test]
    fn only_a_gap_inside_a_long_stall_counts_as_the_host_s_freeze() {
        let watched = |held: &[(u128, u128)], stalls: &[(u128, u128)]| Watched {
            held: held.to_vec(),
            stalls: stalls.to_vec(),
        };
        // Frozen 6 s until 20,000: the lease ran out at 19,500, back at 19,700.
        let frozen = watched(&[(0, 19_500), (19_700, 30_000)], &[(20_000, 6_000)]);
        assert!(frozen.lapsed_while_frozen(5_500));
        // The same gap with only a short stall, or none: the fabric's doing.
        assert!(
            !watched(&[(0, 19_500), (19_700, 30_000)], &[(20_000, 900)]).lapsed_while_frozen(5_500)
        );
        assert!(!watched(&[(0, 19_500), (19_700, 30_000)], &[]).lapsed_while_frozen(5_500));
        // A gap long after the stall is not explained by it.
        assert!(
            !watched(&[(0, 25_000), (25_100, 30_000)], &[(20_000, 6_000)])
                .lapsed_while_frozen(5_500)
        );
        // No gap at all: nothing to explain.
        assert!(!watched(&[(0, 30_000)], &[(20_000, 6_000)]).lapsed_while_frozen(5_500));
    }
}
