//! The workers' HTTP API against real processes (issue 21 §3–4; README "HTTP API"): every
//! endpoint and every error status with its JSON body, malformed JSON, oversize bodies and the
//! wrong content type, CORS without credentials, the OpenAPI description; an SSE client that
//! disconnects and resumes with `Last-Event-ID`, on the same worker and across a `kill -9` of
//! its worker while posts go on through another, with no gap and no duplicate; idempotent posts
//! retried; and the configuration that refuses plain HTTP beyond loopback.

use chatfeed_common::testing::{DEADLINE, eventually};
use chatfeed_e2e::PASSWORD;
use chatfeed_e2e::cluster::*;
use chatfeed_e2e::feed::*;
use chatfeed_e2e::group::Group;
use chatfeed_e2e::web::{EventStream, Reply, call};
use chatfeed_proto::master as pb;
use serde_json::{Value, json};

/// Every worker serves its HTTP API on a free loopback port.
const WEB: &str = "[web]\nlisten = \"127.0.0.1:0\"\n";

/// The live workers with an HTTP API, as the active master lists them (waits for `n`).
async fn web_workers(c: &ProcCluster, n: usize) -> Vec<pb::WorkerStatus> {
    c.wait_leader_status("workers reporting their web addresses", |s| {
        let w: Vec<_> = s
            .workers
            .iter()
            .filter(|w| w.web_addr.starts_with("http://127.0.0.1:"))
            .cloned()
            .collect();
        if w.len() >= n {
            Ok(w)
        } else {
            Err(format!("{} of {n} workers report a web address", w.len()))
        }
    })
    .await
}

/// Logs `user` in at `base`; its token.
async fn login(base: &str, user: &str) -> String {
    let r = call("POST", base, "/api/login")
        .json(&json!({"user": user, "password": PASSWORD}))
        .ok()
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["token"].as_str().expect("a token").to_string()
}

/// Posts `text` as the token's user with idempotency key `key`; the reply.
async fn post(base: &str, token: &str, text: &str, key: &str) -> Reply {
    call("POST", base, "/api/posts")
        .token(token)
        .header("idempotency-key", key)
        .json(&json!({ "text": text }))
        .ok()
        .await
}

/// Reads `stream` until a post with seq `last` arrived; the post seqs read, in order.
async fn read_until(stream: &mut EventStream, last: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while seqs.last() != Some(&last) {
            let ev = stream.next().await.expect("the stream goes on");
            assert_eq!(ev.event, "post", "{ev:?}");
            let seq = ev.json()["seq"].as_u64().unwrap();
            assert_eq!(ev.id.as_deref(), Some(seq.to_string().as_str()), "{ev:?}");
            seqs.push(seq);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("seq {last} did not arrive; read {seqs:?}"));
    seqs
}

