//! Latency statistics: nearest-rank percentiles over samples in milliseconds, and the median of
//! several runs' figures.

use serde::Serialize;

/// A latency distribution, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The nearest-rank `q`-quantile (0 < q <= 1) of `sorted` (ascending); NaN when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Latency {
    /// The distribution of `samples` (ms, any order).
    pub fn of(mut samples: Vec<f64>) -> Latency {
        samples.retain(|x| !x.is_nan());
        samples.sort_by(f64::total_cmp);
        Latency {
            count: samples.len(),
            p50_ms: percentile(&samples, 0.5),
            p99_ms: percentile(&samples, 0.99),
            max_ms: samples.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest rank: the p-quantile of 1..=100 is p·100, and p50 of an even count is the lower
    /// middle value (a sample that was observed, never an interpolation).
    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[1.0, 2.0], 0.5), 1.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    /// `Latency::of` sorts its samples itself and ignores NaN.
    #[test]
    fn latency_of_unsorted_samples() {
        let l = Latency::of(vec![5.0, 1.0, f64::NAN, 3.0, 2.0, 4.0]);
        assert_eq!(l.count, 5);
        assert_eq!(l.p50_ms, 3.0);
        assert_eq!(l.p99_ms, 5.0);
        assert_eq!(l.max_ms, 5.0);
        assert!(Latency::of(vec![]).max_ms.is_nan());
    }

    /// The median of runs: the middle one, or the mean of the two middle ones.
    #[test]
    fn median_of_runs() {
        assert_eq!(median(&[300.0, 100.0, 200.0]), 200.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
