//! TLS with real processes, as users run them: certificates made by `MasterStartup.sh` and by
//! `chatfeed-master certs`, membership by certificate on the Raft and control services, clients
//! that verify the cluster with its CA, and plaintext mode.

use chatfeed_common::testing::{DEADLINE, eventually};
use chatfeed_common::tls::{self, Files, Tls};
use chatfeed_e2e::cluster::*;
use chatfeed_e2e::feed::*;
use chatfeed_e2e::group::Group;
use chatfeed_e2e::writer::Writer;
use chatfeed_proto::cluster::{self as cpb, write_request::Command};
use chatfeed_proto::control::WorkerHeartbeat;
use chatfeed_proto::control::control_client::ControlClient;
use chatfeed_proto::raft::raft_client::RaftClient;
use chatfeed_proto::raft::{RaftMessage, TimeoutNowRequest};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The certificates `MasterStartup.sh` makes on a one-host cluster: the CA, members 1-3 and the
/// host's workers.
const ROLES: [tls::Role; 4] = [
    tls::Role::Member(1),
    tls::Role::Member(2),
    tls::Role::Member(3),
    tls::Role::Worker,
];

fn contents(f: &Files, dir: &Path) -> Vec<Vec<u8>> {
    let roles = ROLES.iter().flat_map(|r| {
        let (c, k) = tls::role_files(dir, *r);
        [c, k]
    });
    [f.ca_cert.clone(), f.ca_key.clone()]
        .into_iter()
        .chain(roles)
        .map(|p| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// `MasterStartup.sh` on a fresh directory creates the cluster CA and this host's role
/// certificates (each member's, the workers') in `tls/` beside the configuration (keys 0600, certificates 0644), says where they
/// are, and the group runs on them; run again (the group running), and again after every process
/// was killed, it finds them and overwrites nothing, and the restarted group runs on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_start_creates_the_certificates_once() {
    let c = ProcCluster::new(NO_RESTART_MS);
    let tls_dir = c.root.join("tls");
    let files = Files::in_dir(&tls_dir);
    assert!(!files.ca_cert.exists());
    let out = c.run_script().await;
    assert!(out.status.success(), "MasterStartup.sh failed");
    let stdout = stdout_of(&out);
    assert!(
        stdout.contains("created the cluster CA")
            && stdout.contains(&files.ca_cert.display().to_string()),
        "the script says where the CA is: {stdout}"
    );
    assert!(
        stdout.contains("member-1.pem") && stdout.contains("worker.pem"),
        "{stdout}"
    );
    assert_eq!(mode_of(&files.ca_key), 0o600);
    assert_eq!(mode_of(&files.ca_cert), 0o644);
    for r in ROLES {
        let (cert, key) = tls::role_files(&tls_dir, r);
        assert_eq!(mode_of(&key), 0o600, "{}", key.display());
        assert_eq!(mode_of(&cert), 0o644, "{}", cert.display());
    }
    let first = contents(&files, &tls_dir);
    c.wait_healthy().await;

    let again = c.run_script().await;
    assert!(again.status.success());
    assert!(
        !stdout_of(&again).contains("created"),
        "{}",
        stdout_of(&again)
    );
    assert_eq!(
        contents(&files, &tls_dir),
        first,
        "a second start overwrote a certificate"
    );

    c.kill_everything();
    let restart = c.run_script().await;
    assert!(restart.status.success(), "restart on the same certificates");
    assert_eq!(
        contents(&files, &tls_dir),
        first,
        "a restart overwrote a certificate"
    );
    c.wait_healthy().await;
}

/// The outsiders of a running group: a process with the CA but no certificate, and one with a
/// complete node certificate of another CA (made with rcgen here) that trusts this group's CA.
fn outsiders(c: &ProcCluster) -> Vec<(&'static str, Tls)> {
    let ca = std::fs::read(c.root.join("tls").join(tls::CA_CERT)).unwrap();
    let other = c.root.join("foreign");
    tls::ensure_node_certs(&other, &tls::local_sans([])).unwrap();
    let f = Files::in_dir(&other);
    vec![
        ("no certificate", Tls::client(ca.clone())),
        (
            "a certificate of another CA",
            Tls::node(
                ca,
                std::fs::read(f.node_cert).unwrap(),
                std::fs::read(f.node_key).unwrap(),
            ),
        ),
    ]
}

/// Against real member processes: a process without a cluster certificate, or with one of
/// another CA, cannot open the Raft service (a Vote at a far higher term and a TimeoutNow naming
/// the real leader and term both fail, and the leader and term stay), cannot register a worker
/// through `Control.Heartbeats` (refused, and the active master lists no such worker), and
/// cannot call `Write` (nothing commits).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outsiders_cannot_vote_register_or_write() {
    let c = ProcCluster::new(NO_RESTART_MS);
    assert!(c.run_script().await.status.success());
    let before = c.wait_healthy().await;
    let leader = before.leader.unwrap();
    let term = before.term;
    let leader_api = c.member(leader).api.clone();
    let follower = c.members.iter().find(|m| m.id != leader).unwrap().clone();
    let vote = serde_json::to_vec(&openraft::raft::VoteRequest::<u64> {
        vote: openraft::Vote::new(term + 100, 99),
        last_log_id: None,
    })
    .unwrap();
    let intruder = WorkerHeartbeat {
        worker_id: "intruder".into(),
        addr: "127.0.0.1:1".into(),
        host: "127.0.0.1".into(),
        pid: 1,
        clients: 0,
        pool_size: 1,
        leaving: false,
        web_addr: String::new(),
    };
    for (who, tls) in outsiders(&c) {
        for m in &c.members {
            let mut raft = RaftClient::new(tls.endpoint(&m.raft).unwrap().connect_lazy());
            let r = raft.vote(RaftMessage { data: vote.clone() }).await;
            assert!(r.is_err(), "member {} served a Vote from {who}", m.id);
        }
        let mut raft = RaftClient::new(tls.endpoint(&follower.raft).unwrap().connect_lazy());
        let r = raft
            .timeout_now(TimeoutNowRequest {
                leader_id: leader,
                term,
            })
            .await;
        assert!(r.is_err(), "TimeoutNow from {who} was served");

        let api = tls.endpoint(&leader_api).unwrap().connect_lazy();
        let hb = ControlClient::new(api.clone())
            .heartbeats(tokio_stream::iter(vec![intruder.clone()]))
            .await;
        let e = hb
            .err()
            .unwrap_or_else(|| panic!("a worker with {who} was let in"));
        let w = chatfeed_proto::cluster::cluster_client::ClusterClient::new(api)
            .write(cpb::WriteRequest {
                command: Some(Command::CreateUser(cpb::CreateUser {
                    name: "mallory".into(),
                })),
                session_ms: 0,
            })
            .await
            .unwrap_err();
        if who == "no certificate" {
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
            assert_eq!(w.code(), tonic::Code::Unauthenticated, "{w:?}");
        }
    }
    // A write through the cluster's own certificate: every member has handled what came before.
    let mut writer = Writer::new(&c);
    writer.create_user("ana").await;
    let after = c.wait_healthy().await;
    assert_eq!(
        (after.leader, after.term),
        (Some(leader), term),
        "an outsider changed the leader or the term"
    );
    let s = c.leader_status().await.expect("the active master's status");
    assert!(
        s.workers.iter().all(|w| w.id != "intruder"),
        "an outsider registered a worker: {:?}",
        s.workers
    );
    let users = c
        .cluster_client(&c.member(leader).api)
        .await
        .unwrap()
        .list_users(cpb::ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .users;
    assert!(
        !users.iter().any(|u| u == "mallory"),
        "an outsider's write committed: {users:?}"
    );
}

/// A client with the cluster's CA connects and posts (through a worker, with TLS all the way);
/// with the CA of another cluster it fails at once — exit 1, one line saying the TLS handshake
/// failed and why — long before its 600 s of retries; a CA file that does not exist is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_verify_the_cluster_with_its_ca() {
    let c = feed_cluster("").await;
    c.wait_workers(3).await;
    let p = c.post("alice", "over TLS").await;
    assert_eq!(p.author, "alice");

    let other = c.root.join("other-ca");
    tls::ensure_ca(&other).unwrap();
    let mut cmd = c.chatfeed(Some("alice"), &["--timeout", "600", "post", "hi"]);
    cmd.env("CHATFEED_CA", other.join(tls::CA_CERT));
    let out = tokio::time::timeout(DEADLINE * 2, cmd.output())
        .await
        .expect("a client with the wrong CA kept retrying")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("TLS handshake failed") && stderr.contains("not from the given CA"),
        "{stderr}"
    );

    let mut cmd = c.chatfeed(Some("alice"), &["post", "hi"]);
    cmd.env("CHATFEED_CA", c.root.join("nope.pem"));
    let out = cmd.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nope.pem") && stderr.contains("missing"),
        "{stderr}"
    );
}

