//! Session tokens, shared by the active master (which issues them at login) and the workers
//! (which check them on every client call): stateless, HMAC-SHA256 signed with one of the
//! cluster's token keys (32 random bytes each, kept in the replicated state, rotated, sent to
//! workers over the control stream).
//!
//! A token is `v2.<payload>.<mac>`, both parts base64url without padding; the payload is
//! `<key id>:<issued_at_ms>:<expires_at_ms>:<user>`, the MAC is over `v2` and the payload with
//! the key of that id. Verification (`verify`) finds the key by its id among those the cluster
//! holds (the current one and the one before, `TokenKeys`), recomputes the MAC and compares it in
//! constant time (`Mac::verify_slice`), then checks the lifetime: not expired, issued no later
//! than now (give or take `CLOCK_SKEW_MS`), and no longer than the cluster's `token_ttl_secs`
//! (a token minted with the key and a later expiry is refused). Whether the user ended its
//! sessions since `issued_at_ms` (logout, password change) is the active master's check, not
//! this module's. Nothing here logs a token or a password.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The length of a token key, in bytes.
pub const TOKEN_KEY_LEN: usize = 32;
/// The gRPC metadata entry that carries the token: `authorization: Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";
const BEARER: &str = "Bearer ";
const VERSION: &str = "v2";
/// How far the clocks of the members and workers may disagree: a token issued this far in the
/// future of the checking worker's clock is still accepted.
pub const CLOCK_SKEW_MS: i64 = 60_000;
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
    #[error("the session token is malformed or from an earlier release: log in again")]
    Malformed,
    #[error("the session token is not valid (bad signature): log in again")]
    Forged,
    #[error("{SESSION_EXPIRED}: log in again")]
    Expired,
    #[error(
        "{SESSION_EXPIRED} (signed with a token key the cluster no longer holds): log in again"
    )]
    UnknownKey,
    #[error(
        "the session token claims a lifetime the cluster never grants (longer than its \
         token_ttl_secs, or issued in the future): log in again"
    )]
    Lifetime,
}

/// One token key of the cluster and its id (the id a token names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenKey {
    pub id: u32,
    pub key: Vec<u8>,
}

/// The token keys a cluster holds (the newest first: the one before it stays valid for the
/// tokens it signed) and the longest lifetime it grants a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenKeys {
    pub keys: Vec<TokenKey>,
    pub ttl_ms: i64,
}

/// What a valid token says: its user, and when it was issued (for the master's check of ended
/// sessions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub issued_at_ms: i64,
}

fn mac(key: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(VERSION.as_bytes());
    mac
}

/// A token for `user`, issued at `issued_at_ms` and valid until `expires_at_ms` (ms since the
/// Unix epoch), signed with `key`.
pub fn issue(key: &TokenKey, user: &str, issued_at_ms: i64, expires_at_ms: i64) -> String {
    let payload = format!("{}:{issued_at_ms}:{expires_at_ms}:{user}", key.id);
    let mut mac = mac(&key.key);
    mac.update(payload.as_bytes());
    let tag = mac.finalize().into_bytes();
    format!("{VERSION}.{}.{}", B64.encode(payload), B64.encode(tag))
}

