//! The feed's data model in SQLite: users, follows (with the seq range in which each held) and
//! the event log (user created, followed, unfollowed, posted), every event numbered by its `seq`.
//! Commands are validated here, deterministically, so every member reaches the same answer; a
//! rejected command is an `Err(FeedError)` result, never a storage failure.
//!
//! Only the state machine writes these tables (`apply_command`); everyone else reads them through
//! the query functions below.

use crate::raft::types::{Applied, Command};
use chatfeed_common::config::HARD_MAX_POST_CHARS;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Event kinds, as stored in `events.kind`.
pub const KIND_USER: i64 = 0;
pub const KIND_FOLLOW: i64 = 1;
pub const KIND_UNFOLLOW: i64 = 2;
pub const KIND_POST: i64 = 3;

/// Longest user name.
pub const MAX_NAME_LEN: usize = 32;
/// Longest client post id: it is an idempotency key, not content.
pub const MAX_CLIENT_POST_ID_LEN: usize = 64;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS follows (
    follower TEXT NOT NULL, followee TEXT NOT NULL,
    from_seq INTEGER NOT NULL, to_seq INTEGER,
    PRIMARY KEY (follower, followee, from_seq));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, kind INTEGER NOT NULL, actor TEXT NOT NULL, target TEXT,
    text TEXT, ts_ms INTEGER NOT NULL, client_post_id TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS post_ids ON events(actor, client_post_id)
    WHERE kind = 3 AND client_post_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS posts_by_author ON events(actor, seq) WHERE kind = 3;
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// The `secrets` row that holds the token key (hex).
const TOKEN_KEY: &str = "token_key";

/// Brings a database made before accounts up to date: `users.pw_hash` (NULL: no password yet).
/// Idempotent; runs when a member opens its database.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_hash = conn
        .prepare("SELECT 1 FROM pragma_table_info('users') WHERE name = 'pw_hash'")?
        .exists([])?;
    if !has_hash {
        conn.execute_batch("ALTER TABLE users ADD COLUMN pw_hash TEXT")?;
    }
    Ok(())
}

/// Why a command was refused. Deterministic: the same state and command give the same error on
/// every member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum FeedError {
    #[error("invalid user name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("user {0:?} does not exist")]
    UserNotFound(String),
    #[error("you cannot follow yourself")]
    FollowSelf,
    #[error("{follower:?} already follows {followee:?}")]
    AlreadyFollowing { follower: String, followee: String },
    #[error("{follower:?} does not follow {followee:?}")]
    NotFollowing { follower: String, followee: String },
    #[error("a post cannot be empty")]
    EmptyPost,
    #[error("a post is at most {max} characters; this one has {chars}")]
    PostTooLong { chars: usize, max: usize },
    #[error("invalid client post id: {0}")]
    InvalidPostId(String),
    #[error("user {0:?} has a password already")]
    PasswordAlreadySet(String),
    #[error("the token key is set already")]
    TokenKeySet,
    #[error("invalid command: {0}")]
    Invalid(String),
}

/// Checks a user name: 1 to 32 characters of `[A-Za-z0-9_.-]`.
pub fn validate_name(name: &str) -> Result<(), FeedError> {
    let bad = |reason: &str| FeedError::InvalidName {
        name: name.into(),
        reason: reason.into(),
    };
    if name.is_empty() {
        return Err(bad("a name needs at least one character"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(bad("a name has at most 32 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(bad("use only letters, digits, '_', '.' and '-'"));
    }
    Ok(())
}

/// Checks a post's text against `max_chars`.
pub fn validate_text(text: &str, max_chars: usize) -> Result<(), FeedError> {
    if text.trim().is_empty() {
        return Err(FeedError::EmptyPost);
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(FeedError::PostTooLong {
            chars,
            max: max_chars,
        });
    }
    Ok(())
}

/// Validates what can be validated without the state; the API calls it before proposing, and
/// `apply_command` again (with the hard limit) so the log cannot carry a bad command.
pub fn validate_command(cmd: &Command, max_post_chars: usize) -> Result<(), FeedError> {
    match cmd {
        Command::CreateUser { name, .. } => validate_name(name),
        Command::SetPassword {
            name,
            password_hash,
        } => {
            validate_name(name)?;
            if password_hash.is_empty() {
                return Err(FeedError::Invalid("an empty password hash".into()));
            }
            Ok(())
        }
        Command::SetTokenKey { key_hex } => {
            if key_hex.len() != 2 * chatfeed_common::accounts::TOKEN_KEY_LEN
                || !key_hex.chars().all(|c| c.is_ascii_hexdigit())
            {
                return Err(FeedError::Invalid("a token key is 32 bytes in hex".into()));
            }
            Ok(())
        }
        Command::Follow { follower, followee } | Command::Unfollow { follower, followee } => {
            validate_name(follower)?;
            validate_name(followee)?;
            if follower == followee {
                return Err(FeedError::FollowSelf);
            }
            Ok(())
        }
        Command::Post {
            author,
            text,
            client_post_id,
            ..
        } => {
            validate_name(author)?;
            validate_text(text, max_post_chars)?;
            if client_post_id.len() > MAX_CLIENT_POST_ID_LEN {
                return Err(FeedError::InvalidPostId(format!(
                    "at most {MAX_CLIENT_POST_ID_LEN} bytes"
                )));
            }
            Ok(())
        }
    }
}

/// The seq of the last event, 0 when there is none.
pub fn last_seq(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|s| s as u64)
}

/// Whether `name` is a user. Users are never removed, so a true answer never goes stale.
pub fn user_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM users WHERE name = ?1")?
        .query_row([name], |_| Ok(()))
        .optional()
        .map(|o| o.is_some())
}

fn follows_now(conn: &Connection, follower: &str, followee: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT 1 FROM follows WHERE follower = ?1 AND followee = ?2 AND to_seq IS NULL",
    )?
    .query_row([follower, followee], |_| Ok(()))
    .optional()
    .map(|o| o.is_some())
}

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

/// A committed event, as the watch stream and snapshots carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub kind: i64,
    pub actor: String,
    pub target: Option<String>,
    pub text: Option<String>,
    pub ts_ms: i64,
    pub client_post_id: Option<String>,
}

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        seq: r.get::<_, i64>(0)? as u64,
        kind: r.get(1)?,
        actor: r.get(2)?,
        target: r.get(3)?,
        text: r.get(4)?,
        ts_ms: r.get(5)?,
        client_post_id: r.get(6)?,
    })
}

