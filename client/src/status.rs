//! `chatfeed status`: the whole cluster as the masters see it, as a table or as the JSON object of
//! docs/semantics.md §2.

#[cfg(test)]
use chatfeed_proto::master::WorkerStatus;
use chatfeed_proto::master::{ClusterStatus, MemberStatus, Role};
use serde::Serialize;

#[derive(Serialize)]
pub struct StatusJson {
    pub leader: Option<u64>,
    pub term: u64,
    pub masters: Vec<MasterJson>,
    pub workers: Vec<WorkerJson>,
}

#[derive(Serialize)]
pub struct MasterJson {
    pub id: u64,
    pub addr: String,
    pub role: &'static str,
    pub last_applied: u64,
    /// Entries behind the active master's log (only when the active master answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

#[derive(Serialize)]
pub struct WorkerJson {
    pub id: String,
    pub addr: String,
    pub host: String,
    pub clients: u64,
    pub pid: u32,
}

fn role_name(m: &MemberStatus) -> &'static str {
    match Role::try_from(m.role).unwrap_or(Role::Unknown) {
        Role::Leader => "leader",
        Role::Down | Role::Unknown => "down",
        Role::Learner => "learner",
        _ => "replica",
    }
}

/// The docs/semantics.md §2 form of a cluster status.
pub fn to_json(s: &ClusterStatus) -> StatusJson {
    StatusJson {
        leader: s.leader,
        term: s.term,
        masters: s
            .members
            .iter()
            .map(|m| MasterJson {
                id: m.id,
                addr: m.api_addr.clone(),
                role: role_name(m),
                last_applied: m.last_applied,
                lag: m.lag,
                pid: m.reachable.then_some(m.pid),
            })
            .collect(),
        workers: s
            .workers
            .iter()
            .map(|w| WorkerJson {
                id: w.id.clone(),
                addr: w.addr.clone(),
                host: w.host.clone(),
                clients: w.clients as u64,
                pid: w.pid,
            })
            .collect(),
    }
}

fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The status as a table; the leader is marked with `*`.
pub fn to_table(s: &ClusterStatus) -> String {
    let mut out = String::new();
    let leader = s
        .leader
        .map(|l| format!("member {l}"))
        .unwrap_or_else(|| "none".into());
    out.push_str(&format!("leader: {leader}   term: {}\n\n", s.term));
    out.push_str(&format!(
        "{:<8}{:<22}{:<10}{:>6}{:>10}{:>10}{:>8}{:>9}\n",
        "MEMBER", "ADDRESS", "ROLE", "TERM", "APPLIED", "LAG", "PID", "UPTIME"
    ));
    let max_applied = s.members.iter().map(|m| m.last_applied).max().unwrap_or(0);
    for m in &s.members {
        let mark = if Some(m.id) == s.leader { "*" } else { "" };
        let (term, applied, mut lag, pid, up) = if m.reachable {
            (
                m.term.to_string(),
                m.last_applied.to_string(),
                // The active master's figure (entries behind its log) when it answered.
                m.lag.unwrap_or(max_applied - m.last_applied).to_string(),
                m.pid.to_string(),
                uptime(m.uptime_ms),
            )
        } else {
            ("-".into(), "-".into(), "-".into(), "-".into(), "-".into())
        };
        if !m.reachable
            && let Some(l) = m.lag
        {
            lag = l.to_string();
        }
        out.push_str(&format!(
            "{:<8}{:<22}{:<10}{:>6}{:>10}{:>10}{:>8}{:>9}\n",
            m.id,
            m.api_addr,
            format!("{}{mark}", role_name(m)),
            term,
            applied,
            lag,
            pid,
            up
        ));
        if !m.reachable && !m.error.is_empty() {
            out.push_str(&format!("        ({})\n", m.error));
        }
    }
    // One line per member whose storage alarm is raised: what, where, how much is free, why.
    for m in &s.members {
        if let Some(st) = m.storage.as_ref().filter(|st| !st.alarms.is_empty()) {
            out.push_str(&format!(
                "STORAGE ALARM ({}) member {} at {}: {} MiB free: {}\n",
                st.alarms.join(","),
                m.id,
                st.path,
                st.free_bytes >> 20,
                st.message
            ));
        }
    }
    if s.workers.is_empty() {
        out.push_str("\nworkers: none registered\n");
        return out;
    }
    // Worker ids are as long as the workers make them: the column fits the longest.
    let id_width = s
        .workers
        .iter()
        .map(|w| w.id.len() + 2)
        .max()
        .unwrap_or(0)
        .max(18);
    out.push_str(&format!(
        "\n{:<id_width$}{:<22}{:<16}{:>8}{:>8}{:>9}\n",
        "WORKER", "ADDRESS", "HOST", "CLIENTS", "PID", "AGE"
    ));
    for w in &s.workers {
        out.push_str(&format!(
            "{:<id_width$}{:<22}{:<16}{:>8}{:>8}{:>9}\n",
            w.id,
            w.addr,
            w.host,
            w.clients,
            w.pid,
            uptime(w.age_ms)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> ClusterStatus {
        ClusterStatus {
            workers: vec![WorkerStatus {
                id: "w1".into(),
                addr: "h:9".into(),
                host: "h".into(),
                clients: 4,
                pid: 77,
                age_ms: 1000,
                web_addr: String::new(),
            }],
            answered_by: 1,
            leader: Some(1),
            term: 3,
            members: vec![
                MemberStatus {
                    id: 1,
                    api_addr: "h:1".into(),
                    role: Role::Leader as i32,
                    last_applied: 7,
                    pid: 10,
                    reachable: true,
                    ..Default::default()
                },
                MemberStatus {
                    id: 2,
                    api_addr: "h:2".into(),
                    role: Role::Down as i32,
                    reachable: false,
                    ..Default::default()
                },
            ],
        }
    }

    /// The JSON has exactly the fields of docs/semantics.md §2; a down member has no pid.
    #[test]
    fn json_shape() {
        let v = serde_json::to_value(to_json(&status())).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "leader": 1, "term": 3,
                "masters": [
                    {"id": 1, "addr": "h:1", "role": "leader", "last_applied": 7, "pid": 10},
                    {"id": 2, "addr": "h:2", "role": "down", "last_applied": 0}
                ],
                "workers": [{"id": "w1", "addr": "h:9", "host": "h", "clients": 4, "pid": 77}]
            })
        );
    }

    /// A member with a storage alarm gets a line naming it, its directory, the free space and
    /// why; a member without one gets none.
    #[test]
    fn table_shows_storage_alarms() {
        let mut s = status();
        s.members[0].storage = Some(chatfeed_proto::master::StorageStatus {
            path: "/data/master-1".into(),
            free_bytes: 3 << 20,
            used_bytes: 1 << 20,
            alarms: vec!["no_space".into()],
            message: "member 1 cannot take writes in /data/master-1: 3.0 MiB free".into(),
        });
        let t = to_table(&s);
        let line = t
            .lines()
            .find(|l| l.starts_with("STORAGE ALARM"))
            .unwrap_or_else(|| panic!("no alarm line: {t}"));
        assert!(
            line.contains("no_space")
                && line.contains("member 1")
                && line.contains("/data/master-1"),
            "{line}"
        );
        assert!(line.contains("3 MiB free"), "{line}");
        assert!(!to_table(&status()).contains("STORAGE ALARM"));
    }

    /// A learner (a member joining the group) is shown as one, with the active master's lag
    /// figure, in the table and the JSON.
    #[test]
    fn learner_with_its_lag() {
        let mut s = status();
        s.members.push(MemberStatus {
            id: 4,
            api_addr: "h:4".into(),
            role: Role::Learner as i32,
            last_applied: 3,
            lag: Some(42),
            reachable: true,
            pid: 11,
            ..Default::default()
        });
        let t = to_table(&s);
        assert!(
            t.lines()
                .any(|l| l.starts_with("4 ") && l.contains("learner") && l.contains(" 42 ")),
            "{t}"
        );
        let v = serde_json::to_value(to_json(&s)).unwrap();
        assert_eq!(v["masters"][2]["role"], "learner");
        assert_eq!(v["masters"][2]["lag"], 42);
    }

    /// A long worker id keeps a space before the address.
    #[test]
    fn long_worker_id_is_separated() {
        let mut s = status();
        s.workers[0].id = "w-43f113f355c72e57".into();
        let t = to_table(&s);
        assert!(t.contains("w-43f113f355c72e57  h:9"), "{t}");
    }

    /// The table marks the leader and shows a down member without figures.
    #[test]
    fn table_marks_leader() {
        let t = to_table(&status());
        assert!(t.contains("leader*"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("w1") && l.contains("h:9") && l.contains("77")),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.starts_with("2 ") && l.contains("down") && l.contains(" -")),
            "{t}"
        );
    }
}
