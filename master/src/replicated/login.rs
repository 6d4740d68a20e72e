//! Logins on the active master: the password check (or the first password of a new user, set
//! through Raft), the slow-down after wrong passwords, the session token issued
//! (`sessions.rs`), and a password change. Passwords and hashes are never logged.

use super::core::Core;
use super::error::{Error, Result};
use crate::domain::{self, Command, FeedError};
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
        let created = self
            .attempt(&user, client, self.check_password(&user, password, client))
            .await?;
        let (token, expires_at_ms) = self.issue_token(&user).await?;
        Ok(Login::Session {
            token,
            expires_at_ms,
            created,
        })
    }

    /// Runs `check`, a password check of `user` from the client at `client`, within the login
    /// limits: the logins per user and per address, then this attempt's turn after earlier
    /// failures (`Accounts::take_turn`); a wrong password (`Unauthenticated`) counts as a
    /// failure, a right one forgets them.
    async fn attempt<T>(
        &self,
        user: &str,
        client: &str,
        check: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let l = &self.config.limits;
        let now = Instant::now();
        if let Err(wait) = self.rates.logins.take(user, now) {
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
        let wait = self.accounts.take_turn(user, Instant::now());
        if !wait.is_zero() {
            tracing::info!(
                user,
                wait_ms = wait.as_millis() as u64,
                "login after failures waits"
            );
            tokio::time::sleep(wait).await;
        }
        match check.await {
            Ok(t) => {
                self.accounts.succeeded(user);
                Ok(t)
            }
            Err(e @ Error::Unauthenticated(_)) => {
                let next = self.accounts.failed(user, Instant::now());
                tracing::warn!(
                    user,
                    next_wait_ms = next.as_millis() as u64,
                    "wrong password"
                );
                Err(e)
            }
            Err(e) => {
                self.accounts.released(user);
                Err(e)
            }
        }
    }

    /// Changes `user`'s password from `old` to `new` (the old one checked like a login's,
    /// within the same limits), ending every session of the user; answers a token of a new
    /// session, and its expiry.
    pub async fn change_password(
        &self,
        user: String,
        old: String,
        new: String,
        client: &str,
    ) -> Result<(String, i64)> {
        domain::validate_name(&user)?;
        self.mastership.require_active()?;
        chatfeed_common::accounts::check_new_password(&new).map_err(Error::InvalidArgument)?;
        if old.is_empty() || old.len() > chatfeed_common::accounts::MAX_PASSWORD_BYTES {
            return Err(Error::Unauthenticated(format!(
                "wrong password for user {user}"
            )));
        }
        let check = async {
            self.linearize().await?;
            let u = user.clone();
            let right = match self.read(move |c| domain::credential(c, &u)).await? {
                domain::Credential::Hash(hash) => self.accounts.verify(old, hash).await?,
                _ => false,
            };
            if right {
                Ok(())
            } else {
                Err(Error::Unauthenticated(format!(
                    "wrong password for user {user}"
                )))
            }
        };
        self.attempt(&user, client, check).await?;
        let password_hash = self.accounts.hash(new).await?;
        let at_ms = chatfeed_common::accounts::now_ms();
        self.commit(Command::ChangePassword {
            name: user.clone(),
            password_hash,
            at_ms,
        })
        .await??;
        tracing::info!(user, "password changed; the user's sessions ended");
        // The new session is issued after the end of the old ones.
        while chatfeed_common::accounts::now_ms() <= at_ms {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        self.issue_token(&user).await
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