const EVENT_COLUMNS: &str = "seq, kind, actor, target, text, ts_ms, client_post_id";

/// Events with seq > `after`, oldest first, at most `limit`.
pub fn events_after(conn: &Connection, after: u64, limit: usize) -> rusqlite::Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![after as i64, limit as i64], event_from_row)?;
    rows.collect()
}

/// The timeline of `user` (PRODUCT.md §5): its own posts and the posts of the users it followed
/// at the moment each was committed. With `after`, the posts with a larger seq, oldest first, at
/// most `limit`; without it, the latest `limit`, oldest first.
///
/// The work is bounded by the user's follow history and `limit`, never by the size of the
/// events table: the timeline is the union of seq ranges of single authors (the user's own
/// posts; each follow's posts between its `from_seq` and `to_seq`), each read from the
/// `posts_by_author` index with its own `limit`, then merged. (A single query filtering the
/// events table scanned all of it, newest first, for a timeline with fewer than `limit` posts:
/// with tens of thousands of events, opening thousands of quiet timelines at once kept the
/// active master's readers busy for minutes; see `timeline_reads_only_the_users_authors`.)
pub fn timeline(
    conn: &Connection,
    user: &str,
    after: Option<u64>,
    limit: usize,
) -> rusqlite::Result<Vec<Event>> {
    // (author, first seq excluded, last seq excluded): the own posts, then each follow.
    let mut ranges: Vec<(String, i64, i64)> = vec![(user.to_string(), 0, i64::MAX)];
    let mut stmt =
        conn.prepare_cached("SELECT followee, from_seq, to_seq FROM follows WHERE follower = ?1")?;
    let follows = stmt.query_map([user], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<i64>>(2)?.unwrap_or(i64::MAX),
        ))
    })?;
    for f in follows {
        ranges.push(f?);
    }
    let floor = after.map_or(0, |a| a as i64);
    let order = if after.is_some() { "ASC" } else { "DESC" };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE kind = {KIND_POST} AND actor = ?1 \
         AND seq > ?2 AND seq < ?3 ORDER BY seq {order} LIMIT ?4"
    ))?;
    let mut posts: Vec<Event> = Vec::new();
    for (author, from, to) in ranges {
        let rows = stmt.query_map(
            params![author, from.max(floor), to, limit as i64],
            event_from_row,
        )?;
        for r in rows {
            posts.push(r?);
        }
    }
    // Ranges never overlap (one author's follows follow each other; nobody follows themselves);
    // dedup keeps that a non-issue even so.
    posts.sort_unstable_by_key(|e| e.seq);
    posts.dedup_by_key(|e| e.seq);
    if after.is_some() {
        posts.truncate(limit);
    } else {
        let skip = posts.len().saturating_sub(limit);
        posts.drain(..skip);
    }
    Ok(posts)
}

/// The stored token key (hex), if one was committed.
pub fn token_key_hex(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM secrets WHERE name = ?1")?
        .query_row([TOKEN_KEY], |r| r.get(0))
        .optional()
}

/// What is stored about a user's password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// No such user.
    NoUser,
    /// The user exists without a password (created before accounts).
    NoPassword,
    /// The user's argon2id PHC string.
    Hash(String),
}

