//! Backups and restores of a real cluster (`chatfeed-master backup`, `verify`, `restore`): a
//! backup taken while a client posts, damaged copies of it refused, and a new group restored
//! from it holding exactly what committed up to the backup, under a new cluster id that a
//! stream resuming from a later seq of the old group is told about.

use chatfeed_common::testing::eventually;
use chatfeed_e2e::cluster::*;
use chatfeed_e2e::feed::*;
use chatfeed_e2e::group::Group;
use chatfeed_e2e::web::call;
use chatfeed_proto::CLUSTER_METADATA_KEY;
use chatfeed_proto::raft::RaftMessage;
use chatfeed_proto::raft::raft_client::RaftClient;
use std::sync::atomic::{AtomicBool, Ordering};

/// A worker's HTTP API address, as the active master lists it.
async fn web_api(c: &ProcCluster) -> String {
    let s = c.leader_status().await.expect("an active master");
    s.workers
        .iter()
        .map(|w| w.web_addr.clone())
        .find(|a| a.starts_with("http://127.0.0.1:"))
        .expect("a worker's HTTP API")
}

/// The cluster id every member reports, once they agree on one.
async fn cluster_id(c: &ProcCluster) -> String {
    eventually("every member reporting one cluster id", async || {
        let s = c.leader_status().await.ok_or("no active master")?;
        let ids: std::collections::BTreeSet<&str> =
            s.members.iter().map(|m| m.cluster_id.as_str()).collect();
        match ids.into_iter().collect::<Vec<_>>()[..] {
            [id] if !id.is_empty() && s.members.len() == 3 => Ok(id.to_string()),
            ref other => Err(format!("ids {other:?}")),
        }
    })
    .await
}

