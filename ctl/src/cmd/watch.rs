//! `lbctl watch`: the event stream, resumed across leader changes.

use std::time::Duration;

use lb_proto::client::Controller;
use lb_proto::pb;
use lb_proto::pb::service_admin_client::ServiceAdminClient;
use tokio_stream::StreamExt;

use crate::cli::*;
use crate::{api, output};

pub(crate) async fn watch(
    ctl: &mut Controller,
    out: Output,
    from_revision: u64,
) -> anyhow::Result<()> {
    // Resume point: the next revision to print. "Only new changes" is pinned
    // to a revision up front, so a reconnect misses nothing.
    let mut next = if from_revision == 0 {
        call!(
            ctl,
            ServiceAdminClient,
            list_services,
            // One service is enough: only the revision is wanted.
            pb::ListServicesRequest {
                stale: false,
                page_size: 1,
                page_token: String::new(),
            }
        )?
        .revision
            + 1
    } else {
        from_revision
    };
    loop {
        let opened = call!(
            ctl,
            ServiceAdminClient,
            watch_events,
            pb::WatchEventsRequest {
                from_revision: next
            }
        );
        let mut stream = match opened {
            Ok(s) => s,
            // Unreachable or no leader for the whole --timeout: give up.
            Err(e) => return Err(e),
        };
        let lost = loop {
            match stream.next().await {
                None => break "the controller closed the stream".to_string(),
                // Not a lost connection: resuming cannot help (the history
                // is gone; the certificate was revoked or expired).
                Some(Err(s))
                    if matches!(
                        s.code(),
                        tonic::Code::OutOfRange
                            | tonic::Code::Unauthenticated
                            | tonic::Code::PermissionDenied
                    ) =>
                {
                    return Err(anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
                }
                Some(Err(s)) => break format!("{:?}: {}", s.code(), s.message()),
                Some(Ok(e)) => {
                    next = e.revision + 1;
                    print_event(out, &e)?;
                }
            }
        };
        eprintln!("watch: {lost}; resuming from revision {next}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_event(out: Output, e: &pb::Event) -> anyhow::Result<()> {
    match out {
        Output::Json => outln!("{}", lb_proto::json::to_json(e, "lb.v1.Event")?),
        Output::Table => {
            let kind = pb::EventKind::try_from(e.kind)
                .map(|k| k.as_str_name())
                .unwrap_or("UNKNOWN");
            let what = match (&e.service, &e.realserver) {
                (_, Some(rs)) => output::endpoint(&rs.address, rs.port),
                (Some(s), None) => output::virtual_address(s),
                _ => String::new(),
            };
            outln!("{} {} {} {}", e.revision, kind, e.service_name, what);
        }
    }
    // A pipe reader sees each event as it happens.
    std::io::Write::flush(&mut std::io::stdout())?;
    Ok(())
}
