//! TLS for every chatfeed connection, in one place: the cluster CA and the role certificates
//! (generated with rcgen, written with private permissions, never overwritten), loading them with
//! errors that name the file, the server configurations (mutual TLS for the Raft port, optional
//! client certificates for the master API, server-only for workers), the client `Endpoint` every
//! process dials with, the check of a caller's role (`Tls::require`), and recognising a TLS
//! failure in a connection error.
//!
//! Each process has a certificate of its role (`tls/role.rs`): member N uses `member-N.pem`,
//! every worker of the host `worker.pem`, both as server and as client certificate (EKU
//! serverAuth + clientAuth); their other SANs are the host's names and addresses, so a client
//! checks the name it dialled. Clients hold only the CA certificate. The role-less `node.pem` of
//! earlier releases is still read by the tools that issue (`ensure_node_certs`, `issue_node`), by
//! nothing that serves.

use crate::config::{Config, TlsMode};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::transport::Endpoint;

mod accept;
mod dial;
mod lean;
mod role;
mod tickets;
mod web;
pub use accept::{Acceptor, HANDSHAKE_TIMEOUT, TlsConnection};
pub use dial::{Dial, Handshakes};
pub use lean::LeanTls;
pub use role::{Identity, Role, identity_of};
pub use web::web_server_config;

/// The CA certificate, in every `[tls] dir`.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key: only where certificates are issued.
pub const CA_KEY: &str = "ca.key";
/// A host's role-less certificate of earlier releases (server and client); no server loads it.
pub const NODE_CERT: &str = "node.pem";
/// Its key.
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
const ROLELESS_HINT: &str = "this host has only the role-less node.pem of an earlier release: on a \
    one-host cluster, `chatfeed-master start` (scripts/MasterStartup.sh) issues the role \
    certificates from its ca.key; on several hosts, run the `chatfeed-master certs` command that \
    issued the certificates again with `--member N=NAME` for each member's host, and copy each \
    NAME/ directory to its host (README, \"Reissuing certificates\")";
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

/// The certificate and key files of `role` in `dir`: `member-2.pem` and `member-2.key`,
/// `worker.pem` and `worker.key`.
pub fn role_files(dir: &Path, role: Role) -> (PathBuf, PathBuf) {
    let stem = role.file_stem();
    (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    )
}

/// Who may make a call, by the role of its certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Callers {
    /// Members of the master group only.
    Members,
    /// Members and workers (`chatfeed.cluster.Cluster`).
    MembersAndWorkers,
    /// Workers only (`chatfeed.control.Control`).
    Workers,
    /// Operators only (`chatfeed.cluster.Admin`: backups, membership changes, key rotation).
    Operators,
}

impl Callers {
    fn admit(self, role: Role) -> bool {
        matches!(
            (self, role),
            (
                Callers::Members | Callers::MembersAndWorkers,
                Role::Member(_)
            ) | (Callers::Workers | Callers::MembersAndWorkers, Role::Worker)
                | (Callers::Operators, Role::Operator)
        )
    }

