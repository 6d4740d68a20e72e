//! Reads of the feed tables: events after a seq (the watch stream), a user's timeline, users,
//! follows, credentials. Pure functions over a `rusqlite::Connection`, run inside the caller's
//! read transaction.

use super::command::FeedError;
use super::schema::{CLUSTER_ID, KIND_POST, TOKEN_KEY};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

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

pub(super) fn follows_now(
    conn: &Connection,
    follower: &str,
    followee: &str,
) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT 1 FROM follows WHERE follower = ?1 AND followee = ?2 AND to_seq IS NULL",
    )?
    .query_row([follower, followee], |_| Ok(()))
    .optional()
    .map(|o| o.is_some())
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

/// The timeline of `user` (docs/semantics.md §3): its own posts and the posts of the users it followed
/// at the moment each was committed. With `after`, the posts with a larger seq, oldest first, at
/// most `limit`; without it, the latest `limit`, oldest first.
///
/// The timeline is the union of seq ranges of single authors (the user's own posts; each
/// follow's posts between its `from_seq` and `to_seq`), each read from the `posts_by_author`
/// index with its own `limit`, then merged; never a scan of the events table (which kept the
/// active master's readers busy for minutes with tens of thousands of events; see
/// `timeline_reads_only_the_users_authors`). Its cost is bounded whatever the user's history:
/// the ranges are read in the order their posts could matter (newest end first for the latest
/// posts, oldest start first after a seq) and the reading stops as soon as no further range can
/// hold a post of the answer. An unfollow drops a range that holds no post (`apply.rs`), so each
/// closed range read holds at least one post: a read takes at most `limit` closed ranges and
/// the open ones (the own posts and the current follows, at most `limits.max_following`), and
/// after a seq also the ranges that straddle it (one per author at most).
pub fn timeline(
    conn: &Connection,
    user: &str,
    after: Option<u64>,
    limit: usize,
) -> rusqlite::Result<Vec<Event>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let order = if after.is_some() { "ASC" } else { "DESC" };
    let mut posts_of = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE kind = {KIND_POST} AND actor = ?1 \
         AND seq > ?2 AND seq < ?3 ORDER BY seq {order} LIMIT ?4"
    ))?;
    let mut posts: Vec<Event> = Vec::new();
    let mut read =
        |author: &str, from: i64, to: i64, posts: &mut Vec<Event>| -> rusqlite::Result<()> {
            let rows =
                posts_of.query_map(params![author, from, to, limit as i64], event_from_row)?;
            for r in rows {
                posts.push(r?);
            }
            Ok(())
        };
    match after {
        None => {
            // The open ranges (they end at the newest seq), then the closed ones by their end,
            // newest first, until the `limit` newest posts held are all newer than a range's
            // end (every later range ends earlier still).
            read(user, 0, i64::MAX, &mut posts)?;
            keep_newest(&mut posts, limit);
            let mut open = conn.prepare_cached(
                "SELECT followee, from_seq FROM follows WHERE follower = ?1 AND to_seq IS NULL",
            )?;
            let rows = open.query_map([user], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (author, from) = row?;
                read(&author, from, i64::MAX, &mut posts)?;
                keep_newest(&mut posts, limit);
            }
            let mut closed = conn.prepare_cached(
                "SELECT followee, from_seq, to_seq FROM follows \
                 WHERE follower = ?1 AND to_seq IS NOT NULL ORDER BY to_seq DESC",
            )?;
            let mut rows = closed.query([user])?;
            while let Some(r) = rows.next()? {
                let to: i64 = r.get(2)?;
                if posts.len() >= limit && posts[limit - 1].seq as i64 > to {
                    break;
                }
                read(&r.get::<_, String>(0)?, r.get(1)?, to, &mut posts)?;
                keep_newest(&mut posts, limit);
            }
            keep_newest(&mut posts, limit);
            posts.reverse();
        }
        Some(a) => {
            // Callers bound `after` by the last committed seq (`Core::timeline`); the cast
            // cannot wrap then, and is clamped for any other caller.
            let floor = a.min(i64::MAX as u64) as i64;
            // The ranges that end after `floor`, by their start, oldest first, until the
            // `limit` oldest posts held are all older than a range's start.
            let mut ranges: Vec<(String, i64, i64)> = vec![(user.to_string(), 0, i64::MAX)];
            // Two queries, each a range of the `follows_by_end` index (an OR of both would
            // read every follow the user ever had).
            let open: (&str, &[&dyn rusqlite::ToSql]) = (
                "SELECT followee, from_seq, to_seq FROM follows \
                 WHERE follower = ?1 AND to_seq IS NULL",
                params![user],
            );
            let closed: (&str, &[&dyn rusqlite::ToSql]) = (
                "SELECT followee, from_seq, to_seq FROM follows \
                 WHERE follower = ?1 AND to_seq > ?2",
                params![user, floor],
            );
            for (sql, args) in [open, closed] {
                let mut stmt = conn.prepare_cached(sql)?;
                let rows = stmt.query_map(args, |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?.unwrap_or(i64::MAX),
                    ))
                })?;
                for r in rows {
                    ranges.push(r?);
                }
            }
            ranges.sort_unstable_by_key(|r| r.1);
            for (author, from, to) in ranges {
                if posts.len() >= limit && (posts[limit - 1].seq as i64) < from {
                    break;
                }
                read(&author, from.max(floor), to, &mut posts)?;
                posts.sort_unstable_by_key(|e| e.seq);
                posts.dedup_by_key(|e| e.seq);
                posts.truncate(limit);
            }
        }
    }
    Ok(posts)
}

