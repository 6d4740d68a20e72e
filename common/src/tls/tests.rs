//! Unit tests of the TLS module: certificate generation and permissions, verification, client
//! certificates, the cluster-peer check and the handshake failures a client reports.

use super::*;
use std::os::unix::fs::PermissionsExt;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A gRPC server (the standard health service) on a free port of 127.0.0.1 with `tls` and
/// `auth`; its address.
async fn serve(tls: &Tls, auth: ClientAuth) -> String {
    serve_counted(tls, auth).await.0
}

/// `serve`, with the server's acceptor (`None` in plaintext) to read its handshake counts.
async fn serve_counted(tls: &Tls, auth: ClientAuth) -> (String, Option<Acceptor>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::transport::Server::builder().add_service(health);
    let acceptor = tls.acceptor(auth).unwrap();
    let a = acceptor.clone();
    tokio::spawn(async move {
        let incoming = TcpListenerStream::new(l);
        // As the servers do: lean connections where no client certificate is asked for.
        let _ = match a {
            Some(a) if auth == ClientAuth::None => {
                router.serve_with_incoming(a.accept_lean(incoming)).await
            }
            Some(a) => router.serve_with_incoming(a.accept(incoming)).await,
            None => router.serve_with_incoming(incoming).await,
        };
    });
    (addr, acceptor)
}

/// One health check from `tls` to `addr`: Ok, or the connection/call error text.
async fn check(tls: &Tls, addr: &str) -> Result<(), String> {
    let ch = match tls.endpoint(addr).unwrap().connect().await {
        Ok(c) => c,
        Err(e) => {
            return Err(tls_failure(&e).unwrap_or_else(|| format!("not a TLS failure: {e:?}")));
        }
    };
    HealthClient::new(ch)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| {
            use std::error::Error;
            s.source()
                .and_then(tls_failure)
                .unwrap_or_else(|| format!("{}: {}", s.code(), s.message()))
        })
}

fn load(dir: &Path) -> (Tls, Tls) {
    let f = Files::in_dir(dir);
    let ca = std::fs::read(&f.ca_cert).unwrap();
    let node = Tls::node(
        ca.clone(),
        std::fs::read(&f.node_cert).unwrap(),
        std::fs::read(&f.node_key).unwrap(),
    );
    (node, Tls::client(ca))
}

/// First start: the CA and the node certificate are created with private keys (0600) and
/// readable certificates (0644); a second start finds them and rewrites nothing.
#[test]
fn certificates_created_once_with_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let sans = local_sans(["127.0.0.1", "0.0.0.0", "db1.example"]);
    assert_eq!(sans, ["127.0.0.1", "db1.example", "localhost"]);
    assert_eq!(
        ensure_node_certs(&tls, &sans).unwrap(),
        Ensured::Created { created_ca: true }
    );
    let f = Files::in_dir(&tls);
    assert_eq!(mode_of(&f.ca_key), 0o600);
    assert_eq!(mode_of(&f.node_key), 0o600);
    assert_eq!(mode_of(&f.ca_cert), 0o644);
    assert_eq!(mode_of(&f.node_cert), 0o644);
    assert_eq!(mode_of(&tls), 0o700);
    let before: Vec<Vec<u8>> = [&f.ca_cert, &f.ca_key, &f.node_cert, &f.node_key]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(ensure_node_certs(&tls, &sans).unwrap(), Ensured::Existing);
    let after: Vec<Vec<u8>> = [&f.ca_cert, &f.ca_key, &f.node_cert, &f.node_key]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(before, after, "a second start must not overwrite anything");
    // Issuing into a directory that has a node certificate is refused, naming the file.
    let e = issue_node(&tls, &tls, "again", &sans)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node.pem") && e.contains("never overwritten"),
        "{e}"
    );
}

