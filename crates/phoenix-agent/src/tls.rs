//! How the agent trusts the API over HTTPS: the system's web roots by default, or only the
//! CA in `tls_ca_file` (a private PKI), and optionally a pinned SHA-256 fingerprint of the
//! server's leaf certificate, checked *in addition to* the chain. A pin alone does not skip
//! chain verification: pin a self-signed certificate by also giving it as `tls_ca_file`.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// A trust setting the agent cannot use; names the key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or parsed.
    #[error("configuration key `tls_ca_file`: {0}")]
    CaFile(String),
    /// The pin is not a SHA-256 fingerprint.
    #[error("configuration key `tls_pinned_sha256`: {0}")]
    Pin(String),
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Rustls(String),
}

/// Parses a SHA-256 fingerprint: 64 hex digits, optionally `sha256:`-prefixed and
/// colon-separated (`openssl x509 -fingerprint -sha256` prints `AB:CD:…`).
pub fn parse_pin(raw: &str) -> Result<[u8; 32], TlsError> {
    let trimmed = raw.trim();
    let body = trimmed
        .strip_prefix("sha256:")
        .or_else(|| trimmed.strip_prefix("SHA256:"))
        .or_else(|| trimmed.strip_prefix("sha256 Fingerprint="))
        .unwrap_or(trimmed);
    let hexits: String = body.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&hexits)
        .map_err(|_| TlsError::Pin("must be 64 hexadecimal digits (colons allowed)".into()))?;
    bytes
        .try_into()
        .map_err(|_| TlsError::Pin("must be 64 hexadecimal digits (a SHA-256 digest)".into()))
}

/// The SHA-256 fingerprint of a DER certificate, as lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The rustls client configuration for the given trust settings, or `None` when neither is
/// set (reqwest's defaults then apply: the web roots).
pub fn client_config(
    ca_file: Option<&Path>,
    pin: Option<&str>,
) -> Result<Option<rustls::ClientConfig>, TlsError> {
    if ca_file.is_none() && pin.is_none() {
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| TlsError::CaFile(format!("cannot read {}: {e}", path.display())))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| TlsError::CaFile(format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(TlsError::CaFile(format!(
                    "{} holds no PEM certificate",
                    path.display()
                )));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    TlsError::CaFile(format!("{}: unusable certificate: {e}", path.display()))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match pin {
        Some(raw) => Arc::new(PinnedVerifier {
            inner: webpki,
            pin: parse_pin(raw)?,
        }),
        None => webpki,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous() // only to install a verifier that checks *more* than the default
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // The agent's HTTP client speaks HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(config))
}

/// The web PKI verification, then the leaf's fingerprint against the pin.
#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pin: [u8; 32],
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if seen != self.pin {
            return Err(rustls::Error::General(format!(
                "server certificate sha256 {} does not match tls_pinned_sha256 {}",
                hex::encode(seen),
                hex::encode(self.pin)
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pins_parse_in_the_usual_spellings() {
        let hexs = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        for raw in [
            hexs.clone(),
            format!("sha256:{hexs}"),
            colons.clone(),
            format!("sha256 Fingerprint={colons}"),
        ] {
            assert_eq!(parse_pin(&raw).unwrap(), [0xab; 32], "{raw}");
        }
        for bad in ["", "abcd", &"zz".repeat(32), &"ab".repeat(33)] {
            let e = parse_pin(bad).unwrap_err().to_string();
            assert!(e.contains("`tls_pinned_sha256`"), "{e}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("ca.pem");
        std::fs::write(&junk, "nothing here\n").unwrap();
        let e = client_config(Some(&junk), None).unwrap_err().to_string();
        assert!(e.contains("`tls_ca_file`") && e.contains("no PEM"), "{e}");
        let missing = dir.path().join("nope.pem");
        let e = client_config(Some(&missing), None).unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
        assert!(client_config(None, None).unwrap().is_none());
    }
}