/// Keeps the `limit` newest of `posts`, newest first.
fn keep_newest(posts: &mut Vec<Event>, limit: usize) {
    posts.sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
    // Ranges never overlap (one author's follows follow each other; nobody follows
    // themselves); dedup keeps that a non-issue even so.
    posts.dedup_by_key(|e| e.seq);
    posts.truncate(limit);
}

/// How many users `user` follows now.
pub fn following_count(conn: &Connection, user: &str) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT COUNT(*) FROM follows WHERE follower = ?1 AND to_seq IS NULL")?
        .query_row([user], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
}

/// When `user` last ended its sessions (tokens issued at or before it are refused); `None`
/// when it never did, or does not exist.
pub fn sessions_after(conn: &Connection, user: &str) -> rusqlite::Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT sessions_after FROM users WHERE name = ?1")?
        .query_row([user], |r| r.get::<_, Option<i64>>(0))
        .optional()?
        .flatten())
}

/// A token key of the replicated state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub id: u32,
    pub key_hex: String,
    pub created_ms: i64,
}

/// The token keys, newest first: the rotated ones, and the single key of the releases before
/// rotation (id 0) while it is among the last two.
pub fn token_keys(conn: &Connection) -> rusqlite::Result<Vec<StoredKey>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, key_hex, created_ms FROM token_keys ORDER BY id DESC LIMIT 2",
    )?;
    let mut keys = stmt
        .query_map([], |r| {
            Ok(StoredKey {
                id: r.get::<_, i64>(0)? as u32,
                key_hex: r.get(1)?,
                created_ms: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if keys.len() < 2
        && let Some(key_hex) = token_key_hex(conn)?
    {
        keys.push(StoredKey {
            id: 0,
            key_hex,
            created_ms: 0,
        });
    }
    Ok(keys)
}

/// The cluster id, if one was committed (`Command::SetClusterId`).
pub fn cluster_id(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM secrets WHERE name = ?1")?
        .query_row([CLUSTER_ID], |r| r.get(0))
        .optional()
}

/// Gives the database a new cluster id, the one of a group restored from it (`restore`).
pub fn replace_cluster_id(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO secrets (name, value) VALUES (?1, ?2)")?
        .execute([CLUSTER_ID, id])?;
    Ok(())
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

/// Users by name after `after` (empty: from the first), at most `limit`.
pub fn users(conn: &Connection, after: &str, limit: usize) -> rusqlite::Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT name FROM users WHERE name > ?1 ORDER BY name LIMIT ?2")?;
    let rows = stmt.query_map(params![after, limit as i64], |r| r.get(0))?;
    rows.collect()
}

/// The users `user` follows now, by name, after `after`, at most `limit`; `UserNotFound` when
/// `user` does not exist.
pub fn following_page(
    conn: &Connection,
    user: &str,
    after: &str,
    limit: usize,
) -> rusqlite::Result<Result<Vec<String>, FeedError>> {
    if !user_exists(conn, user)? {
        return Ok(Err(FeedError::UserNotFound(user.into())));
    }
    let mut stmt = conn.prepare_cached(
        "SELECT followee FROM follows WHERE follower = ?1 AND to_seq IS NULL AND followee > ?2 \
         ORDER BY followee LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![user, after, limit as i64], |r| r.get(0))?;
    Ok(Ok(rows.collect::<rusqlite::Result<_>>()?))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::apply::apply_command;
    use crate::domain::command::Command;
    use crate::domain::schema::{SCHEMA, migrate};
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
        apply_command(conn, &cmd, 0, last_seq(conn).unwrap())
            .unwrap()
            .unwrap()
            .seq
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
    /// user's timeline is exactly the model's (docs/semantics.md §3: own posts, and posts of the
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

    /// The cost of a timeline read does not grow with the reader's follow history: a user who
    /// followed and unfollowed an author 2,000 times (the author posting once in each follow)
    /// reads its latest 20 posts, and the 20 after a recent seq, in about as many SQLite VM
    /// steps as after 100 such cycles; and follow/unfollow cycles during which the author posted
    /// nothing leave no range behind at all.
    #[test]
    fn timeline_cost_is_bounded_whatever_the_follow_history() {
        let mut conn = db();
        for n in ["a", "b", "c"] {
            apply(&conn, user(n));
        }
        let follow = |f: &str| Command::Follow {
            follower: f.into(),
            followee: "a".into(),
        };
        let unfollow = |f: &str| Command::Unfollow {
            follower: f.into(),
            followee: "a".into(),
        };
        let mut n = 0;
        let mut cycles = |conn: &Connection, count: usize, model: &mut Vec<u64>| {
            conn.execute_batch("BEGIN").unwrap();
            for _ in 0..count {
                n += 1;
                apply(conn, follow("b"));
                model.push(apply(conn, post("a", &format!("a{n}"))));
                apply(conn, unfollow("b"));
                // c's follows hold no post of a's.
                apply(conn, follow("c"));
                apply(conn, unfollow("c"));
            }
            conn.execute_batch("COMMIT").unwrap();
        };
        let steps = |conn: &mut Connection, after: Option<u64>| -> (u64, Vec<u64>) {
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
            let read = seqs(&timeline(conn, "b", after, 20).unwrap());
            conn.progress_handler(0, None::<fn() -> bool>).unwrap();
            (count.load(Ordering::Relaxed), read)
        };
        let mut model = Vec::new();
        cycles(&conn, 100, &mut model);
        let recent = model[model.len() - 30] - 1;
        let _ = steps(&mut conn, None); // statements prepared and cached
        let _ = steps(&mut conn, Some(recent));
        let (small_latest, read) = steps(&mut conn, None);
        assert_eq!(read, model[model.len() - 20..]);
        let (small_after, read) = steps(&mut conn, Some(recent));
        assert_eq!(read, model[model.len() - 30..model.len() - 10]);

        cycles(&conn, 1_900, &mut model);
        let recent = model[model.len() - 30] - 1;
        let (large_latest, read) = steps(&mut conn, None);
        assert_eq!(read, model[model.len() - 20..]);
        let (large_after, read) = steps(&mut conn, Some(recent));
        assert_eq!(read, model[model.len() - 30..model.len() - 10]);
        assert!(
            large_latest <= small_latest * 2 && large_after <= small_after * 2,
            "latest 20: {small_latest} VM steps after 100 follow cycles, {large_latest} after \
             2,000; after a recent seq: {small_after}, {large_after}: the cost grows with the \
             follow history"
        );
        let left: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM follows WHERE follower = 'c'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            left, 0,
            "follows that held no post are dropped at the unfollow"
        );
        assert_eq!(following_count(&conn, "b").unwrap(), 0);
        apply(&conn, follow("b"));
        assert_eq!(following_count(&conn, "b").unwrap(), 1);
    }
}
