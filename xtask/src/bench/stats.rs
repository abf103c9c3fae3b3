//! The bench's statistics: paired per-round ratios against the baseline, the 95% interval of their mean (Student's
//! t), and goals judged only when the whole interval is on one side.

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One configuration against the baseline on one figure.
pub struct Ratios {
    pub of_means: f64,
    pub median: f64,
    /// The lowest and highest of the rounds' ratios: how far a single round can stray on this machine.
    pub lowest: f64,
    pub highest: f64,
    /// 95% confidence interval of the mean of the rounds' ratios (Student's t; the rounds are paired samples).
    pub interval: (f64, f64),
}

/// Two-sided 95% quantile of Student's t for `df` degrees of freedom (the normal's 1.96 past 30).
pub fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        d if d <= T.len() => T[d - 1],
        _ => 1.96,
    }
}

/// The mean of `v` (0 when empty).
pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// 95% confidence interval of the mean of `v`: unbounded with fewer than two samples.
pub fn interval95(v: &[f64]) -> (f64, f64) {
    let n = v.len();
    let mean = mean(v);
    if n < 2 {
        return (f64::NEG_INFINITY, f64::INFINITY);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = t95(n - 1) * (var / n as f64).sqrt();
    (mean - half, mean + half)
}

/// A goal on a ratio.
#[derive(Clone, Copy)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    /// Met when the whole interval is on the goal's side, not met when the whole interval is past it; otherwise this
    /// run cannot tell (its rounds stray too far for the step asked about).
    pub fn judge(self, (lo, hi): (f64, f64)) -> &'static str {
        let (inside, outside) = match self {
            Goal::AtLeast(g) => (lo >= g, hi < g),
            Goal::AtMost(g) => (hi <= g, lo > g),
        };
        match (inside, outside) {
            (true, _) => "met",
            (_, true) => "not met",
            _ => "not resolved by this run",
        }
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Goal::AtLeast(g) => write!(f, ">= {g:.2}"),
            Goal::AtMost(g) => write!(f, "<= {g:.2}"),
        }
    }
}

/// `runs` against `base`, round by round, on the figure `f`.
pub fn ratios<T>(runs: &[&T], base: &[&T], f: impl Fn(&T) -> f64) -> Ratios {
    let mean_of = |v: &[&T]| mean(&v.iter().map(|w| f(w)).collect::<Vec<_>>());
    let per_round: Vec<f64> = runs.iter().zip(base).map(|(r, b)| f(r) / f(b)).collect();
    Ratios {
        of_means: mean_of(runs) / mean_of(base),
        lowest: per_round.iter().copied().fold(f64::INFINITY, f64::min),
        highest: per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        interval: interval95(&per_round),
        median: median(per_round),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_of_the_mean_uses_students_t() {
        // mean 3, sample sd sqrt(2.5), standard error sqrt(0.5), t(4) = 2.776: half width 1.963.
        let (lo, hi) = interval95(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(
            (lo - 1.037).abs() < 1e-3 && (hi - 4.963).abs() < 1e-3,
            "got {lo} to {hi}"
        );
        // Identical rounds: no spread, the interval is the value itself.
        assert_eq!(interval95(&[0.9, 0.9, 0.9]), (0.9, 0.9));
        // One round says nothing about the spread.
        assert_eq!(interval95(&[0.9]), (f64::NEG_INFINITY, f64::INFINITY));
        assert_eq!(t95(6), 2.447);
        assert_eq!(t95(100), 1.96);
    }

    #[test]
    fn a_goal_is_decided_only_when_the_whole_interval_is_on_one_side() {
        let at_least = Goal::AtLeast(0.97);
        assert_eq!(at_least.judge((0.975, 0.99)), "met");
        assert_eq!(at_least.judge((0.88, 0.95)), "not met");
        assert_eq!(at_least.judge((0.95, 0.99)), "not resolved by this run");
        assert_eq!(
            at_least.judge((f64::NEG_INFINITY, f64::INFINITY)),
            "not resolved by this run"
        );
        let at_most = Goal::AtMost(1.05);
        assert_eq!(at_most.judge((0.98, 1.04)), "met");
        assert_eq!(at_most.judge((1.06, 1.20)), "not met");
        assert_eq!(at_most.judge((1.00, 1.10)), "not resolved by this run");
        assert_eq!(format!("{at_least} {at_most}"), ">= 0.97 <= 1.05");
    }
}
