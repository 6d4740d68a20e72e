//! The cluster certificate at the service level: the cluster-only services (`Cluster`,
//! `Control`) are wrapped whole in `cluster_only`, which refuses every call of a caller without a
//! certificate of the cluster CA (UNAUTHENTICATED) before any method runs, so a method added to
//! them later is guarded without anyone remembering to. In plaintext mode every caller passes.

use chatfeed_common::tls::Tls;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

/// The check every call of a cluster-only service passes first.
#[derive(Clone)]
pub struct ClusterPeers {
    tls: Tls,
    service: &'static str,
}

impl tonic::service::Interceptor for ClusterPeers {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.tls.require_cluster_peer(&req, self.service)?;
        Ok(req)
    }
}

/// `service` (named `name` in refusals), reachable only with a cluster certificate.
pub fn cluster_only<S>(
    service: S,
    tls: &Tls,
    name: &'static str,
) -> InterceptedService<S, ClusterPeers> {
    InterceptedService::new(
        service,
        ClusterPeers {
            tls: tls.clone(),
            service: name,
        },
    )
}
