//! The feed's tables as a whole, for snapshots: a snapshot is a copy of the state machine's
//! database, and installing one replaces the feed's tables with those of the copy, attached to
//! the caller's connection, inside the caller's write transaction.

use rusqlite::Connection;

/// Each feed table and its columns. A snapshot made by an earlier build may lack a table or a
/// column added since (`schema::migrate`): those are read as empty or NULL.
const TABLES: [(&str, &[&str]); 5] = [
    ("users", &["name", "seq", "pw_hash", "sessions_after"]),
    ("follows", &["follower", "followee", "from_seq", "to_seq"]),
    (
        "events",
        &[
            "seq",
            "kind",
            "actor",
            "target",
            "text",
            "ts_ms",
            "client_post_id",
        ],
    ),
    ("secrets", &["name", "value"]),
    ("token_keys", &["id", "key_hex", "created_ms"]),
];

/// Replaces every feed table of `conn`'s main database with the one of the attached database
/// `schema` (an identifier the caller chose, never input).
pub fn replace_from(conn: &Connection, schema: &str) -> rusqlite::Result<()> {
    for (table, columns) in TABLES {
        conn.execute(&format!("DELETE FROM main.{table}"), [])?;
        let mut has = conn.prepare(&format!(
            "SELECT 1 FROM pragma_table_info('{table}', '{schema}') WHERE name = ?1"
        ))?;
        let mut from = Vec::with_capacity(columns.len());
        for c in columns {
            from.push(if has.exists([c])? { *c } else { "NULL" });
        }
        if from.iter().all(|c| *c == "NULL") {
            continue; // no such table in the copy
        }
        conn.execute(
            &format!(
                "INSERT INTO main.{table} ({}) SELECT {} FROM {schema}.{table}",
                columns.join(", "),
                from.join(", ")
            ),
            [],
        )?;
    }
    Ok(())
}
