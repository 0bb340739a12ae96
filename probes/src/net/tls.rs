//! TLS as every engine speaks it: rustls with the ring provider, the webpki roots (or a private
//! CA file), verification on unless a probe says `insecure`, no session resumption so every
//! handshake is a full one — and what a handshake tells about the peer: certificate expiry,
//! issuer, subject, SANs and the protocol version.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, ProtocolVersion, RootCertStore,
    SignatureScheme,
};

/// A verifying and an accepting client config with the same ALPN, built once; cloning shares
/// them.
#[derive(Clone)]
pub struct TlsConfigs {
    verified: Arc<ClientConfig>,
    insecure: Arc<ClientConfig>,
    alpn: Vec<Vec<u8>>,
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfigs")
            .field("alpn", &self.alpn)
            .finish_non_exhaustive()
    }
}

impl Default for TlsConfigs {
    fn default() -> Self {
        TlsConfigs::new(&[])
    }
}

impl TlsConfigs {
    /// Both configs, offering these ALPN protocols (none when empty).
    pub fn new(alpn: &[&[u8]]) -> TlsConfigs {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let verified = client_config(&provider())
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConfigs {
            verified: Arc::new(finish(verified, &alpn)),
            insecure: Arc::new(finish(insecure_builder(), &alpn)),
            alpn,
        }
    }

    /// The accepting config when `insecure`, else the verifying one.
    pub fn get(&self, insecure: bool) -> Arc<ClientConfig> {
        if insecure {
            Arc::clone(&self.insecure)
        } else {
            Arc::clone(&self.verified)
        }
    }

    /// A config for one handshake: the accepting one when `insecure`, one trusting only the CA
    /// certificates of `ca_file` (PEM) when given, else the shared verifying one. The file is
    /// read each time so a rotated CA bundle needs no reload.
    pub fn for_probe(
        &self,
        insecure: bool,
        ca_file: Option<&Path>,
    ) -> Result<Arc<ClientConfig>, String> {
        match ca_file {
            Some(path) if !insecure => {
                let roots = load_ca_file(path)?;
                let config = client_config(&provider())
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Ok(Arc::new(finish(config, &self.alpn)))
            }
            _ => Ok(self.get(insecure)),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Starts a client config with the ring provider and its default protocol versions.
fn client_config(
    provider: &Arc<CryptoProvider>,
) -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports rustls' default protocol versions")
}

fn insecure_builder() -> ClientConfig {
    let provider = provider();
    client_config(&provider)
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        }))
        .with_no_client_auth()
}

/// What every config shares: a full handshake every time (no resumption, no early data).
fn finish(mut config: ClientConfig, alpn: &[Vec<u8>]) -> ClientConfig {
    config.alpn_protocols = alpn.to_vec();
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    config
}

/// The CA certificates of a PEM file as a root store.
pub fn load_ca_file(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read the CA file {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM in the CA file {shown}: {e}"))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("the CA file {shown} holds no usable certificate"));
    }
    Ok(roots)
}

/// The name to send as SNI and verify the certificate against: an IP literal is verified
/// against the certificate's IP SANs (and sent without SNI).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("cannot use {host} as a TLS server name: {e}"))
}

/// Certificate verifier for `insecure` probes: any chain is accepted, but the handshake
/// signatures are still checked so the session is with the holder of the presented key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The earliest `notAfter` among the certificates, in unix seconds; unparsable ones are skipped.
pub fn earliest_not_after(certs: &[CertificateDer<'_>]) -> Option<i64> {
    certs
        .iter()
        .filter_map(|der| match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => Some(cert.validity().not_after.timestamp()),
            Err(e) => {
                tracing::debug!(error = %e, "Peer certificate could not be parsed.");
                None
            }
        })
        .min()
}

/// What one TLS handshake told about the peer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Handshake {
    /// The negotiated protocol, as blackbox_exporter names it: `TLS 1.2`, `TLS 1.3`.
    pub version: Option<String>,
    /// Unix seconds of the earliest `notAfter` in the presented chain.
    pub not_after: Option<i64>,
    /// The leaf certificate's subject, e.g. `CN=api.example.com, O=Example`.
    pub subject: Option<String>,
    /// The leaf certificate's issuer.
    pub issuer: Option<String>,
    /// The leaf's subject alternative names: DNS names and IP addresses.
    pub sans: Vec<String>,
}

impl Handshake {
    /// Reads what a finished client handshake tells.
    pub fn of(conn: &ClientConnection) -> Handshake {
        let certs = conn.peer_certificates().unwrap_or_default();
        let mut out = Handshake {
            version: conn.protocol_version().map(version_name),
            not_after: earliest_not_after(certs),
            ..Handshake::default()
        };
        if let Some(leaf) = certs.first()
            && let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf)
        {
            out.subject = Some(cert.subject().to_string());
            out.issuer = Some(cert.issuer().to_string());
            if let Ok(Some(san)) = cert.subject_alternative_name() {
                out.sans = san
                    .value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        x509_parser::extensions::GeneralName::IPAddress(b) => ip_text(b),
                        _ => None,
                    })
                    .collect();
            }
        }
        out
    }
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::from(b).to_string()),
        _ => None,
    }
}

/// `TLS 1.3`, `TLS 1.2`, ... (the spelling blackbox_exporter's `probe_tls_version_info` uses).
pub fn version_name(v: ProtocolVersion) -> String {
    match v {
        ProtocolVersion::TLSv1_3 => "TLS 1.3".into(),
        ProtocolVersion::TLSv1_2 => "TLS 1.2".into(),
        ProtocolVersion::TLSv1_1 => "TLS 1.1".into(),
        ProtocolVersion::TLSv1_0 => "TLS 1.0".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_are_verified_as_addresses() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("db.example.com"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("bad name").is_err());
    }

    #[test]
    fn versions_read_like_blackbox_exporter() {
        assert_eq!(version_name(ProtocolVersion::TLSv1_3), "TLS 1.3");
        assert_eq!(version_name(ProtocolVersion::TLSv1_2), "TLS 1.2");
    }

    #[test]
    fn a_missing_ca_file_is_explained() {
        let e = load_ca_file(Path::new("/nonexistent/ca.pem")).expect_err("missing");
        assert!(
            e.starts_with("cannot read the CA file /nonexistent/ca.pem"),
            "{e}"
        );
    }
}