/// Half a pair is an error naming the missing file, never silently replaced by a new CA.
#[test]
fn half_pairs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    ensure_node_certs(dir.path(), &local_sans([])).unwrap();
    let f = Files::in_dir(dir.path());
    std::fs::remove_file(&f.ca_cert).unwrap();
    let e = ensure_node_certs(dir.path(), &local_sans([]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ca.pem"), "{e}");
    std::fs::remove_file(&f.node_key).unwrap();
    let e = ensure_node_certs(dir.path(), &local_sans([]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("node.key") && e.contains("missing"), "{e}");
}

/// Loading names the file that is missing or not PEM.
#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    let e = Tls::load_client(&path).err().unwrap().to_string();
    assert!(e.contains("ca.pem") && e.contains("missing"), "{e}");
    std::fs::write(&path, "not a certificate").unwrap();
    let e = Tls::load_client(&path).err().unwrap().to_string();
    assert!(
        e.contains("ca.pem") && e.contains("no PEM certificate"),
        "{e}"
    );
}

/// What `certs` issues works: a server with a node certificate accepts a client that has only
/// the CA, by address (IP SAN) and by name (DNS SAN); a client with another CA, or dialling a
/// name the certificate does not hold, gets a TLS failure (recognised as such, not retried).
#[tokio::test]
async fn issued_certificates_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ensure_ca(&ca_dir).unwrap();
    let host = dir.path().join("host-a");
    issue_node(&ca_dir, &host, "a", &local_sans([])).unwrap();
    assert!(
        host.join(CA_CERT).exists(),
        "the host directory gets the CA certificate"
    );
    assert!(!host.join(CA_KEY).exists(), "but never the CA key");
    let (node, client) = load(&host);
    let addr = serve(&node, ClientAuth::None).await;
    check(&client, &addr).await.unwrap();
    let port = addr.rsplit_once(':').unwrap().1;
    check(&client, &format!("localhost:{port}")).await.unwrap();

    let other = dir.path().join("other");
    ensure_node_certs(&other, &local_sans([])).unwrap();
    let (_, foreign_client) = load(&other);
    let e = check(&foreign_client, &addr).await.unwrap_err();
    assert!(e.contains("not from the given CA"), "{e}");

    let named = dir.path().join("named");
    issue_node(&ca_dir, &named, "b", &["b.example".to_string()]).unwrap();
    let (named_node, _) = load(&named);
    let addr = serve(&named_node, ClientAuth::None).await;
    let e = check(&client, &addr).await.unwrap_err();
    assert!(e.contains("does not hold the name"), "{e}");
}

/// Mutual TLS: a server that requires client certificates refuses a client without one and a
/// client whose certificate comes from another CA at the handshake, and serves a node of its CA.
/// With optional client certificates, a client without one is served; one from another CA is
/// still refused.
#[tokio::test]
async fn client_certificates_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    ensure_node_certs(&dir.path().join("a"), &local_sans([])).unwrap();
    ensure_node_certs(&dir.path().join("b"), &local_sans([])).unwrap();
    let (node, client) = load(&dir.path().join("a"));
    // A node of another CA that trusts ours: only its own certificate is wrong.
    let fb = Files::in_dir(&dir.path().join("b"));
    let foreign = Tls::node(
        std::fs::read(Files::in_dir(&dir.path().join("a")).ca_cert).unwrap(),
        std::fs::read(fb.node_cert).unwrap(),
        std::fs::read(fb.node_key).unwrap(),
    );
    let required = serve(&node, ClientAuth::Required).await;
    check(&node, &required).await.unwrap();
    assert!(check(&client, &required).await.is_err());
    assert!(check(&foreign, &required).await.is_err());
    let optional = serve(&node, ClientAuth::Optional).await;
    check(&node, &optional).await.unwrap();
    check(&client, &optional).await.unwrap();
    assert!(check(&foreign, &optional).await.is_err());
}