/// `chatfeed-master certs` makes a CA (its key only in --out) and a directory per host with
/// `ca.pem`, `worker.pem`/`worker.key` and `member-N.pem`/`.key` for each `--member N=NAME`
/// (keys 0600, each certificate carrying its role); a server with a host's certificate is
/// accepted by a client holding only `ca.pem`, under each name and address given; run again
/// for a new host, it reuses the CA; run again for a host it keeps what is there (never
/// overwritten) and issues what is missing: the reissue command.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certs_command_issues_certificates_that_verify() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let certs = |args: &[&str]| {
        std::process::Command::new(bin_dir().join("chatfeed-master"))
            .arg("certs")
            .arg("--out")
            .arg(&out)
            .args(args)
            .output()
            .unwrap()
    };
    let o = certs(&["--host", "a=127.0.0.1,localhost", "--member", "1=a"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a_dir = out.join("a");
    let a = Files::in_dir(&a_dir);
    let (worker_cert, worker_key) = tls::role_files(&a_dir, tls::Role::Worker);
    let (member_cert, member_key) = tls::role_files(&a_dir, tls::Role::Member(1));
    assert_eq!(mode_of(&out.join(tls::CA_KEY)), 0o600);
    assert_eq!(mode_of(&worker_key), 0o600);
    assert_eq!(mode_of(&member_key), 0o600);
    let role_of = |p: &Path| tls::identity_in_file(p).unwrap().role;
    assert_eq!(role_of(&worker_cert), Some(tls::Role::Worker));
    assert_eq!(role_of(&member_cert), Some(tls::Role::Member(1)));
    assert!(
        !a.ca_key.exists(),
        "the CA key stays where certificates are issued"
    );
    let ca = std::fs::read(out.join(tls::CA_CERT)).unwrap();
    assert_eq!(std::fs::read(&a.ca_cert).unwrap(), ca);

    let o = certs(&["--host", "b=127.0.0.2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(out.join(tls::CA_CERT)).unwrap(),
        ca,
        "the CA is reused"
    );
    let before = std::fs::read(&worker_cert).unwrap();
    let o = certs(&[
        "--host",
        "a=127.0.0.1",
        "--member",
        "1=a",
        "--member",
        "2=a",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("kept") && said.contains("never overwritten"),
        "{said}"
    );
    assert_eq!(std::fs::read(&worker_cert).unwrap(), before, "overwritten");
    assert_eq!(
        role_of(&tls::role_files(&a_dir, tls::Role::Member(2)).0),
        Some(tls::Role::Member(2)),
        "the missing certificate was issued"
    );

    // A server with host a's worker certificate, a client with only ca.pem.
    let node = Tls::node(
        std::fs::read(&a.ca_cert).unwrap(),
        std::fs::read(&worker_cert).unwrap(),
        std::fs::read(&worker_key).unwrap(),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let acceptor = node.acceptor(tls::ClientAuth::Optional).unwrap().unwrap();
    let router = tonic::transport::Server::builder().add_service(health);
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
        let _ = router.serve_with_incoming(acceptor.accept(incoming)).await;
    });
    let client = Tls::load_client(&out.join(tls::CA_CERT)).unwrap();
    for addr in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let status = eventually(&format!("a health check at {addr}"), async || {
            chatfeed_master::testing::health_status(&client, &addr, "")
                .await
                .ok_or_else(|| "no answer".to_string())
        })
        .await;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
    }
}

/// With `[tls] mode = "plaintext"`, the whole cluster runs as before without certificates (none
/// are created), the start warns, every member and worker logs a plaintext warning, and a
/// plaintext client posts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plaintext_mode_works_and_warns() {
    let c = ProcCluster::with_config(RESTART_AFTER_MS, "[tls]\nmode = \"plaintext\"\n");
    let out = c.run_script().await;
    assert!(out.status.success());
    assert!(
        stdout_of(&out).contains("WARNING plaintext"),
        "{}",
        stdout_of(&out)
    );
    c.wait_healthy().await;
    assert!(c.start_workers().await.status.success());
    c.wait_workers(3).await;
    assert!(
        !c.root.join("tls").exists(),
        "no certificates in plaintext mode"
    );
    let p = c.post("bob", "in the clear").await;
    assert_eq!(p.author, "bob");
    let logs: Vec<String> = std::fs::read_dir(c.run_dir())
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let name = p.file_name()?.to_str()?.to_string();
            (name.ends_with(".log") && name != "workers.log").then_some(name)
        })
        .collect();
    assert_eq!(
        logs.len(),
        6,
        "three members and three workers log: {logs:?}"
    );
    for name in logs {
        let text = std::fs::read_to_string(c.run_dir().join(&name)).unwrap();
        assert!(
            text.contains("plaintext: [tls] mode"),
            "{name} has no plaintext warning"
        );
    }
}

