//! `--compare N`: the TLS figures against the plaintext ones (issue 6: within 15 %). The bench
//! runs N times in each mode, alternated (TLS first) so that the machine's changing load falls on
//! both, each run on a fresh cluster and written as usual; then the median of each figure per
//! mode, how much worse TLS is, and whether that is within [`ALLOWED`].
//!
//! On a shared machine one run of a mode can differ from the next by more than the two modes
//! differ, so a comparison of single runs says little: hence the medians, and every run's value
//! in the JSON.
//!
//! The figures are read from the runs' JSON by pointer, so the same machinery serves
//! `versus` (chatfeed against a peer such as etcd, issue 19): [`series`] with
//! [`Figures::Peer`] gives each figure's values over both sets of runs.

use crate::stats::median;
use serde::Serialize;
use serde_json::Value;

/// How much worse a TLS figure may be than the plaintext one.
pub const ALLOWED: f64 = 0.15;

/// Whether a larger value of a figure is better (a rate) or worse (a latency, a size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// Which figures a comparison takes from each run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figures {
    /// TLS against plaintext (issue 6): the rates and latencies of every scenario.
    Modes,
    /// chatfeed against a peer (issue 19): everything the throughput and fan-out measure.
    Peer,
}

/// One figure of a run's JSON: its name and where it is.
struct Figure {
    name: String,
    better: Better,
    /// A yes/no figure (true: 1, false: 0).
    flag: bool,
    /// For a figure of one element of an array (a throughput run, a fan-out rate): the array's
    /// JSON pointer, the field naming the element and its value.
    element: Option<(&'static str, &'static str, u64)>,
    /// The figure's JSON pointer, in the element or in the run.
    pointer: &'static str,
}

impl Figure {
    fn value(&self, run: &Value) -> Option<f64> {
        let within = match self.element {
            None => run,
            Some((array, field, key)) => run
                .pointer(array)?
                .as_array()?
                .iter()
                .find(|e| e.get(field).and_then(Value::as_u64) == Some(key))?,
        };
        let v = within.pointer(self.pointer)?;
        v.as_f64()
            .or_else(|| v.as_bool().map(|b| if b { 1.0 } else { 0.0 }))
    }
}

/// One figure's values over two sets of runs (`a` and `b`: TLS and plaintext, or chatfeed and
/// a peer), each in run order.
#[derive(Clone, Debug)]
pub struct Series {
    pub figure: String,
    pub better: Better,
    /// A yes/no figure: values are 1 (yes) and 0 (no).
    pub flag: bool,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
}

/// One figure compared.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub figure: String,
    pub better: Better,
    pub tls: Vec<f64>,
    pub plaintext: Vec<f64>,
    pub tls_median: f64,
    pub plaintext_median: f64,
    /// How much worse the TLS median is, as a fraction of the plaintext one (negative: better).
    pub tls_worse_by: f64,
    pub within: bool,
}

/// What the figures of a throughput run and a fan-out rate are: (name, better, pointer in the
/// element, yes/no).
type ElementFigures = &'static [(&'static str, Better, &'static str, bool)];

