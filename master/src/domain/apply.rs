//! Applying one command to the feed tables, inside the caller's transaction. Only the state
//! machine calls it, once per committed command, in log order; the command is validated again
//! here (with the hard post limit), so the log cannot carry a bad command into the state.

use super::command::{Applied, Command, FeedError, validate_command};
use super::query::{follows_now, last_seq, token_key_hex, user_exists};
use super::schema::{KIND_FOLLOW, KIND_POST, KIND_UNFOLLOW, KIND_USER, TOKEN_KEY};
use chatfeed_common::config::HARD_MAX_POST_CHARS;
use rusqlite::{Connection, OptionalExtension, params};

/// Applies one command inside the caller's transaction. The outer error is a storage failure;
/// the inner one is the command's own answer.
pub fn apply_command(
    conn: &Connection,
    cmd: &Command,
    ts_ms: i64,
) -> rusqlite::Result<Result<Applied, FeedError>> {
    if let Err(e) = validate_command(cmd, HARD_MAX_POST_CHARS as usize) {
        return Ok(Err(e));
    }
    let seq = last_seq(conn)? + 1;
    let done = Applied {
        seq,
        ts_ms,
        duplicate: false,
    };
    // Commands that change no feed table take no seq: they answer the last one.
    let no_event = Applied {
        seq: seq - 1,
        ts_ms,
        duplicate: false,
    };
    match cmd {
        Command::CreateUser {
            name,
            password_hash,
        } => {
            if user_exists(conn, name)? {
                return Ok(Err(FeedError::UserExists(name.clone())));
            }
            conn.prepare_cached("INSERT INTO users (name, seq, pw_hash) VALUES (?1, ?2, ?3)")?
                .execute(params![name, seq as i64, password_hash])?;
            insert_event(conn, seq, KIND_USER, name, None, None, ts_ms, None)?;
        }
        Command::SetPassword {
            name,
            password_hash,
        } => {
            let changed = conn
                .prepare_cached(
                    "UPDATE users SET pw_hash = ?2 WHERE name = ?1 AND pw_hash IS NULL",
                )?
                .execute(params![name, password_hash])?;
            if changed == 0 {
                return Ok(Err(if user_exists(conn, name)? {
                    FeedError::PasswordAlreadySet(name.clone())
                } else {
                    FeedError::UserNotFound(name.clone())
                }));
            }
            return Ok(Ok(no_event));
        }
        Command::SetTokenKey { key_hex } => {
            if token_key_hex(conn)?.is_some() {
                return Ok(Err(FeedError::TokenKeySet));
            }
            conn.prepare_cached("INSERT INTO secrets (name, value) VALUES (?1, ?2)")?
                .execute(params![TOKEN_KEY, key_hex])?;
            return Ok(Ok(no_event));
        }
        Command::Follow { follower, followee } => {
            for u in [follower, followee] {
                if !user_exists(conn, u)? {
                    return Ok(Err(FeedError::UserNotFound(u.clone())));
                }
            }
            if follows_now(conn, follower, followee)? {
                return Ok(Err(FeedError::AlreadyFollowing {
                    follower: follower.clone(),
                    followee: followee.clone(),
                }));
            }
            conn.prepare_cached(
                "INSERT INTO follows (follower, followee, from_seq) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![follower, followee, seq as i64])?;
            insert_event(
                conn,
                seq,
                KIND_FOLLOW,
                follower,
                Some(followee),
                None,
                ts_ms,
                None,
            )?;
        }
        Command::Unfollow { follower, followee } => {
            for u in [follower, followee] {
                if !user_exists(conn, u)? {
                    return Ok(Err(FeedError::UserNotFound(u.clone())));
                }
            }
            let changed = conn
                .prepare_cached(
                    "UPDATE follows SET to_seq = ?3 WHERE follower = ?1 AND followee = ?2 AND to_seq IS NULL",
                )?
                .execute(params![follower, followee, seq as i64])?;
            if changed == 0 {
                return Ok(Err(FeedError::NotFollowing {
                    follower: follower.clone(),
                    followee: followee.clone(),
                }));
            }
            insert_event(
                conn,
                seq,
                KIND_UNFOLLOW,
                follower,
                Some(followee),
                None,
                ts_ms,
                None,
            )?;
        }
        Command::Post {
            author,
            text,
            client_post_id,
            ..
        } => {
            if !user_exists(conn, author)? {
                return Ok(Err(FeedError::UserNotFound(author.clone())));
            }
            if !client_post_id.is_empty() {
                let earlier = conn
                    .prepare_cached(
                        "SELECT seq, ts_ms FROM events WHERE kind = 3 AND actor = ?1 AND client_post_id = ?2",
                    )?
                    .query_row([author, client_post_id], |r| {
                        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?))
                    })
                    .optional()?;
                if let Some((seq, ts_ms)) = earlier {
                    return Ok(Ok(Applied {
                        seq,
                        ts_ms,
                        duplicate: true,
                    }));
                }
            }
            let id = (!client_post_id.is_empty()).then_some(client_post_id.as_str());
            insert_event(conn, seq, KIND_POST, author, None, Some(text), ts_ms, id)?;
        }
    }
    Ok(Ok(done))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn insert_event(
    conn: &Connection,
    seq: u64,
    kind: i64,
    actor: &str,
    target: Option<&str>,
    text: Option<&str>,
    ts_ms: i64,
    client_post_id: Option<&str>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO events (seq, kind, actor, target, text, ts_ms, client_post_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        seq as i64,
        kind,
        actor,
        target,
        text,
        ts_ms,
        client_post_id
    ])?;
    Ok(())
}
