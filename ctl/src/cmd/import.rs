//! `lbctl import` and `lbctl export`: keepalived.conf, lvs.cf and `ipvsadm --save` in and out.

use anyhow::{bail, Context};
use lb_proto::client::Controller;
use lb_proto::pb;
use lb_proto::pb::service_admin_client::ServiceAdminClient;

use crate::cli::*;
use crate::{api, output};
use crate::{export, import};

/// Reads and validates every file; nothing is sent.
pub(crate) fn read_imports(
    format: import::Format,
    files: &[std::path::PathBuf],
) -> anyhow::Result<(import::Imported, Vec<lb_proto::model::Service>)> {
    let mut parts = Vec::with_capacity(files.len());
    for path in files {
        let (name, text) = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading standard input")?;
            ("<stdin>".to_string(), text)
        } else {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            // Old files are often Latin-1: keep going with replacement characters.
            (
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        };
        parts.push(import::parse(format, &name, &text)?);
    }
    let imported = import::merge(parts);
    let services = imported.validate()?;
    if services.is_empty() {
        bail!(
            "no services found in {}",
            files.len().to_string() + " file(s)"
        );
    }
    Ok((imported, services))
}

/// The dry run: the services as lbctl would send them, and the notes.
pub(crate) fn show_import(
    out: Output,
    imported: &import::Imported,
    services: &[lb_proto::model::Service],
) -> anyhow::Result<()> {
    if out == Output::Json {
        output::json(
            &apply_request(imported, false),
            "lb.v1.ApplyServicesRequest",
        )?;
    } else {
        outln!("would create {} services:", services.len());
        for (f, s) in imported.services.iter().zip(services) {
            outln!();
            outln!("# from {}:{} {}", f.file, f.line, f.directive);
            output::service_detail(&pb::Service::from(s), 0);
        }
    }
    print_notes(&imported.notes);
    Ok(())
}

/// The one request that applies an import.
fn apply_request(imported: &import::Imported, replace: bool) -> pb::ApplyServicesRequest {
    pb::ApplyServicesRequest {
        services: imported
            .services
            .iter()
            .map(|f| f.service.clone())
            .collect(),
        replace,
    }
}

fn print_notes(notes: &[import::Note]) {
    if notes.is_empty() {
        return;
    }
    eprintln!("\nnot carried over ({}):", notes.len());
    for n in notes {
        eprintln!("  {n}");
    }
}

pub(crate) async fn import(
    ctl: &mut Controller,
    out: Output,
    format: import::Format,
    files: &[std::path::PathBuf],
    replace: bool,
) -> anyhow::Result<()> {
    let (imported, _) = read_imports(format, files)?;
    let req = apply_request(&imported, replace);
    let resp = call!(ctl, ServiceAdminClient, apply_services, req)?;
    if out == Output::Json {
        output::json(&resp, "lb.v1.ApplyServicesResponse")?;
    } else {
        outln!(
            "imported {} services (revision {}):",
            resp.services.len(),
            resp.revision
        );
        for s in &resp.services {
            outln!("  {} {}", s.name, output::virtual_address(s));
        }
    }
    print_notes(&imported.notes);
    Ok(())
}

pub(crate) async fn export(
    ctl: &mut Controller,
    format: ExportFormat,
    director: Option<&str>,
) -> anyhow::Result<()> {
    let resp = super::paged::services(ctl, false).await?;
    let services = resp
        .services
        .into_iter()
        .map(lb_proto::model::Service::try_from)
        .collect::<Result<Vec<_>, _>>()
        .context("the controller sent a service lbctl cannot read")?;
    let exported = match format {
        ExportFormat::Keepalived => export::keepalived(&services, director),
        ExportFormat::Ipvsadm => export::ipvsadm(&services),
    };
    out!("{}", exported.text);
    for n in &exported.notes {
        eprintln!("note: {n}");
    }
    Ok(())
}
