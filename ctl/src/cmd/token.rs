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
                from_now(info.expires_at_ms),
                resp.ca_sha256
            );
            println!("{}", resp.token);
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
                println!("join token {id} deleted");
            }
            resp
        }
    };
    if out == Output::Json {
        return output::json(&list, "lb.v1.ListJoinTokensResponse");
    }
    let rows: Vec<Vec<String>> = list
        .tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.role.clone(),
                if t.node_id.is_empty() {
                    "*".into()
                } else {
                    t.node_id.clone()
                },
                t.uses_left.to_string(),
                from_now(t.expires_at_ms),
                t.joined.join(","),
            ]
        })
        .collect();
    output::table(
        &["ID", "ROLE", "NODE", "USES LEFT", "EXPIRES", "JOINED"],
        &rows,
    );
    Ok(())
}

/// "in 59m" / "3m ago" for a Unix-milliseconds time.
fn from_now(at_ms: u64) -> String {
    let now = lb_proto::pki::unix_ms(std::time::SystemTime::now());
    let span = |ms: u64| match ms / 1000 {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    if at_ms >= now {
        format!("in {}", span(at_ms - now))
    } else {
        format!("{} ago", span(now - at_ms))
    }
}
