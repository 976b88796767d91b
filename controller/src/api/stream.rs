//! The skeleton both agent streams share (`DirectorSync`, `RealServerSync`):
//! the first report opens the stream; then the controller sends a message
//! at the start and after every report or applied change, and the stream
//! ends when the agent hangs up, reports under another node id, is cut off
//! (revoked, or its certificate expired), or — for the streams only the
//! leader serves — this node stops leading, so the agent follows the new
//! leader. What differs lives in [`AgentStream`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

use super::authz;
use super::budget::WriteBudget;
use crate::app::App;
use crate::error::status;
use crate::tls::Verified;

/// What a server stream of `T` looks like to tonic.
pub(super) type Outbound<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One kind of agent stream.
pub(super) trait AgentStream: Send + 'static {
    type Report: Send + 'static;
    type Desired: Send + 'static;
    /// Who is on the other end, for logs: `director`, `realserver`.
    const ROLE: &'static str;
    /// Served by the leader only (the stream ends when it stops leading).
    const LEADER_ONLY: bool;

    fn node_id(report: &Self::Report) -> &str;

    /// The next messages to the agent: one, or several when a large
    /// configuration update is split into parts.
    fn desired(&mut self, app: &App) -> Vec<Self::Desired>;

    /// A report after the first; an error ends the stream with it. Raft
    /// writes it causes take from `budget`.
    fn report(
        &mut self,
        app: &App,
        report: Self::Report,
        budget: &mut WriteBudget,
    ) -> impl Future<Output = Result<(), Status>> + Send;

    /// The stream ended.
    fn ended(&mut self, _app: &App) {}

    /// When to send the next message even without a report or a change
    /// (a grant withheld until then).
    fn wake_at(&self) -> Option<Instant> {
        None
    }
}

/// Sleeps until `at`; forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The first report, which opens every agent stream.
pub(super) async fn first_report<R>(inbound: &mut Streaming<R>) -> Result<R, Status> {
    inbound.message().await?.ok_or_else(|| {
        Status::invalid_argument("node_id: the stream ended before the first report")
    })
}

/// Serves `agent`'s stream for `node` (already opened and authorized).
pub(super) fn serve<S: AgentStream>(
    app: Arc<App>,
    caller: Option<Verified>,
    node: String,
    mut inbound: Streaming<S::Report>,
    mut agent: S,
) -> Outbound<S::Desired> {
    let (tx, rx) = mpsc::channel(16);
    let open = app.metrics.stream_gauge(S::ROLE);
    open.inc();
    tokio::spawn(async move {
        let mut changed = app.state.subscribe();
        let mut freed = app.grants().freed();
        let mut metrics = app.raft.metrics();
        let mut shutdown = app.shutdown.clone();
        let mut budget = WriteBudget::new(Instant::now());
        'stream: loop {
            // Revoked, or expired since the stream began.
            if authz::end_if_cut_off(&app, caller.as_ref(), &tx).await {
                break;
            }
            let started = Instant::now();
            let answer = agent.desired(&app);
            tracing::debug!(
                %node,
                took_us = started.elapsed().as_micros() as u64,
                messages = answer.len(),
                "stream answer"
            );
            for msg in answer {
                if tx.send(Ok(msg)).await.is_err() {
                    break 'stream;
                }
            }
            // Until there is something to answer: a report, a change, or
            // the moment a withheld grant is due.
            let wake = agent.wake_at();
            loop {
                tokio::select! {
                    _ = sleep_until(wake) => continue 'stream,
                    // A release may have made the withheld grant due now.
                    r = freed.changed(), if wake.is_some() => {
                        if r.is_err() { break 'stream }
                        continue 'stream;
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(report)) if S::node_id(&report) == node => {
                            let started = Instant::now();
                            let heard = agent.report(&app, report, &mut budget).await;
                            let took_us = started.elapsed().as_micros() as u64;
                            tracing::debug!(%node, took_us, "report heard");
                            if let Err(e) = heard {
                                let _ = tx.send(Err(e)).await;
                                break 'stream;
                            }
                            continue 'stream;
                        }
                        Ok(Some(report)) => {
                            let msg = format!("node_id: this stream belongs to {node}, not {}", S::node_id(&report));
                            let _ = tx.send(Err(Status::invalid_argument(msg))).await;
                            break 'stream;
                        }
                        Ok(None) | Err(_) => break 'stream,
                    },
                    r = changed.changed() => {
                        if r.is_err() { break 'stream }
                        continue 'stream;
                    }
                    // Raft's metrics change often; only a lost leadership
                    // is news to the agent.
                    r = metrics.changed(), if S::LEADER_ONLY => {
                        if r.is_err() { break 'stream }
                        if let Err(e) = app.require_leader() {
                            let _ = tx.send(Err(status(e))).await;
                            break 'stream;
                        }
                    }
                    // Drop the non-Send watch::Ref before any arm awaits.
                    _ = async { let _ = shutdown.wait_for(|down| *down).await; } => break 'stream,
                }
            }
        }
        agent.ended(&app);
        open.dec();
        tracing::info!(role = S::ROLE, node_id = %node, "agent stream ended");
    });
    Box::pin(ReceiverStream::new(rx))
}
