//! The CA, join tokens and renewal.

use std::time::Duration;

use super::*;
use rustls::pki_types::pem::PemObject;

#[test]
fn identity_uris() {
    let id = Identity::new(Role::Director, "d1");
    assert_eq!(id.uri(), "spiffe://lbfabric/director/d1");
    assert_eq!(Identity::from_uri(&id.uri()), Some(id));
    assert_eq!(Identity::from_uri("spiffe://lbfabric/root/x"), None);
    assert_eq!(Identity::from_uri("spiffe://other/admin/x"), None);
    assert_eq!(Identity::from_uri("spiffe://lbfabric/admin/"), None);
}

#[test]
fn a_ca_reloaded_from_disk_signs_like_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::open(dir.path(), true).unwrap();
    let again = Ca::open(dir.path(), false).unwrap();
    assert_eq!(ca.cert_pem, again.cert_pem);
    assert!(again.can_issue());
    again
        .ensure(dir.path(), "d1", &Identity::new(Role::Director, "d1"), &[])
        .unwrap();
    let creds = Credentials::from_dir(dir.path(), "d1").unwrap();
    assert!(creds
        .cert_pem
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    // Serial numbers carry the issue time.
    let pem = std::fs::read_to_string(dir.path().join("d1.pem")).unwrap();
    let (issued, until) = lifetime(&pem).unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let not_before = cert.validity().not_before.timestamp() as u64 * 1000;
    let issued_ms = unix_ms(issued);
    assert!(
        issued_ms.abs_diff(not_before + 5 * 60 * 1000) < 2000,
        "issued {issued_ms}, not_before {not_before}"
    );
    let life = until.duration_since(issued).unwrap();
    assert!(
        life.abs_diff(DEFAULT_CERT_LIFETIME) < Duration::from_secs(2),
        "{life:?}"
    );
    // Without the key, the CA can be trusted but not issue.
    std::fs::remove_file(dir.path().join("ca.key")).unwrap();
    assert!(!Ca::open(dir.path(), false).unwrap().can_issue());
}

#[test]
fn tokens_round_trip_and_bad_ones_say_why() {
    let t = JoinToken::generate(&sha256_hex(b"ca")).unwrap();
    let text = t.to_string();
    assert!(text.starts_with("lbj1."));
    assert_eq!(text.parse::<JoinToken>().unwrap(), t);
    assert!(!format!("{t:?}").contains(&t.secret));
    for (bad, why) in [
        ("lbj1.abc", "not four dot-separated parts"),
        (
            "lbj2.0123456789.00000000000000000000000000000000.",
            "unknown prefix",
        ),
        (
            "lbj1.01234.00000000000000000000000000000000.aa",
            "the id is not 10 hex digits",
        ),
    ] {
        let e = bad.parse::<JoinToken>().unwrap_err().to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn a_request_is_signed_for_the_identity_the_ca_chooses() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::open(dir.path(), true).unwrap();
    let (csr, _key) = request().unwrap();
    let pem = ca
        .sign_request(
            &csr,
            &Identity::new(Role::Realserver, "rs1"),
            &["10.0.0.21".parse().unwrap()],
            Duration::from_secs(60),
        )
        .unwrap();
    let (from, until) = lifetime(&pem).unwrap();
    let life = until.duration_since(from).unwrap();
    assert!(
        life.abs_diff(Duration::from_secs(60)) < Duration::from_secs(1),
        "{life:?}"
    );
    assert!(ca
        .sign_request(
            "garbage",
            &Identity::new(Role::Director, "d"),
            &[],
            Duration::from_secs(60)
        )
        .is_err());
    // The same CA, rebuilt from its PEM, issues too.
    let again = Ca::from_pem(ca.cert_pem.clone(), ca.key_pem().as_deref()).unwrap();
    assert!(again.can_issue());
    assert_eq!(
        fingerprint(&again.cert_pem).unwrap(),
        fingerprint(&ca.cert_pem).unwrap()
    );
}

#[test]
fn ensure_renews_a_certificate_late_in_its_life() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::open(dir.path(), true).unwrap();
    let id = Identity::new(Role::Admin, "admin");
    let short = ca.issue(&id, &[], Duration::from_secs(3)).unwrap();
    write_pem(&dir.path().join("admin.pem"), &short.cert_pem, false).unwrap();
    write_pem(&dir.path().join("admin.key"), &short.key_pem, true).unwrap();
    ca.ensure(dir.path(), "admin", &id, &[]).unwrap();
    let kept = read(&dir.path().join("admin.pem")).unwrap();
    assert_eq!(kept, short.cert_pem, "most of its life left: kept");
    std::thread::sleep(Duration::from_millis(2500));
    ca.ensure(dir.path(), "admin", &id, &[]).unwrap();
    let renewed = read(&dir.path().join("admin.pem")).unwrap();
    assert_ne!(renewed, short.cert_pem, "less than a third left: renewed");
    let (_, until) = lifetime(&renewed).unwrap();
    assert!(until > std::time::SystemTime::now() + Duration::from_secs(300 * 24 * 3600));
}
