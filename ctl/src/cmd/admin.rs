//! `lbctl admin`: named admin certificates from the controllers' CA.

use lb_proto::client::Controller;
use lb_proto::pb;
use lb_proto::pb::cluster_admin_client::ClusterAdminClient;

use crate::cli::*;
use crate::{api, output};

pub(crate) async fn admin(ctl: &mut Controller, out: Output, cmd: AdminCmd) -> anyhow::Result<()> {
    let list = match cmd {
        AdminCmd::Create {
            name,
            out: dir,
            days,
        } => {
            lb_proto::convert::check_name("NAME", &name)?;
            // The key never leaves this machine: the leader signs a request.
            let (csr_pem, key_pem) = lb_proto::pki::request()?;
            let resp = call!(
                ctl,
                ClusterAdminClient,
                issue_admin,
                pb::IssueAdminRequest {
                    name: name.clone(),
                    csr_pem,
                    ttl: Some(prost_types::Duration {
                        seconds: i64::try_from(days.saturating_mul(24 * 3600)).unwrap_or(i64::MAX),
                        nanos: 0,
                    }),
                }
            )?;
            lb_proto::pki::write_pem(&dir.join("ca.pem"), &resp.ca_pem, false)?;
            lb_proto::pki::write_pem(&dir.join("admin.pem"), &resp.cert_pem, false)?;
            lb_proto::pki::write_pem(&dir.join("admin.key"), &key_pem, true)?;
            if out == Output::Json {
                return output::json(&resp.info.unwrap_or_default(), "lb.v1.AdminInfo");
            }
            outln!(
                "admin {name}: {}/admin.pem and admin.key, valid {days} days; use it with --credentials {} (or LB_CREDENTIALS); `lbctl admin revoke {name}` ends it",
                dir.display(),
                dir.display()
            );
            return Ok(());
        }
        AdminCmd::List => call!(
            ctl,
            ClusterAdminClient,
            list_admins,
            pb::ListAdminsRequest {}
        )?,
        AdminCmd::Revoke { name } => {
            let resp = call!(
                ctl,
                ClusterAdminClient,
                revoke_admin,
                pb::RevokeAdminRequest { name: name.clone() }
            )?;
            if out == Output::Table {
                outln!("admin {name} revoked: its certificates issued so far are refused, its open streams closed");
            }
            resp
        }
    };
    if out == Output::Json {
        return output::json(&list, "lb.v1.ListAdminsResponse");
    }
    output::lists::admins(&list);
    Ok(())
}
