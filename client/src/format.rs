//! What the client prints: posts, user lists and acknowledgements, either as the JSON objects of
//! docs/semantics.md §2 (one per line, `ts` in RFC 3339, UTC) or as lines for people (local time).
//! The one conversion from the wire's post types to the client's [`PostView`] lives here.

use chatfeed_proto::feed;
use chrono::{DateTime, Local, SecondsFormat, TimeZone, Utc};
use serde::Serialize;

/// A committed post as the client shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostView {
    pub seq: u64,
    pub author: String,
    pub text: String,
    /// Server timestamp, ms since the Unix epoch.
    pub ts_ms: i64,
}

impl From<feed::Post> for PostView {
    fn from(p: feed::Post) -> Self {
        PostView {
            seq: p.seq,
            author: p.author,
            text: p.text,
            ts_ms: p.ts_ms,
        }
    }
}

impl From<chatfeed_proto::cluster::PostEvent> for PostView {
    fn from(p: chatfeed_proto::cluster::PostEvent) -> Self {
        PostView {
            seq: p.seq,
            author: p.author,
            text: p.text,
            ts_ms: p.ts_ms,
        }
    }
}

#[derive(Serialize)]
struct PostJson<'a> {
    seq: u64,
    author: &'a str,
    text: &'a str,
    ts: String,
}

#[derive(Serialize)]
struct ListJson<'a> {
    users: &'a [String],
    following: &'a [String],
}

#[derive(Serialize)]
struct AckJson {
    ok: bool,
    seq: u64,
}

fn utc(ts_ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ts_ms).unwrap_or(DateTime::UNIX_EPOCH)
}

/// `ts_ms` in RFC 3339, UTC, with milliseconds: `2026-11-22T09:30:01.250Z`.
pub fn rfc3339(ts_ms: i64) -> String {
    utc(ts_ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `{"seq":N,"author":"bob","text":"...","ts":"<RFC 3339>"}`.
pub fn post_json(p: &PostView) -> String {
    serde_json::to_string(&PostJson {
        seq: p.seq,
        author: &p.author,
        text: &p.text,
        ts: rfc3339(p.ts_ms),
    })
    .unwrap_or_default()
}

/// `{"users":[...],"following":[...]}`.
pub fn list_json(users: &[String], following: &[String]) -> String {
    serde_json::to_string(&ListJson { users, following }).unwrap_or_default()
}

/// `{"ok":true,"seq":N}`: a follow or unfollow that committed at `seq`.
/// `{"ok":true}`: a command that answers nothing else (`passwd`, `logout`).
pub fn ok_json() -> String {
    "{\"ok\":true}".to_string()
}

pub fn ack_json(seq: u64) -> String {
    serde_json::to_string(&AckJson { ok: true, seq }).unwrap_or_default()
}

/// Text safe to print on a terminal: tabs, line breaks and the Unicode line and paragraph
/// separators become spaces; bidirectional marks, embeddings, overrides and isolates (which
/// would reorder what follows them on the line: another post's author, the time) are dropped;
/// other control characters (escape sequences a post could carry) become U+FFFD.
pub fn printable(text: &str) -> String {
    text.chars()
        .filter(|&c| !matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
        .map(|c| match c {
            '\t' | '\n' | '\r' | '\u{2028}' | '\u{2029}' | '\u{85}' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// `#12  2026-11-22 09:30:01  bob: hello`, the time in `tz`.
pub fn post_line_in<Tz: TimeZone>(p: &PostView, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let when = utc(p.ts_ms).with_timezone(tz).format("%Y-%m-%d %H:%M:%S");
    format!(
        "#{}  {}  {}: {}",
        p.seq,
        when,
        printable(&p.author),
        printable(&p.text)
    )
}

/// A post for people, in local time.
pub fn post_line(p: &PostView) -> String {
    post_line_in(p, &Local)
}

/// The user list for people: two lines.
pub fn list_lines(users: &[String], following: &[String]) -> String {
    let show = |v: &[String]| {
        if v.is_empty() {
            "(none)".to_string()
        } else {
            printable(&v.join(", "))
        }
    };
    format!("users: {}\nfollowing: {}", show(users), show(following))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post() -> PostView {
        PostView {
            seq: 12,
            author: "bob".into(),
            text: "hello \"world\"".into(),
            ts_ms: 1_795_339_801_250, // 2026-11-22T09:30:01.250Z
        }
    }

    /// A post's JSON has exactly seq, author, text and ts, in that order, ts in RFC 3339 UTC.
    #[test]
    fn post_json_is_exact() {
        assert_eq!(
            post_json(&post()),
            r#"{"seq":12,"author":"bob","text":"hello \"world\"","ts":"2026-11-22T09:30:01.250Z"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&post_json(&post())).unwrap();
        let ts = v["ts"].as_str().unwrap();
        assert_eq!(
            DateTime::parse_from_rfc3339(ts).unwrap().timestamp_millis(),
            post().ts_ms
        );
    }

    /// The list and acknowledgement objects have the keys of docs/semantics.md §2.
    #[test]
    fn list_and_ack_json() {
        assert_eq!(
            list_json(&["alice".into(), "bob".into()], &["bob".into()]),
            r#"{"users":["alice","bob"],"following":["bob"]}"#
        );
        assert_eq!(list_json(&[], &[]), r#"{"users":[],"following":[]}"#);
        assert_eq!(ack_json(7), r#"{"ok":true,"seq":7}"#);
    }

    /// The line for people: `#seq  date time  author: text`.
    #[test]
    fn post_line_for_people() {
        assert_eq!(
            post_line_in(&post(), &Utc),
            "#12  2026-11-22 09:30:01  bob: hello \"world\""
        );
    }

    /// Control characters in a post cannot drive the terminal; line breaks keep one post per line.
    #[test]
    fn control_characters_are_neutralised() {
        assert_eq!(printable("a\nb\tc\x1b[2Jd"), "a b c\u{fffd}[2Jd");
        // A right-to-left override would print "bob: gnp.exe" as "bob: exe.png"; separators
        // would start a line of their own.
        assert_eq!(
            printable("x\u{202e}gnp.exe\u{2066}y\u{2069}\u{200f}\u{2028}z\u{2029}w"),
            "xgnp.exey z w"
        );
        let mut p = post();
        p.text = "x\ny".into();
        assert_eq!(post_line_in(&p, &Utc).lines().count(), 1);
    }

    /// The list for people names the users and whom one follows, "(none)" when empty.
    #[test]
    fn list_for_people() {
        assert_eq!(
            list_lines(&["a".into(), "b".into()], &[]),
            "users: a, b\nfollowing: (none)"
        );
    }

    /// A timestamp out of chrono's range still formats (as the epoch) instead of panicking.
    #[test]
    fn absurd_timestamp_formats() {
        assert_eq!(rfc3339(i64::MAX), "1970-01-01T00:00:00.000Z");
    }
}