/// Plaintext: `http://` endpoints, servers without TLS, and every caller is let through (there
/// is nothing to check); the warning names what is exposed.
#[tokio::test]
async fn plaintext_works_and_warns() {
    let tls = Tls::plaintext();
    let addr = serve(&tls, ClientAuth::Required).await;
    check(&tls, &addr).await.unwrap();
    assert_eq!(
        tls.require(&tonic::Request::new(()), Callers::Members, "Write")
            .unwrap(),
        None
    );
    let w = tls.plaintext_warning("the Raft port").unwrap();
    assert!(
        w.starts_with("plaintext") && w.contains("the Raft port"),
        "{w}"
    );
    assert!(Tls::client(vec![]).plaintext_warning("x").is_none());
}

/// With TLS, a request that did not come with a verified certificate is refused with
/// UNAUTHENTICATED and a message naming the call, whoever the call is for.
#[test]
fn cluster_calls_need_a_certificate() {
    let tls = Tls::client(b"unused".to_vec());
    for callers in [
        Callers::Members,
        Callers::MembersAndWorkers,
        Callers::Workers,
    ] {
        let s = tls
            .require(&tonic::Request::new(()), callers, "Control.Heartbeats")
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert!(
            s.message().contains("Control.Heartbeats"),
            "{}",
            s.message()
        );
    }
}

/// Which roles each kind of call admits: members speak Raft, members and workers call
/// `Cluster`, workers only `Control`, operators only `Admin` (and nothing else).
#[test]
fn callers_admit_their_roles_only() {
    use Callers::*;
    let (m, w, o) = (Role::Member(2), Role::Worker, Role::Operator);
    assert!(Members.admit(m) && !Members.admit(w) && !Members.admit(o));
    assert!(MembersAndWorkers.admit(m) && MembersAndWorkers.admit(w));
    assert!(!MembersAndWorkers.admit(o));
    assert!(Workers.admit(w) && !Workers.admit(m) && !Workers.admit(o));
    assert!(Operators.admit(o) && !Operators.admit(m) && !Operators.admit(w));
}

/// `ensure_role_certs` issues each missing role certificate with the role in its SAN URI and
/// the host's names beside it, keeps existing ones byte for byte, and `Tls::for_role` loads
/// them; a certificate file of another role than its name says (a copy under the wrong name)
/// is refused, naming both roles.
#[test]
fn role_certificates_carry_their_role() {
    let dir = tempfile::tempdir().unwrap();
    let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let roles = [Role::Member(1), Role::Member(2), Role::Worker];
    let made = ensure_role_certs(dir.path(), &sans, &roles).unwrap();
    assert_eq!(made, roles.map(RoleCert::Created).to_vec());
    for r in roles {
        let (cert, key) = role_files(dir.path(), r);
        assert_eq!(mode_of(&key), 0o600, "{}", key.display());
        let der = first_cert_der(&std::fs::read(&cert).unwrap()).unwrap();
        let id = identity_of(&der).unwrap();
        assert_eq!(id.role, Some(r));
        assert!(id.names_host("127.0.0.1") && id.names_host("LOCALHOST"));
    }
    let before = std::fs::read(role_files(dir.path(), Role::Worker).0).unwrap();
    let again = ensure_role_certs(dir.path(), &sans, &[Role::Worker, Role::Member(3)]).unwrap();
    assert_eq!(
        again,
        vec![
            RoleCert::Existing(Role::Worker),
            RoleCert::Created(Role::Member(3))
        ]
    );
    assert_eq!(
        std::fs::read(role_files(dir.path(), Role::Worker).0).unwrap(),
        before,
        "an existing certificate is never rewritten"
    );
    let mut config = Config::for_test(dir.path(), [1, 2, 3], [4, 5, 6]);
    config.tls = crate::config::TlsSettings {
        mode: crate::config::TlsMode::Tls,
        dir: dir.path().to_path_buf(),
    };
    let member = Tls::for_member(&config, 2).unwrap();
    assert_eq!(member.own_role(), Some(Role::Member(2)));
    assert_eq!(
        Tls::for_worker(&config).unwrap().own_role(),
        Some(Role::Worker)
    );
    // Member 2's certificate copied to member 4's name.
    let (m2_cert, m2_key) = role_files(dir.path(), Role::Member(2));
    let (m4_cert, m4_key) = role_files(dir.path(), Role::Member(4));
    std::fs::copy(m2_cert, &m4_cert).unwrap();
    std::fs::copy(m2_key, m4_key).unwrap();
    let e = Tls::for_member(&config, 4).err().unwrap().to_string();
    assert!(
        e.contains("member-4.pem") && e.contains("member 2") && e.contains("member 4"),
        "{e}"
    );
}

