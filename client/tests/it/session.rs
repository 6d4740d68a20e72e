//! The client's connection logic against a fake cluster (`fake`): redirects to the active
//! master, retries on another worker with the failed one excluded, a post that commits once
//! across retries, a timeline stream that resumes without gap or duplicate after a cut and a
//! move, refusals that are not retried, and the give-up message when no worker is available.

use crate::fake::{FakeMaster, Knobs, Servers, store};
use crate::fixture::{dead_address, frozen_address};
use chatfeed_client::cli::{Cmd, TimelineArgs};
use chatfeed_client::commands::{self, Options};
use chatfeed_client::failure::Failure;
use chatfeed_client::master_link;
use chatfeed_client::session::Session;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Generous: these tests check behaviour, not speed.
const PATIENCE: Duration = Duration::from_secs(20);

type Excludes = Arc<Mutex<Vec<Vec<String>>>>;

/// An active master over `workers` and a replica that redirects to it; returns the replica's
/// address (the only one the client is given) and the active master's GetWorker log.
async fn masters(servers: &Servers, workers: Vec<String>) -> (String, Excludes) {
    let excludes: Excludes = Arc::default();
    let active = servers
        .master(FakeMaster {
            leader: None,
            workers,
            members: vec![],
            excludes: excludes.clone(),
        })
        .await;
    let replica = servers
        .master(FakeMaster {
            leader: Some(active),
            workers: vec![],
            members: vec![],
            excludes: Arc::default(),
        })
        .await;
    (replica, excludes)
}

async fn run(
    session: &Session,
    cmd: Cmd,
    json: bool,
    patience: Duration,
) -> (Result<(), Failure>, Vec<String>) {
    let mut out = Vec::new();
    let opts = Options {
        json,
        patience: Some(patience),
    };
    let res = commands::run(session, &cmd, opts, &CancellationToken::new(), &mut out).await;
    let lines = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    (res, lines)
}

fn seqs(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["seq"].as_u64().unwrap()
        })
        .collect()
}

/// Given only a replica, the client follows the redirect to the active master; a post whose
/// reply is lost is retried on another worker (the first one excluded) with the same client
/// post id, and commits once; the one JSON line printed has the original seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_commits_once_across_a_lost_reply() {
    let servers = Servers::default();
    let store = store();
    let k1 = Arc::new(Knobs {
        lose_first_post_reply: AtomicBool::new(true),
        ..Default::default()
    });
    let k2 = Arc::new(Knobs::default());
    let w1 = servers.worker(&store, k1.clone()).await;
    let w2 = servers.worker(&store, k2.clone()).await;
    let (replica, excludes) = masters(&servers, vec![w1.clone(), w2]).await;
    let session = Session::quiet(
        vec![replica],
        chatfeed_common::tls::Tls::plaintext(),
        "alice".into(),
        "password".into(),
    );
    let (res, lines) = run(
        &session,
        Cmd::Post {
            text: vec!["hello".into(), "there".into()],
        },
        true,
        PATIENCE,
    )
    .await;
    res.unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["seq"], 1);
    assert_eq!(v["author"], "alice");
    assert_eq!(v["text"], "hello there");
    assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(store.lock().unwrap().posts.len(), 1, "committed once");
    let id1 = k1.post_ids.lock().unwrap().clone();
    let id2 = k2.post_ids.lock().unwrap().clone();
    assert_eq!(id1.len(), 1);
    assert_eq!(id1, id2, "the retry carries the same client post id");
    let ex = excludes.lock().unwrap().clone();
    assert_eq!(ex.len(), 2, "{ex:?}");
    assert_eq!(ex[1], vec![w1], "the failed worker is excluded");
}

/// A worker that is assigned but dead is excluded and the call goes to a live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_worker_is_skipped() {
    let servers = Servers::default();
    let store = store();
    let dead = dead_address();
    let live = servers.worker(&store, Arc::default()).await;
    let (replica, excludes) = masters(&servers, vec![dead.clone(), live]).await;
    let session = Session::quiet(
        vec![replica],
        chatfeed_common::tls::Tls::plaintext(),
        "bob".into(),
        "password".into(),
    );
    let (res, lines) = run(&session, Cmd::List, true, PATIENCE).await;
    res.unwrap();
    assert_eq!(
        lines,
        vec![r#"{"users":["bob"],"following":[]}"#.to_string()]
    );
    assert_eq!(excludes.lock().unwrap().last().unwrap(), &vec![dead]);
}

/// A frozen master listed first (a paused process: its connections complete, it answers
/// nothing) does not hold the client up until the call's timeout: once its answer is late the
/// next member is asked, which names the active master. Fails if the client waits the frozen
/// one out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_is_passed_over_once_late() {
    let servers = Servers::default();
    let store = store();
    let live = servers.worker(&store, Arc::default()).await;
    let (replica, excludes) = masters(&servers, vec![live]).await;
    let (_held, frozen) = frozen_address();
    let session = Session::quiet(
        vec![frozen, replica],
        chatfeed_common::tls::Tls::plaintext(),
        "carol".into(),
        "password".into(),
    );
    let asked = Instant::now();
    let (res, _) = run(&session, Cmd::List, true, PATIENCE).await;
    res.unwrap();
    assert!(
        asked.elapsed() < master_link::CALL_TIMEOUT,
        "the frozen master was waited out: {:?}",
        asked.elapsed()
    );
    assert_eq!(excludes.lock().unwrap().len(), 1, "GetWorker answered once");
}

