//! The peer: keepalived 2.2 on d1 and d2 of the same topology, faced with
//! the same faults as the fabric — the master's host lost, the master cut
//! off from its peer (VRRP is keepalived's control plane: its adverts are
//! dropped, both ways), the master stopped with SIGTERM — and watched by
//! the same client.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use lb_testkit::fabric::{observe, Fabric, DR_VIP};
use lb_testkit::proc::Proc;

/// keepalived's VRRP timers to compare with: (what, vrrp_version, advert_int).
pub(crate) const SETS: [(&str, u8, &str); 2] = [
    ("keepalived 2.2, VRRPv2, advert_int 1", 2, "1"),
    ("keepalived 2.2, VRRPv3, advert_int 0.1", 3, "0.1"),
];

/// A keepalived.conf for director `name` (the same DR service on VIP
/// 10.0.0.100 as the fabric's, the same realservers; VRRP alone when
/// `ipvs` is false): both start BACKUP with nopreempt, `name` with
/// `priority`.
fn conf(name: &str, priority: u8, version: u8, advert: &str, ipvs: bool) -> String {
    let rs = |ip: &str| {
        format!(
            "  real_server {ip} 80 {{\n    weight 1\n    TCP_CHECK {{\n      connect_timeout 1\n    }}\n  }}\n"
        )
    };
    let vrrp = format!(
        "global_defs {{\n  router_id {name}\n  vrrp_version {version}\n}}\n\
         vrrp_instance VI_1 {{\n  state BACKUP\n  nopreempt\n  interface eth0\n  virtual_router_id 51\n  \
         priority {priority}\n  advert_int {advert}\n  virtual_ipaddress {{\n    {DR_VIP}/32 dev eth0\n  }}\n}}\n"
    );
    if !ipvs {
        return vrrp;
    }
    format!(
        "{vrrp}virtual_server {DR_VIP} 80 {{\n  delay_loop 1\n  lb_algo rr\n  lb_kind DR\n  protocol TCP\n{}{}}}\n",
        rs("10.0.0.21"),
        rs("10.0.0.22")
    )
}

/// SIGSTOP / SIGCONT / SIGKILL to keepalived's whole process group (it
/// forks a VRRP and a checker child).
fn signal_group(pgid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{sig}"), "--", &format!("-{pgid}")])
        .status();
}

/// keepalived running on d1 and d2 (killed, with its children, when dropped).
pub(crate) struct Keepalived<'a> {
    f: &'a Fabric,
    version: u8,
    advert: &'static str,
    /// Each director's keepalived, its own process group's leader.
    procs: BTreeMap<&'static str, Proc>,
}

impl Drop for Keepalived<'_> {
    fn drop(&mut self) {
        for p in self.procs.values() {
            signal_group(p.0.id(), "CONT");
            signal_group(p.0.id(), "KILL");
        }
    }
}

impl<'a> Keepalived<'a> {
    /// keepalived on d1 (priority 150, the master: it starts first) and d2
    /// (priority 100).
    pub(crate) async fn start(
        f: &'a Fabric,
        (version, advert): (u8, &'static str),
    ) -> anyhow::Result<Keepalived<'a>> {
        let mut k = Keepalived {
            f,
            version,
            advert,
            procs: BTreeMap::new(),
        };
        k.spawn("d1")?;
        f.wait_held("d1", &[DR_VIP], Duration::from_secs(30))
            .await?;
        k.spawn("d2")?;
        Ok(k)
    }

    /// Starts (or starts again) `name`'s keepalived, in its own process group.
    fn spawn(&mut self, name: &'static str) -> anyhow::Result<()> {
        let keepalived = lb_testkit::which("keepalived")
            .ok_or_else(|| anyhow::anyhow!("keepalived is not installed (scripts/setup.sh)"))?;
        let priority = if name == "d1" { 150 } else { 100 };
        let dir = self.f.dir.path().join(format!("keepalived-{name}"));
        std::fs::create_dir_all(&dir)?;
        let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
        std::fs::write(
            path("keepalived.conf"),
            conf(name, priority, self.version, self.advert, self.f.ipvs),
        )?;
        let child = self
            .f
            .t
            .command(name, &keepalived)?
            .args(["-n", "-l", "-f", &path("keepalived.conf")])
            .args(["-p", &path("k.pid"), "-r", &path("v.pid")])
            .args(["-c", &path("c.pid")])
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        self.procs.insert(name, Proc(child));
        Ok(())
    }

    fn pgid(&self, name: &str) -> u32 {
        self.procs.get(name).map_or(0, |p| p.0.id())
    }