/// `chatfeed-master rotate-token-key`, run with the operator certificate the one-host start
/// made (`tls/operator.pem`), has the active master make a new token key (three times here, so
/// the first key, which signed the session of before, is retired); users log in and post across
/// the rotations. A worker's and a member's certificates are refused the operators' `Admin`
/// service (PERMISSION_DENIED), a client without a certificate too (UNAUTHENTICATED).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_rotate_the_token_key_and_workers_cannot() {
    use chatfeed_proto::cluster::RotateTokenKeyRequest;
    use chatfeed_proto::cluster::admin_client::AdminClient;
    let c = ProcCluster::new(NO_RESTART_MS);
    assert!(
        c.run_script().await.status.success(),
        "MasterStartup.sh failed"
    );
    let status = c.wait_healthy().await;
    assert!(
        c.start_workers().await.status.success(),
        "WorkerStartup.sh failed"
    );
    c.wait_workers(3).await;
    c.post("alice", "before the rotations").await;
    for _ in 0..3 {
        let out = c.run_bin(&c.config_path, &["rotate-token-key"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout_of(&out).contains("rotated the token key"), "{out:?}");
    }
    c.post("alice", "after the rotations").await;

    let leader = c.member(status.leader.unwrap()).api.clone();
    let worker = c.tls().expect("the host's worker certificate");
    let e = AdminClient::new(worker.endpoint(&leader).unwrap().connect().await.unwrap())
        .rotate_token_key(RotateTokenKeyRequest {})
        .await
        .expect_err("a worker rotated the token key");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let config = chatfeed_common::Config::load(&c.config_path).unwrap();
    let member = Tls::for_member(&config, 1).expect("member 1's certificate");
    let e = AdminClient::new(member.endpoint(&leader).unwrap().connect().await.unwrap())
        .rotate_token_key(RotateTokenKeyRequest {})
        .await
        .expect_err("a member's certificate rotated the token key");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("operators"), "{e:?}");
    let client = Tls::load_client(&c.ca_file().unwrap()).unwrap();
    let e = AdminClient::new(client.endpoint(&leader).unwrap().connect().await.unwrap())
        .rotate_token_key(RotateTokenKeyRequest {})
        .await
        .expect_err("a client rotated the token key");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    c.kill_everything();
}
