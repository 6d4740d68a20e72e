//! Sessions on the active master: the cluster's token keys (read from the replicated state; the
//! first one made when there is none; rotated on an operator's command and every
//! `accounts.token_key_rotation_secs`), the key a new token is signed with, the check that a
//! session was not ended since its token was issued, and ending sessions (logout, password
//! change).
//!
//! A rotation keeps the key before the new one (`RotateTokenKey` drops only older ones), so a
//! token stays valid for its whole lifetime when rotations are at least one TTL apart (the
//! configuration refuses a shorter interval). A new key signs tokens only once it is
//! `NEW_KEY_GRACE_MS` old: the workers receive it over their control streams first.

use super::accounts;
use super::core::Core;
use super::error::{Error, Result};
use crate::domain::{self, Command, StoredKey};
use chatfeed_common::accounts::{TokenKey, TokenKeys, new_token_key, now_ms};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How old a new key must be before it signs tokens: the workers poll the keys every
/// `KEYS_POLL` and must hold a key before a client shows them a token it signed.
pub const NEW_KEY_GRACE_MS: i64 = 10_000;
/// How often the control streams look for new keys to send to their workers.
pub const KEYS_POLL: Duration = Duration::from_secs(1);
/// How often the active master checks whether the current key is due for rotation.
const ROTATION_CHECK: Duration = Duration::from_secs(30);

/// The key to sign new tokens with among `keys` (newest first): the newest one old enough that
/// every worker has it, or the newest when none is.
fn signing_key(keys: &[StoredKey], now: i64) -> &StoredKey {
    keys.iter()
        .find(|k| k.created_ms <= now - NEW_KEY_GRACE_MS)
        .unwrap_or(&keys[0])
}

fn decode(k: &StoredKey) -> Result<TokenKey> {
    Ok(TokenKey {
        id: k.id,
        key: accounts::from_hex(&k.key_hex)
            .ok_or_else(|| Error::Internal(format!("stored token key {} is not hex", k.id)))?,
    })
}

impl Core {
    /// The stored token keys, newest first, as this member applied them (not linearized: a
    /// login reads them after its own linearizable read); with `make`, the first key is
    /// committed when there is none.
    async fn stored_keys(&self, make: bool) -> Result<Vec<StoredKey>> {
        let keys = self.read(domain::token_keys).await?;
        if !keys.is_empty() || !make {
            return Ok(keys);
        }
        // One first key, whoever asks at the same time (a worker registering, a login).
        let _one = self.first_key.lock().await;
        let keys = self.read(domain::token_keys).await?;
        if !keys.is_empty() {
            return Ok(keys);
        }
        self.rotate_token_key().await?;
        tracing::info!("made the cluster's first token key");
        let keys = self.read(domain::token_keys).await?;
        if keys.is_empty() {
            return Err(Error::Unavailable(
                "could not read the token key back; retry".into(),
            ));
        }
        Ok(keys)
    }

    /// The keys that verify tokens and the longest lifetime a token may claim, as the workers
    /// receive them (the first key is made when there is none).
    pub async fn token_keys(&self) -> Result<TokenKeys> {
        let keys = self.stored_keys(true).await?;
        Ok(TokenKeys {
            keys: keys.iter().map(decode).collect::<Result<_>>()?,
            ttl_ms: self.accounts.token_ttl().as_millis() as i64,
        })
    }

    /// A token for `user`, issued now and valid for `token_ttl_secs`, and its expiry.
    pub(super) async fn issue_token(&self, user: &str) -> Result<(String, i64)> {
        let keys = self.stored_keys(true).await?;
        let now = now_ms();
        let key = decode(signing_key(&keys, now))?;
        let expires_at_ms = now + self.accounts.token_ttl().as_millis() as i64;
        Ok((
            chatfeed_common::accounts::issue(&key, user, now, expires_at_ms),
            expires_at_ms,
        ))
    }

    /// Commits a new token key (the active master only). The key before it stays valid; older
    /// ones are dropped.
    pub async fn rotate_token_key(&self) -> Result<()> {
        self.mastership.require_active()?;
        let key_hex = accounts::to_hex(&new_token_key());
        self.commit(Command::RotateTokenKey {
            key_hex,
            at_ms: now_ms(),
        })
        .await??;
        tracing::info!("rotated the token key");
        Ok(())
    }

    /// UNAUTHENTICATED when `user` ended its sessions at or after `session_ms` (linearizable
    /// with the caller's own read when called inside it: see `Core::timeline`).
    pub(super) fn check_session(
        conn: &rusqlite::Connection,
        user: &str,
        session_ms: i64,
    ) -> rusqlite::Result<std::result::Result<(), domain::FeedError>> {
        if session_ms != 0
            && domain::sessions_after(conn, user)?.is_some_and(|after| session_ms <= after)
        {
            return Ok(Err(domain::FeedError::SessionEnded(user.to_string())));
        }
        Ok(Ok(()))
    }

    /// Ends every session of `user` (logout everywhere), as a client of the session issued at
    /// `session_ms` asks.
    pub async fn end_sessions(&self, user: String, session_ms: i64) -> Result<()> {
        domain::validate_name(&user)?;
        self.mastership.require_active()?;
        let at_ms = now_ms().max(session_ms);
        self.commit(Command::EndSessions { name: user, at_ms })
            .await??;
        Ok(())
    }

    /// Rotates the token key every `accounts.token_key_rotation_secs` (0: never) while this
    /// member is the active master, until `shutdown`.
    pub async fn rotate_keys_in_time(self, shutdown: CancellationToken) {
        let every = self.config.accounts.token_key_rotation_secs;
        if every == 0 {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(ROTATION_CHECK) => {}
            }
            if !self.mastership.is_active() {
                continue;
            }
            let due = match self.stored_keys(false).await {
                Ok(keys) => keys
                    .first()
                    .is_some_and(|k| now_ms() - k.created_ms >= every as i64 * 1000),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the token keys");
                    false
                }
            };
            if due && let Err(e) = self.rotate_token_key().await {
                tracing::warn!(error = %e, "the token key is due for rotation and could not be rotated; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32, created_ms: i64) -> StoredKey {
        StoredKey {
            id,
            key_hex: String::new(),
            created_ms,
        }
    }

    /// A key signs only once the workers had time to receive it; the first key signs at once.
    #[test]
    fn a_new_key_signs_after_its_grace() {
        let now = 100_000;
        assert_eq!(signing_key(&[key(1, now)], now).id, 1);
        let keys = [key(2, now - 1_000), key(1, 0)];
        assert_eq!(signing_key(&keys, now).id, 1);
        assert_eq!(signing_key(&keys, now + NEW_KEY_GRACE_MS).id, 2);
    }
}
