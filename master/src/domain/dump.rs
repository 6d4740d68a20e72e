//! The feed tables in full, for snapshots: `dump` reads them inside the caller's read
//! transaction, `restore` replaces them inside the caller's write transaction.

use super::apply::insert_event;
use super::query::Event;
use super::query::{events_after, token_key_hex};
use super::schema::TOKEN_KEY;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

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
