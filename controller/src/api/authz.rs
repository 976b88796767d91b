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

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use lb_proto::pki::Role;
use tonic::Status;

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

/// Whether a caller's certificate is revoked.
pub type Revoked = std::sync::Arc<dyn Fn(&Verified) -> bool + Send + Sync>;

/// Whether `state` revokes the certificate `caller` presented. Revocation is
/// for agents; controllers and admins are removed from the cluster or get a
/// new CA.
pub(crate) fn is_revoked(state: &crate::state::State, caller: &Verified) -> bool {
    matches!(caller.identity.role, Role::Director | Role::Realserver)
        && state
            .security
            .is_revoked(&caller.identity.name, caller.issued_at_ms)
}

/// The verdict for one call.
pub(crate) fn check(path: &str, peer: Option<&Peer>, revoked: &Revoked) -> Result<(), Status> {
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
        Ok(v) if revoked(v) => Err(Status::unauthenticated(format!(
            "the certificate of {} is revoked",
            v.identity
        ))),
        Ok(Verified { identity, .. }) if roles.contains(&identity.role) => Ok(()),
        Ok(Verified { identity, .. }) => Err(Status::permission_denied(format!(
            "{identity} may not call {path}"
        ))),
    }
}

/// The identity a stream handler checks its messages against; `None` on a
/// plaintext listener.
pub(crate) fn caller<T>(req: &tonic::Request<T>) -> Option<Verified> {
    req.extensions()
        .get::<Peer>()
        .and_then(|p| p.identity.clone().ok())
}

#[derive(Clone)]
pub struct AuthzLayer {
    revoked: Revoked,
}

impl AuthzLayer {
    pub fn new(revoked: Revoked) -> Self {
        AuthzLayer { revoked }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            revoked: self.revoked.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    revoked: Revoked,
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
        match check(
            req.uri().path(),
            req.extensions().get::<Peer>(),
            &self.revoked,
        ) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => {
                let remote = req.extensions().get::<Peer>().and_then(|p| p.remote);
                tracing::info!(path = req.uri().path(), remote = ?remote, code = ?status.code(), reason = status.message(), "call refused");
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
        let none: Revoked = std::sync::Arc::new(|_| false);
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
        let d1_revoked: Revoked = std::sync::Arc::new(|v| v.identity.name == "d1");
        let e = check("/lb.v1.DirectorSync/Sync", Some(&director), &d1_revoked).unwrap_err();
        assert_eq!(e.code(), Unauthenticated);
        assert_eq!(e.message(), "the certificate of director d1 is revoked");
    }
}
