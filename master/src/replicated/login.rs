//! Logins on the active master: the cluster's token key (read, or committed when absent), the
//! password check (or the first password of a new user, set through Raft), the slow-down after
//! wrong passwords, and the session token issued. Passwords and hashes are never logged.

use super::accounts;
use super::core::Core;
use super::error::{Error, Result};
use crate::domain::{self, Command, FeedError};
use std::sync::Arc;
use std::time::Instant;

/// A login's answer.
pub enum Login {
    /// Only whether the user has a password already (no check, no token, no failure counted).
    Probe { has_password: bool },
    /// The password was right (or became the user's): a session token.
    Session {
        token: String,
        expires_at_ms: i64,
        /// The login created the user, or set the password of a user that had none.
        created: bool,
    },
}

impl Core {
    /// The token key of the replicated state; the first active master that needs it and finds
    /// none commits a random one (`SetTokenKey` applies only while none is stored, so every
    /// member ends with the first one committed).
    pub async fn token_key(&self) -> Result<Arc<Vec<u8>>> {
        if let Some(k) = self.accounts.cached_key() {
            return Ok(k);
        }
        for _ in 0..3 {
            self.linearize().await?;
            if let Some(hex) = self.read(domain::token_key_hex).await? {
                let key = accounts::from_hex(&hex)
                    .ok_or_else(|| Error::Internal("the stored token key is not hex".into()))?;
                let key = Arc::new(key);
                self.accounts.cache_key(key.clone());
                return Ok(key);
            }
            let key_hex = accounts::to_hex(&chatfeed_common::accounts::new_token_key());
            match self.commit(Command::SetTokenKey { key_hex }).await? {
                Ok(_) => tracing::info!("generated the cluster's token key"),
                Err(FeedError::TokenKeySet) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable(
            "could not read the token key back; retry".into(),
        ))
    }

    /// Logs `user` in with `password` (see `Login`); with `probe`, only says whether the user
    /// has a password.
    ///
    /// `client` is the client's address as its worker saw it: logins and accounts created are
    /// limited per address as well as per user (`[limits]`).
    pub async fn login(
        &self,
        user: String,
        password: String,
        probe: bool,
        client: &str,
    ) -> Result<Login> {
        domain::validate_name(&user)?;
        self.mastership.require_active()?;
        if probe {
            self.linearize().await?;
            let u = user.clone();
            let stored = self.read(move |c| domain::credential(c, &u)).await?;
            return Ok(Login::Probe {
                has_password: matches!(stored, domain::Credential::Hash(_)),
            });
        }
        if password.is_empty() {
            return Err(Error::Unauthenticated(format!(
                "no password given for user {user}"
            )));
        }
        if password.len() > chatfeed_common::accounts::MAX_PASSWORD_BYTES {
            return Err(Error::InvalidArgument(format!(
                "a password has at most {} bytes",
                chatfeed_common::accounts::MAX_PASSWORD_BYTES
            )));
        }
        let l = &self.config.limits;
        let now = Instant::now();
        if let Err(wait) = self.rates.logins.take(&user, now) {
            return Err(Error::Exhausted(format!(
                "too many logins of user {user} (limits.logins_per_sec: {} a second, bursts of \
                 {}): retry in {} ms",
                l.logins_per_sec,
                l.login_burst,
                wait.as_millis().max(1)
            )));
        }
        if let Err(wait) = self.rates.logins_by_address.take(client, now) {
            return Err(Error::Exhausted(format!(
                "too many logins from {client} (limits.logins_per_sec_per_address: {} a \
                 second, bursts of {}): retry in {} ms",
                l.logins_per_sec_per_address,
                l.login_burst_per_address,
                wait.as_millis().max(1)
            )));
        }
        let key = self.token_key().await?;
        // Earlier failures of this user (and attempts being checked now): this attempt waits
        // its turn first.
        let wait = self.accounts.take_turn(&user, Instant::now());
        if !wait.is_zero() {
            tracing::info!(
                user,
                wait_ms = wait.as_millis() as u64,
                "login after failures waits"
            );
            tokio::time::sleep(wait).await;
        }
        let created = match self.check_password(&user, password, client).await {
            Ok(c) => c,
            Err(e @ Error::Unauthenticated(_)) => {
                let next = self.accounts.failed(&user, Instant::now());
                tracing::warn!(
                    user,
                    next_wait_ms = next.as_millis() as u64,
                    "wrong password"
                );
                return Err(e);
            }
            Err(e) => {
                self.accounts.released(&user);
                return Err(e);
            }
        };
        self.accounts.succeeded(&user);
        let expires_at_ms =
            chatfeed_common::accounts::now_ms() + self.accounts.token_ttl().as_millis() as i64;
        let token = chatfeed_common::accounts::issue(&key, &user, expires_at_ms);
        Ok(Login::Session {
            token,
            expires_at_ms,
            created,
        })
    }

    /// Checks `password` for `user` (creating the user, or setting its first password), and
    /// answers whether the login created it. `Unauthenticated` for a wrong password.
    async fn check_password(&self, user: &str, password: String, client: &str) -> Result<bool> {
        // At most: a create or set that lost a race, then the check against the winner's hash.
        for _ in 0..3 {
            self.linearize().await?;
            let u = user.to_string();
            let stored = self.read(move |c| domain::credential(c, &u)).await?;
            let creating = match stored {
                domain::Credential::Hash(hash) => {
                    return if self.accounts.verify(password, hash).await? {
                        Ok(false)
                    } else {
                        Err(Error::Unauthenticated(format!(
                            "wrong password for user {user}"
                        )))
                    };
                }
                domain::Credential::NoUser => true,
                domain::Credential::NoPassword => false,
            };
            chatfeed_common::accounts::check_new_password(&password)
                .map_err(Error::InvalidArgument)?;
            if creating
                && let Err(wait) = self.rates.accounts_by_address.take(client, Instant::now())
            {
                let l = &self.config.limits;
                return Err(Error::Exhausted(format!(
                    "too many accounts created from {client} \
                     (limits.accounts_per_min_per_address: {} a minute, bursts of {}): retry \
                     in {} s",
                    l.accounts_per_min_per_address,
                    l.account_burst_per_address,
                    wait.as_secs().max(1)
                )));
            }
            let password_hash = self.accounts.hash(password.clone()).await?;
            let command = if creating {
                Command::CreateUser {
                    name: user.to_string(),
                    password_hash: Some(password_hash),
                }
            } else {
                Command::SetPassword {
                    name: user.to_string(),
                    password_hash,
                }
            };
            match self.commit(command).await? {
                Ok(_) => {
                    tracing::info!(user, created = creating, "password set at first login");
                    return Ok(true);
                }
                // Another login of the same user won the race: check against its hash.
                Err(FeedError::UserExists(_) | FeedError::PasswordAlreadySet(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable(
            "the user's password changed during the login; retry".into(),
        ))
    }
}