/// Every endpoint and its answers, and every error status the API maps (400, 401, 403, 404,
/// 409, 413, 415, 429 with Retry-After, 503), each with a JSON body naming the gRPC code; CORS
/// for any origin without credentials; the OpenAPI description covers every route. Fails if
/// an endpoint or a mapping broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_api_endpoints_and_errors() {
    let c = feed_cluster(&format!(
        "{WEB}[limits]\nposts_per_sec = 1\npost_burst = 3\nstreams_per_user = 1\n\
         [worker]\nmetrics_listen = \"127.0.0.1:0\"\n"
    ))
    .await;
    let workers = web_workers(&c, 3).await;
    let base = workers[0].web_addr.as_str();

    // A body that never arrives in full: 408 once the worker stops waiting for it (awaited at
    // the end, the rest of the test runs meanwhile).
    let host = base.trim_start_matches("http://").to_string();
    let trickle = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
        let head = format!(
            "POST /api/login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"user\""
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    });

    // Login: created at first, not after; a wrong password is 401.
    let r = call("POST", base, "/api/login")
        .json(&json!({"user": "alice", "password": PASSWORD}))
        .ok()
        .await;
    assert_eq!(
        (r.status, &r.json()["created"]),
        (200, &json!(true)),
        "{r:?}"
    );
    assert!(r.json()["expires_at_ms"].as_i64().unwrap() > 0);
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "a token is never cached"
    );
    let alice = r.json()["token"].as_str().unwrap().to_string();
    let bob = login(base, "bob").await;
    let again = call("POST", base, "/api/login")
        .json(&json!({"user": "bob", "password": PASSWORD}))
        .ok()
        .await;
    assert_eq!(again.json()["created"], json!(false));
    call("POST", base, "/api/login")
        .json(&json!({"user": "bob", "password": "not the password"}))
        .ok()
        .await
        .assert_error(401, "UNAUTHENTICATED");

    // Bad requests: malformed JSON, a missing field, the wrong content type, a body over
    // limits.max_request_bytes (64 KiB by default), a post with no idempotency key.
    let m = call("POST", base, "/api/login")
        .header("content-type", "application/json")
        .raw(b"{\"user\": \"alice\", ".to_vec())
        .ok()
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    assert!(m.contains("JSON"), "{m}");
    call("POST", base, "/api/login")
        .json(&json!({"user": "alice"}))
        .ok()
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    call("POST", base, "/api/login")
        .header("content-type", "text/plain")
        .raw(format!("{{\"user\":\"alice\",\"password\":\"{PASSWORD}\"}}").into_bytes())
        .ok()
        .await
        .assert_error(415, "INVALID_ARGUMENT");
    let big = "x".repeat(70 * 1024);
    let m = call("POST", base, "/api/posts")
        .token(&alice)
        .header("idempotency-key", "big")
        .json(&json!({ "text": big }))
        .ok()
        .await
        .assert_error(413, "RESOURCE_EXHAUSTED");
    assert!(m.contains("max_request_bytes"), "{m}");
    let m = call("POST", base, "/api/posts")
        .token(&alice)
        .json(&json!({ "text": "no key" }))
        .ok()
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    assert!(m.contains("Idempotency-Key"), "{m}");
    call("GET", base, "/api/timeline?after=x")
        .token(&alice)
        .ok()
        .await
        .assert_error(400, "INVALID_ARGUMENT");

    // Tokens: none, forged, and someone else's name in a request are 401 and 403.
    let m = call("GET", base, "/api/timeline")
        .ok()
        .await
        .assert_error(401, "UNAUTHENTICATED");
    assert!(m.contains("POST /api/login"), "{m}");
    call("GET", base, "/api/users")
        .token("v2.forged.token")
        .ok()
        .await
        .assert_error(401, "UNAUTHENTICATED");
    call("POST", base, "/api/posts")
        .token(&alice)
        .header("idempotency-key", "as-bob")
        .json(&json!({ "text": "I am bob", "user": "bob" }))
        .ok()
        .await
        .assert_error(403, "PERMISSION_DENIED");

    // Follows: a seq, then the domain's refusals (400, 404, 409 twice).
    let r = call("POST", base, "/api/follows")
        .token(&bob)
        .json(&json!({"target": "alice"}))
        .ok()
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let follow_seq = r.json()["seq"].as_u64().unwrap();
    for (target, status, code) in [
        ("alice", 409, "ALREADY_EXISTS"),
        ("bob", 400, "INVALID_ARGUMENT"),
        ("nobody", 404, "NOT_FOUND"),
    ] {
        call("POST", base, "/api/follows")
            .token(&bob)
            .json(&json!({ "target": target }))
            .ok()
            .await
            .assert_error(status, code);
    }
    call("DELETE", base, "/api/follows/nobody")
        .token(&alice)
        .ok()
        .await
        .assert_error(404, "NOT_FOUND");
    call("DELETE", base, "/api/follows/bob")
        .token(&alice)
        .ok()
        .await
        .assert_error(409, "FAILED_PRECONDITION");

    // Users, a page at a time, and whom the caller follows.
    let r = call("GET", base, "/api/users?limit=1")
        .token(&bob)
        .ok()
        .await;
    assert_eq!(
        r.json(),
        json!({"users": ["alice"], "following": ["alice"], "next": "alice"}),
        "{r:?}"
    );
    let r = call("GET", base, "/api/users?after=alice")
        .token(&bob)
        .ok()
        .await;
    assert_eq!(
        r.json(),
        json!({"users": ["bob"], "following": [], "next": null})
    );

    // Posts: three within the burst, the same key again is the same post, the fourth is over
    // posts_per_sec (429 with Retry-After).
    let mut seqs = Vec::new();
    for i in 0..3 {
        let r = post(base, &alice, &format!("hello {i}"), &format!("k{i}")).await;
        assert_eq!(
            (r.status, &r.json()["duplicate"]),
            (200, &json!(false)),
            "{r:?}"
        );
        seqs.push(r.json()["seq"].as_u64().unwrap());
    }
    assert!(seqs[0] > follow_seq);
    let retry = call("POST", base, "/api/posts")
        .token(&alice)
        .json(&json!({ "text": "hello 1", "client_post_id": "k1" }))
        .ok()
        .await;
    assert_eq!(
        (retry.json()["seq"].as_u64(), &retry.json()["duplicate"]),
        (Some(seqs[1]), &json!(true)),
        "{retry:?}"
    );
    // More, until one is over the rate (the bucket refills one a second: a slow machine may
    // get one or two more in first).
    let mut limited = None;
    for i in 3..15 {
        let r = post(base, &alice, &format!("hello {i}"), &format!("k{i}")).await;
        if r.status != 200 {
            limited = Some(r);
            break;
        }
        seqs.push(r.json()["seq"].as_u64().unwrap());
    }
    let limited = limited.expect("posts_per_sec = 1 refused none of 15 posts");
    limited.assert_error(429, "RESOURCE_EXHAUSTED");
    let wait: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(wait >= 1, "{limited:?}");

    // History: the page and where the timeline ends.
    let r = call("GET", base, "/api/timeline?after=0")
        .token(&bob)
        .ok()
        .await;
    let v = r.json();
    let got: Vec<u64> = v["posts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, seqs, "{r:?}");
    assert_eq!(v["posts"][0]["author"], "alice");
    assert_eq!(v["posts"][0]["text"], "hello 0");
    assert!(v["posts"][0]["ts_ms"].as_i64().unwrap() > 0);
    assert!(v["last_seq"].as_u64().unwrap() >= *seqs.last().unwrap());
    let r = call("GET", base, "/api/timeline?limit=1")
        .token(&bob)
        .ok()
        .await;
    assert_eq!(r.json()["posts"].as_array().unwrap().len(), 1);

    // The stream: the latest posts, each an event `post` with its seq as id; a second stream of
    // the user is over streams_per_user (429).
    let mut s = EventStream::of(
        call("GET", base, "/api/timeline/stream")
            .token(&bob)
            .open()
            .await
            .unwrap(),
    );
    assert_eq!(read_until(&mut s, *seqs.last().unwrap()).await, seqs);
    call("GET", base, "/api/timeline/stream?after=0")
        .token(&bob)
        .ok()
        .await
        .assert_error(429, "RESOURCE_EXHAUSTED");
    drop(s);
    call("GET", base, "/api/timeline/stream")
        .token(&bob)
        .header("last-event-id", "not-a-seq")
        .ok()
        .await
        .assert_error(400, "INVALID_ARGUMENT");

    // Unfollow: a seq.
    let r = call("DELETE", base, "/api/follows/alice")
        .token(&bob)
        .ok()
        .await;
    assert!(
        r.json()["seq"].as_u64().unwrap() > *seqs.last().unwrap(),
        "{r:?}"
    );

    // Workers: every live worker's web address, this one's among them.
    let r = call("GET", base, "/api/workers").ok().await;
    let mut listed: Vec<String> = serde_json::from_value(r.json()["workers"].clone()).unwrap();
    listed.sort();
    let mut expected: Vec<String> = workers.iter().map(|w| w.web_addr.clone()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(r.json()["this"], json!(base));

    // CORS: any origin, no credentials; the preflight admits the API's headers.
    let pre = call("OPTIONS", base, "/api/posts")
        .header("origin", "http://127.0.0.1:1")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, idempotency-key",
        )
        .ok()
        .await;
    assert_eq!(pre.status, 204, "{pre:?}");
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    let allowed = pre
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for h in [
        "authorization",
        "content-type",
        "idempotency-key",
        "last-event-id",
    ] {
        assert!(allowed.contains(h), "{pre:?}");
    }
    assert!(pre.header("access-control-allow-credentials").is_none());
    let r = call("GET", base, "/api/users")
        .token(&bob)
        .header("origin", "http://x")
        .ok()
        .await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("access-control-allow-credentials").is_none());

    // OpenAPI: a JSON description naming every route.
    let doc = call("GET", base, "/api/openapi.json").ok().await.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/login",
        "/api/logout",
        "/api/password",
        "/api/posts",
        "/api/follows",
        "/api/follows/{target}",
        "/api/users",
        "/api/timeline",
        "/api/timeline/stream",
        "/api/workers",
        "/api/openapi.json",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not described");
    }
    call("GET", base, "/api/nothing")
        .ok()
        .await
        .assert_error(404, "NOT_FOUND");

    // A password change: a new token; the old one (and every other session) is refused.
    let r = call("POST", base, "/api/password")
        .token(&bob)
        .json(&json!({"old_password": PASSWORD, "new_password": "another password"}))
        .ok()
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let bob2 = r.json()["token"].as_str().unwrap().to_string();
    call("GET", base, "/api/timeline")
        .token(&bob)
        .ok()
        .await
        .assert_error(401, "UNAUTHENTICATED");
    assert_eq!(
        call("GET", base, "/api/timeline")
            .token(&bob2)
            .ok()
            .await
            .status,
        200
    );
    // Logout ends it too.
    let r = call("POST", base, "/api/logout").token(&bob2).ok().await;
    assert_eq!(r.status, 204, "{r:?}");
    call("GET", base, "/api/timeline")
        .token(&bob2)
        .ok()
        .await
        .assert_error(401, "UNAUTHENTICATED");

    // The worker's metrics count the HTTP API's requests by route and status.
    let log = std::fs::read_to_string(c.run_dir().join(format!("worker-{}.log", workers[0].pid)))
        .unwrap();
    let metrics = log
        .lines()
        .find_map(|l| l.split("metrics endpoint serving addr=").nth(1))
        .expect("the worker logs its metrics address")
        .trim()
        .to_string();
    let page = call("GET", &format!("http://{metrics}"), "/metrics")
        .ok()
        .await
        .body;
    for series in [
        r#"chatfeed_http_requests_total{route="POST /api/posts",status="429"} 1"#,
        r#"chatfeed_http_requests_total{route="POST /api/login",status="415"} 1"#,
        r#"chatfeed_http_requests_total{route="DELETE /api/follows/{target}",status="404"} 1"#,
        r#"chatfeed_http_requests_total{route="other",status="404"} 1"#,
        r#"chatfeed_http_duration_seconds_count{route="GET /api/timeline/stream",status="200"} 1"#,
    ] {
        assert!(page.contains(series), "no {series} in\n{page}");
    }

    let answer = tokio::time::timeout(DEADLINE, trickle)
        .await
        .expect("a trickled body is answered")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");

    // No master left: UNAVAILABLE, 503.
    for m in 1..=3 {
        if let Some(pid) = c.pid_from_file(m) {
            c.kill9(pid).await;
        }
    }
    let m = call("GET", base, "/api/timeline")
        .token(&alice)
        .ok()
        .await
        .assert_error(503, "UNAVAILABLE");
    assert!(m.to_lowercase().contains("retry"), "{m}");
}

