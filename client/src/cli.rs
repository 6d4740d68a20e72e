//! The command line (docs/semantics.md §2): `chatfeed [--master ADDRS] --user NAME [--json]
//! COMMAND`, or without a command an interactive session. Parsing and every usage check live here,
//! so that all bad usage exits 2 with clap's message and usage line.

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// The longest user name (docs/semantics.md §3).
pub const MAX_NAME_LEN: usize = 32;
/// How long a scriptable command keeps trying when nothing answers, by default.
pub const DEFAULT_TIMEOUT_SECS: &str = "30";

#[derive(Parser, Debug)]
#[command(
    name = "chatfeed",
    version = chatfeed_version::VERSION,
    about = "The chatfeed client: follow users, post, and watch your timeline.",
    after_help = "Without a COMMAND, `chatfeed --user NAME` opens an interactive session (type HELP there).\n\
                  Exit status: 0 success, 1 the request failed (one line on stderr says why), 2 bad usage."
)]
pub struct Cli {
    /// Master endpoints, comma-separated host:port; a bare host means ports 7001-7003
    /// (default: the default_master_address file).
    #[arg(long, env = "CHATFEED_MASTER", value_name = "ADDRS", global = true)]
    pub master: Option<String>,
    /// The user to act as (created at first login): 1 to 32 of A-Z a-z 0-9 _ . -
    #[arg(long, value_name = "NAME", value_parser = parse_user, global = true)]
    pub user: Option<String>,
    /// The cluster's CA certificate, to verify masters and workers (default: ca.pem in the
    /// [tls] dir of the configuration: $CHATFEED_CONFIG, else chatfeed.toml of this directory
    /// or of the checkout the binary is in).
    #[arg(
        long,
        env = "CHATFEED_CA",
        value_name = "PATH",
        global = true,
        conflicts_with = "plaintext"
    )]
    pub ca: Option<PathBuf>,
    /// Connect without TLS, to a cluster configured with [tls] mode = "plaintext" (said on
    /// stderr each time; a configuration file alone never makes the client use plaintext).
    #[arg(
        long,
        env = "CHATFEED_PLAINTEXT",
        global = true,
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub plaintext: bool,
    /// Print results as JSON, one object per line.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up when no master or worker has answered for this long.
    #[arg(long, value_name = "SECS", default_value = DEFAULT_TIMEOUT_SECS, value_parser = parse_secs, global = true)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// Follow USER: their posts from now on join your timeline.
    // The field is `target`, not `user`: a positional with the id of the global --user would
    // overwrite it.
    Follow {
        #[arg(value_name = "USER", value_parser = parse_user)]
        target: String,
    },
    /// Stop following USER.
    Unfollow {
        #[arg(value_name = "USER", value_parser = parse_user)]
        target: String,
    },
    /// All users, and the ones you follow.
    List,
    /// Post TEXT (several words are joined with spaces).
    Post {
        #[arg(value_name = "TEXT", required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Your timeline: the latest 20 posts, oldest first (or every post after --after SEQ).
    Timeline(TimelineArgs),
    /// The masters and workers of the cluster.
    Status,
    /// Change your password (the new one from CHATFEED_NEW_PASSWORD, else asked twice): every
    /// session of yours ends, on every device.
    Passwd,
    /// End every session of yours, on every device (their tokens are refused from now on).
    Logout,
}

#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct TimelineArgs {
    /// Every post with a seq larger than SEQ, instead of the latest 20.
    #[arg(long, value_name = "SEQ")]
    pub after: Option<u64>,
    /// Keep streaming new posts as they commit (until --for, --count or Ctrl-C).
    #[arg(long)]
    pub follow: bool,
    /// With --follow: stop after SECS seconds.
    #[arg(long = "for", value_name = "SECS", value_parser = parse_secs, requires = "follow")]
    pub for_secs: Option<Duration>,
    /// With --follow: stop once N posts in all were printed.
    #[arg(long, value_name = "N", requires = "follow")]
    pub count: Option<u64>,
}

impl Cmd {
    /// Whether the command acts as a user (all but `status`).
    pub fn needs_user(&self) -> bool {
        !matches!(self, Cmd::Status)
    }
}

