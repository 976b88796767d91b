//! `lbctl realserver add|list|drain|enable|remove`.

use lb_proto::client::Controller;
use lb_proto::pb;
use lb_proto::pb::service_admin_client::ServiceAdminClient;

use super::service::show_service;
use crate::cli::*;
use crate::{api, output, spec};

pub(crate) async fn realserver(
    ctl: &mut Controller,
    out: Output,
    cmd: RealserverCmd,
) -> anyhow::Result<()> {
    match cmd {
        RealserverCmd::Add {
            service,
            address,
            fields,
        } => {
            let (addr, port) = spec::realserver(&address)?;
            let rs = pb::RealServer {
                address: addr,
                port,
                weight: fields.weight,
                upper_threshold: fields.upper_threshold.unwrap_or(0),
                lower_threshold: fields.lower_threshold.unwrap_or(0),
                admin_state: fields.state.clone().unwrap_or_default(),
            };
            let resp = call!(
                ctl,
                ServiceAdminClient,
                add_real_server,
                pb::AddRealServerRequest {
                    service,
                    realserver: Some(rs)
                }
            )?;
            show_service(out, &resp, "updated")
        }
        RealserverCmd::Update {
            service,
            address,
            fields,
        } => {
            let (addr, port) = spec::realserver(&address)?;
            let req = pb::UpdateRealServerRequest {
                service,
                address: addr,
                port,
                weight: fields.weight,
                upper_threshold: fields.upper_threshold,
                lower_threshold: fields.lower_threshold,
                admin_state: fields.state,
            };
            let resp = call!(ctl, ServiceAdminClient, update_real_server, req)?;
            show_service(out, &resp, "updated")
        }
        RealserverCmd::Remove { service, address } => {
            let (addr, port) = spec::realserver(&address)?;
            let req = pb::RemoveRealServerRequest {
                service,
                address: addr,
                port,
            };
            let resp = call!(ctl, ServiceAdminClient, remove_real_server, req)?;
            show_service(out, &resp, "updated")
        }
        RealserverCmd::Drain { node } => set_drain(ctl, node, true).await,
        RealserverCmd::Enable { node } => set_drain(ctl, node, false).await,
        RealserverCmd::List { service, stale } => {
            let resp = super::paged::realservers(ctl, service.unwrap_or_default(), stale).await?;
            if out == Output::Json {
                return output::json(&resp, "lb.v1.ListRealServersResponse");
            }
            output::lists::realservers(&resp);
            Ok(())
        }
    }
}

async fn set_drain(ctl: &mut Controller, node_id: String, drain: bool) -> anyhow::Result<()> {
    let req = pb::SetAgentDrainRequest {
        node_id: node_id.clone(),
        drain,
    };
    let resp = call!(ctl, ServiceAdminClient, set_agent_drain, req)?;
    let what = if drain {
        "draining (weight 0)"
    } else {
        "enabled"
    };
    outln!(
        "realserver agent {node_id} {what} (revision {})",
        resp.revision
    );
    Ok(())
}
