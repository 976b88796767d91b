//! `lbctl node revoke`.

use lb_proto::client::Controller;
use lb_proto::pb;
use lb_proto::pb::service_admin_client::ServiceAdminClient;

use crate::cli::*;
use crate::{api, output};

/// `lbctl node revoke NODE`.
pub(crate) async fn revoke(ctl: &mut Controller, out: Output, node: String) -> anyhow::Result<()> {
    let resp = call!(
        ctl,
        ServiceAdminClient,
        revoke_node,
        pb::RevokeNodeRequest {
            node_id: node.clone()
        }
    )?;
    if out == Output::Json {
        return output::json(&resp, "lb.v1.RevokeNodeResponse");
    }
    outln!(
        "node {node} revoked: its streams are closed and its certificates refused; `lbctl token create --role ROLE --node {node}` re-admits it (revoked: {})",
        resp.revoked.join(", ")
    );
    Ok(())
}
