//! The interactive session (docs/semantics.md §2): a prompt with case-insensitive commands, and the
//! timeline mode that streams posts live while every line typed is posted. The line editor runs on
//! its own thread (`input`), live output goes above the line being typed (`screen`), posts are sent
//! in order by one task (`poster`), and a lost connection shows one status line and is retried
//! without end (`session`, `outage`).

pub mod command;
pub mod input;
pub mod poster;
pub mod screen;

use crate::cli::Cmd;
use crate::commands::{self, Options};
use crate::cursor::Cursor;
use crate::failure::Failure;
use crate::format;
use crate::session::Session;
use crate::timeline::{self, Until};
use command::{Command, HELP, TimelineLine};
use input::Input;
use poster::Poster;
use screen::Screen;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The live timeline of timeline mode.
struct LiveTimeline {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl LiveTimeline {
    fn start(session: Arc<Session>, screen: Screen) -> Self {
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let mut cursor = Cursor::new(None);
            let show = |p: &format::PostView| {
                screen.line(&format::post_line(p));
                Ok(())
            };
            let res =
                timeline::stream(&session, &mut cursor, Until::default(), None, &stop, show).await;
            if let Err(e) = res {
                screen.line(&format!(
                    "[timeline stopped: {e}; /exit leaves timeline mode]"
                ));
            }
        });
        LiveTimeline { cancel, task }
    }

    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Runs one command at the prompt, until it is answered or Ctrl-C.
async fn run_command(session: &Session, cmd: Cmd, screen: &Screen) {
    let opts = Options {
        json: false,
        patience: None,
    };
    let never = CancellationToken::new();
    let mut out = screen.writer();
    tokio::select! {
        res = commands::run(session, &cmd, opts, &never, &mut out) => {
            if let Err(e) = res {
                screen.line(&format!("error: {e}"));
            }
        }
        _ = tokio::signal::ctrl_c() => screen.line("[cancelled]"),
    }
}

/// The interactive session of `user` with the masters at `masters`, until EXIT or Ctrl-D.
pub async fn run(
    masters: Vec<String>,
    tls: chatfeed_common::tls::Tls,
    user: String,
    password: String,
) -> Result<(), Failure> {
    let (mut reader, screen) = input::start().map_err(Failure::Other)?;
    let notices = screen.clone();
    let session = Arc::new(Session::new(
        masters,
        tls,
        user.clone(),
        password,
        Arc::new(move |n| notices.line(&n.to_string())),
    ));
    let lease = tokio::select! {
        res = session.connect(None) => res?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    let new = if lease.created { " (new user)" } else { "" };
    screen.line(&format!(
        "logged in as {user}{new}, served by worker {} at {}; type HELP for the commands",
        lease.worker_id, lease.addr
    ));
    let poster = Poster::start(session.clone(), screen.clone());
    let mut live: Option<LiveTimeline> = None;
    let command_prompt = format!("{user}> ");
    let timeline_prompt = format!("{user} (timeline)> ");
    loop {
        let prompt = if live.is_some() {
            &timeline_prompt
        } else {
            &command_prompt
        };
        // Ctrl-C reaches us as a signal only when the editor is not reading from a terminal.
        let input = tokio::select! {
            i = reader.read(prompt) => i,
            _ = tokio::signal::ctrl_c() => Input::Interrupted,
        };
        let line = match input {
            Input::Eof => break,
            Input::Interrupted => {
                match live.take() {
                    Some(t) => {
                        t.stop().await;
                        screen.line("[left timeline mode]");
                    }
                    None => screen.line("(EXIT or Ctrl-D leaves)"),
                }
                continue;
            }
            Input::Line(l) => l,
        };
        if live.is_some() {
            match command::parse_timeline_line(&line) {
                TimelineLine::Leave => {
                    if let Some(t) = live.take() {
                        t.stop().await;
                    }
                    screen.line("[left timeline mode]");
                }
                TimelineLine::Post(text) => poster.post(text),
                TimelineLine::Nothing => {}
            }
            continue;
        }
        match command::parse(&line) {
            Err(why) => screen.line(&why),
            Ok(Command::Nothing) => {}
            Ok(Command::Help) => screen.line(HELP),
            Ok(Command::Exit) => break,
            Ok(Command::Follow(u)) => {
                run_command(&session, Cmd::Follow { target: u }, &screen).await
            }
            Ok(Command::Unfollow(u)) => {
                run_command(&session, Cmd::Unfollow { target: u }, &screen).await
            }
            Ok(Command::List) => run_command(&session, Cmd::List, &screen).await,
            Ok(Command::Timeline) => {
                screen.line(
                    "[timeline: your latest 20 posts, then new ones as they commit; \
                     type to post, /exit to leave]",
                );
                live = Some(LiveTimeline::start(session.clone(), screen.clone()));
            }
        }
    }
    if let Some(t) = live.take() {
        t.stop().await;
    }
    poster.finish().await;
    Ok(())
}
