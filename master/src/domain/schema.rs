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
CREATE UNIQUE INDEX IF NOT EXISTS post_ids ON events(actor, client_post_id)
    WHERE kind = 3 AND client_post_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS posts_by_author ON events(actor, seq) WHERE kind = 3;
CREATE INDEX IF NOT EXISTS follows_by_end ON follows(follower, to_seq);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS token_keys (
    id INTEGER PRIMARY KEY, key_hex TEXT NOT NULL, created_ms INTEGER NOT NULL);
";

/// The `secrets` row that holds the token key (hex).
pub(super) const TOKEN_KEY: &str = "token_key";
/// The `secrets` row that holds the cluster id (`Command::SetClusterId`).
pub(super) const CLUSTER_ID: &str = "cluster_id";

/// Brings a database made before accounts up to date: `users.pw_hash` (NULL: no password yet).
/// Idempotent; runs when a member opens its database.
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
    Ok(())
}
