//! `lb.v1.Enrollment` and the join tokens behind it: how an agent gets its
//! first certificate with a token an operator minted (`lbctl token create`),
//! and renews it with the certificate it has.
//!
//! A join checks the token against the replicated state first (so strangers
//! cannot fill the Raft log with refusals), signs the agent's request, then
//! replicates the token's use; only when that commits does the agent get
//! the certificate. Signing needs the CA key in the replicated state, which
//! the bootstrapping controller hands over ([`hand_over_ca`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lb_proto::convert::check_name;
use lb_proto::pb;
use lb_proto::pki::{self, Ca, Identity, Role};
use lb_proto::FieldError;
use tonic::{Request, Response, Status};

use crate::app::App;
use crate::error::status;
use crate::state::{CaKeys, Command, JoinAttempt, JoinToken};

/// A token with no `ttl` lasts this long.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_TOKEN_USES: u32 = 10_000;
/// A certificate request is a few hundred bytes.
const MAX_CSR_BYTES: usize = 16 * 1024;

pub(super) fn field(field: &str, rule: impl Into<String>) -> Status {
    status(FieldError::new(field, rule).into())
}

fn agent_role(name: &str, text: &str) -> Result<Role, Status> {
    match Role::parse(text) {
        Some(r @ (Role::Director | Role::Realserver)) => Ok(r),
        _ => Err(field(
            name,
            format!("{text:?} is not an agent role: director or realserver"),
        )),
    }
}

pub(super) fn now_ms() -> u64 {
    pki::unix_ms(SystemTime::now())
}

/// The CA as the replicated state holds it, able to sign.
pub(super) fn signer(app: &App) -> Result<Ca, Status> {
    let keys = app.state.read().state.security.ca.clone().ok_or_else(|| {
        Status::failed_precondition(
            "the controllers hold no CA key (the fabric uses an operator-provided CA, or serves plaintext): issue agent certificates with that CA instead",
        )
    })?;
    Ca::from_pem(keys.cert_pem, Some(&keys.key_pem))
        .map_err(|e| Status::internal(format!("the replicated CA: {e}")))
}

fn info(id: &str, t: &JoinToken) -> pb::JoinTokenInfo {
    pb::JoinTokenInfo {
        id: id.to_string(),
        role: t.role.to_string(),
        node_id: t.node_id.clone().unwrap_or_default(),
        uses_left: t.uses_left,
        expires_at_ms: t.expires_at_ms,
        created_at_ms: t.created_at_ms,
        joined: t.joined.clone(),
    }
}

/// A request's `ttl`: `default` when unset, at most `max`.
pub(super) fn ttl(
    d: Option<prost_types::Duration>,
    default: Duration,
    max: Duration,
) -> Result<Duration, Status> {
    let Some(d) = d else {
        return Ok(default);
    };
    let days = max.as_secs() / (24 * 3600);
    let bad = || {
        field(
            "ttl",
            format!("must be a positive duration of at most {days} days"),
        )
    };
    let (secs, nanos) = (u64::try_from(d.seconds), u32::try_from(d.nanos));
    let (Ok(secs), Ok(nanos)) = (secs, nanos) else {
        return Err(bad());
    };
    let d = Duration::new(secs, nanos);
    if d.is_zero() || d > max {
        return Err(bad());
    }
    Ok(d)
}

pub(super) async fn create_token(
    app: &App,
    req: pb::CreateJoinTokenRequest,
) -> Result<pb::CreateJoinTokenResponse, Status> {
    let role = agent_role("role", &req.role)?;
    let node_id = (!req.node_id.is_empty())
        .then(|| check_name("node_id", &req.node_id).map(|()| req.node_id.clone()))
        .transpose()
        .map_err(|e| status(e.into()))?;
    let ttl = ttl(req.ttl, DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL)?;
    let uses = match req.uses {
        0 => 1,
        n if n <= MAX_TOKEN_USES => n,
        n => return Err(field("uses", format!("{n} is more than {MAX_TOKEN_USES}"))),
    };
    let ca_pem = app.ca_pem.as_deref().ok_or_else(|| {
        Status::failed_precondition(
            "this controller serves plaintext (loopback or --insecure): agents connect without certificates, so there is nothing to join",
        )
    })?;
    let ca_sha256 = pki::fingerprint(ca_pem).map_err(|e| Status::internal(e.to_string()))?;
    let token =
        pki::JoinToken::generate(&ca_sha256).map_err(|e| Status::internal(e.to_string()))?;
    let now = now_ms();
    let stored = JoinToken {
        role,
        node_id,
        secret_sha256: token.secret_sha256(),
        created_at_ms: now,
        expires_at_ms: now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        uses_left: uses,
        joined: Vec::new(),
    };
    let shown = info(&token.id, &stored);
    app.write(Command::CreateJoinToken {
        id: token.id.clone(),
        token: stored,
    })
    .await
    .map_err(status)?;
    tracing::info!(token = %token.id, %role, uses, ttl_s = ttl.as_secs(), "join token created");
    Ok(pb::CreateJoinTokenResponse {
        token: token.to_string(),
        info: Some(shown),
        ca_sha256,
    })
}

pub(super) fn list_tokens(app: &App) -> pb::ListJoinTokensResponse {
    let state = app.state.read();
    pb::ListJoinTokensResponse {
        tokens: state
            .state
            .security
            .tokens
            .iter()
            .map(|(id, t)| info(id, t))
            .collect(),
    }
}

