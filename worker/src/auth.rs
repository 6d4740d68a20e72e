//! Who is calling: every client call but `Login` carries a session token
//! (`authorization: Bearer <token>`), checked here against the token key the active master sent
//! over the control stream (`Keys`), and the user it names is the caller. `Auth::caller` is the
//! one check every handler makes first; `acting_as` refuses a request field that names another
//! user. Tokens are never logged.

use chatfeed_common::accounts::{self, AUTHORIZATION, TokenError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::{Request, Status};

/// How long a call waits for the token key on a worker that has just started: registration
/// with the active master takes a heartbeat or two, and a client that came straight from
/// GetWorker should be served, not sent away. Past it, UNAVAILABLE (another worker may have it).
const KEY_WAIT: Duration = Duration::from_secs(2);

/// The token key, once the active master sent it.
pub struct Auth {
    key: watch::Sender<Option<Arc<Vec<u8>>>>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            key: watch::Sender::new(None),
        }
    }
}

impl Auth {
    /// Stores the key the active master sent (the same on every member, so a fail-over sends
    /// the same one again).
    pub fn set_key(&self, key: Vec<u8>) {
        self.key.send_replace(Some(Arc::new(key)));
    }

    pub fn has_key(&self) -> bool {
        self.key.borrow().is_some()
    }

    /// The user whose token `req` carries. UNAUTHENTICATED for a missing, malformed, forged or
    /// expired token; RESOURCE_EXHAUSTED on a connection over the worker's limit; UNAVAILABLE
    /// when this worker still has no key after `KEY_WAIT` (another worker may). The future
    /// does not borrow `req`.
    pub fn caller<T>(
        &self,
        req: &Request<T>,
    ) -> impl Future<Output = Result<String, Status>> + Send + 'static {
        let token = crate::limits::check_connection(req).and_then(|()| {
            req.metadata()
                .get(AUTHORIZATION)
                .ok_or(TokenError::Missing)
                .and_then(|v| v.to_str().map_err(|_| TokenError::Malformed))
                .and_then(accounts::token_of)
                .map(str::to_string)
                .map_err(|e| Status::unauthenticated(e.to_string()))
        });
        let mut key = self.key.subscribe();
        async move {
            let token = token?;
            let key = match tokio::time::timeout(KEY_WAIT, key.wait_for(Option::is_some)).await {
                Ok(Ok(k)) => k.clone().unwrap_or_default(),
                _ => {
                    return Err(Status::unavailable(
                        "this worker has not registered with the active master yet and cannot \
                         check session tokens; retry through another worker",
                    ));
                }
            };
            accounts::verify(&key, &token, accounts::now_ms())
                .map_err(|e| Status::unauthenticated(e.to_string()))
        }
    }
}

/// The user a request acts as: `field` when it names the caller or is empty (the caller
/// itself); PERMISSION_DENIED when it names someone else.
pub fn acting_as(caller: String, field: &str) -> Result<String, Status> {
    if field.is_empty() || field == caller {
        Ok(caller)
    } else {
        Err(Status::permission_denied(format!(
            "you are logged in as {caller}; cannot act as {field}"
        )))
    }
}
