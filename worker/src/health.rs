//! Standard gRPC health checking (`grpc.health.v1.Health`) and server reflection on the
//! worker's port, for load balancers, orchestrators and generic gRPC tools. A worker reports
//! SERVING while it is registered with an active master (the masters may assign clients to it
//! and it receives committed events), NOT_SERVING before it registered, while it looks for a new
//! active master, and from the moment it starts stopping. The overall status ("") and the feed
//! service share one status.

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The services whose status the worker reports ("" is the whole server).
pub const SERVICES: [&str; 2] = ["", "chatfeed.feed.Feed"];

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for s in SERVICES {
        reporter.set_service_status(s, status).await;
    }
}

/// The health service (starting NOT_SERVING) and its reporter.
pub async fn service() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, server) = tonic_health::server::health_reporter();
    set_all(&reporter, ServingStatus::NotServing).await;
    (reporter, server)
}

/// Follows `registered` until it closes or `stopping` fires, then reports NOT_SERVING.
pub async fn run(
    reporter: HealthReporter,
    mut registered: watch::Receiver<bool>,
    stopping: tokio_util::sync::CancellationToken,
) {
    loop {
        let status = if *registered.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        tracing::info!(%status, "health");
        set_all(&reporter, status).await;
        tokio::select! {
            _ = stopping.cancelled() => break,
            r = registered.changed() => if r.is_err() { break },
        }
    }
    set_all(&reporter, ServingStatus::NotServing).await;
}

/// gRPC server reflection (v1, and v1alpha, which older tools use) for the feed API and the
/// health and reflection services.
#[allow(clippy::type_complexity)]
pub fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(chatfeed_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("chatfeed.feed.Feed")
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