    fn describe(self) -> &'static str {
        match self {
            Callers::Members => "members of the master group",
            Callers::MembersAndWorkers => "members and workers",
            Callers::Workers => "workers",
            Callers::Operators => "operators",
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
    /// This process's certificate and key (cluster processes); clients have none.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The key (PEM) the client-facing session tickets are derived from when not the identity's
    /// own: the host's worker key, which every master and worker of the host holds, so that a
    /// client resumes its session on any of them (`tls/tickets.rs`).
    ticket_key: Option<Vec<u8>>,
    /// The rustls client configuration built from these, with its session cache.
    client: dial::ClientSide,
    /// The identities of the peers' certificates seen by `require`.
    peers: role::Identities,
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
            ticket_key: None,
            client: Default::default(),
            peers: Default::default(),
        })))
    }

    /// A cluster process: verifies peers with `ca_pem`, presents `cert_pem`/`key_pem`.
    pub fn node(ca_pem: Vec<u8>, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Tls {
        Tls::node_with_tickets(ca_pem, cert_pem, key_pem, None)
    }

    /// As `node`, with the client-facing session tickets derived from `ticket_key` (PEM) instead
    /// of the node's own key.
    pub fn node_with_tickets(
        ca_pem: Vec<u8>,
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
        ticket_key: Option<Vec<u8>>,
    ) -> Tls {
        Tls(Some(Arc::new(Material {
            ca_pem,
            identity: Some((cert_pem, key_pem)),
            ticket_key,
            client: Default::default(),
            peers: Default::default(),
        })))
    }

    /// A client that trusts the CA certificate in `path`.
    pub fn load_client(path: &Path) -> Result<Tls, TlsError> {
        let ca = read_pem(path, MISSING_CA_HINT, PemKind::Certificate)?;
        Ok(Tls::client(ca))
    }

    /// Member `id` of `config`: plaintext when the configuration says so, else the CA and
    /// `member-<id>.pem` from `[tls] dir`.
    pub fn for_member(config: &Config, id: u64) -> Result<Tls, TlsError> {
        Tls::for_role(config, Role::Member(id))
    }

    /// A worker of `config` (and the test harnesses that act as one): plaintext when the
    /// configuration says so, else the CA and `worker.pem` from `[tls] dir`.
    pub fn for_worker(config: &Config) -> Result<Tls, TlsError> {
        Tls::for_role(config, Role::Worker)
    }

    /// A process of `role` (see `for_member`, `for_worker`). A certificate file that carries
    /// another role than its name says is refused, naming both. Client-facing session tickets
    /// are derived from the host's `worker.key` when there is one (see `Material::ticket_key`).
    pub fn for_role(config: &Config, role: Role) -> Result<Tls, TlsError> {
        if config.tls.mode == TlsMode::Plaintext {
            return Ok(Tls::plaintext());
        }
        let dir = &config.tls.dir;
        let f = Files::in_dir(dir);
        let (cert_path, key_path) = role_files(dir, role);
        let hint = if !cert_path.exists() && f.node_cert.exists() {
            ROLELESS_HINT
        } else {
            MISSING_NODE_HINT
        };
        let ca = read_pem(&f.ca_cert, hint, PemKind::Certificate)?;
        let cert = read_pem(&cert_path, hint, PemKind::Certificate)?;
        let key = read_pem(&key_path, hint, PemKind::Key)?;
        let carried = first_cert_der(&cert)
            .and_then(|der| identity_of(&der))
            .map_err(|reason| TlsError::Invalid {
                path: cert_path.clone(),
                reason,
            })?
            .role;
        if carried != Some(role) {
            return Err(TlsError::Invalid {
                path: cert_path,
                reason: format!(
                    "carries the role {}, not {role} (a file renamed or copied to the wrong name?)",
                    carried.map_or("none".to_string(), |r| r.to_string())
                ),
            });
        }
        let (_, worker_key) = role_files(dir, Role::Worker);
        let ticket_key = match role {
            Role::Worker => None,
            _ => std::fs::read(&worker_key).ok(),
        };
        Ok(Tls::node_with_tickets(ca, cert, key, ticket_key))
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
                ticket_key: m.ticket_key.clone(),
                client: Default::default(),
                peers: Default::default(),
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
        // The Raft port's tickets always come from the member's own key (see `tickets.rs`).
        let tickets = match (auth, &m.ticket_key) {
            (ClientAuth::Required, _) | (_, None) => key,
            (_, Some(k)) => k,
        };
        Acceptor::new(&m.ca_pem, cert, key, tickets, auth).map(Some)
    }

    /// The identity of the caller of `request` when its certificate's role is one `callers`
    /// admits; `Ok(None)` in plaintext mode, where nothing can be checked. The server verified
    /// the certificate during the handshake (another CA's fails it), so what it says is the
    /// CA's word. Without a certificate: UNAUTHENTICATED; with a role-less one or another role:
    /// PERMISSION_DENIED, saying why. `what` names the call for the message.
    #[allow(clippy::result_large_err)]
    pub fn require<T>(
        &self,
        request: &tonic::Request<T>,
        callers: Callers,
        what: &str,
    ) -> Result<Option<Identity>, tonic::Status> {
        let Some(m) = &self.0 else {
            return Ok(None);
        };
        let certs = request.peer_certs();
        let Some(leaf) = certs.as_ref().and_then(|c| c.first()) else {
            return Err(tonic::Status::unauthenticated(match callers {
                Callers::Operators => format!(
                    "{what} is for operators: connect with an operator certificate of the \
                     cluster CA (`chatfeed-master certs --out DIR --operator NAME`; a one-host \
                     cluster's start made tls/operator.pem)"
                ),
                _ => format!(
                    "{what} is for the cluster's own processes: connect with a member's or a \
                     worker's certificate (a node certificate issued by the cluster CA)"
                ),
            }));
        };
        let id = m.peers.of(leaf.as_ref()).map_err(|e| {
            tonic::Status::permission_denied(format!("{what}: the caller's certificate: {e}"))
        })?;
        match id.role {
            Some(role) if callers.admit(role) => Ok(Some(id)),
            Some(role) => Err(tonic::Status::permission_denied(format!(
                "{what} is for {} only; the caller's certificate is a {role}'s",
                callers.describe()
            ))),
            None => Err(tonic::Status::permission_denied(format!(
                "{what}: the caller's certificate carries no chatfeed role (issued before \
                 certificates carried roles): reissue the cluster's certificates (README, \
                 \"Reissuing certificates\")"
            ))),
        }
    }

    /// The role of this process's own certificate (`None` in plaintext, for clients, and for a
    /// role-less certificate).
    pub fn own_role(&self) -> Option<Role> {
        let (cert, _) = self.0.as_ref()?.identity.as_ref()?;
        first_cert_der(cert)
            .and_then(|d| identity_of(&d))
            .ok()?
            .role
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

/// The identity (role, names) of the first certificate in the PEM file `path`.
pub fn identity_in_file(path: &Path) -> Result<Identity, TlsError> {
    let pem = read_pem(path, MISSING_NODE_HINT, PemKind::Certificate)?;
    first_cert_der(&pem)
        .and_then(|der| identity_of(&der))
        .map_err(|reason| TlsError::Invalid {
            path: path.to_owned(),
            reason,
        })
}

/// The first certificate of a PEM file, DER.
fn first_cert_der(pem: &[u8]) -> Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or_else(|| "holds no PEM certificate".to_string())?
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| format!("not a PEM certificate ({e})"))
}

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