    /// After a settling time: (master, backup), and a warning when both
    /// hold the VIP (adverts lost under load would make a failover look free).
    async fn roles(&self, round: usize) -> (&'static str, &'static str) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (master, backup) = if self.f.held("d1").contains(&DR_VIP) {
            ("d1", "d2")
        } else {
            ("d2", "d1")
        };
        if self.f.held(backup).contains(&DR_VIP) {
            println!("keepalived round {round}: {backup} also held {DR_VIP} before the fault (two masters)");
        }
        (master, backup)
    }

    /// The master's host lost (link down, processes frozen), `rounds` times.
    pub(crate) async fn host_loss(
        &mut self,
        (rounds, probe_secs, every_ms): (usize, u64, u64),
    ) -> anyhow::Result<Vec<Duration>> {
        let f = self.f;
        let mut gaps = Vec::new();
        for round in 1..=rounds {
            let (master, backup) = self.roles(round).await;
            let probe = f.probe(&format!("http://{DR_VIP}/"), probe_secs, every_ms)?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            f.t.sh(master, "ip link set eth0 down")?;
            signal_group(self.pgid(master), "STOP");
            f.wait_held(backup, &[DR_VIP], Duration::from_secs(probe_secs - 2))
                .await?;
            let seen = probe.finish();
            println!(
                "keepalived host loss {round} ({master} -> {backup}): {}",
                seen.summary()
            );
            anyhow::ensure!(seen.recovered(), "keepalived: clients not served again");
            gaps.push(seen.gap());
            signal_group(self.pgid(master), "CONT");
            f.t.sh(master, "ip link set eth0 up")?;
        }
        Ok(gaps)
    }

    /// The master cut off from its peer (VRRP dropped both ways), then
    /// healed, `rounds` times: the client's gap, and how long both held
    /// the VIP (keepalived has no fence: the backup takes over while the
    /// master still answers).
    pub(crate) async fn partition(
        &mut self,
        rounds: usize,
        probe_secs: u64,
    ) -> anyhow::Result<Vec<Duration>> {
        let f = self.f;
        let mut gaps = Vec::new();
        for round in 1..=rounds {
            let (master, backup) = self.roles(round).await;
            f.prepare_cut(master)?;
            let (w1, w2) = (
                f.vipwatch(master, DR_VIP, probe_secs)?,
                f.vipwatch(backup, DR_VIP, probe_secs)?,
            );
            let probe = f.probe(&format!("http://{DR_VIP}/"), probe_secs, 10)?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            f.t.sh(
                master,
                "nft add rule inet cut in ip protocol vrrp drop; nft add rule inet cut out ip protocol vrrp drop",
            )?;
            let (seen, h1, h2) =
                tokio::task::spawn_blocking(move || (probe.finish(), w1.finish(), w2.finish()))
                    .await?;
            f.heal(master)?;
            let both: u128 = observe::overlaps(&h1, &h2).iter().map(|(s, e)| e - s).sum();
            println!(
                "keepalived partition {round} ({master} cut from {backup}): {}; both held the VIP for {both} ms",
                seen.summary()
            );
            gaps.push(seen.gap());
            // Back to one master before the next round.
            lb_testkit::wait_for(Duration::from_secs(15), "one keepalived master", || async {
                let n = ["d1", "d2"]
                    .iter()
                    .filter(|d| f.held(d).contains(&DR_VIP))
                    .count();
                (n == 1).then_some(())
            })
            .await?;
        }
        Ok(gaps)
    }

    /// SIGTERM of the master (keepalived sends a priority-0 advert and
    /// drops the VIP), then started again, `rounds` times.
    pub(crate) async fn sigterm(
        &mut self,
        rounds: usize,
        probe_secs: u64,
    ) -> anyhow::Result<Vec<Duration>> {
        let f = self.f;
        let mut gaps = Vec::new();
        for round in 1..=rounds {
            let (master, backup) = self.roles(round).await;
            let probe = f.probe(&format!("http://{DR_VIP}/"), probe_secs, 10)?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut stopped = self
                .procs
                .remove(master)
                .ok_or_else(|| anyhow::anyhow!("no keepalived on {master}"))?;
            lb_testkit::proc::signal(stopped.0.id(), "TERM");
            tokio::task::spawn_blocking(move || stopped.0.wait()).await??;
            let seen = tokio::task::spawn_blocking(move || probe.finish()).await?;
            println!(
                "keepalived SIGTERM {round} ({master} -> {backup}): {}",
                seen.summary()
            );
            anyhow::ensure!(
                seen.recovered(),
                "keepalived SIGTERM {round}: clients not served again"
            );
            gaps.push(seen.gap());
            self.spawn(master)?;
        }
        Ok(gaps)
    }
}
