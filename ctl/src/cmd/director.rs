//! `lbctl director list|stats`: the leader's view of the directors.

use anyhow::bail;
use lb_proto::client::Controller;
use lb_proto::pb;
use lb_proto::pb::service_admin_client::ServiceAdminClient;

use crate::cli::*;
use crate::{api, output};

pub(crate) async fn list_directors(
    ctl: &mut Controller,
) -> anyhow::Result<pb::ListDirectorsResponse> {
    call!(
        ctl,
        ServiceAdminClient,
        list_directors,
        pb::ListDirectorsRequest {}
    )
}

pub(crate) async fn directors(ctl: &mut Controller, out: Output) -> anyhow::Result<()> {
    let resp = list_directors(ctl).await?;
    if out == Output::Json {
        return output::json(&resp, "lb.v1.ListDirectorsResponse");
    }
    output::fabric::directors(&resp);
    Ok(())
}

/// `lbctl director stats`: per director, one row per service and one per realserver.
pub(crate) async fn director_stats(
    ctl: &mut Controller,
    out: Output,
    node: Option<&str>,
    rate: bool,
) -> anyhow::Result<()> {
    let mut resp = list_directors(ctl).await?;
    if let Some(node) = node {
        resp.directors.retain(|d| d.node_id == node);
        if resp.directors.is_empty() {
            bail!("director {node} not found (see lbctl director list)");
        }
    }
    if out == Output::Json {
        return output::json(&resp, "lb.v1.ListDirectorsResponse");
    }
    output::fabric::director_stats(&resp, rate);
    Ok(())
}
