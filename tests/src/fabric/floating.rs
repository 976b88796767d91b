//! The fabric without IPVS, for the host's own kernel: the directors run
//! `--no-ipvs` and a proxy on each answers on the VIP (see
//! `tests/tests/it/floating.rs`), plus the partition helpers both kinds of
//! fabric use.

use std::time::Duration;

use super::{Fabric, DR_VIP};
use crate::netns::Topology;
use crate::proc::Proc;
use crate::{start_cluster_at, wait_for, words};

impl Fabric {
    /// A fabric the host's own kernel can run, without IPVS: the
    /// controllers, the client and the directors' hosts d1 and d2 on the
    /// LAN, each host with an HTTP server answering its name on every
    /// address (so on the VIP while held, as a proxy behind keepalived's
    /// floating VIP would). Nothing runs on d1 and d2 yet.
    pub async fn floating_hosts(controller_flags: &[&str]) -> anyhow::Result<Fabric> {
        let mut t = Topology::new();
        t.add_bridge("lan")?;
        t.plug_caller("lan", "lbc0", "10.0.0.1/24")?;
        for (ns, ip) in [
            ("cl", "10.0.0.2/24"),
            ("d1", "10.0.0.11/24"),
            ("d2", "10.0.0.12/24"),
        ] {
            t.add_ns(ns)?;
            t.plug(ns, "lan", "eth0", ip)?;
        }
        let pids = t.http_backends(&[("d1", "d1", "0.0.0.0:80"), ("d2", "d2", "0.0.0.0:80")])?;
        let dir = tempfile::tempdir()?;
        let controllers = start_cluster_at("10.0.0.1", 3, dir.path(), controller_flags).await?;
        let addrs = crate::addresses(&controllers);
        Ok(Fabric {
            t,
            dir,
            controllers,
            addrs,
            failed: std::cell::Cell::new(false),
            web: vec![("d1", pids[0]), ("d2", pids[1])],
            nat_web: Vec::new(),
            agents: Vec::new(),
            ipvs: false,
            // Natively an answer takes a millisecond or two, tens on a busy
            // machine: a request unanswered for 300 ms met no director.
            probe_timeout: Duration::from_millis(300),
        })
    }

    /// [`Fabric::floating_hosts`] with one service, `web` on
    /// [`DR_VIP`]:80, and `lb-director --no-ipvs` on d1 and d2: d1 holds
    /// the VIP (it starts first), d2 is live.
    pub async fn floating(
        controller_flags: &[&str],
        director_flags: &[&str],
        service_flags: &[&str],
    ) -> anyhow::Result<(Fabric, Proc, Proc)> {
        let f = Fabric::floating_hosts(controller_flags).await?;
        let create = format!("service create web --vip {DR_VIP}:80/tcp --mode dr");
        f.lbctl(&[&words(&create), service_flags].concat())?;
        let d1 = f.start_director("d1", director_flags)?;
        f.wait_held("d1", &[DR_VIP], Duration::from_secs(30))
            .await?;
        let d2 = f.start_director("d2", director_flags)?;
        f.director_live("d2").await?;
        Ok((f, d1, d2))
    }

    /// Readies `ns` to be cut off from the controllers: a table and chains
    /// beforehand (loading nf_tables is slow in the VM), so that the cut is
    /// one quick rule change.
    pub fn prepare_cut(&self, ns: &str) -> anyhow::Result<()> {
        self.t.sh(
            ns,
            "nft add table inet cut
             nft add chain inet cut in '{ type filter hook input priority 0; }'
             nft add chain inet cut out '{ type filter hook output priority 0; }'",
        )?;
        Ok(())
    }

    /// Cuts `ns` off from the controllers, both ways ([`Fabric::prepare_cut`] first).
    pub fn cut(&self, ns: &str) -> anyhow::Result<()> {
        self.t.sh(
            ns,
            "nft add rule inet cut in ip saddr 10.0.0.1 drop; nft add rule inet cut out ip daddr 10.0.0.1 drop",
        )?;
        Ok(())
    }

    /// Ends the cut.
    pub fn heal(&self, ns: &str) -> anyhow::Result<()> {
        self.t.sh(ns, "nft delete table inet cut")?;
        Ok(())
    }

    /// Waits until the controllers list `node` as a live, connected director.
    pub async fn director_live(&self, node: &str) -> anyhow::Result<()> {
        let r = wait_for(Duration::from_secs(30), &format!("{node} live"), || async {
            let list = self.lbctl(&words("director list -o json")).ok()?;
            let v: serde_json::Value = serde_json::from_str(&list).ok()?;
            v["directors"]
                .as_array()?
                .iter()
                .any(|d| d["nodeId"] == node && d["live"] == true && d["connected"] == true)
                .then_some(())
        })
        .await;
        self.failed.set(r.is_err());
        r
    }
}
