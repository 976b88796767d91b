//! `lbctl token create|list|delete`: join tokens.

use anyhow::Context;
use lb_proto::client::Controller;
use lb_proto::pb;
use lb_proto::pb::cluster_admin_client::ClusterAdminClient;

use crate::cli::*;
use crate::{api, output, spec};

/// `lbctl token create|list|delete`.
pub(crate) async fn token(ctl: &mut Controller, out: Output, cmd: TokenCmd) -> anyhow::Result<()> {
    let list = match cmd {
        TokenCmd::Create {
            role,
            node,
            ttl,
            uses,
        } => {
            let role = match role {
                AgentRole::Director => "director",
                AgentRole::Realserver => "realserver",
            };
            let resp = call!(
                ctl,
                ClusterAdminClient,
                create_join_token,
                pb::CreateJoinTokenRequest {
                    role: role.into(),
                    node_id: node.clone().unwrap_or_default(),
                    ttl: Some(spec::duration(&ttl).context("--ttl")?),
                    uses,
                }
            )?;
            if out == Output::Json {
                return output::json(&resp, "lb.v1.CreateJoinTokenResponse");
            }
            let info = resp.info.unwrap_or_default();
            let who = node.map_or_else(
                || "any new node id".to_string(),
                |n| format!("node {n} only"),
            );
            eprintln!(
                "join token {} for {role} agents ({who}), {} use(s), expires {}; pins CA sha256:{}",
                info.id,
                info.uses_left,
                output::lists::from_now(info.expires_at_ms),
                resp.ca_sha256
            );
            outln!("{}", resp.token);
            return Ok(());
        }
        TokenCmd::List => call!(
            ctl,
            ClusterAdminClient,
            list_join_tokens,
            pb::ListJoinTokensRequest {}
        )?,
        TokenCmd::Delete { id } => {
            let resp = call!(
                ctl,
                ClusterAdminClient,
                delete_join_token,
                pb::DeleteJoinTokenRequest { id: id.clone() }
            )?;
            if out == Output::Table {
                outln!("join token {id} deleted");
            }
            resp
        }
    };
    if out == Output::Json {
        return output::json(&list, "lb.v1.ListJoinTokensResponse");
    }
    output::lists::tokens(&list);
    Ok(())
}