/// Makes sure `dir` holds a CA and a role-less node certificate for `sans`: creates what is
/// missing (the CA first, when neither its certificate nor its key exists), never overwrites a
/// file. What `chatfeed-master start` made before certificates carried roles; tests use it to
/// make a directory of an earlier release, or one of another CA.
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

/// Issues a role-less node certificate for `sans` (DNS names and IP addresses) signed by the CA
/// in `ca_dir`, into `out_dir` as `node.pem`/`node.key`, with a copy of `ca.pem` when `out_dir`
/// is another directory. Refuses to overwrite an existing node certificate or key. No chatfeed
/// server accepts it as a member or worker (it carries no role): for the bench's etcd and tests.
pub fn issue_node(
    ca_dir: &Path,
    out_dir: &Path,
    name: &str,
    sans: &[String],
) -> Result<(), TlsError> {
    let out = Files::in_dir(out_dir);
    issue(
        ca_dir,
        out_dir,
        (&out.node_cert, &out.node_key),
        &format!("chatfeed node {name}"),
        sans,
        None,
    )
}

/// Issues `role`'s certificate for host `name` with `sans`, signed by the CA in `ca_dir`, into
/// `out_dir` (`role_files`), with a copy of `ca.pem` when `out_dir` is another directory.
/// Refuses to overwrite an existing certificate or key.
pub fn issue_role(
    ca_dir: &Path,
    out_dir: &Path,
    name: &str,
    role: Role,
    sans: &[String],
) -> Result<(), TlsError> {
    let (cert, key) = role_files(out_dir, role);
    issue(
        ca_dir,
        out_dir,
        (&cert, &key),
        &format!("chatfeed {role} on {name}"),
        sans,
        Some(role),
    )
}

