//! Applying one command to the feed tables, inside the caller's transaction. Only the state
//! machine calls it, once per committed command, in log order; the command is validated again
//! here (with the hard post limit), so the log cannot carry a bad command into the state.

use super::command::{Applied, Command, FeedError, validate_command};
use super::query::{Event, follows_now, token_key_hex, user_exists};
use super::schema::{
    CLUSTER_ID, KIND_FOLLOW, KIND_POST, KIND_SESSIONS_ENDED, KIND_UNFOLLOW, KIND_USER, TOKEN_KEY,
};
use chatfeed_common::config::HARD_MAX_POST_CHARS;
use rusqlite::{Connection, OptionalExtension, params};

/// Applies one command inside the caller's transaction, `last_seq` being the seq of the last
/// event (the state machine reads it once per applied batch and keeps it): the event this
/// command adds, if any, is `last_seq + 1`, and the answer's `seq` is the last seq after it
/// (unless the answer is a duplicate's, which names the earlier post). The outer error is a
/// storage failure; the inner one is the command's own answer.
pub fn apply_command(
    conn: &Connection,
    cmd: &Command,
    ts_ms: i64,
    last_seq: u64,
) -> rusqlite::Result<Result<Applied, FeedError>> {
    if let Err(e) = validate_command(cmd, HARD_MAX_POST_CHARS as usize) {
        return Ok(Err(e));
    }
    apply_validated(conn, cmd, ts_ms, last_seq + 1, None)
}

