//! The controller's gRPC surface: `lb.v1.ServiceAdmin`, `lb.v1.ClusterAdmin`,
//! `lb.v1.DirectorSync`, `lb.v1.RealServerSync`, `lb.v1.Raft`,
//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha, so grpcurl
//! 1.8 can `list` and `describe`). Handlers are thin: domain errors become
//! statuses in [`crate::error::status`], the two agent streams share
//! [`stream`]'s skeleton, and the leader's view of its fleet is
//! [`crate::fleet`].

mod admins;
pub mod authz;
mod budget;
mod cluster_admin;
pub mod deadline;
mod director_sync;
pub mod enrollment;
mod paging;
mod raft;
pub mod rate;
mod realserver_sync;
mod service_admin;
mod stream;

use std::sync::Arc;

use lb_proto::pb;

use crate::app::App;
use crate::network::MAX_MESSAGE_BYTES;

/// Largest request an operator or a director sends: an import of many
/// services, a director's counters for every service.
pub const API_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest realserver agent report (its node id, labels, failing services).
pub const AGENT_REPORT_MAX_BYTES: usize = 256 * 1024;
/// Concurrent requests (streams) one connection may have open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// A unary request still running after this is cut off (`DEADLINE_EXCEEDED`);
/// streams are not affected once open.
pub const REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The leader's `GetStatus` answer, first page of at most 5,000 services:
/// what the dashboard shows (`crate::dashboard`). Not the leader: the
/// redirect status the API gives.
pub async fn fabric_status(app: Arc<App>) -> Result<pb::FabricStatus, tonic::Status> {
    use pb::service_admin_server::ServiceAdmin as _;
    let req = pb::GetStatusRequest {
        page_size: 5_000,
        ..Default::default()
    };
    let admin = service_admin::ServiceAdmin::new(app);
    Ok(admin
        .get_status(tonic::Request::new(req))
        .await?
        .into_inner())
}

/// The configuration changes after revision `after`, at most the last
/// `limit` of them, as `WatchEvents` sends them.
pub fn events_after(app: &App, after: u64, limit: usize) -> Vec<pb::Event> {
    let data = app.state.read();
    let state = &data.state;
    let from = after
        .saturating_add(1)
        .max(state.revision.saturating_sub(limit as u64) + 1);
    // The history keeps far more than any `limit` the dashboard asks for.
    let events = state.events_since(from).unwrap_or_default();
    events.iter().map(service_admin::event).collect()
}

/// Every service the controller serves on its one port.
pub fn router(app: Arc<App>) -> Result<tonic::service::Routes, tonic_reflection::server::Error> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // The process serves as soon as it listens; Raft availability is reported
    // per call (UNAVAILABLE + leader redirect), as gRPC clients expect.
    tokio::spawn(async move {
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        for name in [
            "lb.v1.ServiceAdmin",
            "lb.v1.ClusterAdmin",
            "lb.v1.Raft",
            "lb.v1.DirectorSync",
            "lb.v1.RealServerSync",
            "lb.v1.Enrollment",
        ] {
            health_reporter
                .set_service_status(name, tonic_health::ServingStatus::Serving)
                .await;
        }
    });
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(lb_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let mut routes = tonic::service::Routes::new(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(
            pb::service_admin_server::ServiceAdminServer::new(service_admin::ServiceAdmin::new(
                app.clone(),
            ))
            .max_decoding_message_size(API_MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::cluster_admin_server::ClusterAdminServer::new(cluster_admin::ClusterAdmin::new(
                app.clone(),
            ))
            .max_decoding_message_size(API_MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::director_sync_server::DirectorSyncServer::new(director_sync::DirectorSync::new(
                app.clone(),
            ))
            .max_decoding_message_size(API_MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::real_server_sync_server::RealServerSyncServer::new(
                realserver_sync::RealServerSync::new(app.clone()),
            )
            .max_decoding_message_size(AGENT_REPORT_MAX_BYTES),
        )
        .add_service(
            pb::enrollment_server::EnrollmentServer::new(enrollment::Enrollment::new(app.clone()))
                .max_decoding_message_size(AGENT_REPORT_MAX_BYTES),
        )
        .add_service(
            pb::raft_server::RaftServer::new(raft::RaftPeer::new(app))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        );
    routes = routes.prepare();
    Ok(routes)
}
