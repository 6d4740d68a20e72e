//! The feed's SQLite tables: users, follows (with the seq range in which each held), the event
//! log (user created, followed, unfollowed, posted; every event numbered by its `seq`) and the
//! cluster's secrets. `migrate` brings an older database up to date.

use rusqlite::Connection;

/// Event kinds, as stored in `events.kind`.
pub const KIND_USER: i64 = 0;
pub const KIND_FOLLOW: i64 = 1;
pub const KIND_UNFOLLOW: i64 = 2;
pub const KIND_POST: i64 = 3;
/// A user ended its sessions (logout, password change): workers end its open streams.
pub const KIND_SESSIONS_ENDED: i64 = 4;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS follows (
    follower TEXT NOT NULL, followee TEXT NOT NULL,
    from_seq INTEGER NOT NULL, to_seq INTEGER,
    PRIMARY KEY (follower, followee, from_seq));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, kind INTEGER NOT NULL, actor TEXT NOT NULL, target TEXT,
    text TEXT, ts_ms INTEGER NOT NULL, client_post_id TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS client_post_ids ON events(client_post_id, actor)
    WHERE kind = 3 AND client_post_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS posts_by_author ON events(actor, seq) WHERE kind = 3;
CREATE INDEX IF NOT EXISTS follows_by_end ON follows(follower, to_seq);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS token_keys (
    id INTEGER PRIMARY KEY, key_hex TEXT NOT NULL, created_ms INTEGER NOT NULL);
";

/// The index of client post ids that `client_post_ids` replaced, on (actor, client_post_id).
/// `client_post_ids` (a post's idempotency key, unique per author) has the id first: the ids the
/// CLI and the web page make begin with the time, so each new post's entry lands at the index's
/// right edge, where the recent posts of every author share a few pages, instead of on a page
/// per author that the next commit writes again (with 1,000 authors posting, the earlier index
/// made a post's apply cost about three times as much; bench/RESULTS.md).
const OLD_POST_IDS: &str = "post_ids";

/// The `secrets` row that holds the token key (hex).
pub(super) const TOKEN_KEY: &str = "token_key";
/// The `secrets` row that holds the cluster id (`Command::SetClusterId`).
pub(super) const CLUSTER_ID: &str = "cluster_id";

/// Brings a database made by an earlier build up to date: `users.pw_hash` (NULL: no password
/// yet), `users.sessions_after`, the client post ids' index. Idempotent; runs when a member
/// opens its database, after `SCHEMA`.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_hash = conn
        .prepare("SELECT 1 FROM pragma_table_info('users') WHERE name = 'pw_hash'")?
        .exists([])?;
    if !has_hash {
        conn.execute_batch("ALTER TABLE users ADD COLUMN pw_hash TEXT")?;
    }
    // Tokens issued at or before it are refused (a logout or a password change).
    let has_sessions_after = conn
        .prepare("SELECT 1 FROM pragma_table_info('users') WHERE name = 'sessions_after'")?
        .exists([])?;
    if !has_sessions_after {
        conn.execute_batch("ALTER TABLE users ADD COLUMN sessions_after INTEGER")?;
    }
    // `SCHEMA` has built `client_post_ids` in place of the earlier index.
    conn.execute_batch(&format!("DROP INDEX IF EXISTS {OLD_POST_IDS}"))?;
    Ok(())
}

/// Whether the database holds the client post ids' earlier index: `SCHEMA` then builds
/// `client_post_ids` from every post (about a second per million posts, once) and `migrate`
/// drops the earlier one.
pub fn reindexes_post_ids(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare("SELECT 1 FROM sqlite_schema WHERE type = 'index' AND name = ?1")?
        .exists([OLD_POST_IDS])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Command, apply_command, last_seq};

    /// A database of a build before `client_post_ids` (the earlier index on (actor,
    /// client_post_id)) gets the time-first index in its place when opened: the posts it held
    /// still answer a repeated client post id with the earlier post, per author, the look-up
    /// uses the new index, and opening it again changes nothing.
    #[test]
    fn an_earlier_database_gets_the_time_first_index() {
        let conn = Connection::open_in_memory().unwrap();
        let earlier = SCHEMA.replace(
            "client_post_ids ON events(client_post_id, actor)",
            "post_ids ON events(actor, client_post_id)",
        );
        assert_ne!(earlier, SCHEMA);
        // With the columns `migrate` added before this index.
        conn.execute_batch(&format!(
            "{earlier} ALTER TABLE users ADD COLUMN pw_hash TEXT;
             ALTER TABLE users ADD COLUMN sessions_after INTEGER;"
        ))
        .unwrap();
        let post = |author: &str, id: &str| Command::Post {
            author: author.into(),
            text: "hello".into(),
            client_post_id: id.into(),
        };
        let apply = |c: &Command| {
            apply_command(&conn, c, 7, last_seq(&conn).unwrap())
                .unwrap()
                .unwrap()
        };
        for name in ["ann", "bo"] {
            apply(&Command::CreateUser {
                name: name.into(),
                password_hash: None,
            });
        }
        let first = apply(&post("ann", "0190a1b2c3d4-1"));
        assert!(reindexes_post_ids(&conn).unwrap());

        for _ in 0..2 {
            conn.execute_batch(SCHEMA).unwrap();
            migrate(&conn).unwrap();
            assert!(!reindexes_post_ids(&conn).unwrap());
            let columns: Vec<String> = conn
                .prepare("SELECT name FROM pragma_index_info('client_post_ids') ORDER BY seqno")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(columns, ["client_post_id", "actor"]);
        }
        let again = apply(&post("ann", "0190a1b2c3d4-1"));
        assert!(again.duplicate);
        assert_eq!(again.seq, first.seq);
        let other = apply(&post("bo", "0190a1b2c3d4-1"));
        assert!(!other.duplicate, "another author may use the same id");
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT seq, ts_ms FROM events \
                 WHERE kind = 3 AND actor = ?1 AND client_post_id = ?2",
                ["ann", "x"],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("client_post_ids"), "{plan}");
    }
}