/// The session a token names, if it is signed with one of `keys` and within its lifetime at
/// `now_ms` (see the module doc).
pub fn verify(keys: &TokenKeys, token: &str, now_ms: i64) -> Result<Session, TokenError> {
    let mut parts = token.split('.');
    let (Some(VERSION), Some(payload), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let payload = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
    let tag = B64.decode(tag).map_err(|_| TokenError::Malformed)?;
    // The key id is read before the MAC is checked, only to pick the key.
    let id_end = payload
        .iter()
        .position(|&b| b == b':')
        .ok_or(TokenError::Malformed)?;
    let id: u32 = std::str::from_utf8(&payload[..id_end])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(TokenError::Malformed)?;
    let key = keys
        .keys
        .iter()
        .find(|k| k.id == id)
        .ok_or(TokenError::UnknownKey)?;
    let mut mac = mac(&key.key);
    mac.update(&payload);
    mac.verify_slice(&tag).map_err(|_| TokenError::Forged)?;
    // Signed by us: the payload is what `issue` wrote.
    let payload = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
    let mut fields = payload.splitn(4, ':');
    let (Some(_), Some(issued), Some(expires), Some(user)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(TokenError::Malformed);
    };
    let issued: i64 = issued.parse().map_err(|_| TokenError::Malformed)?;
    let expires: i64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    if expires.saturating_sub(issued) > keys.ttl_ms || issued > now_ms.saturating_add(CLOCK_SKEW_MS)
    {
        return Err(TokenError::Lifetime);
    }
    if now_ms >= expires {
        return Err(TokenError::Expired);
    }
    Ok(Session {
        user: user.to_string(),
        issued_at_ms: issued,
    })
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

    fn keys(ids: &[u32]) -> TokenKeys {
        TokenKeys {
            keys: ids
                .iter()
                .map(|&id| TokenKey {
                    id,
                    key: new_token_key(),
                })
                .collect(),
            ttl_ms: 10_000,
        }
    }

    /// A token verifies with its key until it expires and names its user and issue time; a
    /// token changed in any part, or checked with another key, is refused as forged or
    /// malformed; a key the cluster no longer holds, a lifetime longer than the cluster's TTL
    /// and an issue time in the future are refused even with a valid MAC.
    #[test]
    fn tokens_verify_only_untouched_unexpired_and_bounded() {
        let ks = keys(&[2, 1]);
        let t = issue(&ks.keys[0], "alice", 1_000, 2_000);
        let alice = Session {
            user: "alice".into(),
            issued_at_ms: 1_000,
        };
        assert_eq!(verify(&ks, &t, 1_999).unwrap(), alice);
        assert_eq!(verify(&ks, &t, 2_000), Err(TokenError::Expired));
        // The previous key still verifies what it signed.
        let old = issue(&ks.keys[1], "alice", 1_000, 2_000);
        assert_eq!(verify(&ks, &old, 1_500).unwrap(), alice);
        // Same ids, other keys: forged; a key dropped by a rotation: unknown.
        assert_eq!(verify(&keys(&[2, 1]), &t, 0), Err(TokenError::Forged));
        assert_eq!(verify(&keys(&[3, 2]), &old, 0), Err(TokenError::UnknownKey));
        // Another user's name or a later expiry in the payload, same tag: forged.
        let (_, rest) = t.split_once('.').unwrap();
        let (_, tag) = rest.split_once('.').unwrap();
        for payload in ["2:1000:2000:bob", "2:1000:9999999:alice"] {
            let evil = format!("v2.{}.{tag}", B64.encode(payload));
            assert_eq!(verify(&ks, &evil, 0), Err(TokenError::Forged), "{payload}");
        }
        // Minted with the key itself: a lifetime over the TTL, or issued in the future.
        let forever = issue(&ks.keys[0], "alice", 1_000, i64::MAX);
        assert_eq!(verify(&ks, &forever, 1_500), Err(TokenError::Lifetime));
        let future = issue(&ks.keys[0], "alice", 1_000_000, 1_005_000);
        assert_eq!(verify(&ks, &future, 1_000), Err(TokenError::Lifetime));
        assert_eq!(verify(&ks, "garbage", 0), Err(TokenError::Malformed));
        assert_eq!(verify(&ks, "v2.!!.??", 0), Err(TokenError::Malformed));
        // A token of the earlier format.
        assert_eq!(
            verify(&ks, &t.replacen("v2.", "v1.", 1), 0),
            Err(TokenError::Malformed)
        );
        assert_eq!(token_of(&bearer(&t)).unwrap(), t);
        assert!(token_of("Basic xyz").is_err());
    }
}
