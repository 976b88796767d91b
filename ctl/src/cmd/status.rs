//! `lbctl status`: the `ipvsadm -Ln` view across the fabric, with owners.

use lb_proto::client::Controller;
use lb_proto::pb;
use lb_proto::pb::service_admin_client::ServiceAdminClient;

use crate::cli::*;
use crate::{api, output};

/// `lbctl status`: the ipvsadm-like view of every service, then the VIPs.
pub(crate) async fn status(
    ctl: &mut Controller,
    out: Output,
    stats: bool,
    rate: bool,
) -> anyhow::Result<()> {
    let resp = call!(ctl, ServiceAdminClient, get_status, pb::GetStatusRequest {})?;
    if out == Output::Json {
        return output::json(&resp, "lb.v1.FabricStatus");
    }
    output::fabric::status(&resp, stats, rate);
    Ok(())
}
