//! The feed's commands and their answers: what a client can ask the replicated state to do
//! (`Command`), what a command that took effect answers (`Applied`), why one is refused
//! (`FeedError`), and the checks that need no state (names, post text, client post ids). The
//! checks are deterministic, so every member reaches the same answer.

use serde::{Deserialize, Serialize};

/// Longest user name.
pub const MAX_NAME_LEN: usize = 32;
/// Longest client post id: it is an idempotency key, not content.
pub const MAX_CLIENT_POST_ID_LEN: usize = 64;

/// A command of the replicated state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A new user; with a password hash (argon2id PHC string) when created by a login. Entries
    /// from before accounts carry none.
    CreateUser {
        name: String,
        #[serde(default)]
        password_hash: Option<String>,
    },
    /// Sets the password hash of a user that has none (a user created before accounts, at its
    /// first login since). Refused when the user has one: the first login wins.
    SetPassword {
        name: String,
        password_hash: String,
    },
    /// The key that signs session tokens (hex), applied only when none is stored: every member
    /// ends with the first one committed.
    SetTokenKey {
        key_hex: String,
    },
    Follow {
        follower: String,
        followee: String,
    },
    Unfollow {
        follower: String,
        followee: String,
    },
    Post {
        author: String,
        text: String,
        client_post_id: String,
    },
    /// A new key that signs session tokens (hex), made at `at_ms`: it becomes the current key,
    /// the one before it still verifies the tokens it signed, the older ones are dropped.
    RotateTokenKey {
        key_hex: String,
        at_ms: i64,
    },
    /// Ends every session of `name` issued at or before `at_ms` (logout everywhere).
    EndSessions {
        name: String,
        at_ms: i64,
    },
    /// A new password hash for `name`, ending its sessions issued at or before `at_ms`.
    ChangePassword {
        name: String,
        password_hash: String,
        at_ms: i64,
    },
    /// A client's `command` (a follow, an unfollow or a post), made with a session token of its
    /// user issued at `session_ms`: refused when that user ended its sessions since.
    InSession {
        session_ms: i64,
        command: Box<Command>,
    },
    /// The cluster's identity (32 hex digits), applied only when none is stored: the first one
    /// committed stays. A restore from a backup gives the restored group a new one.
    SetClusterId {
        id: String,
    },
}

impl Command {
    /// The command itself, out of its `InSession` wrapper if it has one.
    pub fn inner(&self) -> &Command {
        match self {
            Command::InSession { command, .. } => command,
            c => c,
        }
    }
}

/// Whether `id` is a cluster id as they are made: 32 lowercase hex digits (128 random bits).
pub fn is_cluster_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A command that took effect (or a post that had already).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The event's seq; for a duplicate post, the original post's seq.
    pub seq: u64,
    pub ts_ms: i64,
    /// The post had been committed before under the same client post id.
    pub duplicate: bool,
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
    #[error("a post cannot be empty or show nothing (only spaces or invisible characters)")]
    EmptyPost,
    #[error("a post is at most {max} characters; this one has {chars}")]
    PostTooLong { chars: usize, max: usize },
    #[error("invalid client post id: {0}")]
    InvalidPostId(String),
    #[error("user {0:?} has a password already")]
    PasswordAlreadySet(String),
    #[error("the token key is set already")]
    TokenKeySet,
    #[error("the sessions of user {0:?} ended (a logout or a password change): log in again")]
    SessionEnded(String),
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

/// Whether `c` prints as nothing: white space, a control character, or a Unicode
/// Default_Ignorable_Code_Point (zero-width spaces and joiners, bidirectional marks and
/// overrides, variation selectors, fillers, tags; DerivedCoreProperties.txt), or the blank
/// Braille pattern.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(c as u32,
            0x00AD | 0x034F | 0x061C | 0x115F..=0x1160 | 0x17B4..=0x17B5 | 0x180B..=0x180F
            | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x2800 | 0x3164
            | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8 | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

/// Checks a new post's text before it is proposed: `validate_text`, and that it shows
/// something. (Not part of `apply_command`'s checks: posts committed before this check existed
/// must apply the same on every member.)
pub fn validate_new_text(text: &str, max_chars: usize) -> Result<(), FeedError> {
    validate_text(text, max_chars)?;
    if text.chars().all(is_invisible) {
        return Err(FeedError::EmptyPost);
    }
    Ok(())
}

/// `validate_command`, with the checks of a new command on top (`validate_new_text`): what the
/// active master runs before proposing.
pub fn validate_new_command(cmd: &Command, max_post_chars: usize) -> Result<(), FeedError> {
    validate_command(cmd, max_post_chars)?;
    if let Command::Post { text, .. } = cmd.inner() {
        validate_new_text(text, max_post_chars)?;
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
        Command::SetTokenKey { key_hex } | Command::RotateTokenKey { key_hex, .. } => {
            if key_hex.len() != 2 * chatfeed_common::accounts::TOKEN_KEY_LEN
                || !key_hex.chars().all(|c| c.is_ascii_hexdigit())
            {
                return Err(FeedError::Invalid("a token key is 32 bytes in hex".into()));
            }
            Ok(())
        }
        Command::EndSessions { name, .. } => validate_name(name),
        Command::SetClusterId { id } => {
            if !is_cluster_id(id) {
                return Err(FeedError::Invalid("a cluster id is 32 hex digits".into()));
            }
            Ok(())
        }
        Command::ChangePassword {
            name,
            password_hash,
            ..
        } => {
            validate_name(name)?;
            if password_hash.is_empty() {
                return Err(FeedError::Invalid("an empty password hash".into()));
            }
            Ok(())
        }
        Command::InSession { command, .. } => match **command {
            Command::Follow { .. } | Command::Unfollow { .. } | Command::Post { .. } => {
                validate_command(command, max_post_chars)
            }
            _ => Err(FeedError::Invalid(
                "only a follow, an unfollow or a post is made in a session".into(),
            )),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A new post of only invisible characters (zero-width spaces and joiners, bidi marks,
    /// variation selectors, fillers, tags, white space) is refused like an empty one; one
    /// visible character among them is enough. The apply-time check keeps accepting them (posts
    /// committed before the check must apply the same everywhere).
    #[test]
    fn posts_that_show_nothing_are_refused() {
        for text in [
            "\u{200b}",
            "\u{200b}\u{200c}\u{200d}\u{2060}\u{feff}",
            " \u{202e}\u{2066}\u{2069} \u{3000}",
            "\u{fe0f}\u{e0041}\u{3164}\u{115f}",
            "\u{2800}\u{00ad}",
        ] {
            assert_eq!(
                validate_new_text(text, 280),
                Err(FeedError::EmptyPost),
                "{text:?}"
            );
            assert_eq!(validate_text(text, 280), Ok(()), "{text:?}");
        }
        assert_eq!(validate_new_text("\u{200b}a\u{200b}", 280), Ok(()));
        assert_eq!(validate_new_text("👍\u{fe0f}", 280), Ok(()));
        let post = Command::Post {
            author: "alice".into(),
            text: "\u{200b}\u{200b}".into(),
            client_post_id: String::new(),
        };
        assert_eq!(validate_new_command(&post, 280), Err(FeedError::EmptyPost));
    }
}