/// The figures of `set` that a run's JSON has, in the order of the bench's table.
fn figures(run: &Value, set: Figures) -> Vec<Figure> {
    let keys = |array: &str, field: &str| -> Vec<u64> {
        run.pointer(array)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.get(field).and_then(Value::as_u64))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (throughput, fanout): (ElementFigures, ElementFigures) = match set {
        Figures::Modes => (
            &[
                ("posts/s", Better::Higher, "/posts_per_s", false),
                ("p99 ms", Better::Lower, "/latency/p99_ms", false),
            ],
            &[
                ("p50 ms", Better::Lower, "/delivery/p50_ms", false),
                ("p99 ms", Better::Lower, "/delivery/p99_ms", false),
                ("deliveries/s", Better::Higher, "/deliveries_per_s", false),
            ],
        ),
        Figures::Peer => (
            &[
                ("writes/s", Better::Higher, "/posts_per_s", false),
                ("p50 ms", Better::Lower, "/latency/p50_ms", false),
                ("p99 ms", Better::Lower, "/latency/p99_ms", false),
                ("max ms", Better::Lower, "/latency/max_ms", false),
                (
                    "cluster CPU µs/write",
                    Better::Lower,
                    "/cpu_us_per_post/cluster",
                    false,
                ),
            ],
            &[
                ("sent/s", Better::Higher, "/posts_per_s", false),
                ("delivery p50 ms", Better::Lower, "/delivery/p50_ms", false),
                ("delivery p99 ms", Better::Lower, "/delivery/p99_ms", false),
                ("delivery max ms", Better::Lower, "/delivery/max_ms", false),
                ("deliveries/s", Better::Higher, "/deliveries_per_s", false),
                (
                    "every delivery arrived",
                    Better::Higher,
                    "/all_arrived",
                    true,
                ),
                (
                    "machine busy %",
                    Better::Lower,
                    "/cpu/machine_busy_pct",
                    false,
                ),
                (
                    "cluster CPU µs/delivery",
                    Better::Lower,
                    "/cpu/us_per_unit/cluster",
                    false,
                ),
            ],
        ),
    };
    let mut f = Vec::new();
    let per_element = [
        (
            "/throughput",
            "clients",
            "throughput, {} clients",
            throughput,
        ),
        (
            "/fanout/rates",
            "target_posts_per_s",
            "fan-out {}/s",
            fanout,
        ),
    ];
    for (array, field, name, figs) in per_element {
        for key in keys(array, field) {
            for &(what, better, pointer, flag) in figs {
                f.push(Figure {
                    name: format!("{}, {what}", name.replace("{}", &key.to_string())),
                    better,
                    flag,
                    element: Some((array, field, key)),
                    pointer,
                });
            }
        }
    }
    if set == Figures::Modes {
        for (name, pointer) in [
            ("master fail-over, median ms", "/master_failover/median_ms"),
            ("master fail-over, max ms", "/master_failover/max_ms"),
            ("worker fail-over, p50 ms", "/worker_failover/resume/p50_ms"),
            ("worker fail-over, max ms", "/worker_failover/resume/max_ms"),
            ("idle stream, bytes", "/memory/bytes_per_stream"),
        ] {
            f.push(Figure {
                name: name.to_string(),
                better: Better::Lower,
                flag: false,
                element: None,
                pointer,
            });
        }
    }
    f.retain(|x| x.value(run).is_some());
    f
}

/// Every figure of `set` that the first run of `a` has, with its values in every run of `a`
/// and of `b` that has it; figures missing from all runs of either side are left out.
pub fn series(set: Figures, a: &[Value], b: &[Value]) -> Vec<Series> {
    let Some(first) = a.first() else {
        return Vec::new();
    };
    figures(first, set)
        .into_iter()
        .filter_map(|f| {
            let of =
                |runs: &[Value]| -> Vec<f64> { runs.iter().filter_map(|r| f.value(r)).collect() };
            let (va, vb) = (of(a), of(b));
            if va.is_empty() || vb.is_empty() {
                return None;
            }
            Some(Series {
                figure: f.name,
                better: f.better,
                flag: f.flag,
                a: va,
                b: vb,
            })
        })
        .collect()
}

/// How much worse `tls` is than `plaintext` for a figure where `better` values are better.
pub fn worse_by(better: Better, tls: f64, plaintext: f64) -> f64 {
    if plaintext == 0.0 {
        return 0.0;
    }
    match better {
        Better::Lower => (tls - plaintext) / plaintext,
        Better::Higher => (plaintext - tls) / plaintext,
    }
}

/// Every figure the first TLS run has, compared over all runs that have it.
pub fn compare(tls: &[Value], plaintext: &[Value]) -> Vec<Row> {
    series(Figures::Modes, tls, plaintext)
        .into_iter()
        .map(|s| {
            let (tm, pm) = (median(&s.a), median(&s.b));
            let worse = worse_by(s.better, tm, pm);
            Row {
                figure: s.figure,
                better: s.better,
                tls: s.a,
                plaintext: s.b,
                tls_median: tm,
                plaintext_median: pm,
                tls_worse_by: worse,
                within: worse <= ALLOWED,
            }
        })
        .collect()
}

