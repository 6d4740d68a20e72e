//! The worker's standard gRPC health service, seen by a generic health client.

use crate::fixture::*;
use chatfeed_master::testing::health_status;
use tonic_health::pb::health_check_response::ServingStatus;

/// A worker that is not registered with an active master (the group has lost its majority)
/// answers NOT_SERVING; once a majority is back and the worker has registered, SERVING, for the
/// whole server and for the feed service; after a graceful stop it no longer answers at all.
/// With TLS on: the worker registers with its node certificate, and a client holding only the
/// CA certificate reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_serving_until_registered() {
    let mut cluster =
        TestCluster::start(|c| c.tls.mode = chatfeed_common::config::TlsMode::Tls).await;
    // Only member 1 left: no member can be the active master.
    cluster.stop_member(2).await;
    cluster.stop_member(3).await;
    cluster
        .wait_for("member 1 to stop being the active master", |c| {
            !c.is_active(1)
        })
        .await;

    let worker = TestWorker::start(&cluster, |o| o.pool_size = 1).await;
    let first = eventually("the worker's health service to answer", async || {
        health_status(&worker.client_tls, &worker.addr, "")
            .await
            .ok_or_else(|| "no answer".to_string())
    })
    .await;
    assert_eq!(
        first,
        ServingStatus::NotServing,
        "a worker with no active master to register with is not serving"
    );
    assert_eq!(
        health_status(&worker.client_tls, &worker.addr, "chatfeed.feed.Feed").await,
        Some(ServingStatus::NotServing)
    );

    cluster.start_member(2, false, false).await;
    cluster.start_member(3, false, false).await;
    cluster.wait_registered(&worker.addr).await;
    eventually(
        "the registered worker to report SERVING",
        async || match health_status(&worker.client_tls, &worker.addr, "").await {
            Some(ServingStatus::Serving) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert_eq!(
        health_status(&worker.client_tls, &worker.addr, "chatfeed.feed.Feed").await,
        Some(ServingStatus::Serving)
    );

    let addr = worker.addr.clone();
    let tls = worker.client_tls.clone();
    worker.stop().await.unwrap();
    assert_eq!(
        health_status(&tls, &addr, "").await,
        None,
        "a stopped worker answers nothing"
    );
    cluster.shutdown().await;
}