/// A followed timeline whose stream is cut by one worker and moved by the next resumes each
/// time after the last post printed: every post printed once, in seq order, none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_resumes_without_gap_or_duplicate() {
    let servers = Servers::default();
    let store = store();
    for i in 1..=5 {
        store.lock().unwrap().commit("bob", &format!("p{i}"), "");
    }
    let cut = Arc::new(Knobs {
        cut_after: Some(3),
        ..Default::default()
    });
    let mover = Arc::new(Knobs {
        cut_after: Some(4),
        move_out: true,
        ..Default::default()
    });
    let steady = Arc::new(Knobs::default());
    let w1 = servers.worker(&store, cut.clone()).await;
    let w2 = servers.worker(&store, mover.clone()).await;
    let w3 = servers.worker(&store, steady.clone()).await;
    let (replica, _) = masters(&servers, vec![w1, w2, w3]).await;
    let writer = store.clone();
    tokio::spawn(async move {
        for i in 6..=12 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer.lock().unwrap().commit("bob", &format!("p{i}"), "");
        }
    });
    let session = Session::quiet(
        vec![replica],
        chatfeed_common::tls::Tls::plaintext(),
        "alice".into(),
        "password".into(),
    );
    let cmd = Cmd::Timeline(TimelineArgs {
        after: None,
        follow: true,
        for_secs: Some(PATIENCE),
        count: Some(12),
    });
    let (res, lines) = run(&session, cmd, true, PATIENCE).await;
    res.unwrap();
    assert_eq!(seqs(&lines), (1..=12).collect::<Vec<_>>());
    assert_eq!(*cut.opened.lock().unwrap(), vec![None]);
    assert_eq!(*mover.opened.lock().unwrap(), vec![Some(3)]);
    assert_eq!(*steady.opened.lock().unwrap(), vec![Some(7)]);
}

/// `timeline` without --follow prints the latest 20 oldest first; with --after SEQ every later
/// post; the lines for people start with `#seq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_once() {
    let servers = Servers::default();
    let store = store();
    for i in 1..=25 {
        store.lock().unwrap().commit("bob", &format!("p{i}"), "");
    }
    let w = servers.worker(&store, Arc::default()).await;
    let (replica, _) = masters(&servers, vec![w]).await;
    let session = Session::quiet(
        vec![replica],
        chatfeed_common::tls::Tls::plaintext(),
        "alice".into(),
        "password".into(),
    );
    let latest = Cmd::Timeline(TimelineArgs {
        after: None,
        follow: false,
        for_secs: None,
        count: None,
    });
    let (res, lines) = run(&session, latest, true, PATIENCE).await;
    res.unwrap();
    assert_eq!(seqs(&lines), (6..=25).collect::<Vec<_>>());
    let after = Cmd::Timeline(TimelineArgs {
        after: Some(20),
        follow: false,
        for_secs: None,
        count: None,
    });
    let (res, lines) = run(&session, after, false, PATIENCE).await;
    res.unwrap();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(
        lines[0].starts_with("#21  ") && lines[0].ends_with("bob: p21"),
        "{}",
        lines[0]
    );
}

/// A refusal is the answer: not retried (one GetWorker), exit status 1, the cluster's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_is_not_retried() {
    let servers = Servers::default();
    let store = store();
    let k = Arc::new(Knobs::default());
    let w = servers.worker(&store, k.clone()).await;
    let (replica, excludes) = masters(&servers, vec![w]).await;
    let session = Session::quiet(
        vec![replica],
        chatfeed_common::tls::Tls::plaintext(),
        "alice".into(),
        "password".into(),
    );
    let (res, lines) = run(
        &session,
        Cmd::Follow {
            target: "alice".into(),
        },
        true,
        PATIENCE,
    )
    .await;
    let e = res.unwrap_err();
    assert_eq!(e.exit_code(), 1);
    assert_eq!(e.to_string(), "you cannot follow yourself");
    assert!(lines.is_empty());
    assert_eq!(excludes.lock().unwrap().len(), 1);
    assert_eq!(k.logins.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// With no worker registered, the command gives up after its patience, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_available() {
    let servers = Servers::default();
    let (replica, _) = masters(&servers, vec![]).await;
    let session = Session::quiet(
        vec![replica],
        chatfeed_common::tls::Tls::plaintext(),
        "alice".into(),
        "password".into(),
    );
    let (res, _) = run(&session, Cmd::List, false, Duration::from_secs(1)).await;
    let e = res.unwrap_err();
    assert!(matches!(e, Failure::GaveUp(_)), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("no worker available: no worker is registered"),
        "{e}"
    );
}

/// A session adds the members the active master names in its `GetWorker` answer (members added
/// at run time, which the address list given does not have) to the masters it tries, once each;
/// fails if the answer's members are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_named_by_the_active_master_are_tried_too() {
    let servers = Servers::default();
    let store = store();
    let w = servers.worker(&store, Arc::new(Knobs::default())).await;
    let newcomer = servers
        .master(FakeMaster {
            leader: None,
            workers: vec![w.clone()],
            members: vec![],
            excludes: Arc::default(),
        })
        .await;
    let given = servers
        .master(FakeMaster {
            leader: None,
            workers: vec![w],
            members: vec![newcomer.clone(), newcomer.clone()],
            excludes: Arc::default(),
        })
        .await;
    let session = Session::quiet(
        vec![given.clone()],
        chatfeed_common::tls::Tls::plaintext(),
        "alice".into(),
        "password".into(),
    );
    for text in ["one", "two"] {
        let (res, _) = run(
            &session,
            Cmd::Post {
                text: vec![text.into()],
            },
            true,
            PATIENCE,
        )
        .await;
        res.unwrap();
    }
    assert_eq!(session.masters(), vec![given, newcomer]);
}