/// `user`'s stored credential.
pub fn credential(conn: &Connection, user: &str) -> rusqlite::Result<Credential> {
    let row: Option<Option<String>> = conn
        .prepare_cached("SELECT pw_hash FROM users WHERE name = ?1")?
        .query_row([user], |r| r.get(0))
        .optional()?;
    Ok(match row {
        None => Credential::NoUser,
        Some(None) => Credential::NoPassword,
        Some(Some(h)) => Credential::Hash(h),
    })
}

/// Whether `author` committed a post with `client_post_id` (a retry of it only answers the
/// original seq).
pub fn post_exists(
    conn: &Connection,
    author: &str,
    client_post_id: &str,
) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT 1 FROM events WHERE kind = 3 AND actor = ?1 AND client_post_id = ?2",
    )?
    .exists([author, client_post_id])
}

/// Every user, by name.
pub fn users(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT name FROM users ORDER BY name")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// The users `user` follows now, by name; `UserNotFound` when `user` does not exist.
pub fn following(
    conn: &Connection,
    user: &str,
) -> rusqlite::Result<Result<Vec<String>, FeedError>> {
    if !user_exists(conn, user)? {
        return Ok(Err(FeedError::UserNotFound(user.into())));
    }
    let mut stmt = conn.prepare_cached(
        "SELECT followee FROM follows WHERE follower = ?1 AND to_seq IS NULL ORDER BY followee",
    )?;
    let rows = stmt.query_map([user], |r| r.get(0))?;
    Ok(Ok(rows.collect::<rusqlite::Result<_>>()?))
}

/// The feed tables in full, for snapshots.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Dump {
    pub users: Vec<(String, u64)>,
    /// Password hashes by user (snapshots from before accounts have none).
    #[serde(default)]
    pub password_hashes: Vec<(String, String)>,
    /// The token key (hex), once set.
    #[serde(default)]
    pub token_key_hex: Option<String>,
    pub follows: Vec<(String, String, u64, Option<u64>)>,
    pub events: Vec<Event>,
}

/// Reads the feed tables (inside the caller's read transaction, for a consistent view).
pub fn dump(conn: &Connection) -> rusqlite::Result<Dump> {
    let mut d = Dump::default();
    let mut s = conn.prepare("SELECT name, seq FROM users")?;
    d.users = s
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<Result<_, _>>()?;
    let mut s = conn.prepare("SELECT name, pw_hash FROM users WHERE pw_hash IS NOT NULL")?;
    d.password_hashes = s
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    d.token_key_hex = token_key_hex(conn)?;
    let mut s = conn.prepare("SELECT follower, followee, from_seq, to_seq FROM follows")?;
    d.follows = s
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
            ))
        })?
        .collect::<Result<_, _>>()?;
    d.events = events_after(conn, 0, usize::MAX >> 1)?;
    Ok(d)
}

