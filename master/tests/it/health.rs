//! The standard gRPC health service and server reflection on the members' API ports, seen by
//! generic clients (the `grpc.health.v1` and `grpc.reflection.v1` stubs, not chatfeed's own).

use chatfeed_master::testing::{DEADLINE, TestCluster, health_status};
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

async fn status(addr: &str, service: &str) -> Option<ServingStatus> {
    health_status(&chatfeed_common::tls::Tls::plaintext(), addr, service).await
}

async fn wait_status(c: &TestCluster, id: u64, want: ServingStatus, why: &str) {
    let addr = c.config.member(id).unwrap().api_addr.clone();
    let end = Instant::now() + DEADLINE;
    loop {
        let got = status(&addr, "").await;
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < end,
            "member {id} reports {got:?}, not {want:?}, {why}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every member of a healthy group reports SERVING, for the whole server and for each API
/// service. A replica cut off from the majority reports NOT_SERVING, and SERVING again once the
/// network heals; so does a leader cut off from the majority, while the two others (with a new
/// leader among them) stay SERVING. An unknown service name is NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_not_serving_when_cut_off_from_the_majority() {
    let c = TestCluster::start(|_| {}).await;
    for id in c.ids() {
        wait_status(&c, id, ServingStatus::Serving, "in a healthy group").await;
        let addr = c.config.member(id).unwrap().api_addr.clone();
        for s in ["chatfeed.master.Master", "chatfeed.control.Control"] {
            assert_eq!(
                status(&addr, s).await,
                Some(ServingStatus::Serving),
                "{s} on {id}"
            );
        }
        let channel = c.tls.endpoint(&addr).unwrap().connect().await.unwrap();
        let e = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }

    // A replica cut off.
    let leader = c.wait_active(&c.ids()).await;
    let replica = c.ids().into_iter().find(|&i| i != leader).unwrap();
    c.faults.isolate(replica, &c.ids());
    wait_status(
        &c,
        replica,
        ServingStatus::NotServing,
        "cut off from the majority",
    )
    .await;
    assert_eq!(
        status(&c.config.member(leader).unwrap().api_addr, "").await,
        Some(ServingStatus::Serving),
        "the leader keeps its majority with the third member"
    );
    c.faults.heal();
    wait_status(
        &c,
        replica,
        ServingStatus::Serving,
        "after the network healed",
    )
    .await;

    // The leader cut off.
    let old = c.wait_active(&c.ids()).await;
    c.faults.isolate(old, &c.ids());
    wait_status(
        &c,
        old,
        ServingStatus::NotServing,
        "as a leader cut off from the majority",
    )
    .await;
    let others: Vec<_> = c.ids().into_iter().filter(|&i| i != old).collect();
    c.wait_active(&others).await;
    for &id in &others {
        wait_status(&c, id, ServingStatus::Serving, "on the majority side").await;
    }
    c.faults.heal();
    wait_status(
        &c,
        old,
        ServingStatus::Serving,
        "once it rejoined as a replica",
    )
    .await;
    c.shutdown().await;
}

/// A generic reflection client lists the master's API services (and not the masters-only Raft
/// service) and can fetch the file that defines the master API. The cluster runs with TLS, and
/// the client holds only the CA certificate: reflection is open to clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reflection_lists_the_api() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let c = TestCluster::start(|c| c.tls.mode = chatfeed_common::config::TlsMode::Tls).await;
    let addr = c.config.member(1).unwrap().api_addr.clone();
    let client_tls = chatfeed_common::tls::Tls::client_for(&c.config).unwrap();
    assert!(!client_tls.is_plaintext());
    let channel = client_tls.endpoint(&addr).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let reqs = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "chatfeed.master.Master".into(),
        )),
    ];
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let list = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = list.message_response else {
        panic!("no service list: {list:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for s in [
        "chatfeed.master.Master",
        "chatfeed.control.Control",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&s), "{s} missing from {names:?}");
    }
    assert!(!names.contains(&"chatfeed.raft.Raft"), "{names:?}");
    let file = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(f)) = file.message_response else {
        panic!("no file descriptor: {file:?}");
    };
    assert!(!f.file_descriptor_proto.is_empty());
    c.shutdown().await;
}
