//! TLS for every chatfeed connection, in one place: the cluster CA and node certificates
//! (generated with rcgen, written with private permissions, never overwritten), loading them with
//! errors that name the file, the server configurations (mutual TLS for the Raft port, optional
//! client certificates for the master API, server-only for workers), the client `Endpoint` every
//! process dials with, the check that a caller holds a cluster certificate, and recognising a TLS
//! failure in a connection error.
//!
//! One node certificate per host, used by every member and worker there both as server and as
//! client certificate (EKU serverAuth + clientAuth); its SANs are the host's names and addresses,
//! so a client checks the name it dialled. Clients hold only the CA certificate.

use crate::config::{Config, TlsMode};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::transport::Endpoint;

mod accept;
mod dial;
mod lean;
mod tickets;
pub use accept::{Acceptor, HANDSHAKE_TIMEOUT, TlsConnection};
pub use dial::{Dial, Handshakes};
pub use lean::LeanTls;

/// The CA certificate, in every `[tls] dir`.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key: only where certificates are issued.
pub const CA_KEY: &str = "ca.key";
/// This host's node certificate (server and client).
pub const NODE_CERT: &str = "node.pem";
/// This host's node key.
pub const NODE_KEY: &str = "node.key";
/// A CA certificate is valid this many years from the start of the year it was made.
const CA_YEARS: i32 = 20;
/// A node certificate is valid this many years (re-issue with `chatfeed-master certs`).
const NODE_YEARS: i32 = 10;

/// A problem with certificate files, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS file {path} is missing: {hint}")]
    Missing { path: PathBuf, hint: &'static str },
    #[error("cannot read TLS file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS file {path} is not usable: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write TLS file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating a certificate: {0}")]
    Generate(String),
    #[error("TLS set-up: {0}")]
    Setup(String),
}

const MISSING_NODE_HINT: &str = "`chatfeed-master start` creates the certificates of a one-host \
    cluster; for several hosts, issue them with `chatfeed-master certs` and copy each host's \
    directory (see the README); or set [tls] mode = \"plaintext\"";
const MISSING_CA_HINT: &str = "give the cluster's CA certificate (--ca, CHATFEED_CA, or [tls] dir \
    of the configuration), or --plaintext for a plaintext cluster";

/// The CA, node and key files of a `[tls] dir`.
#[derive(Clone, Debug)]
pub struct Files {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
}

impl Files {
    pub fn in_dir(dir: &Path) -> Files {
        Files {
            ca_cert: dir.join(CA_CERT),
            ca_key: dir.join(CA_KEY),
            node_cert: dir.join(NODE_CERT),
            node_key: dir.join(NODE_KEY),
        }
    }
}

/// Which client certificates a server asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// A certificate of the cluster CA is required: the handshake fails without one (Raft).
    Required,
    /// A certificate is verified when given, not required (the master API: clients have none;
    /// cluster-only calls check `require_cluster_peer`).
    Optional,
    /// None is asked for (workers: only clients call them).
    None,
}

struct Material {
    ca_pem: Vec<u8>,
    /// This host's node certificate and key (cluster processes); clients have none.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The rustls client configuration built from these, with its session cache.
    client: dial::ClientSide,
}

/// What a process uses for its connections: plaintext, or TLS with the cluster CA and, for
/// cluster processes, the node identity. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tls(Option<Arc<Material>>);

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Tls(plaintext)"),
            Some(m) if m.identity.is_some() => f.write_str("Tls(node)"),
            Some(_) => f.write_str("Tls(client)"),
        }
    }
}

impl Tls {
    /// No TLS at all.
    pub fn plaintext() -> Tls {
        Tls(None)
    }

    /// A client: verifies servers with `ca_pem`, presents no certificate.
    pub fn client(ca_pem: Vec<u8>) -> Tls {
        Tls(Some(Arc::new(Material {
            ca_pem,
            identity: None,
            client: Default::default(),
        })))
    }

