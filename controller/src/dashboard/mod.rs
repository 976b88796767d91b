//! The live dashboard (`--http-listen`): one page, compiled into the
//! binary (`index.html`, no build step), fed by server-sent events.
//!
//! `/api/events` sends a `status` event — the leader's `GetStatus` answer
//! as protobuf JSON, what `lbctl status -o json` prints — whenever it
//! differs from the last one sent (looked at on every applied change and
//! every `TICK`, as director liveness and leases are not Raft writes), and
//! a `change` event per configuration change (`WatchEvents`' events). On a
//! follower the status is an error naming the leader. `/api/status` is one
//! status, for scripts. Read-only, like health: anyone who reaches the
//! port may look.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use lb_proto::pb;
use tokio_stream::Stream;

use crate::app::App;

/// How often the status is looked at without a change.
const TICK: Duration = Duration::from_millis(500);
/// Configuration changes sent on connecting.
const RECENT: usize = 30;

const PAGE: &str = include_str!("index.html");

/// The dashboard's routes.
pub fn routes(app: Arc<App>) -> axum::Router {
    let status_app = app.clone();
    axum::Router::new()
        .route("/", axum::routing::get(|| async { Html(PAGE) }))
        .route(
            "/api/status",
            axum::routing::get(move || {
                let app = status_app.clone();
                async move {
                    let (code, body) = match status_json(&app).await {
                        Ok(v) => (axum::http::StatusCode::OK, v),
                        Err(v) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, v),
                    };
                    (code, axum::Json(body)).into_response()
                }
            }),
        )
        .route(
            "/api/events",
            axum::routing::get(move || {
                let app = app.clone();
                async move { Sse::new(events(app)).keep_alive(KeepAlive::default()) }
            }),
        )
}

/// The status as JSON, or `{"error": …, "leader": …}` off the leader.
async fn status_json(app: &Arc<App>) -> Result<serde_json::Value, serde_json::Value> {
    let status = crate::api::fabric_status(app.clone()).await.map_err(|s| {
        let leader = s
            .metadata()
            .get(crate::error::LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        serde_json::json!({ "error": s.message(), "leader": leader })
    })?;
    lb_proto::json::to_json(&status, "lb.v1.FabricStatus")
        .map_err(|e| serde_json::json!({ "error": e.to_string() }))
}

fn event_json(e: &pb::Event) -> Option<String> {
    lb_proto::json::to_json(e, "lb.v1.Event")
        .ok()
        .map(|v| v.to_string())
}

/// The stream of one page's connection.
fn events(app: Arc<App>) -> impl Stream<Item = Result<Event, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let mut changed = app.state.subscribe();
        let mut shutdown = app.shutdown.clone();
        let mut seen = app
            .state
            .read()
            .state
            .revision
            .saturating_sub(RECENT as u64);
        let mut last_status = String::new();
        loop {
            for e in crate::api::events_after(&app, seen, RECENT) {
                seen = seen.max(e.revision);
                if let Some(json) = event_json(&e) {
                    if tx
                        .send(Event::default().event("change").data(json))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            let status = match status_json(&app).await {
                Ok(v) | Err(v) => v.to_string(),
            };
            if status != last_status {
                let event = Event::default().event("status").data(&status);
                if tx.send(event).await.is_err() {
                    return;
                }
                last_status = status;
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(TICK) => {}
                _ = tx.closed() => return,
                _ = async { let _ = shutdown.wait_for(|down| *down).await; } => return,
            }
        }
    });
    tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}
