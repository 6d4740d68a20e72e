//! The interactive session's command language (docs/semantics.md §2): case-insensitive commands
//! with aliases from the original system, and in timeline mode every line is a post except `/exit`.
//! Pure parsing: a wrong line becomes a one-line explanation and the session goes on.

/// A line typed at the command prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Follow(String),
    Unfollow(String),
    List,
    Timeline,
    Help,
    Exit,
    /// A blank line: nothing to do.
    Nothing,
}

/// A line typed in timeline mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimelineLine {
    /// `/exit`: back to the command prompt.
    Leave,
    Post(String),
    /// A blank line: not posted (the cluster refuses empty posts).
    Nothing,
}

/// The text of HELP.
pub const HELP: &str = "\
commands (upper or lower case):
  FOLLOW <user>     (or JOIN)   follow a user: their posts from now on join your timeline
  UNFOLLOW <user>   (or LEAVE)  stop following a user
  LIST                          all users, and the ones you follow
  TIMELINE          (or CHAT)   your latest 20 posts, then new ones as they come;
                                every line you type there is posted, /exit leaves
  HELP                          this text
  EXIT                          leave (Ctrl-D too)";

/// Parses a command line. `Err` is the explanation to show.
pub fn parse(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let Some(word) = words.next() else {
        return Ok(Command::Nothing);
    };
    let args: Vec<&str> = words.collect();
    let keyword = word.to_ascii_uppercase();
    let (name, takes_user) = match keyword.as_str() {
        "FOLLOW" | "JOIN" => ("FOLLOW", true),
        "UNFOLLOW" | "LEAVE" => ("UNFOLLOW", true),
        "LIST" => ("LIST", false),
        "TIMELINE" | "CHAT" => ("TIMELINE", false),
        "HELP" | "?" => ("HELP", false),
        "EXIT" | "QUIT" => ("EXIT", false),
        _ => {
            return Err(format!(
                "unknown command {word:?}; type HELP for the commands"
            ));
        }
    };
    if takes_user {
        return match args.as_slice() {
            [] => Err(format!("{name} needs a user name: {name} <user>")),
            [user] if name == "FOLLOW" => Ok(Command::Follow(user.to_string())),
            [user] => Ok(Command::Unfollow(user.to_string())),
            _ => Err(format!("{name} takes one user name: {name} <user>")),
        };
    }
    if !args.is_empty() {
        return Err(format!("{name} takes no argument"));
    }
    Ok(match name {
        "LIST" => Command::List,
        "TIMELINE" => Command::Timeline,
        "HELP" => Command::Help,
        _ => Command::Exit,
    })
}

/// Parses a line typed in timeline mode: posted as typed (without surrounding blanks).
pub fn parse_timeline_line(line: &str) -> TimelineLine {
    let text = line.trim();
    if text.is_empty() {
        TimelineLine::Nothing
    } else if text.eq_ignore_ascii_case("/exit") {
        TimelineLine::Leave
    } else {
        TimelineLine::Post(text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commands are case-insensitive; the original aliases work; user names keep their case.
    #[test]
    fn commands_and_aliases() {
        assert_eq!(parse("FOLLOW Bob"), Ok(Command::Follow("Bob".into())));
        assert_eq!(parse("follow bob"), Ok(Command::Follow("bob".into())));
        assert_eq!(parse("  Join   bob  "), Ok(Command::Follow("bob".into())));
        assert_eq!(parse("UNFOLLOW bob"), Ok(Command::Unfollow("bob".into())));
        assert_eq!(parse("leave bob"), Ok(Command::Unfollow("bob".into())));
        assert_eq!(parse("list"), Ok(Command::List));
        assert_eq!(parse("TIMELINE"), Ok(Command::Timeline));
        assert_eq!(parse("Chat"), Ok(Command::Timeline));
        assert_eq!(parse("help"), Ok(Command::Help));
        assert_eq!(parse("EXIT"), Ok(Command::Exit));
        assert_eq!(parse("   "), Ok(Command::Nothing));
    }

    /// Missing or extra arguments and unknown commands are explained in one line.
    #[test]
    fn mistakes_are_explained() {
        let e = parse("FOLLOW").unwrap_err();
        assert!(e.contains("FOLLOW needs a user name"), "{e}");
        let e = parse("leave").unwrap_err();
        assert!(e.contains("UNFOLLOW needs a user name"), "{e}");
        let e = parse("follow a b").unwrap_err();
        assert!(e.contains("one user name"), "{e}");
        let e = parse("list everything").unwrap_err();
        assert!(e.contains("LIST takes no argument"), "{e}");
        let e = parse("frobnicate x").unwrap_err();
        assert!(
            e.contains("unknown command \"frobnicate\"") && e.contains("HELP"),
            "{e}"
        );
        for e in [parse("FOLLOW"), parse("zzz")] {
            assert_eq!(e.unwrap_err().lines().count(), 1);
        }
    }

    /// In timeline mode every line is a post, except /exit (any case) and blank lines.
    #[test]
    fn timeline_lines() {
        assert_eq!(parse_timeline_line("/exit"), TimelineLine::Leave);
        assert_eq!(parse_timeline_line(" /EXIT "), TimelineLine::Leave);
        assert_eq!(parse_timeline_line(""), TimelineLine::Nothing);
        assert_eq!(
            parse_timeline_line(" hello  there "),
            TimelineLine::Post("hello  there".into())
        );
        assert_eq!(
            parse_timeline_line("LIST"),
            TimelineLine::Post("LIST".into())
        );
    }
}