    /// A cluster process: verifies peers with `ca_pem`, presents `cert_pem`/`key_pem`.
    pub fn node(ca_pem: Vec<u8>, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Tls {
        Tls(Some(Arc::new(Material {
            ca_pem,
            identity: Some((cert_pem, key_pem)),
            client: Default::default(),
        })))
    }

    /// A client that trusts the CA certificate in `path`.
    pub fn load_client(path: &Path) -> Result<Tls, TlsError> {
        let ca = read_pem(path, MISSING_CA_HINT, PemKind::Certificate)?;
        Ok(Tls::client(ca))
    }

    /// A cluster process of `config`: plaintext when the configuration says so, else the CA and
    /// this host's node certificate from `[tls] dir`.
    pub fn for_cluster(config: &Config) -> Result<Tls, TlsError> {
        if config.tls.mode == TlsMode::Plaintext {
            return Ok(Tls::plaintext());
        }
        let f = Files::in_dir(&config.tls.dir);
        let ca = read_pem(&f.ca_cert, MISSING_NODE_HINT, PemKind::Certificate)?;
        let cert = read_pem(&f.node_cert, MISSING_NODE_HINT, PemKind::Certificate)?;
        let key = read_pem(&f.node_key, MISSING_NODE_HINT, PemKind::Key)?;
        Ok(Tls::node(ca, cert, key))
    }

    /// A client of `config`'s cluster: plaintext when the configuration says so, else the CA of
    /// `[tls] dir` only.
    pub fn client_for(config: &Config) -> Result<Tls, TlsError> {
        match config.tls.mode {
            TlsMode::Plaintext => Ok(Tls::plaintext()),
            TlsMode::Tls => Tls::load_client(&Files::in_dir(&config.tls.dir).ca_cert),
        }
    }

    pub fn is_plaintext(&self) -> bool {
        self.0.is_none()
    }

    /// How to dial `addr` (`host:port`): `http://` in plaintext; else TLS, verifying the server
    /// against the CA with the name taken from the address's host (an IP address or a DNS name of
    /// the node certificate), presenting the node identity if this is a cluster process, and
    /// resuming the TLS session of an earlier connection to the host when there is one (see
    /// `tls/dial.rs`).
    pub fn endpoint(&self, addr: &str) -> Result<Dial, TlsError> {
        // With TLS the connector does the handshake; tonic sees a plain `http` endpoint.
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| TlsError::Setup(format!("bad address {addr:?}: {e}")))?;
        let Some(m) = &self.0 else {
            return Ok(Dial::plaintext(endpoint));
        };
        let config = m.client.config(m)?;
        Dial::tls(endpoint, config, m.client.counts(), host_of(addr))
    }

    /// The same certificates with a client configuration and session cache of its own: what
    /// another process would have. The bench gives each simulated user one, so that no user
    /// resumes a TLS session another user's connection made.
    pub fn separate(&self) -> Tls {
        Tls(self.0.as_ref().map(|m| {
            Arc::new(Material {
                ca_pem: m.ca_pem.clone(),
                identity: m.identity.clone(),
                client: Default::default(),
            })
        }))
    }

    /// The TLS handshakes this `Tls` (and its clones) completed as a client, full and resumed.
    pub fn handshakes(&self) -> Handshakes {
        self.0
            .as_ref()
            .map(|m| m.client.handshakes())
            .unwrap_or_default()
    }

    /// The rustls client configuration this `Tls` dials with, `None` in plaintext (for
    /// measurements: `examples/handshake_cost.rs`).
    pub fn rustls_client_config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
        match &self.0 {
            None => Ok(None),
            Some(m) => m.client.config(m).map(Some),
        }
    }

    /// The TLS side of a server port asking for client certificates as `auth` says, `None` in
    /// plaintext. A server needs the node identity. Serve with
    /// `serve_with_incoming(acceptor.accept(incoming))` (see `tls/accept.rs`).
    pub fn acceptor(&self, auth: ClientAuth) -> Result<Option<Acceptor>, TlsError> {
        let Some(m) = &self.0 else {
            return Ok(None);
        };
        let Some((cert, key)) = &m.identity else {
            return Err(TlsError::Setup(
                "a server needs a node certificate, and only a CA was loaded".into(),
            ));
        };
        Acceptor::new(&m.ca_pem, cert, key, auth).map(Some)
    }

    /// `Ok` when the caller presented a certificate of the cluster CA (always in plaintext mode,
    /// where nothing can be checked). The server verified the certificate during the handshake
    /// (`ClientAuth::Optional` refuses one from another CA), so its presence is the proof.
    /// `what` names the refused call for the message.
    #[allow(clippy::result_large_err)]
    pub fn require_cluster_peer<T>(
        &self,
        request: &tonic::Request<T>,
        what: &str,
    ) -> Result<(), tonic::Status> {
        if self.is_plaintext() {
            return Ok(());
        }
        match request.peer_certs() {
            Some(certs) if !certs.is_empty() => Ok(()),
            _ => Err(tonic::Status::unauthenticated(format!(
                "{what} is for the cluster's own processes: connect with a node certificate \
                 issued by the cluster CA"
            ))),
        }
    }

    /// The plaintext warning each process logs at start (`None` with TLS).
    pub fn plaintext_warning(&self, what: &str) -> Option<String> {
        self.is_plaintext().then(|| {
            format!(
                "plaintext: [tls] mode = \"plaintext\": anyone who can reach {what} can call it \
                 and read what it sends; use TLS (the default) beyond a trusted test network"
            )
        })
    }
}

