//! chatfeed against a peer (`--peer etcd`, issue 19): each figure of the throughput and fan-out
//! scenarios for both, and the ratio chatfeed / peer, read from the runs' JSON with the
//! comparison machinery of `compare` (figures by pointer, medians of runs). One run gives each
//! side's value; `--compare N --peer etcd` gives N alternated rounds (chatfeed, then the peer,
//! each on a fresh cluster) and the ratio of the medians. A ratio above 1 is chatfeed's lead for
//! a rate (higher is better) and its lag for a latency or a cost (lower is better): the table
//! says which way each figure goes and who is ahead (`report` judges issue 19's targets on
//! these rows).

use crate::compare::{Better, Figures, fmt, series};
use crate::stats::median;
use serde::Serialize;
use serde_json::Value;

/// One figure of chatfeed and of the peer.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub figure: String,
    pub better: Better,
    /// A yes/no figure (1 yes, 0 no; its "median" is 1 only when every run said yes).
    pub flag: bool,
    pub chatfeed: Vec<f64>,
    pub peer: Vec<f64>,
    pub chatfeed_median: f64,
    pub peer_median: f64,
    /// chatfeed's median / the peer's (NaN for a yes/no figure or a zero median).
    pub ratio: f64,
    /// "chatfeed", "peer" or "even".
    pub ahead: &'static str,
}

/// chatfeed / peer, NaN when the peer's value is zero or either is not a number.
pub fn ratio(chatfeed: f64, peer: f64) -> f64 {
    if peer == 0.0 || chatfeed.is_nan() || peer.is_nan() {
        f64::NAN
    } else {
        chatfeed / peer
    }
}

/// Who is ahead on a figure where `better` values are better.
pub fn ahead(better: Better, chatfeed: f64, peer: f64) -> &'static str {
    if chatfeed.is_nan() || peer.is_nan() || chatfeed == peer {
        return "even";
    }
    match (better, chatfeed > peer) {
        (Better::Higher, true) | (Better::Lower, false) => "chatfeed",
        _ => "peer",
    }
}

/// Every figure of the throughput and fan-out scenarios in the chatfeed runs (`runs`, each
/// with its peer's figures under `peer`): each side's values per run, medians, ratio.
pub fn rows(runs: &[Value]) -> Vec<Row> {
    let peers: Vec<Value> = runs
        .iter()
        .filter_map(|r| r.get("peer").filter(|p| !p.is_null()).cloned())
        .collect();
    series(Figures::Peer, runs, &peers)
        .into_iter()
        .map(|s| {
            let agg = |v: &[f64]| {
                if s.flag {
                    v.iter().copied().fold(1.0, f64::min)
                } else {
                    median(v)
                }
            };
            let (c, p) = (agg(&s.a), agg(&s.b));
            Row {
                ratio: if s.flag { f64::NAN } else { ratio(c, p) },
                ahead: ahead(s.better, c, p),
                figure: s.figure,
                better: s.better,
                flag: s.flag,
                chatfeed: s.a,
                peer: s.b,
                chatfeed_median: c,
                peer_median: p,
            }
        })
        .collect()
}

fn value(flag: bool, v: f64) -> String {
    match (flag, v) {
        (true, 1.0) => "yes".into(),
        (true, _) => "NO".into(),
        _ if v.is_nan() => "-".into(),
        _ => fmt(v),
    }
}

/// A ratio as printed: `0.46×`.
pub fn times(r: f64) -> String {
    if r.is_nan() {
        "-".into()
    } else if r >= 10.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

fn better(b: Better) -> &'static str {
    match b {
        Better::Higher => "higher",
        Better::Lower => "lower",
    }
}

