//! lbctl: the operator's command line for an lbfabric fabric.
//!
//! [`cli`] declares the commands; `cmd/` runs them, one module per command
//! family; [`spec`] turns flags and words into API messages; [`output`]
//! renders answers (tables, `-o json`); [`status`] reads and writes HTTP
//! status codes and ranges; [`import`] and [`export`] read and
//! write keepalived.conf, Piranha's lvs.cf and `ipvsadm --save`;
//! `lb_proto::client` reaches the controller leader.

/// `println!` for what lbctl answers: when its reader has gone away
/// (`lbctl service list | head`), lbctl ends quietly and successfully, as
/// a C tool killed by SIGPIPE would, instead of `println!`'s panic.
macro_rules! outln {
    () => { $crate::out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` likewise (see [`outln`]).
macro_rules! out {
    ($($arg:tt)*) => { $crate::out(format_args!($($arg)*)) };
}

pub mod cli;
pub mod export;
pub mod import;
pub mod output;
pub mod spec;
pub mod status;

use std::time::Duration;

use anyhow::Context;
use lb_proto::client::Controller;

use crate::cli::*;

/// Calls `$method` of a `$client` through the leader-following connection;
/// the request is cloned for each retry.
macro_rules! call {
    ($ctl:expr, $client:ident, $method:ident, $req:expr) => {{
        let req = $req;
        api($ctl
            .call(|ch| {
                let req = req.clone();
                async move { $client::new(ch).$method(req).await }
            })
            .await)
    }};
}

/// Status errors read `CODE: message`, e.g. `InvalidArgument: service.endpoint.port: …`.
fn api<T>(r: Result<T, tonic::Status>) -> anyhow::Result<T> {
    r.map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
}

mod cmd;
mod hint;

/// Writes to standard output; a broken pipe ends the process with success
/// (the reader took what it wanted), any other failure with an error.
pub(crate) fn out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to standard output: {e}");
        std::process::exit(1);
    }
}

/// Runs one lbctl command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Commands that need no controller.
    match &cli.command {
        Command::Completion { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "lbctl", &mut std::io::stdout());
            return Ok(());
        }
        Command::Pki(cmd) => return cmd::pki::pki(cmd),
        Command::Import {
            format,
            files,
            dry_run: true,
            ..
        } => {
            let (imported, services) = cmd::import::read_imports(*format, files)?;
            return cmd::import::show_import(cli.output, &imported, &services);
        }
        _ => {}
    }
    let tls = match &cli.credentials {
        Some(dir) => Some(
            lb_proto::pki::Credentials::from_dir(dir, "admin")
                .with_context(|| format!("--credentials {}", dir.display()))?
                .client_config(),
        ),
        None => cli.tls.client_config()?,
    };
    let plaintext = tls.is_none();
    let tried = cli.controller.to_string();
    let mut ctl = Controller::new(&cli.controller, Duration::from_secs(cli.timeout)).with_tls(tls);
    let out = cli.output;
    let done = match cli.command {
        Command::Service(cmd) => cmd::service::service(&mut ctl, out, cmd).await,
        Command::Realserver(cmd) => cmd::realserver::realserver(&mut ctl, out, cmd).await,
        Command::Director(DirectorCmd::List) => cmd::director::directors(&mut ctl, out).await,
        Command::Director(DirectorCmd::Stats { node, rate }) => {
            cmd::director::director_stats(&mut ctl, out, node.as_deref(), rate).await
        }
        Command::Cluster(cmd) => cmd::cluster::cluster(&mut ctl, out, cmd).await,
        Command::Status {
            service,
            vip,
            stats,
            rate,
        } => {
            let only = (service.unwrap_or_default(), vip.unwrap_or_default());
            cmd::status::status(&mut ctl, out, only, (stats, rate)).await
        }
        Command::Watch { from_revision } => cmd::watch::watch(&mut ctl, out, from_revision).await,
        Command::Import {
            format,
            files,
            replace,
            ..
        } => cmd::import::import(&mut ctl, out, format, &files, replace).await,
        Command::Export { format, director } => {
            cmd::import::export(&mut ctl, format, director.as_deref()).await
        }
        Command::Completion { .. } | Command::Pki(_) => Ok(()),
        Command::Node(NodeCmd::Revoke { node }) => cmd::node::revoke(&mut ctl, out, node).await,
        Command::Token(cmd) => cmd::token::token(&mut ctl, out, cmd).await,
        Command::Admin(cmd) => cmd::admin::admin(&mut ctl, out, cmd).await,
    };
    done.map_err(|e| hint::with_hint(e, plaintext, &tried))
}