/// A directory of an earlier release (CA and the role-less `node.pem`): loading a role says
/// how to get role certificates; `ensure_role_certs` issues them from the CA key there; without
/// the CA key it refuses, naming the missing file and the command that issues it.
#[test]
fn roleless_directories_are_upgraded_or_explained() {
    let dir = tempfile::tempdir().unwrap();
    let sans = vec!["127.0.0.1".to_string()];
    ensure_node_certs(dir.path(), &sans).unwrap();
    let mut config = Config::for_test(dir.path(), [1, 2, 3], [4, 5, 6]);
    config.tls = crate::config::TlsSettings {
        mode: crate::config::TlsMode::Tls,
        dir: dir.path().to_path_buf(),
    };
    let e = Tls::for_worker(&config).err().unwrap().to_string();
    assert!(
        e.contains("worker.pem") && e.contains("role-less node.pem") && e.contains("certs"),
        "{e}"
    );
    let no_key = dir.path().join("no-key");
    std::fs::create_dir(&no_key).unwrap();
    for f in [CA_CERT, NODE_CERT, NODE_KEY] {
        std::fs::copy(dir.path().join(f), no_key.join(f)).unwrap();
    }
    let e = ensure_role_certs(&no_key, &sans, &[Role::Member(1)])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("member-1.pem") && e.contains("chatfeed-master certs"),
        "{e}"
    );
    assert!(
        !no_key.join(CA_KEY).exists(),
        "no CA was made beside the old one"
    );
    ensure_role_certs(dir.path(), &sans, &[Role::Member(1), Role::Worker]).unwrap();
    assert_eq!(
        Tls::for_worker(&config).unwrap().own_role(),
        Some(Role::Worker)
    );
    assert!(dir.path().join(NODE_CERT).exists(), "the old file stays");
}

/// A CA and a node certificate for 127.0.0.1 in a temporary directory (kept while the first
/// value lives): the node's and a client's `Tls`.
fn localhost_certs() -> (tempfile::TempDir, Tls, Tls) {
    let dir = tempfile::tempdir().unwrap();
    ensure_node_certs(dir.path(), &["127.0.0.1".into()]).unwrap();
    let (node, client) = load(dir.path());
    (dir, node, client)
}

/// A second connection to a server this process dialled before resumes the TLS session (no
/// certificates sent or verified again), and so does a first connection to another server of
/// the same host (they share the host's ticket key); a server with another host's key does a
/// full handshake. Fails if each endpoint built its own client configuration (an empty session
/// cache every time), or if servers kept sessions to themselves.
#[tokio::test]
async fn reconnections_resume_the_session() {
    let (dir, node, client) = localhost_certs();
    let (a, a_acceptor) = serve_counted(&node, ClientAuth::None).await;
    let (b, b_acceptor) = serve_counted(&node, ClientAuth::Optional).await;
    // A call reads the session tickets the server sends after the handshake.
    check(&client, &a).await.unwrap();
    assert_eq!(
        client.handshakes(),
        Handshakes {
            full: 1,
            resumed: 0
        }
    );
    check(&client, &a).await.unwrap();
    check(&client.clone(), &a).await.unwrap();
    assert_eq!(
        client.handshakes(),
        Handshakes {
            full: 1,
            resumed: 2
        }
    );
    check(&client, &b).await.unwrap();
    assert_eq!(
        client.handshakes(),
        Handshakes {
            full: 1,
            resumed: 3
        }
    );
    let server_side = |acc: &Option<Acceptor>| acc.as_ref().unwrap().handshakes();
    assert_eq!(
        server_side(&a_acceptor),
        Handshakes {
            full: 1,
            resumed: 2
        }
    );
    assert_eq!(
        server_side(&b_acceptor),
        Handshakes {
            full: 0,
            resumed: 1
        }
    );

    // Another host: a node certificate of the same CA, so another key.
    let other_dir = dir.path().join("other-host");
    issue_node(dir.path(), &other_dir, "other", &["127.0.0.1".into()]).unwrap();
    let (other_node, _) = load(&other_dir);
    let c = serve(&other_node, ClientAuth::None).await;
    check(&client, &c).await.unwrap();
    assert_eq!(
        client.handshakes(),
        Handshakes {
            full: 2,
            resumed: 3
        }
    );
    assert_eq!(Tls::plaintext().handshakes(), Handshakes::default());
}