/// Applies `cmd`, validated, as the event `seq` when it adds one. `known`: a user this apply
/// has read already and found (a session's), whose existence is not read again.
fn apply_validated(
    conn: &Connection,
    cmd: &Command,
    ts_ms: i64,
    seq: u64,
    known: Option<&str>,
) -> rusqlite::Result<Result<Applied, FeedError>> {
    let exists = |u: &str| -> rusqlite::Result<bool> {
        if known == Some(u) {
            Ok(true)
        } else {
            user_exists(conn, u)
        }
    };
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
        Command::SetClusterId { id } => {
            conn.prepare_cached("INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)")?
                .execute(params![CLUSTER_ID, id])?;
            return Ok(Ok(no_event));
        }
        Command::RotateTokenKey { key_hex, at_ms } => {
            // Ids count up from the key of the one-key releases (id 0, in `secrets`); the
            // current key and the one before stay, older ones go.
            let id: i64 = conn
                .prepare_cached("SELECT COALESCE(MAX(id), 0) + 1 FROM token_keys")?
                .query_row([], |r| r.get(0))?;
            conn.prepare_cached(
                "INSERT INTO token_keys (id, key_hex, created_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id, key_hex, at_ms])?;
            conn.prepare_cached("DELETE FROM token_keys WHERE id < ?1")?
                .execute([id - 1])?;
            if id >= 2 {
                conn.prepare_cached("DELETE FROM secrets WHERE name = ?1")?
                    .execute([TOKEN_KEY])?;
            }
            return Ok(Ok(no_event));
        }
        Command::EndSessions { name, at_ms } | Command::ChangePassword { name, at_ms, .. } => {
            if !user_exists(conn, name)? {
                return Ok(Err(FeedError::UserNotFound(name.clone())));
            }
            if let Command::ChangePassword { password_hash, .. } = cmd {
                conn.prepare_cached("UPDATE users SET pw_hash = ?2 WHERE name = ?1")?
                    .execute(params![name, password_hash])?;
            }
            end_sessions(conn, name, *at_ms)?;
            insert_event(
                conn,
                seq,
                KIND_SESSIONS_ENDED,
                name,
                None,
                None,
                ts_ms,
                None,
            )?;
        }
        Command::InSession {
            session_ms,
            command,
        } => {
            let user = match &**command {
                Command::Follow { follower, .. } | Command::Unfollow { follower, .. } => follower,
                Command::Post { author, .. } => author,
                _ => unreachable!("validate_command admits no other command in a session"),
            };
            // One read of the user: whether it exists, and when it last ended its sessions.
            match session_of(conn, user)? {
                None => return Ok(Err(FeedError::UserNotFound(user.clone()))),
                Some(Some(after)) if *session_ms <= after => {
                    return Ok(Err(FeedError::SessionEnded(user.clone())));
                }
                Some(_) => return apply_validated(conn, command, ts_ms, seq, Some(user)),
            }
        }
        Command::Follow { follower, followee } => {
            for u in [follower, followee] {
                if !exists(u)? {
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
                if !exists(u)? {
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
            // A follow during which the followee posted nothing adds nothing to any timeline:
            // it is dropped, so that follow/unfollow cycles cannot make timeline reads costly
            // (`query::timeline` reads each closed range that remains).
            conn.prepare_cached(
                "DELETE FROM follows WHERE follower = ?1 AND followee = ?2 AND to_seq = ?3 \
                 AND NOT EXISTS (SELECT 1 FROM events WHERE kind = 3 AND actor = ?2 \
                 AND seq > follows.from_seq AND seq < ?3)",
            )?
            .execute(params![follower, followee, seq as i64])?;
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
            if !exists(author)? {
                return Ok(Err(FeedError::UserNotFound(author.clone())));
            }
            // The insert finds a post with the same client post id itself (the unique index
            // `client_post_ids` refuses the row, and SQLite undoes the statement only), so a new
            // post, by far the usual case, costs no separate look-up.
            let id = (!client_post_id.is_empty()).then_some(client_post_id.as_str());
            match insert_event(conn, seq, KIND_POST, author, None, Some(text), ts_ms, id) {
                Ok(()) => {}
                Err(e) if id.is_some() && is_unique_violation(&e) => {
                    let Some((seq, ts_ms)) = earlier_post(conn, author, client_post_id)? else {
                        return Err(e);
                    };
                    return Ok(Ok(Applied {
                        seq,
                        ts_ms,
                        duplicate: true,
                    }));
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(Ok(done))
}

/// `Some(sessions_after)` of `user` when it exists.
fn session_of(conn: &Connection, user: &str) -> rusqlite::Result<Option<Option<i64>>> {
    conn.prepare_cached("SELECT sessions_after FROM users WHERE name = ?1")?
        .query_row([user], |r| r.get::<_, Option<i64>>(0))
        .optional()
}

/// Refuses `name`'s sessions issued at or before `at_ms` from now on.
fn end_sessions(conn: &Connection, name: &str, at_ms: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE users SET sessions_after = MAX(COALESCE(sessions_after, 0), ?2) WHERE name = ?1",
    )?
    .execute(params![name, at_ms])?;
    Ok(())
}

/// The seq and time of `author`'s post with `client_post_id`, if there is one.
fn earlier_post(
    conn: &Connection,
    author: &str,
    client_post_id: &str,
) -> rusqlite::Result<Option<(u64, i64)>> {
    conn.prepare_cached(
        "SELECT seq, ts_ms FROM events WHERE kind = 3 AND actor = ?1 AND client_post_id = ?2",
    )?
    .query_row([author, client_post_id], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?))
    })
    .optional()
}

/// Whether `e` is a UNIQUE constraint's refusal.
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

#[allow(clippy::too_many_arguments)]
fn insert_event(
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

/// The event that `cmd`, applied with answer `applied`, added to the events table (what
/// `events_after` reads back), without reading it: the watch stream's in-memory window is fed
/// from here. `None` for a command that adds no event (a duplicate post, a password, the token
/// key).
pub fn event_of(cmd: &Command, applied: &Applied) -> Option<Event> {
    if applied.duplicate {
        return None;
    }
    let event = |kind, actor: &str, target: Option<&str>, text: Option<&str>, id: Option<&str>| {
        Some(Event {
            seq: applied.seq,
            kind,
            actor: actor.to_string(),
            target: target.map(str::to_string),
            text: text.map(str::to_string),
            ts_ms: applied.ts_ms,
            client_post_id: id.map(str::to_string),
        })
    };
    match cmd {
        Command::CreateUser { name, .. } => event(KIND_USER, name, None, None, None),
        Command::Follow { follower, followee } => {
            event(KIND_FOLLOW, follower, Some(followee), None, None)
        }
        Command::Unfollow { follower, followee } => {
            event(KIND_UNFOLLOW, follower, Some(followee), None, None)
        }
        Command::Post {
            author,
            text,
            client_post_id,
        } => {
            let id = (!client_post_id.is_empty()).then_some(client_post_id.as_str());
            event(KIND_POST, author, None, Some(text), id)
        }
        Command::EndSessions { name, .. } | Command::ChangePassword { name, .. } => {
            event(KIND_SESSIONS_ENDED, name, None, None, None)
        }
        Command::InSession { command, .. } => event_of(command, applied),
        Command::SetPassword { .. }
        | Command::SetTokenKey { .. }
        | Command::SetClusterId { .. }
        | Command::RotateTokenKey { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::query::{events_after, last_seq};
    use crate::domain::schema::{SCHEMA, migrate};

    /// Every event `event_of` derives is the row `apply_command` wrote, and commands that write
    /// no row derive none.
    #[test]
    fn derived_events_are_the_stored_ones() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        migrate(&conn).unwrap();
        let user = |n: &str| Command::CreateUser {
            name: n.into(),
            password_hash: None,
        };
        let post = |a: &str, t: &str, id: &str| Command::Post {
            author: a.into(),
            text: t.into(),
            client_post_id: id.into(),
        };
        let cmds = vec![
            user("ann"),
            user("bo"),
            Command::Follow {
                follower: "bo".into(),
                followee: "ann".into(),
            },
            post("ann", "one", "p1"),
            post("ann", "one again", "p1"),
            post("ann", "no id", ""),
            Command::SetPassword {
                name: "bo".into(),
                password_hash: "$argon2id$x".into(),
            },
            Command::SetTokenKey {
                key_hex: "ab".repeat(32),
            },
            Command::Unfollow {
                follower: "bo".into(),
                followee: "ann".into(),
            },
            user("ann"),
        ];
        let mut derived = Vec::new();
        for (i, c) in cmds.iter().enumerate() {
            if let Ok(a) =
                apply_command(&conn, c, 1000 + i as i64, last_seq(&conn).unwrap()).unwrap()
            {
                derived.extend(event_of(c, &a));
            }
        }
        let stored = events_after(&conn, 0, 100).unwrap();
        assert_eq!(derived, stored);
        assert_eq!(
            stored.len(),
            6,
            "two users, a follow, two posts, an unfollow"
        );
    }

    /// A post whose client post id was used before is refused by the insert itself and answers
    /// the earlier post (its seq and time), also within one transaction; it takes no seq, so the
    /// last seq a caller keeps (`apply_command`'s `last_seq`) stays that of the table.
    #[test]
    fn a_repeated_client_post_id_answers_the_earlier_post() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        migrate(&conn).unwrap();
        let tx = conn.transaction().unwrap();
        let post = |text: &str, id: &str| Command::InSession {
            session_ms: 1,
            command: Box::new(Command::Post {
                author: "ann".into(),
                text: text.into(),
                client_post_id: id.into(),
            }),
        };
        let cmds = [
            Command::CreateUser {
                name: "ann".into(),
                password_hash: None,
            },
            post("one", "p1"),
            post("two", "p2"),
            post("one again", "p1"),
            post("three", "p3"),
            post("two again", "p2"),
        ];
        let mut last = 0;
        let mut answers = Vec::new();
        for (i, c) in cmds.iter().enumerate() {
            let a = apply_command(&tx, c, 100 + i as i64, last)
                .unwrap()
                .unwrap();
            if !a.duplicate {
                last = a.seq;
            }
            answers.push((a.seq, a.ts_ms, a.duplicate));
        }
        assert_eq!(
            answers,
            [
                (1, 100, false),
                (2, 101, false),
                (3, 102, false),
                (2, 101, true),
                (4, 104, false),
                (3, 102, true)
            ]
        );
        assert_eq!(last, last_seq(&tx).unwrap());
        let texts: Vec<_> = events_after(&tx, 1, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.text.unwrap_or_default())
            .collect();
        assert_eq!(texts, ["one", "two", "three"]);
    }

    /// A command made in a session applies while the user's sessions after its issue time
    /// stand; after `EndSessions` (or `ChangePassword`) at T, a session issued at or before T is
    /// refused and a later one applies; a session of an unknown user is refused as such, and
    /// only follows, unfollows and posts are made in a session.
    #[test]
    fn sessions_end_at_their_time() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        migrate(&conn).unwrap();
        let run = |cmd: Command| apply_command(&conn, &cmd, 1, last_seq(&conn).unwrap()).unwrap();
        run(Command::CreateUser {
            name: "ann".into(),
            password_hash: None,
        })
        .unwrap();
        let post = |session_ms, author: &str| Command::InSession {
            session_ms,
            command: Box::new(Command::Post {
                author: author.into(),
                text: "hi".into(),
                client_post_id: String::new(),
            }),
        };
        assert!(run(post(100, "ann")).is_ok());
        run(Command::EndSessions {
            name: "ann".into(),
            at_ms: 200,
        })
        .unwrap();
        assert_eq!(
            run(post(200, "ann")),
            Err(FeedError::SessionEnded("ann".into()))
        );
        assert!(run(post(201, "ann")).is_ok());
        assert_eq!(
            run(post(300, "bob")),
            Err(FeedError::UserNotFound("bob".into()))
        );
        run(Command::ChangePassword {
            name: "ann".into(),
            password_hash: "$argon2id$x".into(),
            at_ms: 400,
        })
        .unwrap();
        assert_eq!(
            run(post(201, "ann")),
            Err(FeedError::SessionEnded("ann".into()))
        );
        let nested = Command::InSession {
            session_ms: 500,
            command: Box::new(post(500, "ann")),
        };
        assert!(matches!(run(nested), Err(FeedError::Invalid(_))));
    }
}