/// A standard SSE client's life: it disconnects and resumes with Last-Event-ID on the same
/// worker; then its worker is killed with -9 while posts go on through another worker, and it
/// resumes on a third with the last id it received. It receives every post of the timeline once,
/// in seq order, and a post retried with its idempotency key commits once. Fails on any gap,
/// duplicate or second commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_resumes_across_a_worker_kill() {
    let c = feed_cluster(WEB).await;
    let workers = web_workers(&c, 3).await;
    let (watched, poster) = (&workers[0], &workers[1]);
    let alice = login(&poster.web_addr, "alice").await;
    let bob = login(&watched.web_addr, "bob").await;
    let r = call("POST", &watched.web_addr, "/api/follows")
        .token(&bob)
        .json(&json!({"target": "alice"}))
        .ok()
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    let open = async |base: &str, last: Option<u64>| {
        let mut call = call("GET", base, "/api/timeline/stream?after=0").token(&bob);
        if let Some(id) = last {
            call = call.header("last-event-id", &id.to_string());
        }
        EventStream::of(call.open().await.expect("the stream opens"))
    };
    let mut acked: Vec<u64> = Vec::new();
    let posted = async |n: usize, from: usize| {
        let mut seqs = Vec::new();
        for i in from..from + n {
            let r = post(
                &poster.web_addr,
                &alice,
                &format!("post {i}"),
                &format!("key-{i}"),
            )
            .await;
            assert_eq!(r.status, 200, "{r:?}");
            seqs.push(r.json()["seq"].as_u64().unwrap());
        }
        seqs
    };

    // Live, then a disconnect and a resume with Last-Event-ID on the same worker.
    let mut stream = open(&watched.web_addr, None).await;
    acked.extend(posted(5, 0).await);
    let mut received = read_until(&mut stream, acked[4]).await;
    drop(stream);
    acked.extend(posted(5, 5).await);
    let mut stream = open(&watched.web_addr, received.last().copied()).await;
    received.extend(read_until(&mut stream, acked[9]).await);

    // kill -9 of the stream's worker while posts go on through another: the stream breaks
    // (a move or an end); the client resumes on another worker after the last id received.
    c.kill9(watched.pid).await;
    acked.extend(posted(10, 10).await);
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Some(ev) = stream.next().await {
            assert_ne!(ev.event, "post", "a post from a killed worker: {ev:?}");
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream of a killed worker did not end");
    let listed: Value = eventually("another worker's list of workers", async || {
        let r = call("GET", &poster.web_addr, "/api/workers").send().await?;
        (r.status == 200).then(|| r.json()).ok_or(format!("{r:?}"))
    })
    .await;
    let next = listed["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|a| *a != watched.web_addr && *a != poster.web_addr)
        .unwrap_or(&poster.web_addr)
        .to_string();
    let mut stream = open(&next, received.last().copied()).await;
    received.extend(read_until(&mut stream, *acked.last().unwrap()).await);
    assert_eq!(received, acked, "every post once, in seq order");

    // A post retried with its key, through another worker: the same seq, a duplicate.
    let again = post(&next, &alice, "post 3", "key-3").await;
    assert_eq!(
        (again.json()["seq"].as_u64(), &again.json()["duplicate"]),
        (Some(acked[3]), &json!(true)),
        "{again:?}"
    );
    let history = call("GET", &next, "/api/timeline?after=0&limit=1000")
        .token(&bob)
        .ok()
        .await;
    let all: Vec<u64> = history.json()["posts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(all, acked, "the timeline holds each post once");

    // SIGTERM of the stream's worker: it says `move` and ends the stream; the client resumes
    // on another worker after the last id it received.
    assert_ne!(next, poster.web_addr, "a third worker serves the stream");
    let next_pid = c
        .wait_leader_status("the stream's worker in the status", |s| {
            s.workers
                .iter()
                .find(|w| w.web_addr == next)
                .map(|w| w.pid)
                .ok_or_else(|| format!("{next} is not listed"))
        })
        .await;
    signal(next_pid, "TERM");
    let (last, after) = tokio::time::timeout(DEADLINE, async {
        let last = stream.next().await;
        (last, stream.next().await)
    })
    .await
    .expect("a stopping worker moves its streams");
    let last = last.expect("the stream of a stopping worker ended without a move event");
    assert_eq!(last.event, "move", "{last:?}");
    assert!(last.json()["reason"].is_string(), "{last:?}");
    assert_eq!(after, None, "the stream ends after its move event");
    acked.extend(posted(5, 20).await);
    let mut stream = open(&poster.web_addr, received.last().copied()).await;
    received.extend(read_until(&mut stream, *acked.last().unwrap()).await);
    assert_eq!(
        received, acked,
        "every post once, in seq order, after the move"
    );
}

/// Connections per worker (`limits.connections_per_worker`) count the HTTP API's and the gRPC
/// port's together: with the worker's connections held on its gRPC port, an HTTP call is
/// answered 429 "worker full" (go to another worker). Fails if the HTTP API had a limit of its
/// own or none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_connections_count_in_the_workers_limit() {
    let c = feed_cluster(&format!("{WEB}[limits]\nconnections_per_worker = 3\n")).await;
    let w = web_workers(&c, 1).await.remove(0);
    let r = call("GET", &w.web_addr, "/api/workers").ok().await;
    assert_eq!(r.status, 200, "{r:?}");
    // Three connections to its gRPC port (held open, a handshake never sent: the worker drops
    // them after its handshake timeout, so each attempt opens them afresh), then an HTTP call.
    let m = eventually("an HTTP call on a full worker", async || {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                tokio::net::TcpStream::connect(&w.addr)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let r = call("GET", &w.web_addr, "/api/workers").send().await?;
        drop(held);
        if r.status == 429 {
            Ok(r.assert_error(429, "RESOURCE_EXHAUSTED"))
        } else {
            Err(format!("answered {r:?}"))
        }
    })
    .await;
    assert!(
        m.contains("worker full") && m.contains("connections_per_worker"),
        "{m}"
    );
    eventually("the worker serving again", async || {
        let r = call("GET", &w.web_addr, "/api/workers").send().await?;
        (r.status == 200).then_some(()).ok_or(format!("{r:?}"))
    })
    .await;
}

/// Plain HTTP beyond loopback is refused by `check-config` (naming the field and the way out),
/// and accepted with a certificate or the explicit `plain_http_beyond_loopback`; a worker on
/// such a configuration does not start. Fails if a configuration that sends passwords in clear
/// over the network passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_beyond_loopback_is_refused() {
    let c = ProcCluster::with_config(RESTART_AFTER_MS, "[web]\nlisten = \"0.0.0.0:0\"\n");
    let out = c.run_bin(&c.config_path, &["check-config"]).await;
    assert_refused(&out, "web.listen", "check-config of plain HTTP on 0.0.0.0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("web.cert") && err.contains("plain_http_beyond_loopback"),
        "{err}"
    );
    let worker = tokio::process::Command::new(bin_dir().join("chatfeed-worker"))
        .arg("--config")
        .arg(&c.config_path)
        .arg(c.masters_arg())
        .output()
        .await
        .unwrap();
    assert!(!worker.status.success(), "a worker started on it");
    assert!(String::from_utf8_lossy(&worker.stderr).contains("web.listen"));

    let allowed = ProcCluster::with_config(
        RESTART_AFTER_MS,
        "[web]\nlisten = \"0.0.0.0:0\"\nplain_http_beyond_loopback = true\n",
    );
    let out = allowed
        .run_bin(&allowed.config_path, &["check-config"])
        .await;
    assert!(out.status.success(), "{out:?}");
    let missing = ProcCluster::with_config(
        RESTART_AFTER_MS,
        "[web]\nlisten = \"0.0.0.0:0\"\ncert = \"web.pem\"\nkey = \"web.key\"\n",
    );
    let out = missing
        .run_bin(&missing.config_path, &["check-config"])
        .await;
    assert_refused(
        &out,
        "web.pem",
        "check-config of a missing HTTPS certificate",
    );
}

