//! Who is calling: every client call but `Login` carries a session token
//! (`authorization: Bearer <token>`), checked here against the token keys the active master sent
//! over the control stream (`Keys`: the signature, the expiry, the lifetime bound), and the
//! session it names (the user, and when it was issued) is the caller. `Auth::caller` is the one
//! check every handler makes first; `acting_as` refuses a request field that names another user.
//! Whether the user ended its sessions since is the active master's check: every call that
//! reaches it carries the session's issue time. Tokens are never logged.

use chatfeed_common::accounts::{self, AUTHORIZATION, Session, TokenError, TokenKeys};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::{Request, Status};

/// How long a call waits for the token key on a worker that has just started: registration
/// with the active master takes a heartbeat or two, and a client that came straight from
/// GetWorker should be served, not sent away. Past it, UNAVAILABLE (another worker may have it).
const KEY_WAIT: Duration = Duration::from_secs(2);

/// The token keys, once the active master sent them.
pub struct Auth {
    key: watch::Sender<Option<Arc<TokenKeys>>>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            key: watch::Sender::new(None),
        }
    }
}

impl Auth {
    /// Stores the keys the active master sent (the same on every member, so a fail-over sends
    /// the same ones again).
    pub fn set_keys(&self, keys: TokenKeys) {
        self.key.send_replace(Some(Arc::new(keys)));
    }

    pub fn has_key(&self) -> bool {
        self.key.borrow().is_some()
    }

    /// The session whose token `req` carries. UNAUTHENTICATED for a missing, malformed, forged
    /// or expired token, or one claiming a lifetime the cluster never grants; RESOURCE_EXHAUSTED on a connection over the worker's limit; UNAVAILABLE
    /// when this worker still has no key after `KEY_WAIT` (another worker may). The future
    /// does not borrow `req`.
    pub fn caller<T>(
        &self,
        req: &Request<T>,
    ) -> impl Future<Output = Result<Session, Status>> + Send + 'static {
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
            let keys = match tokio::time::timeout(KEY_WAIT, key.wait_for(Option::is_some)).await {
                Ok(Ok(k)) => k.clone().expect("waited for some"),
                _ => {
                    return Err(Status::unavailable(
                        "this worker has not registered with the active master yet and cannot \
                         check session tokens; retry through another worker",
                    ));
                }
            };
            accounts::verify(&keys, &token, accounts::now_ms())
                .map_err(|e| Status::unauthenticated(e.to_string()))
        }
    }
}

/// The user a request acts as: `field` when it names the caller or is empty (the caller
/// itself); PERMISSION_DENIED when it names someone else.
pub fn acting_as(caller: &Session, field: &str) -> Result<String, Status> {
    let caller = &caller.user;
    if field.is_empty() || field == caller {
        Ok(caller.clone())
    } else {
        Err(Status::permission_denied(format!(
            "you are logged in as {caller}; cannot act as {field}"
        )))
    }
}
