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
    output::lists::cluster(&status);
    Ok(())
}
