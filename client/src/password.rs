//! Where the client's password comes from: `CHATFEED_PASSWORD` (scripts), else a prompt on the
//! terminal without echo. Never from the command line, where every user of the host could read it
//! (`/proc/<pid>/cmdline`). The password is kept in memory only, never printed or logged.

use crate::failure::Failure;
use std::io::IsTerminal;

/// The environment variable scripts give the password in.
pub const PASSWORD_ENV: &str = "CHATFEED_PASSWORD";

/// The environment variable scripts give a new password in (`chatfeed passwd`).
pub const NEW_PASSWORD_ENV: &str = "CHATFEED_NEW_PASSWORD";

/// The new password of `user` for `passwd`: `CHATFEED_NEW_PASSWORD` when set, else asked twice
/// on the terminal. Checked here against the rules the master applies, so a typo costs no
/// round trip.
pub fn new_password(user: &str) -> Result<String, Failure> {
    let check = |p: &str| chatfeed_common::accounts::check_new_password(p).map_err(Failure::Usage);
    if let Ok(p) = std::env::var(NEW_PASSWORD_ENV)
        && !p.is_empty()
    {
        check(&p)?;
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Usage(format!(
            "no new password for {user}: set {NEW_PASSWORD_ENV} (standard input is not a \
             terminal to ask on)"
        )));
    }
    let min = chatfeed_common::accounts::MIN_PASSWORD_CHARS;
    choose(&format!(
        "new password for {user} (at least {min} characters): "
    ))
}

/// A password read on the terminal without echo.
fn ask(prompt: String) -> Result<String, Failure> {
    rpassword::prompt_password(prompt)
        .map_err(|e| Failure::Other(format!("reading the password: {e}")))
}

/// A new password asked with `prompt` and again to confirm it, checked against the rules the
/// master applies; three tries.
fn choose(prompt: &str) -> Result<String, Failure> {
    for _ in 0..3 {
        let p = ask(prompt.to_string())?;
        if let Err(why) = chatfeed_common::accounts::check_new_password(&p) {
            eprintln!("{why}");
            continue;
        }
        if ask("repeat it: ".into())? == p {
            return Ok(p);
        }
        eprintln!("the two passwords differ");
    }
    Err(Failure::Usage("no password chosen".into()))
}

/// The password for `user`: `CHATFEED_PASSWORD` when set, else asked on the terminal: "choose
/// a password" (twice) for a user without one (`has_password` asks the cluster), "password"
/// otherwise. Without either (stdin is not a terminal): a usage error (exit 2).
pub async fn password_for(
    tls: &chatfeed_common::tls::Tls,
    masters: &[String],
    user: &str,
    patience: Option<std::time::Duration>,
) -> Result<String, Failure> {
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
    let probe =
        crate::session::Session::quiet(masters.to_vec(), tls.clone(), user.into(), String::new());
    let existing = probe.has_password(patience).await?;
    if existing {
        return ask(format!("password for {user}: "));
    }
    let min = chatfeed_common::accounts::MIN_PASSWORD_CHARS;
    choose(&format!(
        "choose a password for {user} (new user, at least {min} characters): "
    ))
}
