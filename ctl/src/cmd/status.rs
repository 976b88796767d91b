//! `lbctl status`: the `ipvsadm -Ln` view across the fabric, with owners.

use lb_proto::client::Controller;

use crate::cli::*;
use crate::output;

/// `lbctl status`: the ipvsadm-like view of every service, then the VIPs.
/// `only`: a service name and a VIP to narrow it to (empty: all).
pub(crate) async fn status(
    ctl: &mut Controller,
    out: Output,
    (service, vip): (String, String),
    (stats, rate): (bool, bool),
) -> anyhow::Result<()> {
    let resp = super::paged::status(ctl, service, vip).await?;
    if out == Output::Json {
        return output::json(&resp, "lb.v1.FabricStatus");
    }
    output::fabric::status(&resp, stats, rate);
    Ok(())
}
