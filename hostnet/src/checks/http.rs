//! HTTP and HTTPS checks: HTTP/1.1 through hyper, TLS through rustls
//! without verifying the certificate (see the parent module).

use std::net::SocketAddr;
use std::sync::Arc;

use lb_proto::model::HttpProbe;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};

use super::connect;

/// Most of a response body read for a check.
const MAX_BODY: usize = 1 << 20;

pub(super) async fn http(addr: SocketAddr, h: &HttpProbe) -> Result<(), String> {
    let conn = connect(addr).await?;
    get(conn, addr, h).await
}

pub(super) async fn https(addr: SocketAddr, h: &HttpProbe) -> Result<(), String> {
    let conn = connect(addr).await?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    // SNI carries the check's Host when it names one, else the address.
    let name = match &h.host {
        Some(host) => {
            ServerName::try_from(host.clone()).map_err(|e| format!("host {host:?}: {e}"))?
        }
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, conn)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    get(tls, addr, h).await
}

/// Sends the GET on an open connection (HTTP/1.1, with hyper: chunked
/// bodies, keep-alive servers and the rest of the protocol as a browser
/// sees them) and judges the answer, whose body is read up to 1 MiB.
async fn get<C: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    conn: C,
    addr: SocketAddr,
    h: &HttpProbe,
) -> Result<(), String> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper::body::Bytes;
    use hyper::header::{CONNECTION, HOST, USER_AGENT};

    let host = h.host.clone().unwrap_or_else(|| addr.to_string());
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(conn))
            .await
            .map_err(|e| format!("HTTP with {addr}: {e}"))?;
    let request = hyper::Request::get(h.path.as_str())
        .header(HOST, host)
        .header(USER_AGENT, "lbfabric-check")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("path {:?}: {e}", h.path))?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("the answer: {e}"))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    // The connection is driven beside the request, in this task.
    let mut answer = std::pin::pin!(answer);
    let mut connection = std::pin::pin!(connection);
    let (status, body) = tokio::select! {
        a = &mut answer => a?,
        c = &mut connection => {
            c.map_err(|e| format!("HTTP with {addr}: {e}"))?;
            answer.await?
        }
    };
    http_verdict(h, status, &body)
}

/// Whether an answer passes the check's status, regex and digest rules.
pub fn http_verdict(h: &HttpProbe, status: u16, body: &[u8]) -> Result<(), String> {
    if !h.status.contains(&status) {
        return Err(format!("status {status}, expected {:?}", h.status));
    }
    if let Some(want) = &h.digest {
        use md5::Digest;
        let got: String = md5::Md5::digest(body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if &got != want {
            return Err(format!("body digest {got}, expected {want}"));
        }
    }
    if let Some(pattern) = &h.body_regex {
        // The controller accepted the pattern, so it compiles.
        let re = regex::bytes::Regex::new(pattern).map_err(|e| e.to_string())?;
        if !re.is_match(body) {
            return Err(format!("body does not match {pattern:?}"));
        }
    }
    Ok(())
}

/// Accepts any certificate chain (see the module docs), but checks that the
/// handshake was signed with the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    lb_proto::handshake_signatures!(0);
}
