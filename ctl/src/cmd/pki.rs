//! `lbctl pki`: certificates made offline from a CA directory.

use anyhow::Context;

use crate::cli::*;
use std::time::Duration;

/// `lbctl pki`: certificates made locally with the CA's key.
pub(crate) fn pki(cmd: &PkiCmd) -> anyhow::Result<()> {
    use lb_proto::pki::{Ca, Identity, Role};
    let (ca_dir, identity, ips, out, days) = match cmd.clone() {
        PkiCmd::Issue {
            ca_dir,
            role,
            name,
            ips,
            out,
            days,
        } => {
            let role = Role::parse(&role).with_context(|| {
                format!("--role {role:?}: expected admin, controller, director or realserver")
            })?;
            lb_proto::convert::check_name("--name", &name)?;
            (ca_dir, Identity::new(role, name), ips, out, days)
        }
        PkiCmd::AdminCert {
            ca_dir,
            name,
            out,
            days,
        } => (
            ca_dir,
            {
                lb_proto::convert::check_name("--name", &name)?;
                Identity::new(Role::Admin, name)
            },
            Vec::new(),
            out,
            days,
        ),
    };
    let ca = Ca::open(&ca_dir, false)?;
    anyhow::ensure!(
        ca.can_issue(),
        "{}: no ca.key, so no certificate can be issued here",
        ca_dir.display()
    );
    let issued = ca.issue(&identity, &ips, Duration::from_secs(days * 24 * 3600))?;
    // The names lb-controller and lbctl (--credentials) look for.
    let file = match (identity.role, cmd) {
        (Role::Controller, _) => "controller".to_string(),
        (Role::Admin, PkiCmd::AdminCert { .. }) => "admin".to_string(),
        _ => identity.name.clone(),
    };
    lb_proto::pki::write_pem(&out.join("ca.pem"), &ca.cert_pem, false)?;
    lb_proto::pki::write_pem(&out.join(format!("{file}.pem")), &issued.cert_pem, false)?;
    lb_proto::pki::write_pem(&out.join(format!("{file}.key")), &issued.key_pem, true)?;
    outln!(
        "{identity}: {}/{file}.pem and {file}.key, valid {days} days (CA: {}/ca.pem)",
        out.display(),
        out.display()
    );
    Ok(())
}