/// rustls's aws-lc-rs provider with TLS 1.3's AES-128-GCM-SHA256 first (the default puts
/// AES-256-GCM-SHA384 first) and X25519 the key exchange offered first, alone (no post-quantum
/// hybrid: its ML-KEM would add to every handshake, and a crowd of clients reconnecting at once
/// pays for each). SHA-256 runs on the CPU's SHA instructions, SHA-384 without, and each
/// handshake's key schedule is a few dozen hashes. AES-128 is what TLS 1.3 requires every
/// implementation to offer, and what browsers choose first.
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider, kx_group};
    let mut p = default_provider();
    let first = cipher_suite::TLS13_AES_128_GCM_SHA256;
    p.cipher_suites.retain(|s| s.suite() != first.suite());
    p.cipher_suites.insert(0, first);
    p.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(p)
}

/// The CA certificates of `ca_pem`, as the roots a client or a server verifies its peer with.
fn ca_roots(ca_pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("the CA certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("the CA certificate: {e}"))?;
    }
    Ok(roots)
}

/// A node's certificate chain and private key, from their PEM.
type NodeIdentity = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

fn node_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<NodeIdentity, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the node certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("the node key: {e}"))?;
    Ok((chain, key))
}

/// The host of `host:port` without IPv6 brackets: the name the server certificate must hold.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// When `err` (or an error it wraps) is a TLS failure — unknown CA, wrong name, refused
/// certificate — one line saying so; `None` for other errors (refused connections, timeouts),
/// which callers may retry. A TLS failure does not go away by retrying.
pub fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(r));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(describe(r));
        }
        cur = e.source();
    }
    None
}

fn describe(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let why = match e {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the server's certificate is not from the given CA (wrong CA file, or another cluster)"
                .to_string()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the server's certificate does not hold the name or address dialled (issue node \
             certificates with every name and address of the host)"
                .to_string()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server's certificate has expired".to_string()
        }
        E::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateRequired) => {
            "the server refused this process's certificate (not from the cluster CA, or none)"
                .to_string()
        }
        other => other.to_string(),
    };
    format!("TLS handshake failed: {why}")
}

#[derive(Clone, Copy)]
enum PemKind {
    Certificate,
    Key,
}

/// Reads a PEM file and checks that it holds what it should, naming the file when not.
fn read_pem(path: &Path, hint: &'static str, kind: PemKind) -> Result<Vec<u8>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TlsError::Missing {
                path: path.to_owned(),
                hint,
            });
        }
        Err(source) => {
            return Err(TlsError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let invalid = |reason: &str| TlsError::Invalid {
        path: path.to_owned(),
        reason: reason.into(),
    };
    match kind {
        PemKind::Certificate => {
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(&format!("not a PEM certificate ({e})")))?;
            if certs.is_empty() {
                return Err(invalid("holds no PEM certificate"));
            }
        }
        PemKind::Key => {
            PrivateKeyDer::from_pem_slice(&bytes)
                .map_err(|e| invalid(&format!("not a PEM private key ({e})")))?;
        }
    }
    Ok(bytes)
}

/// What `ensure_node_certs` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Ensured {
    /// Everything was there; nothing was written.
    Existing,
    /// The node certificate was issued (and the CA created when `created_ca`).
    Created { created_ca: bool },
}

/// Makes sure `dir` holds a CA and a node certificate for `sans`: creates what is missing (the
/// CA first, when neither its certificate nor its key exists), never overwrites a file. Used by
/// `chatfeed-master start` on a one-host cluster's first start.
pub fn ensure_node_certs(dir: &Path, sans: &[String]) -> Result<Ensured, TlsError> {
    let f = Files::in_dir(dir);
    if f.node_cert.exists() && f.node_key.exists() && f.ca_cert.exists() {
        return Ok(Ensured::Existing);
    }
    if f.node_cert.exists() != f.node_key.exists() {
        let (present, absent) = if f.node_cert.exists() {
            (&f.node_cert, &f.node_key)
        } else {
            (&f.node_key, &f.node_cert)
        };
        return Err(TlsError::Invalid {
            path: absent.clone(),
            reason: format!(
                "is missing while {} exists: restore it, or remove both to issue a new pair",
                present.display()
            ),
        });
    }
    if f.node_cert.exists() {
        // A node pair without its CA: a new CA would not have signed it.
        return Err(TlsError::Missing {
            path: f.ca_cert.clone(),
            hint: "the node certificate is there but not the CA that issued it: restore ca.pem",
        });
    }
    let created_ca = ensure_ca(dir)?;
    issue_node(dir, dir, "node", sans)?;
    Ok(Ensured::Created { created_ca })
}

