//! Named admin identities (`lbctl admin create|list|revoke`): the leader
//! signs an admin's certificate request with the replicated CA and records
//! the name; a revoked name's certificates issued until then are refused
//! by [`super::authz`], on open streams too (`WatchEvents` checks its
//! caller whenever the state changes).

use std::time::Duration;

use lb_proto::convert::check_name;
use lb_proto::pb;
use lb_proto::pki::{Identity, Role};
use tonic::{Request, Status};

use super::enrollment::{csr, field, now_ms, signer, ttl};
use crate::app::App;
use crate::error::status;
use crate::state::{AdminCert, Command};

const DEFAULT_ADMIN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
const MAX_ADMIN_TTL: Duration = Duration::from_secs(2 * 365 * 24 * 3600);

/// The admin making the call; `None` on a plaintext listener.
fn caller_name<T>(req: &Request<T>) -> Option<String> {
    super::authz::caller(req).map(|v| v.identity.name)
}

pub(super) async fn issue(
    app: &App,
    req: Request<pb::IssueAdminRequest>,
) -> Result<pb::IssueAdminResponse, Status> {
    let by = caller_name(&req).ok_or_else(|| {
        Status::failed_precondition(
            "this controller serves plaintext (loopback or --insecure): there are no admin certificates to issue",
        )
    })?;
    let req = req.into_inner();
    check_name("name", &req.name).map_err(|e| status(e.into()))?;
    let lifetime = ttl(req.ttl, DEFAULT_ADMIN_TTL, MAX_ADMIN_TTL)?;
    let csr = csr(&req.csr_pem)?;
    app.require_leader().map_err(status)?;
    let ca = signer(app)?;
    let issued_at_ms = now_ms();
    let cert_pem = ca
        .sign_request(csr, &Identity::new(Role::Admin, &req.name), &[], lifetime)
        .map_err(|e| field("csr_pem", e.to_string()))?;
    let cert = AdminCert {
        issued_at_ms,
        expires_at_ms: issued_at_ms
            .saturating_add(u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX)),
        issued_by: by,
    };
    let info = info(&req.name, Some(&cert), None);
    app.write(Command::IssueAdmin {
        name: req.name.clone(),
        cert,
    })
    .await
    .map_err(status)?;
    tracing::info!(admin = %req.name, by = %info.issued_by, days = lifetime.as_secs() / 86_400, "admin certificate issued");
    Ok(pb::IssueAdminResponse {
        cert_pem,
        ca_pem: ca.cert_pem,
        info: Some(info),
    })
}

pub(super) async fn revoke(
    app: &App,
    req: Request<pb::RevokeAdminRequest>,
) -> Result<pb::ListAdminsResponse, Status> {
    let by = caller_name(&req);
    let name = req.into_inner().name;
    check_name("name", &name).map_err(|e| status(e.into()))?;
    if by.as_deref() == Some(name.as_str()) {
        return Err(Status::failed_precondition(format!(
            "name: {name} is the certificate making this call; revoke it as another admin (lbctl admin create NAME first), or you would lock yourself out"
        )));
    }
    app.write(Command::RevokeAdmin {
        name: name.clone(),
        at_ms: now_ms(),
    })
    .await
    .map_err(status)?;
    tracing::info!(admin = %name, by = ?by, "admin revoked");
    Ok(list(app))
}

fn info(name: &str, cert: Option<&AdminCert>, revoked_at_ms: Option<u64>) -> pb::AdminInfo {
    pb::AdminInfo {
        name: name.to_string(),
        issued_at_ms: cert.map_or(0, |c| c.issued_at_ms),
        expires_at_ms: cert.map_or(0, |c| c.expires_at_ms),
        issued_by: cert.map(|c| c.issued_by.clone()).unwrap_or_default(),
        revoked_at_ms: revoked_at_ms.unwrap_or(0),
    }
}

/// Every name issued through the API or revoked, by name.
pub(super) fn list(app: &App) -> pb::ListAdminsResponse {
    let data = app.state.read();
    let admins = &data.state.admins;
    let names: std::collections::BTreeSet<&String> =
        admins.issued.keys().chain(admins.revoked.keys()).collect();
    pb::ListAdminsResponse {
        admins: names
            .into_iter()
            .map(|n| info(n, admins.issued.get(n), admins.revoked.get(n).copied()))
            .collect(),
    }
}