/// Issues a certificate for `sans` (and `role`'s URI) named `common_name`, signed by the CA in
/// `ca_dir`, into the `files` (certificate, key) in `out_dir`.
fn issue(
    ca_dir: &Path,
    out_dir: &Path,
    files: (&Path, &Path),
    common_name: &str,
    sans: &[String],
    role: Option<Role>,
) -> Result<(), TlsError> {
    if sans.is_empty() {
        return Err(TlsError::Generate(format!(
            "{common_name}: at least one name or address is needed"
        )));
    }
    let ca = Files::in_dir(ca_dir);
    let out = Files::in_dir(out_dir);
    let (cert_path, key_path) = files;
    for p in [cert_path, key_path] {
        if p.exists() {
            return Err(TlsError::Invalid {
                path: p.to_owned(),
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
        "certificates are issued where the CA key is",
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
        TlsError::Generate(format!(
            "{common_name}: a name or address is not valid ({e})"
        ))
    })?;
    if let Some(role) = role {
        let uri = rcgen::string::Ia5String::try_from(role.uri()).map_err(gen_err)?;
        params.subject_alt_names.push(rcgen::SanType::URI(uri));
    }
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
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
    write_new(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

/// What `ensure_role_certs` found or did for one role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleCert {
    /// The certificate was there; nothing was written.
    Existing(Role),
    /// It was issued now.
    Created(Role),
}

/// Makes sure `dir` holds the CA and a certificate of each of `roles` for `sans` (a one-host
/// cluster's `[tls] dir`): creates the CA when neither its certificate nor its key exists, and
/// issues each missing role certificate with the CA key there, never overwriting a file. Also
/// upgrades a directory of an earlier release (CA and a role-less `node.pem`): the role
/// certificates are added beside it. Without the CA key, a missing role certificate is an
/// error saying which command issues it. Used by `chatfeed-master start`.
pub fn ensure_role_certs(
    dir: &Path,
    sans: &[String],
    roles: &[Role],
) -> Result<Vec<RoleCert>, TlsError> {
    let f = Files::in_dir(dir);
    let missing: Vec<Role> = roles
        .iter()
        .copied()
        .filter(|r| {
            let (c, k) = role_files(dir, *r);
            !(c.exists() && k.exists())
        })
        .collect();
    for r in roles {
        let (c, k) = role_files(dir, *r);
        if c.exists() != k.exists() {
            let (present, absent) = if c.exists() { (c, k) } else { (k, c) };
            return Err(TlsError::Invalid {
                path: absent,
                reason: format!(
                    "is missing while {} exists: restore it, or remove both to issue a new pair",
                    present.display()
                ),
            });
        }
    }
    if missing.is_empty() && f.ca_cert.exists() {
        return Ok(roles.iter().map(|r| RoleCert::Existing(*r)).collect());
    }
    let issued_before =
        f.node_cert.exists() || roles.iter().any(|r| role_files(dir, *r).0.exists());
    if issued_before && !f.ca_cert.exists() {
        // Certificates without their CA: a new CA would not have signed them.
        return Err(TlsError::Missing {
            path: f.ca_cert.clone(),
            hint: "certificates are there but not the CA that issued them: restore ca.pem",
        });
    }
    if !f.ca_key.exists() && f.ca_cert.exists() {
        let (path, _) = role_files(dir, missing[0]);
        return Err(TlsError::Missing {
            path,
            hint: if f.node_cert.exists() {
                ROLELESS_HINT
            } else {
                "this host's certificates are issued where the CA key is: run `chatfeed-master \
                 certs` there (README, \"Deploying on several hosts\") and copy this host's \
                 directory here"
            },
        });
    }
    ensure_ca(dir)?;
    let mut out = Vec::new();
    for r in roles {
        if missing.contains(r) {
            issue_role(dir, dir, "this host", *r, sans)?;
            out.push(RoleCert::Created(*r));
        } else {
            out.push(RoleCert::Existing(*r));
        }
    }
    Ok(out)
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
    // Exactly `mode`, whatever the process's umask (chatfeed-master runs with 077).
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
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
