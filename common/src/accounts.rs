//! Session tokens, shared by the active master (which issues them at login) and the workers
//! (which check them on every client call): stateless, HMAC-SHA256 signed with the cluster's
//! token key (32 random bytes kept in the replicated state, sent to workers over the control
//! stream).
//!
//! A token is `v1.<payload>.<mac>`, both parts base64url without padding; the payload is
//! `<expires_at_ms>:<user>`. Verification recomputes the MAC and compares it in constant time
//! (`Mac::verify_slice`), then checks the expiry. Nothing here logs a token or a password.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The length of the token key, in bytes.
pub const TOKEN_KEY_LEN: usize = 32;
/// The gRPC metadata entry that carries the token: `authorization: Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";
const BEARER: &str = "Bearer ";
const VERSION: &str = "v1";
/// A new password has at least this many characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// …and at most this many bytes (the hash's cost does not depend on it, the request size does).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The start of the UNAUTHENTICATED message for an expired token: clients recognise it and log
/// in again.
pub const SESSION_EXPIRED: &str = "session expired";
/// The start of the RESOURCE_EXHAUSTED message of a worker over its connection limit: clients
/// recognise it and ask the active master for another worker.
pub const WORKER_FULL: &str = "worker full";

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "no session token: log in first (the `authorization: Bearer <token>` metadata is missing)"
    )]
    Missing,
    #[error("the session token is malformed: log in again")]
    Malformed,
    #[error("the session token is not valid (bad signature): log in again")]
    Forged,
    #[error("{SESSION_EXPIRED}: log in again")]
    Expired,
}

/// A token for `user`, valid until `expires_at_ms` (ms since the Unix epoch), signed with `key`.
pub fn issue(key: &[u8], user: &str, expires_at_ms: i64) -> String {
    let payload = format!("{expires_at_ms}:{user}");
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(VERSION.as_bytes());
    mac.update(payload.as_bytes());
    let tag = mac.finalize().into_bytes();
    format!("{VERSION}.{}.{}", B64.encode(payload), B64.encode(tag))
}

/// The user a token was issued to, if it is signed with `key` and not expired at `now_ms`.
pub fn verify(key: &[u8], token: &str, now_ms: i64) -> Result<String, TokenError> {
    let mut parts = token.split('.');
    let (Some(VERSION), Some(payload), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let payload = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
    let tag = B64.decode(tag).map_err(|_| TokenError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(VERSION.as_bytes());
    mac.update(&payload);
    mac.verify_slice(&tag).map_err(|_| TokenError::Forged)?;
    // Signed by us: the payload is what `issue` wrote.
    let payload = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
    let (expires, user) = payload.split_once(':').ok_or(TokenError::Malformed)?;
    let expires: i64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    if now_ms >= expires {
        return Err(TokenError::Expired);
    }
    Ok(user.to_string())
}

/// The metadata value for `token`.
pub fn bearer(token: &str) -> String {
    format!("{BEARER}{token}")
}

/// The token in an `authorization` metadata value.
pub fn token_of(value: &str) -> Result<&str, TokenError> {
    value
        .strip_prefix(BEARER)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(TokenError::Malformed)
}

/// Checks a new password; the error says what is wrong (never the password).
pub fn check_new_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "a password needs at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("a password has at most {MAX_PASSWORD_BYTES} bytes"));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A fresh random token key.
pub fn new_token_key() -> Vec<u8> {
    use rand::RngCore;
    let mut key = vec![0u8; TOKEN_KEY_LEN];
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token verifies with its key until it expires and names its user; a token changed in
    /// any part, or checked with another key, is refused as forged or malformed.
    #[test]
    fn tokens_verify_only_untouched_and_unexpired() {
        let key = new_token_key();
        let t = issue(&key, "alice", 2_000);
        assert_eq!(verify(&key, &t, 1_999).unwrap(), "alice");
        assert_eq!(verify(&key, &t, 2_000), Err(TokenError::Expired));
        assert_eq!(verify(&new_token_key(), &t, 0), Err(TokenError::Forged));
        // Another user's name in the payload, same tag: forged.
        let (_, rest) = t.split_once('.').unwrap();
        let (_, tag) = rest.split_once('.').unwrap();
        let evil = format!("v1.{}.{tag}", B64.encode("2000:bob"));
        assert_eq!(verify(&key, &evil, 0), Err(TokenError::Forged));
        // A later expiry, same tag: forged.
        let evil = format!("v1.{}.{tag}", B64.encode("9999999:alice"));
        assert_eq!(verify(&key, &evil, 0), Err(TokenError::Forged));
        assert_eq!(verify(&key, "garbage", 0), Err(TokenError::Malformed));
        assert_eq!(verify(&key, "v1.!!.??", 0), Err(TokenError::Malformed));
        assert_eq!(token_of(&bearer(&t)).unwrap(), t);
        assert!(token_of("Basic xyz").is_err());
    }
}