/// The rows as a table (header first), `peer` naming the peer. With one run per side, its
/// values; with several, every run's and the medians.
pub fn table(rows: &[Row], peer: &str) -> Vec<Vec<String>> {
    let several = rows
        .iter()
        .any(|r| r.chatfeed.len() > 1 || r.peer.len() > 1);
    let runs = |flag: bool, v: &[f64]| {
        v.iter()
            .map(|x| value(flag, *x))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let mut head: Vec<String> = vec!["figure".into(), "better".into()];
    if several {
        head.extend([
            "chatfeed runs".into(),
            format!("{peer} runs"),
            "chatfeed median".into(),
            format!("{peer} median"),
        ]);
    } else {
        head.extend(["chatfeed".into(), peer.to_string()]);
    }
    head.extend([format!("chatfeed / {peer}"), "ahead".into()]);
    let mut t = vec![head];
    for r in rows {
        let mut line = vec![r.figure.clone(), better(r.better).into()];
        if several {
            line.extend([runs(r.flag, &r.chatfeed), runs(r.flag, &r.peer)]);
        }
        line.extend([
            value(r.flag, r.chatfeed_median),
            value(r.flag, r.peer_median),
            times(r.ratio),
            match r.ahead {
                "peer" => peer.to_string(),
                a => a.to_string(),
            },
        ]);
        t.push(line);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A run's JSON as the bench writes it: chatfeed's figures, the peer's under `peer`.
    fn side(posts_64: f64, p99_64: f64, cpu_64: f64, fan_p99: f64, arrived: bool) -> Value {
        json!({
            "throughput": [
                {"clients": 1, "posts_per_s": posts_64 / 10.0,
                 "latency": {"p50_ms": 1.0, "p99_ms": 2.0, "max_ms": 3.0},
                 "cpu_us_per_post": {"cluster": cpu_64 * 4.0, "bench": 5.0}},
                {"clients": 64, "posts_per_s": posts_64,
                 "latency": {"p50_ms": p99_64 / 3.0, "p99_ms": p99_64, "max_ms": p99_64 * 2.0},
                 "cpu_us_per_post": {"cluster": cpu_64}},
            ],
            "fanout": {"rates": [{"target_posts_per_s": 500, "posts_per_s": 500.0,
                "deliveries_per_s": 25000.0, "all_arrived": arrived,
                "delivery": {"p50_ms": fan_p99 / 4.0, "p99_ms": fan_p99, "max_ms": fan_p99 * 3.0},
                "cpu": {"machine_busy_pct": 60.0, "us_per_unit": {"cluster": 20.0}}}]},
        })
    }

    fn round(chatfeed: Value, peer: Value) -> Value {
        let mut r = chatfeed;
        r["peer"] = peer;
        r
    }

    fn row<'a>(rows: &'a [Row], name: &str) -> &'a Row {
        rows.iter()
            .find(|r| r.figure == name)
            .unwrap_or_else(|| panic!("no row {name:?} in {rows:?}"))
    }

    /// Rates: higher is better, so a ratio above 1 puts chatfeed ahead; latencies and CPU:
    /// lower is better, so a ratio above 1 puts the peer ahead.
    #[test]
    fn the_ratio_reads_in_each_figures_direction() {
        assert_eq!(ahead(Better::Higher, 6000.0, 3000.0), "chatfeed");
        assert_eq!(ahead(Better::Higher, 3000.0, 6000.0), "peer");
        assert_eq!(ahead(Better::Lower, 40.0, 20.0), "peer");
        assert_eq!(ahead(Better::Lower, 10.0, 20.0), "chatfeed");
        assert_eq!(ahead(Better::Lower, 10.0, 10.0), "even");
        assert_eq!(ahead(Better::Lower, f64::NAN, 10.0), "even");
        assert_eq!(ratio(6000.0, 3000.0), 2.0);
        assert!(ratio(1.0, 0.0).is_nan());

        let rows = rows(&[round(
            side(6000.0, 40.0, 300.0, 20.0, true),
            side(3000.0, 20.0, 150.0, 10.0, true),
        )]);
        let t = row(&rows, "throughput, 64 clients, writes/s");
        assert_eq!(
            (t.better, t.ratio, t.ahead),
            (Better::Higher, 2.0, "chatfeed")
        );
        let p = row(&rows, "throughput, 64 clients, p99 ms");
        assert_eq!((p.better, p.ratio, p.ahead), (Better::Lower, 2.0, "peer"));
        let c = row(&rows, "throughput, 64 clients, cluster CPU µs/write");
        assert_eq!((c.better, c.ratio, c.ahead), (Better::Lower, 2.0, "peer"));
        let d = row(&rows, "fan-out 500/s, delivery p99 ms");
        assert_eq!((d.ratio, d.ahead), (2.0, "peer"));
        let busy = row(&rows, "fan-out 500/s, machine busy %");
        assert_eq!((busy.better, busy.ahead), (Better::Lower, "even"));
        let a = row(&rows, "fan-out 500/s, every delivery arrived");
        assert!(a.flag && a.ratio.is_nan());
        assert_eq!(
            (a.chatfeed_median, a.peer_median, a.ahead),
            (1.0, 1.0, "even")
        );
    }

    /// Alternated rounds: each side's median decides the figure, not one slow round; a yes/no
    /// figure is "yes" only when every round said yes.
    #[test]
    fn medians_of_alternated_rounds() {
        let runs = [
            round(
                side(3000.0, 40.0, 400.0, 30.0, true),
                side(5000.0, 30.0, 240.0, 9.0, true),
            ),
            round(
                side(2000.0, 90.0, 450.0, 60.0, false),
                side(5400.0, 35.0, 250.0, 7.0, true),
            ),
            round(
                side(3200.0, 38.0, 420.0, 27.0, true),
                side(1000.0, 31.0, 900.0, 8.0, true),
            ),
        ];
        let rows = rows(&runs);
        let t = row(&rows, "throughput, 64 clients, writes/s");
        assert_eq!(t.chatfeed, vec![3000.0, 2000.0, 3200.0]);
        assert_eq!(t.peer, vec![5000.0, 5400.0, 1000.0]);
        assert_eq!((t.chatfeed_median, t.peer_median), (3000.0, 5000.0));
        assert!((t.ratio - 0.6).abs() < 1e-9);
        assert_eq!(t.ahead, "peer");
        let c = row(&rows, "throughput, 64 clients, cluster CPU µs/write");
        assert_eq!((c.chatfeed_median, c.peer_median), (420.0, 250.0));
        let a = row(&rows, "fan-out 500/s, every delivery arrived");
        assert_eq!((a.chatfeed_median, a.peer_median), (0.0, 1.0));
        assert_eq!(a.ahead, "peer");
        let table = table(&rows, "etcd");
        assert_eq!(table[0][2], "chatfeed runs");
        assert_eq!(table[0][5], "etcd median");
        let line = table.iter().find(|l| l[0] == t.figure).unwrap();
        assert_eq!(line[2], "3000 / 2000 / 3200");
        assert_eq!(line[6], "0.60×");
        assert_eq!(line[7], "etcd");
        let flags = table.iter().find(|l| l[0] == a.figure).unwrap();
        assert_eq!(flags[2], "yes / NO / yes");
    }

    /// A run without the peer's figures (it failed) compares nothing; one run prints values,
    /// not medians.
    #[test]
    fn one_run_and_missing_peer() {
        let mut r = side(1.0, 1.0, 1.0, 1.0, true);
        assert!(rows(std::slice::from_ref(&r)).is_empty());
        r["peer"] = Value::Null;
        assert!(rows(&[r]).is_empty());
        let rows = rows(&[round(
            side(6000.0, 40.0, 300.0, 20.0, true),
            side(3000.0, 20.0, 150.0, 10.0, true),
        )]);
        let t = table(&rows, "etcd");
        assert_eq!(
            t[0],
            vec![
                "figure",
                "better",
                "chatfeed",
                "etcd",
                "chatfeed / etcd",
                "ahead"
            ]
        );
    }
}
