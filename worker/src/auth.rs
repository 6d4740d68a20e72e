//! Who is calling: every client call but `Login` carries a session token
//! (`authorization: Bearer <token>`), checked here against the token key the active master sent
//! over the control stream (`Keys`), and the user it names is the caller. `Auth::caller` is the
//! one check every handler makes first; `acting_as` refuses a request field that names another
//! user. Tokens are never logged.

use chatfeed_common::accounts::{self, AUTHORIZATION, TokenError};
use std::sync::{Arc, RwLock};
use tonic::{Request, Status};

/// The token key, once the active master sent it.
#[derive(Default)]
pub struct Auth {
    key: RwLock<Option<Arc<Vec<u8>>>>,
}

impl Auth {
    /// Stores the key the active master sent (the same on every member, so a fail-over sends
    /// the same one again).
    pub fn set_key(&self, key: Vec<u8>) {
        *self.key.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(key));
    }

    pub fn has_key(&self) -> bool {
        self.key.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The user whose token `req` carries. UNAUTHENTICATED for a missing, malformed, forged or
    /// expired token; RESOURCE_EXHAUSTED on a connection over the worker's limit; UNAVAILABLE
    /// while this worker has no key yet (another worker may).
    pub fn caller<T>(&self, req: &Request<T>) -> Result<String, Status> {
        crate::limits::check_connection(req)?;
        let key = self
            .key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                Status::unavailable(
                    "this worker has not registered with the active master yet and cannot check \
                     session tokens; retry through another worker",
                )
            })?;
        let value = req
            .metadata()
            .get(AUTHORIZATION)
            .ok_or(TokenError::Missing)
            .and_then(|v| v.to_str().map_err(|_| TokenError::Malformed))
            .and_then(accounts::token_of)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        accounts::verify(&key, value, accounts::now_ms())
            .map_err(|e| Status::unauthenticated(e.to_string()))
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
