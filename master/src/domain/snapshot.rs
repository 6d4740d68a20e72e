//! The feed's tables as a whole, for snapshots: a snapshot is a copy of the state machine's
//! database, and installing one replaces the feed's tables with those of the copy, attached to
//! the caller's connection, inside the caller's write transaction.

use rusqlite::Connection;

/// Each feed table and its columns, in the order both copies have them.
const TABLES: [(&str, &str); 4] = [
    ("users", "name, seq, pw_hash"),
    ("follows", "follower, followee, from_seq, to_seq"),
    (
        "events",
        "seq, kind, actor, target, text, ts_ms, client_post_id",
    ),
    ("secrets", "name, value"),
];

/// Replaces every feed table of `conn`'s main database with the one of the attached database
/// `schema` (an identifier the caller chose, never input).
pub fn replace_from(conn: &Connection, schema: &str) -> rusqlite::Result<()> {
    for (table, columns) in TABLES {
        conn.execute(&format!("DELETE FROM main.{table}"), [])?;
        conn.execute(
            &format!("INSERT INTO main.{table} ({columns}) SELECT {columns} FROM {schema}.{table}"),
            [],
        )?;
    }
    Ok(())
}