/// A session made where no client certificate is asked for does not open the Raft port, which
/// requires one (a resumed session keeps the certificate of the handshake that made it, and is
/// not asked again): a client without a certificate that holds an API ticket of the host is
/// still refused there, and a node's session from the API port resumes only on the API side.
#[tokio::test]
async fn tickets_do_not_cross_into_the_raft_port() {
    let (_dir, node, client) = localhost_certs();
    let api = serve(&node, ClientAuth::Optional).await;
    let raft = serve(&node, ClientAuth::Required).await;
    check(&client, &api).await.unwrap();
    check(&client, &api).await.unwrap();
    assert_eq!(
        client.handshakes(),
        Handshakes {
            full: 1,
            resumed: 1
        }
    );
    assert!(check(&client, &raft).await.is_err());
    assert_eq!(
        client.handshakes().resumed,
        1,
        "no resumption on the Raft port"
    );

    let peer = node.separate();
    check(&peer, &api).await.unwrap();
    check(&peer, &raft).await.unwrap();
    assert_eq!(
        peer.handshakes(),
        Handshakes {
            full: 2,
            resumed: 0
        }
    );
    check(&peer, &raft).await.unwrap();
    assert_eq!(
        peer.handshakes(),
        Handshakes {
            full: 2,
            resumed: 1
        }
    );
}

/// `separate` starts with empty session caches (another process), clones share them.
#[tokio::test]
async fn a_separate_tls_does_not_share_sessions() {
    let (_dir, node, client) = localhost_certs();
    let a = serve(&node, ClientAuth::None).await;
    check(&client, &a).await.unwrap();
    let other = client.separate();
    check(&other, &a).await.unwrap();
    assert_eq!(
        other.handshakes(),
        Handshakes {
            full: 1,
            resumed: 0
        }
    );
    assert_eq!(
        client.handshakes(),
        Handshakes {
            full: 1,
            resumed: 0
        }
    );
}

/// An accept error that is not about one connection (out of file descriptors) pauses accepting
/// instead of spinning on the error, and connections are served after it.
#[tokio::test]
async fn accepting_pauses_after_an_error_and_goes_on() {
    use tokio_stream::StreamExt;
    let (_dir, node, client) = localhost_certs();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let incoming = tokio_stream::iter([Err(std::io::Error::other("no file descriptor left"))])
        .chain(TcpListenerStream::new(l));
    let acceptor = node.acceptor(ClientAuth::None).unwrap().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::transport::Server::builder().add_service(health);
    let started = std::time::Instant::now();
    tokio::spawn(router.serve_with_incoming(acceptor.accept(incoming)));
    check(&client, &addr).await.unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(100));
    assert_eq!(
        acceptor.handshakes(),
        Handshakes {
            full: 1,
            resumed: 0
        }
    );
}

/// Servers speak TLS 1.3 only: a client offering nothing newer than TLS 1.2 fails the handshake
/// (a 1.2 session resumed from a ticket would make no fresh key exchange).
#[tokio::test]
async fn servers_refuse_tls_1_2() {
    use rustls::pki_types::ServerName;
    let (dir, node, _client) = localhost_certs();
    let addr = serve(&node, ClientAuth::None).await;
    let connect = |version: &'static rustls::SupportedProtocolVersion| {
        let config = raw_client(dir.path(), &[version]);
        let addr = addr.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
        }
    };
    assert!(connect(&rustls::version::TLS13).await.is_ok());
    let refused = connect(&rustls::version::TLS12).await.unwrap_err();
    // The client is told why (the server's alert), not just that the connection ended.
    assert!(refused.to_string().contains("ProtocolVersion"), "{refused}");
}