/// A figure for a table: whole numbers from 100 on, one decimal below.
pub fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The comparison as table rows (header first).
pub fn table(rows: &[Row]) -> Vec<Vec<String>> {
    let runs = |v: &[f64]| v.iter().map(|x| fmt(*x)).collect::<Vec<_>>().join(" / ");
    let mut t = vec![vec![
        "figure".to_string(),
        "TLS runs".to_string(),
        "plaintext runs".to_string(),
        "TLS median".to_string(),
        "plaintext median".to_string(),
        "TLS worse by".to_string(),
        format!("within {:.0} %", ALLOWED * 100.0),
    ]];
    for r in rows {
        t.push(vec![
            r.figure.clone(),
            runs(&r.tls),
            runs(&r.plaintext),
            fmt(r.tls_median),
            fmt(r.plaintext_median),
            format!("{:+.1} %", r.tls_worse_by * 100.0),
            if r.within { "yes" } else { "NO" }.to_string(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(posts_64: f64, p99_64: f64, wf_max: f64, fanout_p50: f64) -> Value {
        json!({
            "throughput": [
                {"clients": 1, "posts_per_s": 300.0, "latency": {"p99_ms": 4.0}},
                {"clients": 64, "posts_per_s": posts_64, "latency": {"p99_ms": p99_64}},
            ],
            "fanout": {"rates": [{"target_posts_per_s": 500, "deliveries_per_s": 25000.0,
                "delivery": {"p50_ms": fanout_p50, "p99_ms": 2.0 * fanout_p50}}]},
            "master_failover": null,
            "worker_failover": {"resume": {"p50_ms": wf_max / 2.0, "max_ms": wf_max}},
            "memory": {"error": "failed"},
        })
    }

    fn row<'a>(rows: &'a [Row], name: &str) -> &'a Row {
        rows.iter()
            .find(|r| r.figure == name)
            .unwrap_or_else(|| panic!("no row {name:?} in {rows:?}"))
    }

    #[test]
    fn worse_is_the_direction_that_hurts() {
        assert!((worse_by(Better::Lower, 115.0, 100.0) - 0.15).abs() < 1e-9);
        assert!((worse_by(Better::Higher, 85.0, 100.0) - 0.15).abs() < 1e-9);
        assert!(worse_by(Better::Higher, 120.0, 100.0) < 0.0);
        assert!(worse_by(Better::Lower, 80.0, 100.0) < 0.0);
    }

    #[test]
    fn medians_per_mode_decide_each_figure() {
        let tls = [
            run(3000.0, 30.0, 1700.0, 31.0),
            run(3400.0, 31.0, 1900.0, 90.0),
            run(3300.0, 29.0, 1600.0, 33.0),
        ];
        let plain = [
            run(3500.0, 30.0, 1100.0, 17.0),
            run(3200.0, 33.0, 1000.0, 45.0),
            run(3600.0, 28.0, 1300.0, 16.0),
        ];
        let rows = compare(&tls, &plain);
        let t = row(&rows, "throughput, 64 clients, posts/s");
        assert_eq!((t.tls_median, t.plaintext_median), (3300.0, 3500.0));
        assert!(t.within, "{t:?}");
        let w = row(&rows, "worker fail-over, max ms");
        assert_eq!((w.tls_median, w.plaintext_median), (1700.0, 1100.0));
        assert!(!w.within, "{w:?}");
        assert_eq!(w.tls, vec![1700.0, 1900.0, 1600.0]);
        // One slow run of each mode does not decide it: the medians are 33 and 17.
        let f = row(&rows, "fan-out 500/s, p50 ms");
        assert_eq!((f.tls_median, f.plaintext_median), (33.0, 17.0));
        assert!(!f.within);
    }

    #[test]
    fn figures_a_run_lacks_are_left_out() {
        let rows = compare(&[run(1.0, 1.0, 1.0, 1.0)], &[run(1.0, 1.0, 1.0, 1.0)]);
        let names: Vec<&str> = rows.iter().map(|r| r.figure.as_str()).collect();
        assert!(
            !names.iter().any(|n| n.starts_with("master fail-over")),
            "{names:?}"
        );
        assert!(!names.contains(&"idle stream, bytes"), "{names:?}");
        assert!(
            names.contains(&"throughput, 1 clients, posts/s"),
            "{names:?}"
        );
        assert!(compare(&[], &[run(1.0, 1.0, 1.0, 1.0)]).is_empty());
        let mut full = run(1.0, 1.0, 1.0, 1.0);
        full["master_failover"] = json!({"median_ms": 400.0, "max_ms": 450.0});
        full["memory"] = json!({"bytes_per_stream": 32000.0});
        let rows = compare(std::slice::from_ref(&full), &[full.clone()]);
        assert_eq!(row(&rows, "master fail-over, max ms").tls_median, 450.0);
        assert_eq!(row(&rows, "idle stream, bytes").plaintext_median, 32000.0);
        assert_eq!(
            row(&rows, "fan-out 500/s, deliveries/s").tls_median,
            25000.0
        );
    }
}