pub(super) async fn delete_token(
    app: &App,
    req: pb::DeleteJoinTokenRequest,
) -> Result<pb::ListJoinTokensResponse, Status> {
    app.write(Command::DeleteJoinToken { id: req.id })
        .await
        .map_err(status)?;
    Ok(list_tokens(app))
}

/// Gives the cluster this node's CA key as soon as it leads while the
/// replicated state has none (a new cluster: right after its first
/// election, before any other node joins), so that any later leader can
/// sign joins. Ends when the state has a CA, or at shutdown.
pub async fn hand_over_ca(app: Arc<App>, keys: CaKeys) {
    let mut shutdown = app.shutdown.clone();
    let mut metrics = app.raft.metrics();
    loop {
        if app.state.read().state.security.ca.is_some() {
            return;
        }
        let retry = if app.require_leader().is_ok() {
            match app.write(Command::SetCa { ca: keys.clone() }).await {
                Ok(_) => {
                    tracing::info!(
                        "CA handed to the cluster: any leader can now sign agent certificates"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "handing the CA to the cluster");
                    Duration::from_millis(200)
                }
            }
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            _ = metrics.changed() => {}
            _ = tokio::time::sleep(retry) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

pub(super) fn csr(csr_pem: &str) -> Result<&str, Status> {
    if csr_pem.is_empty() || csr_pem.len() > MAX_CSR_BYTES {
        return Err(field(
            "csr_pem",
            format!("must be a PEM certificate request of 1..={MAX_CSR_BYTES} bytes"),
        ));
    }
    Ok(csr_pem)
}

pub(super) struct Enrollment {
    app: Arc<App>,
}

impl Enrollment {
    pub(super) fn new(app: Arc<App>) -> Self {
        Enrollment { app }
    }
}

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for Enrollment {
    #[tracing::instrument(skip_all, err)]
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let remote = req
            .extensions()
            .get::<crate::tls::Peer>()
            .and_then(|p| p.remote);
        let req = req.into_inner();
        let token: pki::JoinToken = req
            .token
            .parse()
            .map_err(|e: pki::PkiError| field("token", e.to_string()))?;
        let role = agent_role("role", &req.role)?;
        check_name("node_id", &req.node_id).map_err(|e| status(e.into()))?;
        let ips: Vec<IpAddr> = match (role, req.address.as_str()) {
            (Role::Realserver, "") => {
                return Err(field(
                    "address",
                    "a realserver agent names its own address: its certificate binds it",
                ))
            }
            (_, "") => Vec::new(),
            (_, a) => vec![a
                .parse()
                .map_err(|_| field("address", format!("{a:?} is not an IP address")))?],
        };
        let csr = csr(&req.csr_pem)?;
        self.app.require_leader().map_err(status)?;
        let ca = signer(&self.app)?;
        let ours = pki::fingerprint(&ca.cert_pem).map_err(|e| Status::internal(e.to_string()))?;
        if token.ca_sha256 != ours {
            return Err(Status::unauthenticated(format!(
                "join token {} pins CA sha256:{}, but this fabric's CA is sha256:{ours}",
                token.id, token.ca_sha256
            )));
        }
        let attempt = JoinAttempt {
            token_id: token.id.clone(),
            secret_sha256: token.secret_sha256(),
            role,
            node_id: req.node_id.clone(),
            now_ms: now_ms(),
        };
        let refused = |r: crate::state::Rejected| {
            tracing::info!(token = %token.id, node = %req.node_id, ?remote, reason = %r, "join refused");
            status(r.into())
        };
        self.app
            .state
            .read()
            .state
            .security
            .check_join(&attempt)
            .map_err(refused)?;
        let identity = Identity::new(role, &req.node_id);
        let cert_pem = ca
            .sign_request(csr, &identity, &ips, self.app.agent_cert_lifetime)
            .map_err(|e| field("csr_pem", e.to_string()))?;
        match self.app.write(Command::RedeemJoinToken { attempt }).await {
            Ok(_) => {}
            Err(crate::error::ApiError::Rejected(r)) => return Err(refused(r)),
            Err(e) => return Err(status(e)),
        }
        tracing::info!(token = %token.id, %identity, ?ips, ?remote, "agent joined");
        Ok(Response::new(pb::JoinResponse {
            cert_pem,
            ca_pem: ca.cert_pem,
        }))
    }

    #[tracing::instrument(skip_all, err)]
    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        // The authorization layer let only an unrevoked agent certificate in.
        let caller = super::authz::caller(&req).ok_or_else(|| {
            Status::failed_precondition("renewal is for TLS connections with an agent certificate")
        })?;
        let req = req.into_inner();
        let csr = csr(&req.csr_pem)?;
        self.app.require_leader().map_err(status)?;
        let ca = signer(&self.app)?;
        let cert_pem = ca
            .sign_request(
                csr,
                &caller.identity,
                &caller.ips,
                self.app.agent_cert_lifetime,
            )
            .map_err(|e| field("csr_pem", e.to_string()))?;
        tracing::info!(identity = %caller.identity, "agent certificate renewed");
        Ok(Response::new(pb::JoinResponse {
            cert_pem,
            ca_pem: ca.cert_pem,
        }))
    }
}
