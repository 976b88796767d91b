//! Who may call what: one tower layer in front of every gRPC service.
//!
//! | methods | who |
//! | --- | --- |
//! | `lb.v1.ServiceAdmin/*`, `lb.v1.ClusterAdmin/*` | admin |
//! | `lb.v1.Raft/*` | controller |
//! | `lb.v1.DirectorSync/*` | director (as its own node id: checked by the stream) |
//! | `lb.v1.RealServerSync/*` | realserver (its own node id and address: checked by the stream) |
//! | `lb.v1.Enrollment/Renew` | director, realserver (for its own identity) |
//! | `lb.v1.Enrollment/Join`, health, reflection | anyone (a join presents a token) |
//!
//! A caller with no certificate, or one the fabric's CA did not issue (or
//! that has expired), gets `UNAUTHENTICATED` with the reason; a trusted
//! caller in the wrong role `PERMISSION_DENIED`. Without TLS (loopback, or
//! `--insecure`) the layer lets everything through: there is no identity.
//! The rate limits ([`super::rate`]) are enforced here too: joins and
//! failed authentications per source address, API calls per admin.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use lb_proto::pki::Role;
use tonic::Status;

use super::rate::RateLimits;
use crate::tls::{Peer, Verified};

/// The role a method needs; `None`: open to anyone.
fn required(path: &str) -> Option<&'static [Role]> {
    if path == "/lb.v1.Enrollment/Renew" {
        return Some(&[Role::Director, Role::Realserver]);
    }
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match service {
        "lb.v1.ServiceAdmin" | "lb.v1.ClusterAdmin" => Some(&[Role::Admin]),
        "lb.v1.Raft" => Some(&[Role::Controller]),
        "lb.v1.DirectorSync" => Some(&[Role::Director]),
        "lb.v1.RealServerSync" => Some(&[Role::Realserver]),
        _ => None,
    }
}

/// Why a caller whose certificate was good at the handshake is no longer
/// let in, if it is not.
pub type CutOff = std::sync::Arc<dyn Fn(&Verified) -> Option<String> + Send + Sync>;

/// Why `caller` is no longer let in: its certificate expired since the
/// connection was made, or `state` revokes it (agents by node id, admins
/// by name); controllers are removed from the cluster instead.
pub(crate) fn cut_off(state: &crate::state::State, caller: &Verified) -> Option<String> {
    let who = &caller.identity;
    if let Ok(ago) = std::time::SystemTime::now().duration_since(caller.expires_at) {
        return Some(format!(
            "the certificate of {who} expired {}s ago",
            ago.as_secs()
        ));
    }
    let revoked = match who.role {
        Role::Director | Role::Realserver => {
            state.security.is_revoked(&who.name, caller.issued_at_ms)
        }
        Role::Admin => state.admins.is_revoked(&who.name, caller.issued_at_ms),
        Role::Controller => false,
    };
    revoked.then(|| format!("the certificate of {who} is revoked"))
}

/// Ends a stream (an agent's, a watch) when its caller is cut off (see
/// [`cut_off`]); true if it did.
pub(crate) async fn end_if_cut_off<T>(
    app: &crate::app::App,
    caller: Option<&Verified>,
    tx: &tokio::sync::mpsc::Sender<Result<T, Status>>,
) -> bool {
    let Some(why) = caller.and_then(|c| cut_off(&app.state.read().state, c)) else {
        return false;
    };
    let _ = tx.send(Err(Status::unauthenticated(why))).await;
    true
}

/// The verdict for one call.
pub(crate) fn check(path: &str, peer: Option<&Peer>, cut_off: &CutOff) -> Result<(), Status> {
    let Some(roles) = required(path) else {
        return Ok(());
    };
    let Some(peer) = peer else {
        // Plaintext listener: no identities to check.
        return Ok(());
    };
    match &peer.identity {
        Err(why) => Err(Status::unauthenticated(format!(
            "{why}; present a certificate issued by this fabric's CA"
        ))),
        Ok(v) => match cut_off(v) {
            Some(why) => Err(Status::unauthenticated(why)),
            None if roles.contains(&v.identity.role) => Ok(()),
            None => Err(Status::permission_denied(format!(
                "{} may not call {path}",
                v.identity
            ))),
        },
    }
}

/// The identity a stream handler checks its messages against; `None` on a
/// plaintext listener.
pub(crate) fn caller<T>(req: &tonic::Request<T>) -> Option<Verified> {
    req.extensions()
        .get::<Peer>()
        .and_then(|p| p.identity.clone().ok())
}

/// The verdict for one call with the rate limits: a join counts against
/// its source address before its token is looked at, and so does a call
/// refused for its certificate; an admin's call counts against its name.
pub(crate) fn gate(
    path: &str,
    peer: Option<&Peer>,
    cut_off: &CutOff,
    limits: &RateLimits,
) -> Result<(), Status> {
    let source = peer.and_then(|p| p.remote).map(|r| r.ip());
    if path == "/lb.v1.Enrollment/Join" {
        if let Some(ip) = source {
            limits.source(ip)?;
        }
    }
    match check(path, peer, cut_off) {
        Err(s) if s.code() == tonic::Code::Unauthenticated => {
            if let Some(ip) = source {
                limits.source(ip)?;
            }
            Err(s)
        }
        Err(s) => Err(s),
        Ok(()) => match peer.and_then(|p| p.identity.as_ref().ok()) {
            Some(v) if v.identity.role == Role::Admin && required(path).is_some() => {
                limits.admin(&v.identity.name)
            }
            _ => Ok(()),
        },
    }
}