/// A chatfeed client and server agree on TLS 1.3, AES-128-GCM-SHA256 and X25519 (aws-lc-rs):
/// the cheapest key exchange and suite on offer, which every reconnection pays for. Fails if
/// the provider's defaults came back (AES-256 first, or a post-quantum hybrid key share).
#[tokio::test]
async fn handshakes_use_x25519_and_aes_128() {
    use rustls::pki_types::ServerName;
    let (_dir, node, client) = localhost_certs();
    let addr = serve(&node, ClientAuth::None).await;
    let config = client.rustls_client_config().unwrap().unwrap();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let session = tls.get_ref().1;
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        session.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    assert_eq!(
        session.negotiated_key_exchange_group().map(|g| g.name()),
        Some(rustls::NamedGroup::X25519)
    );
}

/// A rustls client configuration trusting the CA in `dir`, offering `versions`.
fn raw_client(
    dir: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(Files::in_dir(dir).ca_cert).unwrap();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One lean TLS connection accepted on a free port, and a tokio-rustls client connected to it.
async fn lean_pair(
    dir: &Path,
    node: &Tls,
) -> (
    LeanTls<tokio::net::TcpStream>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    use tokio_stream::StreamExt;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = node.acceptor(ClientAuth::None).unwrap().unwrap();
    let mut accepted = Box::pin(acceptor.accept_lean(TcpListenerStream::new(l)));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let client = tokio_rustls::TlsConnector::from(raw_client(dir, &[&rustls::version::TLS13]))
        .connect(name, tcp);
    let (client, server) = tokio::join!(client, accepted.next());
    (server.unwrap().unwrap(), client.unwrap())
}

/// A lean connection carries data both ways, byte for byte, in writes of every size (one byte
/// to many records), ends cleanly on the client's close_notify, and holds no buffer once idle:
/// what it is for. Fails if a partial record, decrypted data or unsent data were lost or kept.
#[tokio::test]
async fn lean_connections_carry_data_and_hold_nothing_when_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (dir, node, _client) = localhost_certs();
    let (mut server, client) = lean_pair(dir.path(), &node).await;
    // 1 MiB in writes of varied sizes, echoed back by the server.
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + i / 251) as u8).collect();
    let sizes = [1usize, 5, 100, 4096, 16_384, 16_385, 70_000];
    let (mut cr, mut cw) = tokio::io::split(client);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        let (mut at, mut k) = (0, 0);
        while at < sent.len() {
            let n = sizes[k % sizes.len()].min(sent.len() - at);
            cw.write_all(&sent[at..at + n]).await.unwrap();
            at += n;
            k += 1;
        }
        cw.flush().await.unwrap();
        cw
    });
    let echo = tokio::spawn(async move {
        let mut buf = vec![0u8; 3000];
        let mut total = 0;
        loop {
            let n = server.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            server.write_all(&buf[..n]).await.unwrap();
            server.flush().await.unwrap();
            total += n;
            if total == 1 << 20 {
                assert_eq!(server.held(), 0, "an idle lean connection holds buffers");
            }
        }
        server.shutdown().await.unwrap();
        total
    });
    let mut back = vec![0u8; data.len()];
    cr.read_exact(&mut back).await.unwrap();
    assert!(back == data, "the echo differs from what was sent");
    let mut cw = writer.await.unwrap();
    cw.shutdown().await.unwrap();
    assert_eq!(echo.await.unwrap(), data.len());
    let mut rest = Vec::new();
    cr.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "the server's close_notify ends the stream");
}

