//! The HTTPS side of the workers' HTTP API (`[web] cert`, `[web] key`): a certificate an
//! operator got for the names browsers use (from a CA browsers trust, unlike the cluster's own),
//! loaded into a rustls server configuration with the cluster's crypto provider. Browsers and
//! HTTP clients speak HTTP/2 or HTTP/1.1 over it (ALPN); no client certificate is asked for
//! (authorization is the session token). Read once at the worker's start and by
//! `chatfeed-master check-config`, so a bad file is named before anything serves.

use super::TlsError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The rustls server configuration for the HTTP API from the PEM files `cert` (the chain, leaf
/// first) and `key`. Errors name the file and what is wrong with it.
pub fn web_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => TlsError::Missing {
                path: path.to_owned(),
                hint: "[web] cert and key name the HTTPS certificate and its key (PEM files, \
                       relative to chatfeed.toml); or remove them to serve plain HTTP on a \
                       loopback [web] listen",
            },
            _ => TlsError::Read {
                path: path.to_owned(),
                source,
            },
        })
    };
    let invalid = |path: &Path, reason: String| TlsError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, format!("not a PEM certificate chain ({e})")))?;
    if chain.is_empty() {
        return Err(invalid(cert, "holds no PEM certificate".into()));
    }
    let private = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| invalid(key, format!("not a PEM private key ({e})")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(super::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            invalid(
                key,
                format!("does not go with the certificate {} ({e})", cert.display()),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate and its key load; a missing file, a file that is no PEM, and a key of
    /// another certificate are refused naming the file. Fails if a bad file were accepted (the
    /// worker would start and fail every handshake).
    #[test]
    fn loads_and_refuses_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str| {
            let k = rcgen::KeyPair::generate().unwrap();
            let c = rcgen::CertificateParams::new(vec!["localhost".into()])
                .unwrap()
                .self_signed(&k)
                .unwrap();
            let (cp, kp) = (
                dir.path().join(format!("{name}.pem")),
                dir.path().join(format!("{name}.key")),
            );
            std::fs::write(&cp, c.pem()).unwrap();
            std::fs::write(&kp, k.serialize_pem()).unwrap();
            (cp, kp)
        };
        let (c1, k1) = make("a");
        let (_, k2) = make("b");
        web_server_config(&c1, &k1).expect("a certificate and its key");
        let missing = dir.path().join("nope.pem");
        let e = web_server_config(&missing, &k1).unwrap_err().to_string();
        assert!(e.contains("nope.pem") && e.contains("missing"), "{e}");
        let e = web_server_config(&k1, &k1).unwrap_err().to_string();
        assert!(e.contains("a.key") && e.contains("certificate"), "{e}");
        let e = web_server_config(&c1, &c1).unwrap_err().to_string();
        assert!(e.contains("a.pem") && e.contains("private key"), "{e}");
        let e = web_server_config(&c1, &k2).unwrap_err().to_string();
        assert!(e.contains("b.key") && e.contains("does not go"), "{e}");
    }
}
