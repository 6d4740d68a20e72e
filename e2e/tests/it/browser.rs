//! The web page in a real browser: headless Chromium driven through WebDriver (`chromedriver`,
//! installed by scripts/test-deps.sh), against real processes. Two people log in on two pages
//! (served by two workers), one follows the other, and what the first types appears on the
//! second's timeline; the worker serving the second page is killed with `kill -9`, and the active
//! master too, while posts go on: the second page shows it reconnected and then holds every post
//! once, in seq order. Everything is read from what the page shows (the DOM). With
//! `CHATFEED_SCREENSHOT=FILE` it saves a PNG of the second page at the end (the README's picture).

use chatfeed_common::testing::{DEADLINE, eventually};
use chatfeed_e2e::cluster::*;
use chatfeed_e2e::group::Group;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::time::Duration;

/// A chromedriver on a free port, ended with the test.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = free_ports()[0];
        let child = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (scripts/test-deps.sh installs chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        eventually("chromedriver to listen", async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await;
        Driver { child, url }
    }

    /// A headless browser session (its own profile), at a phone-like width.
    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--window-size=420,900"]}),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Runs `script` (returning JSON) in the page until `accept` takes its answer.
async fn until<T>(
    page: &Client,
    what: &str,
    script: &str,
    mut accept: impl FnMut(serde_json::Value) -> Result<T, String>,
) -> T {
    eventually(what, async || {
        let v = page
            .execute(script, vec![])
            .await
            .map_err(|e| e.to_string())?;
        accept(v)
    })
    .await
}

/// The posts the page shows: (seq, text), top to bottom.
const SHOWN: &str = "return [...document.querySelectorAll('#timeline li')]
    .map(li => [Number(li.dataset.seq), li.querySelector('.text').textContent]);";

fn shown(v: serde_json::Value) -> Vec<(u64, String)> {
    serde_json::from_value(v).unwrap_or_default()
}

async fn log_in(page: &Client, user: &str) {
    page.wait()
        .for_element(Locator::Id("login-user"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    page.find(Locator::Id("login-password"))
        .await
        .unwrap()
        .send_keys("browser-password\n")
        .await
        .unwrap();
    until(
        page,
        &format!("{user}'s page to go live"),
        "return document.getElementById('conn').dataset.state || '';",
        |v| (v == "live").then_some(()).ok_or(format!("{v}")),
    )
    .await;
}

/// Types `text` and Enter in the post box, and waits until the box is empty again (posted).
async fn type_post(page: &Client, text: &str) {
    page.find(Locator::Id("post-text"))
        .await
        .unwrap()
        .send_keys(&format!("{text}\n"))
        .await
        .unwrap();
    until(
        page,
        &format!("{text:?} posted"),
        "const e = document.getElementById('post-error').textContent;
         return [document.getElementById('post-text').value, e];",
        |v| match (v[0].as_str(), v[1].as_str()) {
            (Some(""), _) => Ok(()),
            (_, Some(e)) if !e.is_empty() => Err(format!("the page says {e:?}")),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pages_follow_post_and_survive_kills() {
    let c = ProcCluster::with_config(
        RESTART_AFTER_MS,
        "[worker]\npool_size = 3\n[web]\nlisten = \"127.0.0.1:0\"\n",
    );
    assert!(
        c.run_script().await.status.success(),
        "MasterStartup.sh failed"
    );
    c.wait_healthy().await;
    assert!(
        c.start_workers().await.status.success(),
        "WorkerStartup.sh failed"
    );
    let workers = c.wait_workers(3).await;
    let driver = Driver::start().await;
    let (alice, bob) = (driver.browser().await, driver.browser().await);
    alice
        .goto(&format!("{}/", workers[0].web_addr))
        .await
        .unwrap();
    bob.goto(&format!("{}/", workers[1].web_addr))
        .await
        .unwrap();
    log_in(&alice, "alice").await;
    log_in(&bob, "bob").await;

    // Bob follows alice from his list of people (refreshed until alice is in it).
    eventually("bob follows alice", async || {
        bob.execute("location.reload();", vec![]).await.ok();
        let b = bob
            .wait()
            .at_most(Duration::from_secs(5))
            .for_element(Locator::Css("#users button[data-user='alice']"))
            .await
            .map_err(|e| e.to_string())?;
        b.click().await.map_err(|e| e.to_string())?;
        until(
            &bob,
            "the button to say Unfollow",
            "const b = document.querySelector(\"#users button[data-user='alice']\");
             return b ? b.textContent : '';",
            |v| (v == "Unfollow").then_some(()).ok_or(format!("{v}")),
        )
        .await;
        Ok(())
    })
    .await;
    until(
        &bob,
        "bob's page live again",
        "return document.getElementById('conn').dataset.state || '';",
        |v| (v == "live").then_some(()).ok_or(format!("{v}")),
    )
    .await;

    let mut sent = Vec::new();
    for i in 0..5 {
        let t = format!("hello {i}");
        type_post(&alice, &t).await;
        sent.push(t);
    }
    until(&bob, "bob sees alice's posts", SHOWN, |v| {
        let texts: Vec<String> = shown(v).into_iter().map(|(_, t)| t).collect();
        (texts == sent).then_some(()).ok_or(format!("{texts:?}"))
    })
    .await;

    // Kill -9 the worker serving bob's stream, then the active master, while alice posts on.
    let origin: String = until(
        &bob,
        "bob's worker",
        "return document.getElementById('conn').dataset.origin || '';",
        |v| {
            v.as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or(format!("{v}"))
        },
    )
    .await;
    let status = c.status().await.unwrap();
    let victim = status
        .workers
        .iter()
        .find(|w| w.web_addr == origin)
        .unwrap_or_else(|| panic!("no worker serves {origin}: {}", show(&status)));
    c.kill9(victim.pid).await;
    for i in 5..10 {
        let t = format!("hello {i}");
        type_post(&alice, &t).await;
        sent.push(t);
    }
    let leader = status.leader.unwrap();
    let leader_pid = member_status(&status, leader).pid;
    c.kill9(leader_pid).await;
    for i in 10..15 {
        let t = format!("hello {i}");
        type_post(&alice, &t).await;
        sent.push(t);
    }
    let posts = until(&bob, "bob sees every post after the kills", SHOWN, |v| {
        let posts = shown(v);
        let texts: Vec<&str> = posts.iter().map(|(_, t)| t.as_str()).collect();
        (texts == sent.iter().map(String::as_str).collect::<Vec<_>>())
            .then_some(posts.clone())
            .ok_or(format!("{texts:?}"))
    })
    .await;
    assert!(
        posts.windows(2).all(|w| w[0].0 < w[1].0),
        "seqs in order, each once: {posts:?}"
    );
    let reconnects = bob
        .execute(
            "return Number(document.getElementById('conn').dataset.reconnects || '0');",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        reconnects.as_u64().unwrap_or(0) >= 1,
        "the page showed no reconnecting state: {reconnects}"
    );
    // `CHATFEED_SCREENSHOT=docs/web-page.png` keeps a picture of bob's page (the README's).
    if let Some(path) = std::env::var_os("CHATFEED_SCREENSHOT") {
        let png = bob.screenshot().await.unwrap();
        std::fs::write(&path, png).unwrap();
    }
    let _ = tokio::time::timeout(DEADLINE, alice.close()).await;
    let _ = tokio::time::timeout(DEADLINE, bob.close()).await;
    c.kill_everything();
}
