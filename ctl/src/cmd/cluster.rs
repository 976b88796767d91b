//! `lbctl cluster …`: Raft membership.

use lb_proto::client::Controller;
use lb_proto::pb;
use lb_proto::pb::cluster_admin_client::ClusterAdminClient;

use crate::cli::*;
use crate::{api, output};

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
    };
    if out == Output::Json {
        return output::json(&status, "lb.v1.ClusterStatus");
    }
    let leader = if status.has_leader {
        format!("leader {} at {}", status.leader_id, status.leader_address)
    } else {
        "no leader".to_string()
    };
    println!(
        "node {} is {} (term {}), {leader}",
        status.node_id, status.state, status.term
    );
    println!(
        "revision {}, log last {} applied {} snapshot {} purged {}",
        status.revision,
        status.last_log_index,
        status.last_applied_index,
        status.snapshot_index,
        status.purged_index
    );
    let rows: Vec<Vec<String>> = status
        .members
        .iter()
        .map(|m| vec![m.node_id.to_string(), m.address.clone(), m.role.clone()])
        .collect();
    output::table(&["ID", "ADDRESS", "ROLE"], &rows);
    Ok(())
}
