//! Where the client's password comes from: `CHATFEED_PASSWORD` (scripts), else a prompt on the
//! terminal without echo. Never from the command line, where every user of the host could read it
//! (`/proc/<pid>/cmdline`). The password is kept in memory only, never printed or logged.

use crate::failure::Failure;
use std::io::IsTerminal;

/// The environment variable scripts give the password in.
pub const PASSWORD_ENV: &str = "CHATFEED_PASSWORD";

/// The password for `user`: `CHATFEED_PASSWORD` when set, else asked on the terminal. Without
/// either (stdin is not a terminal): a usage error (exit 2).
pub fn password_for(user: &str) -> Result<String, Failure> {
    if let Ok(p) = std::env::var(PASSWORD_ENV)
        && !p.is_empty()
    {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Usage(format!(
            "no password for {user}: set {PASSWORD_ENV} (standard input is not a terminal to ask on)"
        )));
    }
    let p = rpassword::prompt_password(format!(
        "password for {user} (a new user chooses it now, at least {} characters): ",
        chatfeed_common::accounts::MIN_PASSWORD_CHARS
    ))
    .map_err(|e| Failure::Other(format!("reading the password: {e}")))?;
    if p.is_empty() {
        return Err(Failure::Usage("an empty password".into()));
    }
    Ok(p)
}
