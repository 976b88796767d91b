//! `lbctl service create|list|get|update|delete`.

use anyhow::{bail, Context};
use lb_proto::client::Controller;
use lb_proto::pb;
use lb_proto::pb::service_admin_client::ServiceAdminClient;

use crate::cli::*;
use crate::spec::apply_flags;
use crate::{api, output};

pub(crate) async fn service(
    ctl: &mut Controller,
    out: Output,
    cmd: ServiceCmd,
) -> anyhow::Result<()> {
    match cmd {
        ServiceCmd::Create { name, spec } => {
            if spec.vip.is_none() && spec.fwmark.is_none() {
                bail!("service create: give --vip ADDRESS:PORT[/PROTO] or --fwmark MARK");
            }
            let mut svc = pb::Service {
                name,
                ..Default::default()
            };
            apply_flags(&mut svc, &spec)?;
            let resp = call!(
                ctl,
                ServiceAdminClient,
                create_service,
                pb::CreateServiceRequest { service: Some(svc) }
            )?;
            show_service(out, &resp, "created")
        }
        ServiceCmd::List { stale } => {
            let resp = super::paged::services(ctl, stale).await?;
            if out == Output::Json {
                return output::json(&resp, "lb.v1.ListServicesResponse");
            }
            output::lists::services(&resp);
            Ok(())
        }
        ServiceCmd::Get { name, stale } => {
            let resp = call!(
                ctl,
                ServiceAdminClient,
                get_service,
                pb::GetServiceRequest {
                    name: name.clone(),
                    stale
                }
            )?;
            show_service(out, &resp, "")
        }
        ServiceCmd::Update { name, spec } => {
            let current = call!(
                ctl,
                ServiceAdminClient,
                get_service,
                pb::GetServiceRequest {
                    name: name.clone(),
                    stale: false
                }
            )?;
            let mut svc = current.service.context("controller returned no service")?;
            let expected = svc.mod_revision;
            apply_flags(&mut svc, &spec)?;
            let resp = call!(
                ctl,
                ServiceAdminClient,
                update_service,
                pb::UpdateServiceRequest {
                    service: Some(svc),
                    expected_mod_revision: expected
                }
            )?;
            show_service(out, &resp, "updated")
        }
        ServiceCmd::Delete { name } => {
            let resp = call!(
                ctl,
                ServiceAdminClient,
                delete_service,
                pb::DeleteServiceRequest { name: name.clone() }
            )?;
            match out {
                Output::Json => output::json(&resp, "lb.v1.DeleteServiceResponse"),
                Output::Table => {
                    outln!("service {name} deleted (revision {})", resp.revision);
                    Ok(())
                }
            }
        }
    }
}

pub(crate) fn show_service(
    out: Output,
    resp: &pb::ServiceResponse,
    verb: &str,
) -> anyhow::Result<()> {
    match out {
        Output::Json => output::json(resp, "lb.v1.ServiceResponse"),
        Output::Table => {
            let svc = resp
                .service
                .as_ref()
                .context("controller returned no service")?;
            if !verb.is_empty() {
                outln!("service {} {verb} (revision {})", svc.name, resp.revision);
            }
            output::service_detail(svc, resp.revision);
            Ok(())
        }
    }
}