/// A peer that goes away in the middle of a record is an error for the reader, not a clean end
/// of the stream (a truncation attack would otherwise cut data short unnoticed).
#[tokio::test]
async fn lean_connections_report_a_truncated_record() {
    use tokio::io::AsyncReadExt;
    let (dir, node, _client) = localhost_certs();
    let (mut server, client) = lean_pair(dir.path(), &node).await;
    let (mut tcp, mut session) = client.into_inner();
    let mut record = Vec::new();
    session
        .writer()
        .write_all(b"hello, a record cut short")
        .unwrap();
    session.write_tls(&mut record).unwrap();
    use std::io::Write as _;
    use tokio::io::AsyncWriteExt;
    tcp.write_all(&record[..record.len() - 3]).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut buf = [0u8; 100];
    let e = server.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
}

/// A key update from the client in the middle of a connection (TLS 1.3 KeyUpdate, asking the
/// server to update too) is followed on both sides: data goes on flowing both ways after it.
/// Fails if the lean connection dropped what rustls queued for the peer while reading.
#[tokio::test]
async fn lean_connections_follow_a_key_update() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (dir, node, _client) = localhost_certs();
    let (mut server, mut client) = lean_pair(dir.path(), &node).await;
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        loop {
            let n = server.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            server.write_all(&buf[..n]).await.unwrap();
            server.flush().await.unwrap();
        }
    });
    let mut got = [0u8; 6];
    for round in [b"before", b"after!", b"again."] {
        client.write_all(round).await.unwrap();
        client.flush().await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, round);
        client.get_mut().1.refresh_traffic_keys().unwrap();
    }
    client.shutdown().await.unwrap();
    echo.await.unwrap();
}

/// A client session store that counts the TLS 1.3 tickets it is given.
#[derive(Debug)]
struct CountedTickets {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountedTickets {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, g: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, g)
    }
    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        v: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, v)
    }
    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &rustls::pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        v: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, v)
    }
    fn take_tls13_ticket(
        &self,
        name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

/// Servers send one session ticket per handshake, on both kinds of connection (rustls's default
/// is two): a crowd reconnecting at once costs one ticket sealed per connection. The client
/// still resumes each time (it gets back the ticket it used).
#[tokio::test]
async fn servers_send_one_ticket_per_handshake() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;
    let (dir, node, _client) = localhost_certs();
    let store = Arc::new(CountedTickets {
        inner: rustls::client::ClientSessionMemoryCache::new(8),
        tickets: Default::default(),
    });
    let mut config = (*raw_client(dir.path(), &[&rustls::version::TLS13])).clone();
    config.resumption = rustls::client::Resumption::store(store.clone());
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tickets = || store.tickets.load(std::sync::atomic::Ordering::SeqCst);
    for lean in [true, false] {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let auth = if lean {
            ClientAuth::None
        } else {
            ClientAuth::Optional
        };
        let acceptor = node.acceptor(auth).unwrap().unwrap();
        let server = tokio::spawn(async move {
            let incoming = TcpListenerStream::new(l);
            // Each accepted connection says one byte, then waits for the client to close.
            async fn say<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
                s.write_all(b"x").await.unwrap();
                s.flush().await.unwrap();
                let _ = s.read(&mut [0u8; 1]).await;
            }
            if lean {
                let mut a = Box::pin(acceptor.accept_lean(incoming));
                while let Some(c) = a.next().await {
                    say(c.unwrap()).await;
                }
            } else {
                let mut a = Box::pin(acceptor.accept(incoming));
                while let Some(c) = a.next().await {
                    say(c.unwrap()).await;
                }
            }
        });
        for k in 0..3 {
            let before = tickets();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut c = connector.connect(name.clone(), tcp).await.unwrap();
            let mut byte = [0u8; 1];
            c.read_exact(&mut byte).await.unwrap();
            // The first connection ever is a full handshake; every later one resumes.
            let kind = c.get_ref().1.handshake_kind();
            let want = if lean && k == 0 {
                rustls::HandshakeKind::Full
            } else {
                rustls::HandshakeKind::Resumed
            };
            assert_eq!(kind, Some(want), "connection {k} (lean: {lean})");
            assert_eq!(
                tickets() - before,
                1,
                "tickets sent with connection {k} (lean: {lean})"
            );
            c.shutdown().await.unwrap();
        }
        server.abort();
    }
}

