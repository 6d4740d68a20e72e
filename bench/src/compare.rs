//! `--compare N`: the TLS figures against the plaintext ones (issue 6: within 15 %). The bench
//! runs N times in each mode, alternated (TLS first) so that the machine's changing load falls on
//! both, each run on a fresh cluster and written as usual; then the median of each figure per
//! mode, how much worse TLS is, and whether that is within [`ALLOWED`].
//!
//! On a shared machine one run of a mode can differ from the next by more than the two modes
//! differ, so a comparison of single runs says little: hence the medians, and every run's value
//! in the JSON.

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

/// One figure of a run's JSON: its name and where it is.
struct Figure {
    name: String,
    better: Better,
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
        within.pointer(self.pointer)?.as_f64()
    }
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

/// The figures a run's JSON has, in the order of the bench's table.
fn figures(run: &Value) -> Vec<Figure> {
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
    let mut f = Vec::new();
    let per_element = [
        (
            "/throughput",
            "clients",
            "throughput, {} clients",
            &[
                ("posts/s", Better::Higher, "/posts_per_s"),
                ("p99 ms", Better::Lower, "/latency/p99_ms"),
            ][..],
        ),
        (
            "/fanout/rates",
            "target_posts_per_s",
            "fan-out {}/s",
            &[
                ("p50 ms", Better::Lower, "/delivery/p50_ms"),
                ("p99 ms", Better::Lower, "/delivery/p99_ms"),
                ("deliveries/s", Better::Higher, "/deliveries_per_s"),
            ][..],
        ),
    ];
    for (array, field, name, figs) in per_element {
        for key in keys(array, field) {
            for &(what, better, pointer) in figs {
                f.push(Figure {
                    name: format!("{}, {what}", name.replace("{}", &key.to_string())),
                    better,
                    element: Some((array, field, key)),
                    pointer,
                });
            }
        }
    }
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
            element: None,
            pointer,
        });
    }
    f.retain(|x| x.value(run).is_some());
    f
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
    let Some(first) = tls.first() else {
        return Vec::new();
    };
    figures(first)
        .into_iter()
        .filter_map(|f| {
            let of =
                |runs: &[Value]| -> Vec<f64> { runs.iter().filter_map(|r| f.value(r)).collect() };
            let (t, p) = (of(tls), of(plaintext));
            if t.is_empty() || p.is_empty() {
                return None;
            }
            let (tm, pm) = (median(&t), median(&p));
            let worse = worse_by(f.better, tm, pm);
            Some(Row {
                figure: f.name,
                better: f.better,
                tls: t,
                plaintext: p,
                tls_median: tm,
                plaintext_median: pm,
                tls_worse_by: worse,
                within: worse <= ALLOWED,
            })
        })
        .collect()
}

fn fmt(v: f64) -> String {
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
