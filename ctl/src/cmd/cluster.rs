//! `lbctl cluster …`: Raft membership.

use lb_proto::client::Controller;
use lb_proto::pb;
use lb_proto::pb::cluster_admin_client::ClusterAdminClient;

use crate::cli::*;
use crate::{api, output};

/// `lbctl cluster backup FILE`: the leader's chunks, checked whole, then
/// written to FILE at once (0600).
async fn backup(ctl: &mut Controller, file: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use tokio_stream::StreamExt;
    let mut chunks = call!(ctl, ClusterAdminClient, backup, pb::BackupRequest {})?;
    let (mut bytes, mut services) = (Vec::new(), 0);
    while let Some(chunk) = chunks.next().await {
        let chunk = api(chunk)?;
        if bytes.is_empty() {
            bytes.reserve(usize::try_from(chunk.total_bytes).unwrap_or(0));
            services = chunk.services;
        }
        bytes.extend_from_slice(&chunk.data);
    }
    let backup = lb_proto::backup::Backup::from_bytes(&bytes)
        .map_err(|e| anyhow::anyhow!("the backup received: {e}"))?;
    let tmp = file.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    };
    write().map_err(|e| anyhow::anyhow!("writing {}: {e}", file.display()))?;
    outln!(
        "backup of revision {}: {services} services, {} bytes, sha256 {} in {} (it holds the CA key: keep it as you keep ca.key)",
        backup.revision,
        bytes.len(),
        lb_proto::pki::sha256_hex(&backup.state),
        file.display()
    );
    Ok(())
}

pub(crate) async fn cluster(
    ctl: &mut Controller,
    out: Output,
    cmd: ClusterCmd,
) -> anyhow::Result<()> {
    let status = match cmd {
        ClusterCmd::Status => call!(ctl, ClusterAdminClient, status, pb::ClusterStatusRequest {})?,
        ClusterCmd::AddLearner { node_id, address } => call!(
            ctl,
            ClusterAdminClient,
            add_learner,
            pb::AddLearnerRequest { node_id, address }
        )?,
        ClusterCmd::Promote { node_id } => call!(
            ctl,
            ClusterAdminClient,
            promote,
            pb::PromoteRequest { node_id }
        )?,
        ClusterCmd::Remove { node_id } => call!(
            ctl,
            ClusterAdminClient,
            remove,
            pb::RemoveMemberRequest { node_id }
        )?,
        ClusterCmd::Backup { file } => return backup(ctl, &file).await,
    };
    if out == Output::Json {
        return output::json(&status, "lb.v1.ClusterStatus");
    }
    output::lists::cluster(&status);
    Ok(())
}