/// With a handshake timeout, the connection timeout covers the TCP connection only: a server
/// that accepted the connection but is slow to answer the handshake (busy with a crowd) is
/// waited for, within the handshake timeout. Without one, the connection timeout covers both,
/// as tonic's does. A server that never answers fails with the handshake's own error, which is
/// not a TLS failure (another attempt may succeed).
#[tokio::test]
async fn a_slow_handshake_is_bounded_by_its_own_timeout() {
    use std::time::Duration;
    let (_dir, node, client) = localhost_certs();
    // A health server whose every handshake starts 600 ms after the connection was made.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow = l.local_addr().unwrap().to_string();
    let acceptor = node.acceptor(ClientAuth::None).unwrap().unwrap();
    let incoming = TcpListenerStream::new(l).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        c
    });
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(acceptor.accept_lean(incoming)),
    );
    // A port whose connections are made by the kernel and never taken.
    let silent_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = silent_listener.local_addr().unwrap().to_string();

    let dial = |addr: &str, handshake: Option<Duration>| {
        let d = client
            .endpoint(addr)
            .unwrap()
            .connect_timeout(Duration::from_millis(200));
        match handshake {
            Some(h) => d.handshake_timeout(h),
            None => d,
        }
    };
    let waited = dial(&slow, Some(Duration::from_secs(3)));
    assert_eq!(
        waited.connect_bound(Duration::from_millis(400)),
        Duration::from_millis(3400)
    );
    let ch = waited
        .connect()
        .await
        .expect("a slow handshake is waited for");
    HealthClient::new(ch)
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    let e = dial(&slow, None)
        .connect()
        .await
        .expect_err("without a handshake timeout, 200 ms bound the handshake too");
    assert!(tls_failure(&e).is_none(), "{e:?}");
    let e = dial(&silent, Some(Duration::from_millis(300)))
        .connect()
        .await
        .expect_err("a server that never answers");
    assert!(tls_failure(&e).is_none(), "{e:?}");
    assert!(
        format!("{e:?}").contains("the TLS handshake not done within 300 ms"),
        "{e:?}"
    );
    // In plaintext the setting changes nothing (there is no handshake to bound).
    let plain = Tls::plaintext()
        .endpoint(&silent)
        .unwrap()
        .handshake_timeout(Duration::from_secs(3));
    assert_eq!(
        plain.connect_bound(Duration::from_millis(400)),
        Duration::from_millis(400)
    );
    drop(silent_listener);
}

/// At most `max_handshakes` handshakes are in flight on a listener: with two silent
/// connections holding both places, a third connection is closed by the server without a word,
/// and a real client's handshake fails; once the silent ones go, clients are served again. Fails
/// if the cap is gone (the real client would be served).
#[tokio::test]
async fn handshakes_in_flight_are_capped() {
    use tokio::io::AsyncReadExt;
    let (_dir, node, client) = localhost_certs();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let acceptor = node
        .acceptor(ClientAuth::None)
        .unwrap()
        .unwrap()
        .with_max_handshakes(2);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::transport::Server::builder().add_service(health);
    tokio::spawn(router.serve_with_incoming(acceptor.accept_lean(TcpListenerStream::new(l))));
    check(&client, &addr).await.unwrap();
    let silent1 = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let silent2 = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // The server takes connections in order: once a probe is closed, both silent ones hold a
    // place (a probe accepted before them would have waited for its ClientHello instead).
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = third.read(&mut buf).await.unwrap_or(0);
    assert_eq!(
        n, 0,
        "the server sent something to a connection over the cap"
    );
    // A real client over the cap is refused too (without the cap, it would be served).
    check(&client, &addr)
        .await
        .expect_err("a handshake over the cap was made");
    drop((silent1, silent2));
    crate::testing::eventually("a place for a handshake again", async || {
        check(&client, &addr).await
    })
    .await;
}