/// A backup taken while alice posts holds every post acknowledged before it started and none
/// acknowledged after it ended; a truncated or altered copy is refused by `verify` and by
/// `restore`; one taken from a running member's data directory verifies too. The group restored from it (old data directories moved aside) has exactly the
/// posts up to the backup's last seq, a new cluster id, and bob's stream, still running from
/// before with seqs the old group issued after the backup, is told the history was restored
/// and goes on with the restored group's posts, even those that reuse seqs it printed before.
/// A Raft message carrying the old cluster id is refused by the new group's members; the HTTP
/// API, with a session of before the restore, refuses an event stream resumed from the old
/// cluster (409 HISTORY_RESTORED). `--any-member` makes a backup too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_restores_into_a_new_group() {
    let c = feed_cluster("[web]\nlisten = \"127.0.0.1:0\"\n").await;
    c.wait_workers(3).await;
    c.client_ok("alice", &["list"]).await;
    c.client_ok("bob", &["follow", "alice"]).await;
    let old_id = cluster_id(&c).await;
    let stream = c.stream("bob", &[]);
    let mut before = Vec::new();
    for i in 0..5 {
        before.push(c.post("alice", &format!("before {i}")).await);
    }

    let file = c.root.join("feed.backup");
    let file_arg = file.to_str().unwrap();
    let done = AtomicBool::new(false);
    let posting = async {
        let mut during = Vec::new();
        while !done.load(Ordering::SeqCst) {
            during.push(c.post("alice", &format!("during {}", during.len())).await);
        }
        during
    };
    let backup = async {
        let out = c
            .run_bin(&c.config_path, &["backup", "--out", file_arg])
            .await;
        done.store(true, Ordering::SeqCst);
        out
    };
    let (during, out) = tokio::join!(posting, backup);
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout_of(&out).contains("verified"), "{out:?}");
    let mut after = Vec::new();
    for i in 0..5 {
        after.push(c.post("alice", &format!("after {i}")).await);
    }
    stream.wait_seq(after.last().unwrap().seq).await;

    let extracted = c.root.join("extracted.db");
    let header = chatfeed_master::replicated::raft::backup::verify(&file, &extracted)
        .expect("a whole backup");
    assert_eq!(header.cluster_id, old_id);
    let acked: Vec<&PrintedPost> = before.iter().chain(&during).chain(&after).collect();
    assert!(
        before.iter().all(|p| p.seq <= header.last_seq),
        "a post acknowledged before the backup is past its last seq {}",
        header.last_seq
    );
    assert!(
        after.iter().all(|p| p.seq > header.last_seq),
        "a post acknowledged after the backup is in it (last seq {})",
        header.last_seq
    );

    // Damaged copies are refused, each with its reason.
    let bytes = std::fs::read(&file).unwrap();
    let truncated = c.root.join("truncated.backup");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let mut altered_bytes = bytes.clone();
    let middle = altered_bytes.len() / 2;
    altered_bytes[middle] ^= 0x55;
    let altered = c.root.join("altered.backup");
    std::fs::write(&altered, &altered_bytes).unwrap();
    for (path, why) in [(&truncated, "truncated"), (&altered, "checksum")] {
        let p = path.to_str().unwrap();
        for args in [vec!["verify", p], vec!["restore", p]] {
            let out = c.run_bin(&c.config_path, &args).await;
            assert_refused(&out, why, &format!("{args:?}"));
        }
    }
    let out = c.run_bin(&c.config_path, &["verify", file_arg]).await;
    assert!(out.status.success(), "{out:?}");
    // From a running member's data directory too.
    let from_dir = c.root.join("member-2.backup");
    let out = c
        .run_bin(
            &c.config_path,
            &[
                "backup",
                "--data-dir",
                c.data_dir(2).to_str().unwrap(),
                "--out",
                from_dir.to_str().unwrap(),
            ],
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    let extracted_2 = c.root.join("extracted-2.db");
    let header_2 = chatfeed_master::replicated::raft::backup::verify(&from_dir, &extracted_2)
        .expect("a whole backup of member 2's directory");
    assert_eq!(header_2.cluster_id, old_id);
    assert!(header_2.last_seq >= header.last_seq, "{header_2:?}");

    // Any member may make the copy when asked to.
    let any = c.root.join("any.backup");
    let out = c
        .run_bin(
            &c.config_path,
            &["backup", "--any-member", "--out", any.to_str().unwrap()],
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    // A session of before the restore, over the HTTP API.
    let base = web_api(&c).await;
    let login = call("POST", &base, "/api/login")
        .json(&serde_json::json!({"user": "bob", "password": chatfeed_e2e::PASSWORD}))
        .ok()
        .await;
    let token = login.json()["token"].as_str().expect("a token").to_string();

    // A majority is lost: everything stops, the old directories are moved aside, the group is
    // restored from the backup and started.
    c.kill_everything();
    let out = c.run_bin(&c.config_path, &["restore", file_arg]).await;
    assert_refused(&out, "not empty", "a restore over the old data directories");
    for id in 1..=3 {
        let dir = c.data_dir(id);
        std::fs::rename(&dir, dir.with_extension("old")).unwrap();
    }
    let out = c.run_bin(&c.config_path, &["restore", file_arg]).await;
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        c.run_script().await.status.success(),
        "MasterStartup.sh after the restore failed"
    );
    assert!(c.start_workers().await.status.success());
    c.wait_workers(3).await;
    let new_id = cluster_id(&c).await;
    assert_ne!(new_id, old_id, "the restored group kept the old cluster id");
    // A Raft message from the old group (member 1's certificate, the old cluster id) is refused
    // before it is read; the same bytes with the new id get as far as decoding.
    let config = chatfeed_common::Config::load(&c.config_path).unwrap();
    let member_1 = chatfeed_common::tls::Tls::for_member(&config, 1).unwrap();
    let mut raft = RaftClient::new(member_1.endpoint(&c.member(2).raft).unwrap().connect_lazy());
    for (id, code) in [
        (&old_id, tonic::Code::FailedPrecondition),
        (&new_id, tonic::Code::InvalidArgument),
    ] {
        let mut req = tonic::Request::new(RaftMessage {
            data: b"not a vote".to_vec(),
        });
        req.metadata_mut()
            .insert(CLUSTER_METADATA_KEY, id.parse().unwrap());
        let e = raft
            .vote(req)
            .await
            .expect_err("a garbage vote was accepted");
        assert_eq!(e.code(), code, "{e:?}");
    }

    let restored: Vec<(u64, String)> = c
        .timeline("bob", &["--after", "0"])
        .await
        .into_iter()
        .map(|p| (p.seq, p.text))
        .collect();
    let expected: Vec<(u64, String)> = acked
        .iter()
        .filter(|p| p.seq <= header.last_seq)
        .map(|p| (p.seq, p.text.clone()))
        .collect();
    assert_eq!(
        restored, expected,
        "the restored timeline is not exactly the posts up to the backup's seq {}",
        header.last_seq
    );

    // The stream was told, started again, and shows the new group's posts.
    let stderr = c.root.join("clients").join("bob.stderr");
    eventually(
        "bob's stream told that the history was restored",
        async || {
            let text = std::fs::read_to_string(&stderr).unwrap_or_default();
            if text.contains("history was restored") {
                Ok(())
            } else {
                Err(text)
            }
        },
    )
    .await;
    // The HTTP API, with the session of before the restore (its token key is in the backup),
    // tells an event stream resumed with the old cluster's seq the same, and names the new
    // cluster on a stream of its own.
    let base = web_api(&c).await;
    let stale = format!(
        "/api/timeline/stream?after={}&cluster={old_id}",
        after.last().unwrap().seq
    );
    call("GET", &base, &stale)
        .token(&token)
        .ok()
        .await
        .assert_error(409, "HISTORY_RESTORED");
    let fresh = format!(
        "/api/timeline/stream?after={}&cluster={new_id}",
        header.last_seq
    );
    let open = call("GET", &base, &fresh)
        .token(&token)
        .open()
        .await
        .expect("a stream of the new cluster");
    assert_eq!(open.status(), 200);
    assert_eq!(
        open.headers()
            .get("x-chatfeed-cluster")
            .and_then(|v| v.to_str().ok()),
        Some(new_id.as_str())
    );
    drop(open);

    let new = c.post("alice", "after the restore").await;
    assert!(
        new.seq <= after.last().unwrap().seq,
        "the restored group reuses the seqs the old one issued after the backup"
    );
    eventually(
        "bob's stream showing the restored group's post",
        async || {
            let posts = stream.posts();
            if posts.iter().any(|p| p.seq == new.seq && p.text == new.text) {
                Ok(())
            } else {
                Err(format!("{} posts printed", posts.len()))
            }
        },
    )
    .await;
}
