//! TLS 1.3 session tickets that every server of one host can open.
//!
//! rustls servers keep resumable sessions in a 256-entry cache by default: with a thousand
//! clients most sessions are evicted before they are resumed, and a client that moves to another
//! worker (its worker died) meets a server that never saw it. Both make the reconnection a full
//! handshake: the certificate chain sent and verified, a signature on each side.
//!
//! Here a ticket carries the session itself, sealed (ChaCha20-Poly1305) with a key derived from
//! the host's worker key (`worker.key`), which every worker of the host holds and which the
//! host's members read for their API ports. Any of them opens a ticket any of them issued, so a
//! client failed over to another worker of the host resumes. The key is derived per role, so
//! that a ticket issued where no client certificate is asked for (the API, workers) is never
//! accepted on the Raft port, which requires one: a resumed session carries the certificate
//! verified when it was made, and no other check. A member's Raft port keys its tickets from
//! the member's own key: whoever holds the worker key could seal a ticket naming any
//! certificate, and on the Raft port that would be speaking as a member. On the API port it
//! could claim another role than `worker`, but only on the masters of its own host, whose
//! member keys sit on the same host.
//!
//! Keys change every [`EPOCH_SECS`]; a ticket opens during its epoch and the next. Deriving
//! the key from a private key means whoever steals that key can open old tickets. That reveals
//! no recorded traffic: servers speak TLS 1.3 only (`accept.rs`), where rustls resumes only with
//! a fresh key exchange (psk_dhe_ke), and chatfeed sends no early data. The key already lets its
//! holder impersonate its process.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use std::time::{SystemTime, UNIX_EPOCH};

/// How long one ticket key is used to seal tickets.
const EPOCH_SECS: u64 = 6 * 3600;
/// The derivation's salt: names the scheme, so a change of format changes every key.
const SALT: &[u8] = b"chatfeed TLS session tickets v1";
const EPOCH_LEN: usize = 8;
const NONCE_LEN: usize = aead::NONCE_LEN;

/// Which servers may open a ticket: sessions of one role resume only on servers of that role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// The Raft port: a client certificate of the cluster CA is required.
    Raft,
    /// Masters' API ports and workers: clients without a certificate.
    ClientFacing,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Raft => b"raft",
            Role::ClientFacing => b"client-facing",
        }
    }
}

/// Seals and opens the tickets of one role on one host.
pub(super) struct HostTickets {
    prk: hkdf::Prk,
    role: Role,
    rng: SystemRandom,
}

impl std::fmt::Debug for HostTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostTickets({:?})", self.role)
    }
}

impl HostTickets {
    /// Tickets keyed from `key` (a private key, DER) for `role`.
    pub(super) fn new(key: &[u8], role: Role) -> HostTickets {
        HostTickets {
            prk: hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(key),
            role,
            rng: SystemRandom::new(),
        }
    }

    fn key(&self, epoch: u64) -> Option<LessSafeKey> {
        let epoch = epoch.to_be_bytes();
        let info = [self.role.label(), &epoch[..]];
        let okm = self.prk.expand(&info, &aead::CHACHA20_POLY1305).ok()?;
        Some(LessSafeKey::new(UnboundKey::from(okm)))
    }

    fn seal_at(&self, epoch: u64, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.key(epoch)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let epoch_bytes = epoch.to_be_bytes();
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(epoch_bytes),
            &mut sealed,
        )
        .ok()?;
        let mut out = Vec::with_capacity(EPOCH_LEN + NONCE_LEN + sealed.len());
        out.extend_from_slice(&epoch_bytes);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn open_at(&self, now_epoch: u64, ticket: &[u8]) -> Option<Vec<u8>> {
        let (epoch_bytes, rest) = ticket.split_first_chunk::<EPOCH_LEN>()?;
        let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
        let epoch = u64::from_be_bytes(*epoch_bytes);
        if epoch != now_epoch && epoch.checked_add(1) != Some(now_epoch) {
            return None;
        }
        let key = self.key(epoch)?;
        let mut buf = sealed.to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(*epoch_bytes),
                &mut buf,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

fn current_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / EPOCH_SECS)
        .unwrap_or(0)
}

impl rustls::server::ProducesTickets for HostTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        EPOCH_SECS as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_at(current_epoch(), plain)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        self.open_at(current_epoch(), ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"a host's node key, DER in real use";

    /// Another server of the host (same key, same role) opens a ticket; tampering, another role,
    /// another host and a ticket two epochs old do not.
    #[test]
    fn tickets_open_only_where_they_should() {
        let issuer = HostTickets::new(KEY, Role::ClientFacing);
        let ticket = issuer.seal_at(100, b"session state").unwrap();
        let same_host = HostTickets::new(KEY, Role::ClientFacing);
        assert_eq!(
            same_host.open_at(100, &ticket).as_deref(),
            Some(&b"session state"[..])
        );
        assert_eq!(
            same_host.open_at(101, &ticket).as_deref(),
            Some(&b"session state"[..]),
            "a ticket opens during the next epoch too"
        );
        assert_eq!(same_host.open_at(102, &ticket), None, "two epochs later");
        assert_eq!(same_host.open_at(99, &ticket), None, "from the future");
        assert_eq!(
            HostTickets::new(KEY, Role::Raft).open_at(100, &ticket),
            None,
            "a client-facing ticket must not open on the Raft port"
        );
        assert_eq!(
            HostTickets::new(b"another host's key", Role::ClientFacing).open_at(100, &ticket),
            None
        );
        let mut forged = ticket.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(same_host.open_at(100, &forged), None);
        let mut moved = ticket.clone();
        moved[EPOCH_LEN - 1] ^= 1; // claims epoch 101: the epoch is authenticated
        assert_eq!(same_host.open_at(101, &moved), None);
        assert_eq!(same_host.open_at(100, &ticket[..10]), None, "truncated");
        assert_eq!(same_host.open_at(100, &[]), None);
    }

    /// Two tickets of the same session differ (fresh nonces).
    #[test]
    fn tickets_use_fresh_nonces() {
        let t = HostTickets::new(KEY, Role::ClientFacing);
        assert_ne!(t.seal_at(1, b"x"), t.seal_at(1, b"x"));
    }
}
