//! CPU time of one TLS handshake on each side, with chatfeed's own configurations (a new CA and
//! node certificate in a temporary directory): a full handshake, and one resumed from a session
//! ticket, as every reconnection is. In memory, without sockets: what rustls and its crypto
//! cost per connection, and nothing else.
//!
//! ```text
//! cargo run --release -p chatfeed-common --example handshake_cost [handshakes per batch]
//! ```
//!
//! Prints the cost of the X25519 key exchange alone, then, for the workers' port (no client
//! certificate asked) and the masters' API port (one asked, optional), the median over five
//! batches of the time per handshake on the client and on the server.

use chatfeed_common::tls::{ClientAuth, Files, Tls, ensure_node_certs};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs one handshake between `client` and `server` in memory; returns the time each side spent
/// on it, and whether it resumed a session.
fn handshake(
    client: &Arc<rustls::ClientConfig>,
    server: &Arc<rustls::ServerConfig>,
    name: &ServerName<'static>,
) -> (Duration, Duration, bool) {
    // Creating the client's connection makes its key share and ClientHello: part of its cost.
    let t = Instant::now();
    let mut c = rustls::ClientConnection::new(client.clone(), name.clone()).expect("client");
    let mut on_client = t.elapsed();
    let t = Instant::now();
    let mut s = rustls::ServerConnection::new(server.clone()).expect("server");
    let mut on_server = t.elapsed();
    let mut wire = Vec::new();
    // Each round: the client's flight to the server, then the server's back. The server's
    // session ticket comes after the client's Finished, so the client reads it too.
    loop {
        let t = Instant::now();
        wire.clear();
        while c.wants_write() {
            c.write_tls(&mut wire).expect("client write");
        }
        on_client += t.elapsed();
        let t = Instant::now();
        let mut r = &wire[..];
        while !r.is_empty() {
            s.read_tls(&mut r).expect("server read");
            s.process_new_packets().expect("server handshake");
        }
        wire.clear();
        while s.wants_write() {
            s.write_tls(&mut wire).expect("server write");
        }
        on_server += t.elapsed();
        let t = Instant::now();
        let mut r = &wire[..];
        while !r.is_empty() {
            c.read_tls(&mut r).expect("client read");
            c.process_new_packets().expect("client handshake");
        }
        on_client += t.elapsed();
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            break;
        }
    }
    let resumed = c.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    (on_client, on_server, resumed)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The median over five batches of `per_batch` X25519 key pairs, each with its public key and
/// an agreement with a peer's: the key exchange one side of every TLS 1.3 handshake makes,
/// resumed or not, and the floor under a resumed handshake's cost.
fn key_exchange(per_batch: u32) -> Duration {
    use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let peer = EphemeralPrivateKey::generate(&X25519, &rng)
        .and_then(|k| k.compute_public_key())
        .expect("a key pair");
    let peer = UnparsedPublicKey::new(&X25519, peer.as_ref().to_vec());
    let batches = (0..5).map(|_| {
        let t = Instant::now();
        for _ in 0..per_batch {
            let key = EphemeralPrivateKey::generate(&X25519, &rng).expect("a key");
            std::hint::black_box(key.compute_public_key().expect("its public key"));
            agreement::agree_ephemeral(key, &peer, (), |secret| {
                std::hint::black_box(secret);
                Ok(())
            })
            .expect("an agreement");
        }
        t.elapsed() / per_batch
    });
    median(batches.collect())
}

fn main() {
    let per_batch: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("handshakes per batch: a number"))
        .unwrap_or(1000);
    println!(
        "X25519 key pair and agreement (one side's key exchange): {:.1} µs (median of 5 x {per_batch})",
        key_exchange(per_batch).as_secs_f64() * 1e6
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    ensure_node_certs(dir.path(), &["127.0.0.1".into()]).expect("certificates");
    let f = Files::in_dir(dir.path());
    let read = |p: &std::path::Path| std::fs::read(p).expect("certificate file");
    let node = Tls::node(read(&f.ca_cert), read(&f.node_cert), read(&f.node_key));
    let name = ServerName::try_from("127.0.0.1").expect("name");
    for (port, auth) in [
        ("worker port", ClientAuth::None),
        ("master API port", ClientAuth::Optional),
    ] {
        let server = node
            .acceptor(auth)
            .expect("server configuration")
            .expect("TLS")
            .rustls_config();
        for resumed in [false, true] {
            let (mut clients, mut servers) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                let (mut c_sum, mut s_sum) = (Duration::ZERO, Duration::ZERO);
                for _ in 0..per_batch {
                    // A full handshake: a client with an empty session cache. A resumed one:
                    // the same client again (its first handshake, outside the count, is full).
                    let fresh = Tls::client(read(&f.ca_cert));
                    let client = fresh.rustls_client_config().expect("client").expect("TLS");
                    if resumed {
                        handshake(&client, &server, &name);
                    }
                    let (c, s, was) = handshake(&client, &server, &name);
                    assert_eq!(was, resumed, "the handshake's kind");
                    c_sum += c;
                    s_sum += s;
                }
                clients.push(c_sum / per_batch);
                servers.push(s_sum / per_batch);
            }
            println!(
                "{port}, {} handshake: client {:.1} µs, server {:.1} µs (median of 5 x {per_batch})",
                if resumed { "resumed" } else { "full" },
                median(clients).as_secs_f64() * 1e6,
                median(servers).as_secs_f64() * 1e6,
            );
        }
    }
}
