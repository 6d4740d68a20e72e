//! The scriptable commands (`follow`, `unfollow`, `list`, `post`, `timeline`, `passwd`,
//! `logout`): each runs its
//! call through the session (retried until `--timeout`) and prints its result, as JSON or for
//! people (`format`), to the writer it is given.

use crate::cli::{Cmd, TimelineArgs};
use crate::cursor::Cursor;
use crate::failure::Failure;
use crate::format::{self, PostView};
use crate::post_id::new_client_post_id;
use crate::session::Session;
use crate::timeline::{self, Until};
use chatfeed_proto::feed::{
    ChangePasswordRequest, FollowRequest, ListRequest, LogoutRequest, PostRequest,
};
use std::io::Write;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic::Response;

/// How a scriptable command runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `--json`.
    pub json: bool,
    /// `--timeout`: how long to keep trying when nothing answers (`None`: until it works, as
    /// in the interactive session).
    pub patience: Option<Duration>,
}

fn write_line(out: &mut dyn Write, line: &str) -> Result<(), Failure> {
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(|e| Failure::Other(format!("cannot write the output: {e}")))
}

fn show_post(out: &mut dyn Write, json: bool, p: &PostView) -> Result<(), Failure> {
    let line = if json {
        format::post_json(p)
    } else {
        format::post_line(p)
    };
    write_line(out, &line)
}

/// Runs `cmd` (not `status`) as `session`'s user. `cancel` (Ctrl-C) ends a followed timeline.
pub async fn run(
    session: &Session,
    cmd: &Cmd,
    opts: Options,
    cancel: &CancellationToken,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let patience = opts.patience;
    let user = session.user().to_string();
    match cmd {
        Cmd::Follow { target } | Cmd::Unfollow { target } => {
            let follow = matches!(cmd, Cmd::Follow { .. });
            let req = FollowRequest {
                user,
                target: target.clone(),
            };
            let reply = session
                .call(patience, |mut c| {
                    let req = req.clone();
                    async move {
                        if follow {
                            c.follow(req).await.map(Response::into_inner)
                        } else {
                            c.unfollow(req).await.map(Response::into_inner)
                        }
                    }
                })
                .await?;
            let line = match (opts.json, follow) {
                (true, _) => format::ack_json(reply.seq),
                (false, true) => format!("now following {target} (seq {})", reply.seq),
                (false, false) => format!("no longer following {target} (seq {})", reply.seq),
            };
            write_line(out, &line)
        }
        Cmd::List => {
            // Page by page (a worker answers at most 1,000 names at once), the following with
            // the first.
            let (mut users, mut following) = (Vec::new(), Vec::new());
            let mut after = String::new();
            loop {
                let reply = session
                    .call(patience, |mut c| {
                        let req = ListRequest {
                            user: user.clone(),
                            after: after.clone(),
                            limit: 0,
                        };
                        async move { c.list(req).await.map(Response::into_inner) }
                    })
                    .await?;
                users.extend(reply.users);
                following.extend(reply.following);
                // A next page must start past this one: a reply that does not move on ends it.
                if reply.next.is_empty() || reply.next <= after {
                    break;
                }
                after = reply.next;
            }
            let text = if opts.json {
                format::list_json(&users, &following)
            } else {
                format::list_lines(&users, &following)
            };
            write_line(out, &text)
        }
        Cmd::Post { text } => {
            let text = text.join(" ");
            let p = post(session, &text, patience).await?;
            show_post(out, opts.json, &p)
        }
        Cmd::Timeline(args) => timeline(session, args, opts, cancel, out).await,
        Cmd::Passwd => {
            let new = crate::password::new_password(&user)?;
            let old = session.password().to_string();
            session
                .call(patience, |mut c| {
                    let req = ChangePasswordRequest {
                        old_password: old.clone(),
                        new_password: new.clone(),
                    };
                    async move { c.change_password(req).await.map(Response::into_inner) }
                })
                .await?;
            let line = if opts.json {
                format::ok_json()
            } else {
                format!("password changed: every earlier session of {user} ended")
            };
            write_line(out, &line)
        }
        Cmd::Logout => {
            session
                .call(patience, |mut c| async move {
                    c.logout(LogoutRequest {}).await.map(Response::into_inner)
                })
                .await?;
            let line = if opts.json {
                format::ok_json()
            } else {
                format!("logged out: every session of {user} ended")
            };
            write_line(out, &line)
        }
        Cmd::Status => Err(Failure::Other("status is not a user command".into())),
    }
}

/// Posts `text` once: one client post id for every retry, so it commits at most once.
pub async fn post(
    session: &Session,
    text: &str,
    patience: Option<Duration>,
) -> Result<PostView, Failure> {
    let req = PostRequest {
        user: session.user().to_string(),
        text: text.to_string(),
        client_post_id: new_client_post_id(),
    };
    let reply = session
        .call(patience, |mut c| {
            let req = req.clone();
            async move { c.post(req).await.map(Response::into_inner) }
        })
        .await?;
    Ok(PostView {
        seq: reply.seq,
        author: req.user,
        text: req.text,
        ts_ms: reply.ts_ms,
    })
}

async fn timeline(
    session: &Session,
    args: &TimelineArgs,
    opts: Options,
    cancel: &CancellationToken,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let patience = opts.patience;
    let mut cursor = Cursor::new(args.after);
    let show = |p: &PostView| show_post(out, opts.json, p);
    if !args.follow {
        // Log in first (users are created at first login), then read where the timeline ends;
        // both within the one --timeout.
        let started = Instant::now();
        session.connect(patience).await?;
        let left = patience.map(|p| p.saturating_sub(started.elapsed()));
        return timeline::read_once(session, &mut cursor, left, show).await;
    }
    let until = Until {
        deadline: args.for_secs.map(|d| Instant::now() + d),
        count: args.count,
    };
    timeline::stream(session, &mut cursor, until, patience, cancel, show)
        .await
        .map(|_| ())
}
