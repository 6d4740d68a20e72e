//! The callers' roles at the service level: the services for the cluster's own processes are
//! wrapped whole, `Cluster` in `cluster_only` (members and workers), `Admin` in `operators_only`
//! and `Control` in `workers_only`, which refuse every call before any method runs:
//! UNAUTHENTICATED without a certificate of the cluster CA, PERMISSION_DENIED with a certificate
//! of another role (or none, from before certificates carried roles). A method added to them
//! later is guarded without anyone remembering to. The caller's `Identity` (role and host names) goes on in the request's
//! extensions for the handlers that need it (`control.rs` checks a worker's host). In plaintext
//! mode every caller passes, with no identity.

use chatfeed_common::tls::{Callers, Tls};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

/// The check every call of a guarded service passes first.
#[derive(Clone)]
pub struct Guard {
    tls: Tls,
    callers: Callers,
    service: &'static str,
}

impl tonic::service::Interceptor for Guard {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(id) = self.tls.require(&req, self.callers, self.service)? {
            req.extensions_mut().insert(id);
        }
        Ok(req)
    }
}

/// `service` (named `name` in refusals), reachable only by members and workers.
pub fn cluster_only<S>(service: S, tls: &Tls, name: &'static str) -> InterceptedService<S, Guard> {
    guarded(service, tls, Callers::MembersAndWorkers, name)
}

/// `service` (named `name` in refusals), reachable only by operators.
pub fn operators_only<S>(
    service: S,
    tls: &Tls,
    name: &'static str,
) -> InterceptedService<S, Guard> {
    guarded(service, tls, Callers::Operators, name)
}

/// `service` (named `name` in refusals), reachable only by workers.
pub fn workers_only<S>(service: S, tls: &Tls, name: &'static str) -> InterceptedService<S, Guard> {
    guarded(service, tls, Callers::Workers, name)
}

fn guarded<S>(
    service: S,
    tls: &Tls,
    callers: Callers,
    service_name: &'static str,
) -> InterceptedService<S, Guard> {
    InterceptedService::new(
        service,
        Guard {
            tls: tls.clone(),
            callers,
            service: service_name,
        },
    )
}
