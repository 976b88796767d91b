//! Hints for what operators meet first: no controller where lbctl looked,
//! and lbctl and the controller disagreeing about TLS.

/// `error` with a hint when its cause looks like no controller at
/// `tried` (the addresses lbctl dialled), or a TLS mismatch
/// (`plaintext`: lbctl spoke without TLS).
pub(crate) fn with_hint(error: anyhow::Error, plaintext: bool, tried: &str) -> anyhow::Error {
    let text = error.to_string();
    if text.starts_with("Unavailable:") && text.contains("connect") {
        return anyhow::anyhow!(
            "{text}\n  hint: no controller answered at {tried}: start one (lb-controller), or point lbctl at yours with --controller HOST:PORT[,HOST:PORT...] or LB_CONTROLLER"
        );
    }
    with_tls_hint(error, plaintext)
}

/// `error` with a hint when its cause looks like lbctl and the controller
/// disagreeing about TLS (`plaintext`: lbctl spoke without it).
fn with_tls_hint(error: anyhow::Error, plaintext: bool) -> anyhow::Error {
    const CREDENTIALS: &str = "lbctl needs the admin credentials: --credentials DIR (or LB_CREDENTIALS=DIR), where DIR holds ca.pem, admin.pem and admin.key: a bootstrapping controller's <data-dir>/pki, or what `lbctl pki admin-cert` wrote";
    let text = error.to_string();
    // A plaintext request to a TLS port fails below gRPC, in ways that vary
    // with timing ("transport error", an HTTP/2 error, "operation was
    // canceled"); a controller that is down or busy says so differently.
    let below_grpc = ["Unknown:", "Internal:", "Cancelled:", "Unavailable:"]
        .iter()
        .any(|code| text.starts_with(code))
        && !["connect", "leader"].iter().any(|m| text.contains(m));
    let hint = if text.contains("no client certificate") {
        CREDENTIALS.to_string()
    } else if plaintext && below_grpc {
        format!(
            "if the controller serves TLS (it does unless it listens on loopback), {CREDENTIALS}"
        )
    } else if !plaintext && text.contains("InvalidContentType") {
        "the controller serves plaintext (it listens on loopback, or runs with --insecure): drop --credentials/--ca or LB_CREDENTIALS".to_string()
    } else {
        return error;
    };
    anyhow::anyhow!("{text}\n  hint: {hint}")
}

#[cfg(test)]
mod tests {
    use super::with_tls_hint;

    fn hinted(text: &str, plaintext: bool) -> String {
        with_tls_hint(anyhow::anyhow!("{text}"), plaintext).to_string()
    }

    #[test]
    fn no_controller_names_the_addresses_tried_and_how_to_change_them() {
        let e = super::with_hint(
            anyhow::anyhow!("Unavailable: tcp connect error"),
            true,
            "127.0.0.1:7070",
        )
        .to_string();
        assert!(
            e.contains("no controller answered at 127.0.0.1:7070")
                && e.contains("--controller")
                && e.contains("LB_CONTROLLER"),
            "{e}"
        );
    }

    #[test]
    fn tls_mismatches_get_a_hint_and_other_errors_do_not() {
        // What a plaintext call to a TLS port has been seen to fail with.
        for seen in [
            "Internal: h2 protocol error: http2 error",
            "Unknown: transport error",
            "Cancelled: operation was canceled",
        ] {
            assert!(
                hinted(seen, true).contains("hint: if the controller serves TLS"),
                "{seen}"
            );
            assert!(!hinted(seen, false).contains("hint"), "{seen}");
        }
        assert!(hinted(
            "Unauthenticated: no client certificate; present a certificate issued by this fabric's CA",
            false
        )
        .contains("hint: lbctl needs the admin credentials"));
        assert!(hinted(
            "Unavailable: received corrupt message of type InvalidContentType",
            false
        )
        .contains("drop --credentials"));
        for plain in [
            "Unavailable: tcp connect error",
            "Unavailable: no leader elected yet; retry shortly",
            "InvalidArgument: service.endpoint.port: must be 1-65535",
        ] {
            assert!(!hinted(plain, true).contains("hint"), "{plain}");
        }
    }
}
