//! HTTPS for the API: a rustls server configuration from PEM files (`tls_cert_file`,
//! `tls_key_file`), with the `ring` provider reqwest already brings, so no second crypto
//! library is built. ALPN offers HTTP/2 and HTTP/1.1.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key that cannot be used. Each names the configuration key and file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("configuration key `{key}`: cannot read {path}: {message}")]
    Read {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("configuration key `{key}`: {path} holds no {what} in PEM form")]
    Empty {
        key: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("configuration keys `tls_cert_file`/`tls_key_file`: {0}")]
    Rustls(String),
}

/// Reads the PEM certificate chain at `cert` (leaf first) and the private key at `key`, and
/// builds the server configuration. Errors name the key and the file.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let read = |k: &'static str, p: &Path| {
        std::fs::read(p).map_err(|e| TlsError::Read {
            key: k,
            path: p.display().to_string(),
            message: e.to_string(),
        })
    };
    let cert_pem = read("tls_cert_file", cert)?;
    let key_pem = read("tls_key_file", key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            key: "tls_cert_file",
            path: cert.display().to_string(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Empty {
            key: "tls_cert_file",
            path: cert.display().to_string(),
            what: "certificate",
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            key: "tls_key_file",
            path: key.display().to_string(),
            what: "private key",
        },
        other => TlsError::Read {
            key: "tls_key_file",
            path: key.display().to_string(),
            message: other.to_string(),
        },
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn a_generated_certificate_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(dir.path(), "c.pem", &ck.cert.pem());
        let key = write(dir.path(), "k.pem", &ck.key_pair.serialize_pem());
        let cfg = server_config(&cert, &key).unwrap();
        assert_eq!(cfg.alpn_protocols[0], b"h2");
    }

    #[test]
    fn problems_name_the_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(dir.path(), "c.pem", &ck.cert.pem());
        let key = write(dir.path(), "k.pem", &ck.key_pair.serialize_pem());
        let junk = write(dir.path(), "junk.pem", "not a pem file\n");
        let missing = dir.path().join("missing.pem");

        let e = server_config(&missing, &key).unwrap_err().to_string();
        assert!(
            e.contains("`tls_cert_file`") && e.contains("missing.pem"),
            "{e}"
        );
        let e = server_config(&junk, &key).unwrap_err().to_string();
        assert!(
            e.contains("`tls_cert_file`") && e.contains("no certificate"),
            "{e}"
        );
        let e = server_config(&cert, &junk).unwrap_err().to_string();
        assert!(
            e.contains("`tls_key_file`") && e.contains("no private key"),
            "{e}"
        );
        // A key that does not belong to the certificate.
        let other = rcgen::KeyPair::generate().unwrap();
        let wrong = write(dir.path(), "wrong.pem", &other.serialize_pem());
        let e = server_config(&cert, &wrong).unwrap_err().to_string();
        assert!(e.contains("tls_key_file"), "{e}");
    }
}