/// Checks a user name: 1 to 32 characters of `[A-Za-z0-9_.-]`.
pub fn parse_user(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("a user name needs at least one character".into());
    }
    if s.chars().count() > MAX_NAME_LEN {
        return Err(format!("a user name has at most {MAX_NAME_LEN} characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err("use only letters, digits, '_', '.' and '-'".into());
    }
    Ok(s.to_string())
}

/// A positive number of seconds, fractions allowed ("2", "0.5").
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 || v > 1e9 {
        return Err("give a positive number of seconds".into());
    }
    Ok(Duration::from_secs_f64(v))
}

impl Cli {
    /// Parses `args` (program name first) and checks what clap alone cannot. Every error is a
    /// usage error: `clap::Error::exit` prints it and exits 2 (0 for --help and --version).
    pub fn parse_checked<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        let mut cmd = Cli::command();
        let needs_user = cli.command.as_ref().is_none_or(Cmd::needs_user);
        if needs_user && cli.user.is_none() {
            let what = match &cli.command {
                None => "the interactive session needs --user NAME".to_string(),
                Some(_) => "this command needs --user NAME (every command but status does)".into(),
            };
            return Err(cmd.error(ErrorKind::MissingRequiredArgument, what));
        }
        if cli.command.is_none() && cli.json {
            return Err(cmd.error(
                ErrorKind::ArgumentConflict,
                "--json is for commands; the interactive session prints for people",
            ));
        }
        if let Some(Cmd::Post { text }) = &cli.command
            && text.join(" ").trim().is_empty()
        {
            return Err(cmd.error(ErrorKind::ValueValidation, "a post cannot be empty"));
        }
        Ok(cli)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::parse_checked(std::iter::once("chatfeed").chain(args.iter().copied()))
    }

    fn usage_error(args: &[&str]) -> ErrorKind {
        let e = parse(args).expect_err("should be a usage error");
        assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
        e.kind()
    }

    /// The scriptable commands parse with their flags, before or after the command.
    #[test]
    fn parses_commands() {
        let c = parse(&["--user", "alice", "--json", "follow", "bob"]).unwrap();
        assert_eq!(
            c.command,
            Some(Cmd::Follow {
                target: "bob".into()
            })
        );
        assert_eq!(
            c.user.as_deref(),
            Some("alice"),
            "the target is not the user"
        );
        assert!(c.json);
        assert_eq!(c.timeout, Duration::from_secs(30));
        let c = parse(&["unfollow", "bob", "--user", "alice"]).unwrap();
        assert_eq!(c.user.as_deref(), Some("alice"));
        let c = parse(&["post", "hello", "world", "--user", "a", "--timeout", "2"]).unwrap();
        assert_eq!(
            c.command,
            Some(Cmd::Post {
                text: vec!["hello".into(), "world".into()]
            })
        );
        assert_eq!(c.timeout, Duration::from_secs(2));
        let c = parse(&[
            "--user", "a", "timeline", "--after", "5", "--follow", "--for", "1.5", "--count", "3",
        ])
        .unwrap();
        assert_eq!(
            c.command,
            Some(Cmd::Timeline(TimelineArgs {
                after: Some(5),
                follow: true,
                for_secs: Some(Duration::from_millis(1500)),
                count: Some(3)
            }))
        );
        assert!(parse(&["status"]).unwrap().user.is_none());
        assert!(parse(&["--user", "alice"]).unwrap().command.is_none());
    }

    /// Bad usage is refused with exit status 2: unknown command, missing argument, missing
    /// --user, an empty post, a bad name, --for without --follow.
    #[test]
    fn bad_usage_exits_2() {
        assert_eq!(
            usage_error(&["--user", "a", "frobnicate"]),
            ErrorKind::InvalidSubcommand
        );
        assert_eq!(
            usage_error(&["--user", "a", "follow"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            usage_error(&["--user", "a", "post"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            usage_error(&["post", "hi"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(usage_error(&[]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            usage_error(&["--user", "a", "post", " "]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            usage_error(&["--user", "a b", "list"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            usage_error(&["--user", "a", "follow", "x/y"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            usage_error(&["--user", "a", "timeline", "--for", "3"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            usage_error(&["--user", "a", "--timeout", "0", "list"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            usage_error(&["--user", "a", "--json"]),
            ErrorKind::ArgumentConflict
        );
    }

    /// User names follow docs/semantics.md §3.
    #[test]
    fn user_names() {
        assert!(parse_user("a.b-c_9").is_ok());
        assert!(parse_user(&"x".repeat(32)).is_ok());
        assert!(parse_user(&"x".repeat(33)).is_err());
        assert!(parse_user("").is_err());
        assert!(parse_user("é").is_err());
    }
}