/// HTTPS with the operator's certificate (`[web] cert`, `key`; here the host's worker
/// certificate, which names 127.0.0.1, and the cluster CA as the browser's trusted root): the
/// workers report `https://` addresses, serve the API over TLS, and answer nothing in plain HTTP
/// on that port. Fails if the configured certificate were not used.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_with_the_operators_certificate() {
    let c = feed_cluster(
        "[web]\nlisten = \"127.0.0.1:0\"\ncert = \"tls/worker.pem\"\nkey = \"tls/worker.key\"\n",
    )
    .await;
    let ca = c.ca_file().expect("a TLS cluster has a CA");
    let base = c
        .wait_leader_status("a worker reporting an https address", |s| {
            s.workers
                .iter()
                .find(|w| w.web_addr.starts_with("https://127.0.0.1:"))
                .map(|w| w.web_addr.clone())
                .ok_or_else(|| "none yet".to_string())
        })
        .await;
    let r = call("POST", &base, "/api/login")
        .ca(&ca)
        .json(&json!({"user": "alice", "password": PASSWORD}))
        .ok()
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let token = r.json()["token"].as_str().unwrap().to_string();
    let r = call("POST", &base, "/api/posts")
        .ca(&ca)
        .token(&token)
        .header("idempotency-key", "h1")
        .json(&json!({ "text": "over https" }))
        .ok()
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let plain = base.replace("https://", "http://");
    let r = call("GET", &plain, "/api/workers").send().await;
    assert!(
        r.as_ref().map_or(true, |r| r.status != 200),
        "plain HTTP answered on the HTTPS port: {r:?}"
    );
}
