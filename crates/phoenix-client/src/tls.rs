//! How the client trusts servers over HTTPS and `wss://`: the web roots (the ones reqwest's
//! `rustls-tls` uses), plus the certificates of an optional CA file (a private PKI). One
//! rustls configuration, with the `ring` provider the workspace already builds, serves the
//! REST client and the WebSocket hub alike, so both trust the same servers.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::ClientError;

/// The rustls client configuration trusting the web roots and, when given, the CA
/// certificates in the PEM file `ca_file`. Errors name the file and the problem.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots
                .add(cert)
                .map_err(|e| ca_error(path, format!("unusable certificate: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // HTTP/1.1 only: the REST client speaks it, and a WebSocket upgrade needs it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The certificates of a PEM file: at least one, or an error saying why not.
pub(crate) fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let pem = std::fs::read(path).map_err(|e| ca_error(path, format!("cannot read it: {e}")))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(ca_error(
            path,
            "not PEM: no `-----BEGIN CERTIFICATE-----` block (a DER file converts with `openssl x509 -inform der -in FILE -out ca.pem`)",
        ));
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ca_error(path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ca_error(
            path,
            "holds no certificate (no `-----BEGIN CERTIFICATE-----` block)",
        ));
    }
    Ok(certs)
}

fn ca_error(path: &Path, reason: impl Into<String>) -> ClientError {
    ClientError::CaFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// The rustls error somewhere in `e`'s chain (also inside `io::Error`s, whose `source()`
/// skips the error they wrap).
pub(crate) fn rustls_cause<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(r) = rustls_cause(inner) {
                return Some(r);
            }
        }
        current = err.source();
    }
    None
}

/// Whether a TLS failure is the server's certificate being refused (unknown CA, wrong name,
/// expired), as opposed to a broken connection.
pub(crate) fn is_untrusted(e: &rustls::Error) -> bool {
    matches!(e, rustls::Error::InvalidCertificate(_))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write(dir: &Path, name: &str, body: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn ca_file_problems_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = client_config(Some(&missing)).unwrap_err().to_string();
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );

        let der = write(dir.path(), "ca.der", &[0x30, 0x82, 0x01, 0x0a, 0x02]);
        let e = client_config(Some(&der)).unwrap_err().to_string();
        assert!(e.contains("ca.der") && e.contains("not PEM"), "{e}");

        let key = write(
            dir.path(),
            "key.pem",
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
        );
        let e = client_config(Some(&key)).unwrap_err().to_string();
        assert!(e.contains("key.pem") && e.contains("no certificate"), "{e}");

        let broken = write(
            dir.path(),
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        );
        let e = client_config(Some(&broken)).unwrap_err().to_string();
        assert!(
            e.contains("broken.pem") && e.contains("not valid PEM"),
            "{e}"
        );
    }

    #[test]
    fn a_generated_ca_loads_with_the_web_roots() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let path = write(dir.path(), "ca.pem", ca.cert.pem().as_bytes());
        assert_eq!(read_ca_file(&path).unwrap().len(), 1);
        client_config(Some(&path)).unwrap();
    }

    #[test]
    fn without_a_ca_file_the_web_roots_are_trusted() {
        let config = client_config(None).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
