//! A director run by systemd from the installed package's unit (the VM test
//! bed booted with `lb-vm run --systemd`), in its namespace like the others.

use std::path::Path;

use super::{director_metrics, Fabric, VM_DIRECTOR_HEARTBEAT};
use crate::agent_tls;
use crate::vm::systemd::{install_unit, systemctl};
use lb_proto::pki::Role;

pub const DIRECTOR_UNIT: &str = "lbfabric-director.service";

impl Fabric {
    /// Starts director `node` as `lbfabric-director.service` of the package
    /// installed at `root`: its settings from the package's
    /// /etc/default/lbfabric-director (the lease file in /run/lbfabric)
    /// and from a second environment file with the fabric's (controllers,
    /// node id, certificate, the VM's timers), the process in `node`'s
    /// namespace (`NetworkNamespacePath=`). Returns once systemd has the
    /// unit ready: the director's first answer from the controllers.
    pub fn start_director_unit(&self, root: &Path, node: &str) -> anyhow::Result<()> {
        // The unit has a private /tmp: its files go under /run.
        let files = Path::new("/run/lbfabric-test").join(node);
        std::fs::create_dir_all(&files)?;
        let mut env = vec![
            format!("LB_CONTROLLER={}", self.addrs),
            format!("LB_NODE_ID={node}"),
            "LB_INTERFACE=eth0".to_string(),
            "LB_SYNC_INTERFACE=eth0".to_string(),
            "LB_RESYNC_MS=1000".to_string(),
            format!("LB_METRICS_LISTEN={}", director_metrics(node)?),
            "NO_COLOR=1".to_string(),
        ];
        for pair in VM_DIRECTOR_HEARTBEAT.chunks(2) {
            let name = pair[0].trim_start_matches("--").replace('-', "_");
            env.push(format!("LB_{}={}", name.to_uppercase(), pair[1]));
        }
        let tls = agent_tls(&self.addrs, Role::Director, node, &[])?;
        for pair in tls.chunks(2) {
            let from = Path::new(&pair[1]);
            let name = from.file_name().unwrap_or_default();
            std::fs::copy(from, files.join(name))?;
            let var = pair[0].trim_start_matches("--").to_uppercase();
            env.push(format!("LB_{var}={}", files.join(name).display()));
        }
        let env_file = files.join("env");
        std::fs::write(&env_file, env.join("\n") + "\n")?;
        install_unit(
            root,
            DIRECTOR_UNIT,
            "lb-director",
            &[
                format!(
                    "EnvironmentFile={}",
                    root.join("etc/default/lbfabric-director").display()
                ),
                format!("EnvironmentFile={}", env_file.display()),
                format!("NetworkNamespacePath=/run/netns/{}", self.t.ns(node)),
            ],
        )?;
        systemctl(&["start", DIRECTOR_UNIT]).map(drop)
    }
}