/// Creates the cluster CA (`ca.pem`, `ca.key`) in `dir` unless it exists; true when created.
/// A CA certificate without its key (or the reverse) is an error: it is never replaced.
pub fn ensure_ca(dir: &Path) -> Result<bool, TlsError> {
    let f = Files::in_dir(dir);
    match (f.ca_cert.exists(), f.ca_key.exists()) {
        (true, _) => return Ok(false),
        (false, true) => {
            return Err(TlsError::Invalid {
                path: f.ca_cert.clone(),
                reason: format!(
                    "is missing while {} exists: restore it (a new CA would not trust the \
                     certificates already issued)",
                    f.ca_key.display()
                ),
            });
        }
        (false, false) => {}
    }
    create_dir_private(dir)?;
    let key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "chatfeed cluster CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_YEARS);
    let cert = params.self_signed(&key).map_err(gen_err)?;
    write_new(&f.ca_key, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&f.ca_cert, cert.pem().as_bytes(), 0o644)?;
    Ok(true)
}

/// Issues a node certificate for `sans` (DNS names and IP addresses) signed by the CA in
/// `ca_dir`, into `out_dir` as `node.pem`/`node.key`, with a copy of `ca.pem` when `out_dir`
/// is another directory. Refuses to overwrite an existing node certificate or key.
pub fn issue_node(
    ca_dir: &Path,
    out_dir: &Path,
    name: &str,
    sans: &[String],
) -> Result<(), TlsError> {
    if sans.is_empty() {
        return Err(TlsError::Generate(format!(
            "node {name}: at least one name or address is needed"
        )));
    }
    let ca = Files::in_dir(ca_dir);
    let out = Files::in_dir(out_dir);
    for p in [&out.node_cert, &out.node_key] {
        if p.exists() {
            return Err(TlsError::Invalid {
                path: p.clone(),
                reason: "already exists; it is never overwritten (remove it to issue a new one)"
                    .into(),
            });
        }
    }
    let ca_pem = read_pem(
        &ca.ca_cert,
        "create the CA first (chatfeed-master certs creates one when absent)",
        PemKind::Certificate,
    )?;
    let ca_key_pem = read_pem(
        &ca.ca_key,
        "node certificates are issued where the CA key is",
        PemKind::Key,
    )?;
    let ca_key_text = String::from_utf8_lossy(&ca_key_pem);
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_text).map_err(|e| TlsError::Invalid {
        path: ca.ca_key.clone(),
        reason: format!("not a usable CA key ({e})"),
    })?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&String::from_utf8_lossy(&ca_pem), ca_key)
        .map_err(|e| TlsError::Invalid {
            path: ca.ca_cert.clone(),
            reason: format!("not a usable CA certificate ({e})"),
        })?;
    let mut params = rcgen::CertificateParams::new(sans.to_vec()).map_err(|e| {
        TlsError::Generate(format!("node {name}: a name or address is not valid ({e})"))
    })?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("chatfeed node {name}"));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, NODE_YEARS);
    let key = rcgen::KeyPair::generate().map_err(gen_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
    create_dir_private(out_dir)?;
    if out.ca_cert != ca.ca_cert && !out.ca_cert.exists() {
        write_new(&out.ca_cert, &ca_pem, 0o644)?;
    }
    write_new(&out.node_key, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&out.node_cert, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

/// Valid from the start of last year (clocks differ) for `years` years.
fn set_validity(params: &mut rcgen::CertificateParams, years: i32) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let year = 1970 + (now / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn create_dir_private(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Writes a new file with `mode` (fails if it exists: nothing is ever overwritten).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

/// The names and addresses a node certificate of this host should hold: `hosts` (the hosts of
/// its members' and workers' addresses) plus `127.0.0.1` and `localhost`, without wildcard
/// addresses and duplicates.
pub fn local_sans<'a>(hosts: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in hosts
        .into_iter()
        .chain(["127.0.0.1", "localhost"])
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
    {
        let wildcard = h
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        if !h.is_empty() && !wildcard && !out.iter().any(|o| o == h) {
            out.push(h.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests;
