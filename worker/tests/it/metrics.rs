//! The worker's Prometheus endpoint.

use crate::fixture::*;
use chatfeed_master::testing::{parse_metrics, scrape};
use std::collections::BTreeMap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series).unwrap_or(&0.0)
}

/// The worker's page parses as Prometheus text; it shows the worker registered and the live
/// stream it holds; three posts committed after the stream went live move the deliveries
/// counter and the delivery-latency histogram by exactly three, and the Post calls are counted
/// by method and status, a refused one under its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_metrics_move_with_deliveries() {
    let cluster = TestCluster::start(|_| {}).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let mut opts = chatfeed_worker::WorkerOptions::from_config(
        &cluster.config,
        cluster.masters(),
        "127.0.0.1".into(),
        cluster.tls.clone(),
    );
    opts.pool_size = 1;
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(chatfeed_worker::run_with_metrics(
        opts,
        listener,
        Some(metrics),
        shutdown.clone(),
    ));
    cluster.wait_registered(&addr).await;

    let mut c = TestClient::connect(&cluster, &addr).await;
    login(&mut c, "mo").await;
    let mut s = open(&mut c, "mo", None).await;
    // Once the warm-up post arrived, the stream's history read is behind us: later posts can
    // only arrive live.
    let warm = post(&mut c, "mo", "warm-up").await;
    assert_eq!(next_post(&mut s).await.seq, warm);
    let before = parse_metrics(&scrape(metrics_addr).await).unwrap();
    assert_eq!(get(&before, "chatfeed_worker_registered"), 1.0);
    assert_eq!(get(&before, "chatfeed_worker_streams"), 1.0);

    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.push(post(&mut c, "mo", &format!("live {i}")).await);
    }
    assert_eq!(next_seqs(&mut s, 3).await, seqs);
    let refused = c
        .as_("mo")
        .post(post_req("mo", "", "empty"))
        .await
        .unwrap_err();
    let after = parse_metrics(&scrape(metrics_addr).await).unwrap();
    for series in [
        "chatfeed_worker_deliveries_total",
        "chatfeed_worker_delivery_latency_seconds_count",
    ] {
        assert_eq!(get(&after, series) - get(&before, series), 3.0, "{series}");
    }
    let ok = "chatfeed_rpc_requests_total{method=\"chatfeed.feed.Feed/Post\",code=\"OK\"}";
    assert_eq!(get(&after, ok) - get(&before, ok), 3.0);
    let bad = format!(
        "chatfeed_rpc_requests_total{{method=\"chatfeed.feed.Feed/Post\",code=\"{:?}\"}}",
        refused.code()
    );
    assert_eq!(get(&after, &bad), 1.0, "{bad}");

    shutdown.cancel();
    handle.await.unwrap().unwrap();
    cluster.shutdown().await;
}
