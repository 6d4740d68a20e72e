//! What a certificate lets its holder be: every certificate the cluster CA issues for a process
//! carries exactly one role, as a SAN URI (`chatfeed://member/2`, `chatfeed://worker`;
//! `chatfeed://operator` for an operator's tools), beside the host's DNS names and addresses. The services check the
//! caller's role (`Tls::require`): only member N speaks Raft as member N, only members and
//! workers call `chatfeed.cluster.Cluster`, only workers `chatfeed.control.Control`, only
//! operators `chatfeed.cluster.Admin`.
//!
//! A certificate issued before roles existed (the role-less `node.pem` of one host) carries
//! none: it still passes the TLS handshake (same CA), and every role check refuses it, saying
//! how to reissue. The role and names of a peer's certificate are read with x509-parser, once
//! per distinct certificate (`Identities` keeps the last few).

use std::collections::VecDeque;
use std::sync::Mutex;

/// The scheme of the role URI.
const SCHEME: &str = "chatfeed://";

/// What a certificate's holder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Member N of the master group: its Raft port, Raft messages sent as N, the cluster calls.
    Member(u64),
    /// A worker (any worker of the host the certificate names).
    Worker,
    /// An operator's tools (`chatfeed-master backup`, `member`, `rotate-token-key`): the
    /// `Admin` service only. Never a member or a worker.
    Operator,
}

impl Role {
    /// The SAN URI that carries the role.
    pub fn uri(&self) -> String {
        match self {
            Role::Member(n) => format!("{SCHEME}member/{n}"),
            Role::Worker => format!("{SCHEME}worker"),
            Role::Operator => format!("{SCHEME}operator"),
        }
    }

    /// The role of a `chatfeed://` URI; `None` for anything else.
    pub fn from_uri(uri: &str) -> Option<Role> {
        match uri.strip_prefix(SCHEME)? {
            "worker" => Some(Role::Worker),
            "operator" => Some(Role::Operator),
            other => {
                let n = other.strip_prefix("member/")?;
                // Digits only: "+2" or "02" would be a second spelling of one member.
                if n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                n.parse().ok().map(Role::Member)
            }
        }
    }

    /// The name of the role's certificate and key files in a `[tls] dir`, without extension:
    /// `member-2`, `worker`, `operator`.
    pub fn file_stem(&self) -> String {
        match self {
            Role::Member(n) => format!("member-{n}"),
            Role::Worker => "worker".into(),
            Role::Operator => "operator".into(),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Member(n) => write!(f, "member {n}"),
            Role::Worker => f.write_str("worker"),
            Role::Operator => f.write_str("operator"),
        }
    }
}

/// What a verified certificate says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Its role; `None` for a certificate without one (or with two different ones, which no
    /// chatfeed CA issues).
    pub role: Option<Role>,
    /// Its DNS names and IP addresses (IPs in their usual text form): the host it was issued for.
    pub names: Vec<String>,
}

impl Identity {
    /// Whether the certificate was issued for `host` (a DNS name, case-insensitive, or an IP
    /// address in any usual spelling).
    pub fn names_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = host.parse::<std::net::IpAddr>().ok();
        self.names
            .iter()
            .any(|n| match (ip, n.parse::<std::net::IpAddr>()) {
                (Some(a), Ok(b)) => a == b,
                (None, Err(_)) => n.eq_ignore_ascii_case(host),
                _ => false,
            })
    }
}

/// The identity in a certificate (DER). An error when it is not a parsable X.509 certificate
/// (a verified one always is).
pub fn identity_of(der: &[u8]) -> Result<Identity, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut roles = Vec::new();
    let mut names = Vec::new();
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| format!("a malformed subject alternative name: {e}"))?
    {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => {
                    if let Some(r) = Role::from_uri(uri) {
                        roles.push(r);
                    }
                }
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    roles.dedup();
    let role = match roles.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    Ok(Identity { role, names })
}

/// Certificates whose identity a process remembers: its peers are few (the other members, the
/// workers of a few hosts), and parsing one costs microseconds on every call otherwise.
const REMEMBERED: usize = 32;

/// The identities of the last `REMEMBERED` distinct certificates seen, by their DER.
#[derive(Default)]
pub(super) struct Identities(Mutex<VecDeque<(Vec<u8>, Identity)>>);

impl Identities {
    pub(super) fn of(&self, der: &[u8]) -> Result<Identity, String> {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, id)) = seen.iter().find(|(d, _)| d == der) {
            return Ok(id.clone());
        }
        let id = identity_of(der)?;
        if seen.len() == REMEMBERED {
            seen.pop_back();
        }
        seen.push_front((der.to_vec(), id.clone()));
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Role URIs round-trip, and nothing else is a role: other schemes, a member without a
    /// number, a second spelling of a number, a number too large.
    #[test]
    fn role_uris() {
        for r in [
            Role::Member(1),
            Role::Member(42),
            Role::Worker,
            Role::Operator,
        ] {
            assert_eq!(Role::from_uri(&r.uri()), Some(r), "{r}");
        }
        for bad in [
            "chatfeed://member/",
            "chatfeed://member/02",
            "chatfeed://member/+2",
            "chatfeed://member/2/x",
            "chatfeed://member/99999999999999999999999",
            "chatfeed://master",
            "https://member/2",
            "chatfeed://Worker",
        ] {
            assert_eq!(Role::from_uri(bad), None, "{bad}");
        }
        assert_eq!(Role::Member(3).file_stem(), "member-3");
        assert_eq!(Role::Worker.file_stem(), "worker");
    }

    /// A host name matches case-insensitively, an address in any spelling, never across kinds.
    #[test]
    fn names_host() {
        let id = Identity {
            role: Some(Role::Worker),
            names: vec!["w1.example".into(), "10.0.0.11".into(), "::1".into()],
        };
        assert!(id.names_host("W1.example"));
        assert!(id.names_host("10.0.0.11"));
        assert!(id.names_host("[0:0:0:0:0:0:0:1]"));
        assert!(!id.names_host("10.0.0.1"));
        assert!(!id.names_host("w2.example"));
    }
}