/// Replaces the feed tables with `d` (inside the caller's write transaction).
pub fn restore(conn: &Connection, d: &Dump) -> rusqlite::Result<()> {
    conn.execute_batch(
        "DELETE FROM users; DELETE FROM follows; DELETE FROM events; DELETE FROM secrets;",
    )?;
    for (name, seq) in &d.users {
        conn.execute(
            "INSERT INTO users (name, seq) VALUES (?1, ?2)",
            params![name, *seq as i64],
        )?;
    }
    for (name, hash) in &d.password_hashes {
        conn.execute(
            "UPDATE users SET pw_hash = ?2 WHERE name = ?1",
            params![name, hash],
        )?;
    }
    if let Some(k) = &d.token_key_hex {
        conn.execute(
            "INSERT INTO secrets (name, value) VALUES (?1, ?2)",
            params![TOKEN_KEY, k],
        )?;
    }
    for (a, b, from, to) in &d.follows {
        conn.execute(
            "INSERT INTO follows (follower, followee, from_seq, to_seq) VALUES (?1, ?2, ?3, ?4)",
            params![a, b, *from as i64, to.map(|t| t as i64)],
        )?;
    }
    for e in &d.events {
        insert_event(
            conn,
            e.seq,
            e.kind,
            &e.actor,
            e.target.as_deref(),
            e.text.as_deref(),
            e.ts_ms,
            e.client_post_id.as_deref(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        migrate(&conn).unwrap();
        conn
    }

    fn apply(conn: &Connection, cmd: Command) -> u64 {
        apply_command(conn, &cmd, 0).unwrap().unwrap().seq
    }

    fn user(name: &str) -> Command {
        Command::CreateUser {
            name: name.into(),
            password_hash: None,
        }
    }

    fn post(author: &str, id: &str) -> Command {
        Command::Post {
            author: author.into(),
            text: format!("post {id}"),
            client_post_id: id.into(),
        }
    }

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    /// Over a pseudo-random history of posts, follows, unfollows and follows again, every
    /// user's timeline is exactly the model's (PRODUCT.md §5: own posts, and posts of the
    /// users followed at the moment each committed), for latest-N and after-seq reads alike.
    #[test]
    fn timeline_matches_the_follow_model() {
        let conn = db();
        let names: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
        for n in &names {
            apply(&conn, user(n));
        }
        // Model: who follows whom now, and each user's timeline.
        let mut follows: HashMap<(usize, usize), bool> = HashMap::new();
        let mut model: Vec<Vec<u64>> = vec![Vec::new(); names.len()];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for k in 0..600 {
            let a = next(names.len() as u64) as usize;
            let b = next(names.len() as u64) as usize;
            match next(4) {
                0 if a != b => {
                    let on = follows.entry((a, b)).or_default();
                    let cmd = if *on {
                        Command::Unfollow {
                            follower: names[a].clone(),
                            followee: names[b].clone(),
                        }
                    } else {
                        Command::Follow {
                            follower: names[a].clone(),
                            followee: names[b].clone(),
                        }
                    };
                    *on = !*on;
                    apply(&conn, cmd);
                }
                _ => {
                    let seq = apply(&conn, post(&names[a], &format!("p{k}")));
                    for (u, t) in model.iter_mut().enumerate() {
                        if u == a || follows.get(&(u, a)).copied().unwrap_or(false) {
                            t.push(seq);
                        }
                    }
                }
            }
        }
        let last = last_seq(&conn).unwrap();
        for (u, want) in model.iter().enumerate() {
            assert!(!want.is_empty());
            for limit in [1, 7, 20, 1000] {
                let got = seqs(&timeline(&conn, &names[u], None, limit).unwrap());
                let from = want.len().saturating_sub(limit);
                assert_eq!(got, want[from..], "latest {limit} of {}", names[u]);
                for after in [0, 1, last / 3, last / 2, last - 5, last] {
                    let got = seqs(&timeline(&conn, &names[u], Some(after), limit).unwrap());
                    let want: Vec<u64> = want
                        .iter()
                        .copied()
                        .filter(|s| *s > after)
                        .take(limit)
                        .collect();
                    assert_eq!(got, want, "{} after {after}, {limit}", names[u]);
                }
            }
        }
    }

    /// Reading a timeline costs work for the posts of its own authors, not for the rest of the
    /// events table: the timeline of a user whose only followee posted three times costs as many
    /// SQLite VM steps with 20,000 posts of other users in the table as with 200 (counted with
    /// SQLite's progress handler; no clock involved). A query that filtered the events table
    /// scanned all of it, newest first, when the timeline held fewer posts than asked for: opening
    /// thousands of such timelines after a busy period kept the active master's readers busy so
    /// long that streams timed out opening and their clients gave up.
    #[test]
    fn timeline_reads_only_the_users_authors() {
        let mut conn = db();
        for n in ["alice", "bob", "carol"] {
            apply(&conn, user(n));
        }
        apply(
            &conn,
            Command::Follow {
                follower: "bob".into(),
                followee: "alice".into(),
            },
        );
        let mut own = Vec::new();
        for i in 0..3 {
            own.push(apply(&conn, post("alice", &format!("a{i}"))));
        }
        let mut noise = 0;
        let mut add_noise = |conn: &Connection, n: usize| {
            conn.execute_batch("BEGIN").unwrap();
            for _ in 0..n {
                noise += 1;
                apply(conn, post("carol", &format!("c{noise}")));
            }
            conn.execute_batch("COMMIT").unwrap();
        };
        let steps = |conn: &mut Connection| -> (u64, Vec<Vec<u64>>) {
            let count = Arc::new(AtomicU64::new(0));
            let c = count.clone();
            conn.progress_handler(
                1,
                Some(move || {
                    c.fetch_add(1, Ordering::Relaxed);
                    false
                }),
            )
            .unwrap();
            let read = vec![
                seqs(&timeline(conn, "bob", None, 20).unwrap()),
                seqs(&timeline(conn, "bob", Some(0), 1000).unwrap()),
            ];
            conn.progress_handler(0, None::<fn() -> bool>).unwrap();
            (count.load(Ordering::Relaxed), read)
        };
        add_noise(&conn, 200);
        let _ = steps(&mut conn); // statements prepared and cached
        let (small, read) = steps(&mut conn);
        assert_eq!(read, vec![own.clone(), own.clone()]);
        add_noise(&conn, 19_800);
        let (large, read) = steps(&mut conn);
        assert_eq!(read, vec![own.clone(), own]);
        assert!(
            large <= small * 2,
            "a timeline of 3 posts cost {small} VM steps among 200 other posts and {large} among \
             20,000: its cost grows with the events table"
        );
    }
}