#[derive(Clone)]
pub struct AuthzLayer {
    cut_off: CutOff,
    limits: Arc<RateLimits>,
}

impl AuthzLayer {
    pub fn new(cut_off: CutOff, limits: Arc<RateLimits>) -> Self {
        AuthzLayer { cut_off, limits }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            cut_off: self.cut_off.clone(),
            limits: self.limits.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    cut_off: CutOff,
    limits: Arc<RateLimits>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authz<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match gate(
            req.uri().path(),
            req.extensions().get::<Peer>(),
            &self.cut_off,
            &self.limits,
        ) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => {
                let remote = req.extensions().get::<Peer>().and_then(|p| p.remote);
                // Over a rate limit: one line per refusal would be the flood
                // the limit holds back.
                if status.code() == tonic::Code::ResourceExhausted {
                    tracing::debug!(path = req.uri().path(), remote = ?remote, reason = status.message(), "call over its rate limit");
                } else {
                    tracing::info!(path = req.uri().path(), remote = ?remote, code = ?status.code(), reason = status.message(), "call refused");
                }
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_proto::pki::Identity;

    fn peer(identity: Result<Identity, &str>) -> Peer {
        Peer {
            remote: None,
            identity: identity
                .map(|identity| Verified {
                    identity,
                    ips: Vec::new(),
                    issued_at_ms: Some(1),
                    expires_at: std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
                })
                .map_err(String::from),
        }
    }

    #[test]
    fn the_matrix() {
        let admin = peer(Ok(Identity::new(Role::Admin, "admin")));
        let director = peer(Ok(Identity::new(Role::Director, "d1")));
        let controller = peer(Ok(Identity::new(Role::Controller, "2")));
        let stranger = peer(Err("no client certificate"));
        let none: CutOff = std::sync::Arc::new(|_| None);
        let code = |path: &str, p: &Peer| check(path, Some(p), &none).err().map(|s| s.code());
        use tonic::Code::{PermissionDenied, Unauthenticated};
        assert_eq!(code("/lb.v1.ServiceAdmin/CreateService", &admin), None);
        assert_eq!(
            code("/lb.v1.ServiceAdmin/CreateService", &director),
            Some(PermissionDenied)
        );
        assert_eq!(
            code("/lb.v1.ServiceAdmin/ListServices", &stranger),
            Some(Unauthenticated)
        );
        assert_eq!(code("/lb.v1.Raft/Vote", &controller), None);
        assert_eq!(code("/lb.v1.Raft/Vote", &admin), Some(PermissionDenied));
        assert_eq!(code("/lb.v1.DirectorSync/Sync", &director), None);
        assert_eq!(
            code("/lb.v1.RealServerSync/Sync", &director),
            Some(PermissionDenied)
        );
        assert_eq!(code("/grpc.health.v1.Health/Check", &stranger), None);
        assert_eq!(code("/lb.v1.Enrollment/Join", &stranger), None);
        assert_eq!(code("/lb.v1.Enrollment/Renew", &director), None);
        assert_eq!(
            code("/lb.v1.Enrollment/Renew", &stranger),
            Some(Unauthenticated)
        );
        assert_eq!(
            code("/lb.v1.Enrollment/Renew", &admin),
            Some(PermissionDenied)
        );
        assert_eq!(
            code(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                &stranger
            ),
            None
        );
        // Plaintext: nothing to check.
        assert!(check("/lb.v1.ServiceAdmin/CreateService", None, &none).is_ok());
        // A revoked director is turned away, whatever it calls.
        let mut state = crate::state::State::default();
        state.security.revoked.insert("d1".into(), 5);
        state.admins.revoked.insert("mallory".into(), 5);
        let state = std::sync::Arc::new(state);
        let by_state: CutOff = std::sync::Arc::new(move |v| cut_off(&state, v));
        let e = check("/lb.v1.DirectorSync/Sync", Some(&director), &by_state).unwrap_err();
        assert_eq!(e.code(), Unauthenticated);
        assert_eq!(e.message(), "the certificate of director d1 is revoked");
        // A revoked admin name is turned away, the others are not; an
        // expired certificate is cut off.
        assert!(check("/lb.v1.ServiceAdmin/ListServices", Some(&admin), &by_state).is_ok());
        let mallory = peer(Ok(Identity::new(Role::Admin, "mallory")));
        let e = check(
            "/lb.v1.ServiceAdmin/ListServices",
            Some(&mallory),
            &by_state,
        )
        .unwrap_err();
        assert_eq!(e.message(), "the certificate of admin mallory is revoked");
        let mut old = admin.clone();
        if let Ok(v) = &mut old.identity {
            v.expires_at = std::time::SystemTime::now() - std::time::Duration::from_secs(3);
        }
        let e = check("/lb.v1.ServiceAdmin/ListServices", Some(&old), &by_state).unwrap_err();
        assert_eq!(e.code(), Unauthenticated);
        assert_eq!(e.message(), "the certificate of admin admin expired 3s ago");
    }
}
