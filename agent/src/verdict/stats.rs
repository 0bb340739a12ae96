//! The statistics behind verdicts: the Mann-Whitney U test with the Hodges-Lehmann shift and its
//! confidence interval (as Kayenta's judge uses) and Fisher's exact test for pass/fail counts;
//! for the margins of error that decide whether more runs are needed, the Harrell-Davis quantile
//! estimate with its jackknife standard error, Wilson's interval of a proportion and Newcombe's
//! interval of the difference of two. Tested against values computed with SciPy 1.17
//! (`scipy.stats.mannwhitneyu`, `scipy.stats.fisher_exact`, `scipy.stats.mstats.hdquantiles`,
//! `hdquantiles_sd`) and statsmodels 0.14 (`proportion_confint`, `confint_proportions_2indep`).

use statrs::distribution::{Beta, ContinuousCDF, Normal};

/// z of a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Result of a two-sided Mann-Whitney U test of `x` against `y`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// U statistic of `x` (SciPy's `statistic`).
    pub u: f64,
    /// Two-sided p-value, normal approximation with tie and continuity correction.
    pub p_value: f64,
    /// Hodges-Lehmann estimate of the shift of `y` relative to `x` (median of `y_j - x_i`).
    pub shift: f64,
    /// 95% confidence interval of the shift.
    pub ci: (f64, f64),
    /// 99.9% confidence interval of the shift: what a look that may be repeated relies on.
    pub ci_999: (f64, f64),
}

fn normal() -> Normal {
    Normal::standard()
}

/// Two-sided Mann-Whitney U test; `None` when a sample is empty.
pub fn mann_whitney(x: &[f64], y: &[f64]) -> Option<MannWhitney> {
    let (n1, n2) = (x.len(), y.len());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    // Ranks over the pooled sample, ties get their average rank.
    let mut pooled: Vec<(f64, usize)> = x
        .iter()
        .map(|v| (*v, 0))
        .chain(y.iter().map(|v| (*v, 1)))
        .collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = pooled.len();
    let mut rank_sum_x = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && pooled[j + 1].0 == pooled[i].0 {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        let t = (j - i + 1) as f64;
        tie_term += t * t * t - t;
        rank_sum_x += pooled[i..=j].iter().filter(|p| p.1 == 0).count() as f64 * avg_rank;
        i = j + 1;
    }
    let (a, b) = (n1 as f64, n2 as f64);
    let u = rank_sum_x - a * (a + 1.0) / 2.0;
    let mean = a * b / 2.0;
    let nn = a + b;
    let variance = a * b / 12.0 * ((nn + 1.0) - tie_term / (nn * (nn - 1.0)));
    let p_value = if variance <= 0.0 {
        1.0
    } else {
        let z = ((u - mean).abs() - 0.5).max(0.0) / variance.sqrt();
        (2.0 * (1.0 - normal().cdf(z))).min(1.0)
    };
    let mut diffs: Vec<f64> = Vec::with_capacity(n1 * n2);
    for xi in x {
        for yj in y {
            diffs.push(yj - xi);
        }
    }
    diffs.sort_by(f64::total_cmp);
    let m = diffs.len();
    let shift = if m % 2 == 1 {
        diffs[m / 2]
    } else {
        (diffs[m / 2 - 1] + diffs[m / 2]) / 2.0
    };
    // The distribution-free interval: the k-th smallest and largest differences.
    let interval = |confidence: f64| {
        let z = normal().inverse_cdf(0.5 + confidence / 2.0);
        let k = (a * b / 2.0 - z * (a * b * (a + b + 1.0) / 12.0).sqrt()).floor();
        let k = if k < 0.0 { 0 } else { (k as usize).min(m - 1) };
        (diffs[k], diffs[m - 1 - k])
    };
    Some(MannWhitney {
        u,
        p_value,
        shift,
        ci: interval(0.95),
        ci_999: interval(0.999),
    })
}

/// p-values of Fisher's exact test on the 2×2 table `[[a, b], [c, d]]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FisherExact {
    /// Two-sided (tables at most as likely as the observed one).
    pub two_sided: f64,
    /// One-sided: the odds ratio is greater than 1 (`a` large).
    pub greater: f64,
    /// One-sided: the odds ratio is less than 1 (`a` small).
    pub less: f64,
}

/// Fisher's exact test for `[[a, b], [c, d]]`.
pub fn fisher_exact(a: u64, b: u64, c: u64, d: u64) -> FisherExact {
    let row1 = a + b;
    let col1 = a + c;
    let total = a + b + c + d;
    let lo = col1.saturating_sub(total - row1);
    let hi = row1.min(col1);
    // Hypergeometric probability of the table whose top-left cell is k, in log space.
    let ln_p =
        |k: u64| ln_choose(col1, k) + ln_choose(total - col1, row1 - k) - ln_choose(total, row1);
    let observed = ln_p(a);
    let mut two_sided = 0.0;
    let mut greater = 0.0;
    let mut less = 0.0;
    for k in lo..=hi {
        let lp = ln_p(k);
        let p = lp.exp();
        // Relative tolerance as in SciPy, so tables equal to the observed one count despite rounding.
        if lp <= observed + 1e-7 {
            two_sided += p;
        }
        if k >= a {
            greater += p;
        }
        if k <= a {
            less += p;
        }
    }
    FisherExact {
        two_sided: two_sided.min(1.0),
        greater: greater.min(1.0),
        less: less.min(1.0),
    }
}

fn ln_choose(n: u64, k: u64) -> f64 {
    if k > n {
        return f64::NEG_INFINITY;
    }
    ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k)
}

fn ln_factorial(n: u64) -> f64 {
    statrs::function::gamma::ln_gamma(n as f64 + 1.0)
}

/// Harrell-Davis estimate of the `q` quantile of sorted samples: a Beta-weighted mean of every
/// order statistic, far less jumpy than the nearest rank when there are few samples (the p95 of
/// 20 runs by nearest rank is the 19th, read 10% low on average for uniform jitter).
pub fn harrell_davis(sorted: &[f64], q: f64) -> Option<f64> {
    match sorted.len() {
        0 => None,
        1 => Some(sorted[0]),
        n => Some(
            harrell_davis_weights(n, q)
                .iter()
                .zip(sorted)
                .map(|(w, x)| w * x)
                .sum(),
        ),
    }
}

/// Jackknife standard error of [`harrell_davis`] (SciPy's `hdquantiles_sd`); 0 below 2 samples.
pub fn harrell_davis_se(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n < 2 {
        return 0.0;
    }
    // The estimate without the i-th sample, for every i: weights for n-1 samples, skipping i.
    let w = harrell_davis_weights(n - 1, q);
    let mut left = vec![0.0; n];
    for i in 1..n {
        left[i] = left[i - 1] + w[i - 1] * sorted[i - 1];
    }
    let mut leave_one_out = left;
    let mut right = 0.0;
    for i in (0..n - 1).rev() {
        right += w[i] * sorted[i + 1];
        leave_one_out[i] += right;
    }
    let mean = leave_one_out.iter().sum::<f64>() / n as f64;
    let variance = leave_one_out
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum::<f64>()
        / n as f64;
    (variance * (n - 1) as f64).sqrt()
}

fn harrell_davis_weights(n: usize, q: f64) -> Vec<f64> {
    let nf = n as f64;
    let Ok(beta) = Beta::new(q * (nf + 1.0), (1.0 - q) * (nf + 1.0)) else {
        return vec![1.0 / nf; n];
    };
    let mut previous = 0.0;
    (1..=n)
        .map(|i| {
            let c = if i == n { 1.0 } else { beta.cdf(i as f64 / nf) };
            let w = c - previous;
            previous = c;
            w
        })
        .collect()
}

/// Wilson score interval of the proportion `x` of `n` (`z`: 1.96 for 95%); `(0, 1)` when `n = 0`.
pub fn wilson(x: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (x, n) = (x as f64, n as f64);
    let p = x / n;
    let z2 = z * z;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Newcombe's hybrid score interval (his method 10) of `x1/n1 − x2/n2`, built from the two Wilson
/// intervals: sound at 0 failures of 20, where the normal approximation says ±0.
pub fn newcombe_difference(x1: u64, n1: u64, x2: u64, n2: u64, z: f64) -> (f64, f64) {
    let p = |x: u64, n: u64| if n == 0 { 0.0 } else { x as f64 / n as f64 };
    let (p1, p2) = (p(x1, n1), p(x2, n2));
    let (l1, u1) = wilson(x1, n1, z);
    let (l2, u2) = wilson(x2, n2, z);
    let d = p1 - p2;
    (
        d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt(),
        d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1e-12)
    }

    // Reference values: scipy.stats.mannwhitneyu(x, y, alternative="two-sided",
    // method="asymptotic", use_continuity=True); shift and CI: Hodges-Lehmann median of
    // y_j - x_i and the normal-approximation order statistics (as R's wilcox.test conf.int).
    #[test]
    fn mann_whitney_matches_scipy() {
        let x = [12.1, 14.3, 11.8, 13.5, 12.9, 15.2, 13.1, 12.4, 14.8, 13.9];
        let y = [15.6, 17.2, 16.1, 18.4, 15.9, 16.8, 17.5, 16.3, 19.1, 16.6];
        let r = mann_whitney(&x, &y).expect("samples");
        assert_eq!(r.u, 0.0);
        assert!(
            close(r.p_value, 0.000_182_671_791_109_550_02, 1e-9),
            "{r:?}"
        );
        assert!(close(r.shift, 3.55, 1e-9));
        assert!(
            close(r.ci.0, 2.4, 1e-9) && close(r.ci.1, 4.5, 1e-9),
            "{r:?}"
        );
        // The same order statistics at 99.9% (k = 6 instead of 24).
        assert!(
            close(r.ci_999.0, 1.3, 1e-9) && close(r.ci_999.1, 6.0, 1e-9),
            "{r:?}"
        );
    }

    #[test]
    fn mann_whitney_with_ties_matches_scipy() {
        let x = [1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 5.0];
        let y = [2.0, 3.0, 3.0, 4.0, 4.0, 5.0, 5.0, 6.0, 7.0];
        let r = mann_whitney(&x, &y).expect("samples");
        assert_eq!(r.u, 17.0);
        assert!(close(r.p_value, 0.069_350_454_381_817_22, 1e-9), "{r:?}");
        assert_eq!(r.shift, 1.0);
        assert_eq!(r.ci, (0.0, 3.0));
    }

    #[test]
    fn mann_whitney_without_a_shift_matches_scipy() {
        let x: Vec<f64> = (10..20).map(f64::from).collect();
        let y: Vec<f64> = x.iter().map(|v| v + 0.5).collect();
        let r = mann_whitney(&x, &y).expect("samples");
        assert_eq!(r.u, 45.0);
        assert!(close(r.p_value, 0.733_729_995_696_247_2, 1e-9), "{r:?}");
        assert_eq!(r.shift, 0.5);
        assert_eq!(r.ci, (-2.5, 3.5));
        assert!(mann_whitney(&[], &[1.0]).is_none());
    }

    // Reference values: scipy.stats.fisher_exact(table, alternative=...).pvalue
    #[test]
    fn fisher_exact_matches_scipy() {
        let cases: [([u64; 4], f64, f64, f64); 5] = [
            (
                [8, 2, 1, 5],
                0.034_965_034_965_034_975,
                0.024_475_524_475_524_483,
                0.999_125_874_125_874_2,
            ),
            (
                [20, 0, 15, 5],
                0.047_124_047_124_047_136,
                0.023_562_023_562_023_564,
                1.0,
            ),
            ([100, 0, 99, 1], 1.0, 0.5, 1.0),
            (
                [3, 7, 9, 1],
                0.019_766_611_097_880_443,
                0.999_642_772_088_592_5,
                0.009_883_305_548_940_223,
            ),
            (
                [50, 50, 50, 50],
                1.0,
                0.556_207_787_852_021_2,
                0.556_207_787_852_021_2,
            ),
        ];
        for ([a, b, c, d], two, greater, less) in cases {
            let r = fisher_exact(a, b, c, d);
            assert!(close(r.two_sided, two, 1e-9), "{a} {b} {c} {d}: {r:?}");
            assert!(close(r.greater, greater, 1e-9), "{a} {b} {c} {d}: {r:?}");
            assert!(close(r.less, less, 1e-9), "{a} {b} {c} {d}: {r:?}");
        }
    }

    const SKEWED: [f64; 12] = [
        0.101, 0.104, 0.098, 0.131, 0.099, 0.103, 0.102, 0.100, 0.250, 0.097, 0.105, 0.111,
    ];

    fn sorted(v: &[f64]) -> Vec<f64> {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v
    }

    // Reference values: scipy.stats.mstats.hdquantiles(x, [q]) and hdquantiles_sd(x, [q]).
    #[test]
    fn harrell_davis_matches_scipy() {
        let x = sorted(&SKEWED);
        let hd = |q| harrell_davis(&x, q).expect("samples");
        assert!(
            close(hd(0.95), 0.224_744_828_581_026_76, 1e-9),
            "{}",
            hd(0.95)
        );
        assert!(
            close(hd(0.99), 0.246_518_566_528_246_3, 1e-9),
            "{}",
            hd(0.99)
        );
        assert!(close(hd(0.5), 0.102_714_066_373_281_9, 1e-9), "{}", hd(0.5));
        let se = harrell_davis_se(&x, 0.95);
        assert!(close(se, 0.091_780_817_810_528_55, 1e-9), "{se}");
        let y: Vec<f64> = (0..20).map(|i| 40.0 + f64::from(i) * 1.7).collect();
        let hd95 = harrell_davis(&y, 0.95).expect("samples");
        assert!(close(hd95, 71.325_603_731_441_97, 1e-9), "{hd95}");
        let se = harrell_davis_se(&y, 0.95);
        assert!(close(se, 1.679_148_895_687_950_3, 1e-9), "{se}");
        assert_eq!(harrell_davis(&[5.0], 0.95), Some(5.0));
        assert_eq!(harrell_davis_se(&[5.0], 0.95), 0.0);
        assert_eq!(harrell_davis(&[], 0.95), None);
    }

    // Reference values: statsmodels proportion_confint(x, n, alpha=0.05, method="wilson").
    #[test]
    fn wilson_matches_statsmodels() {
        let cases: [(u64, u64, f64, f64); 4] = [
            (0, 20, 0.0, 0.161_125_158_052_819_4),
            (3, 20, 0.052_368_745_896_216_595, 0.360_418_864_740_756_96),
            (20, 20, 0.838_874_841_947_180_4, 1.0),
            (7, 35, 0.100_424_464_737_986_27, 0.358_916_130_655_656_23),
        ];
        for (x, n, lo, hi) in cases {
            let (l, h) = wilson(x, n, Z95);
            assert!(close(l, lo, 1e-9) && close(h, hi, 1e-9), "{x}/{n}: {l} {h}");
        }
        assert_eq!(wilson(0, 0, Z95), (0.0, 1.0));
    }

    // Reference values: statsmodels confint_proportions_2indep(x1, n1, x2, n2,
    // method="newcomb", compare="diff", alpha=0.05).
    #[test]
    fn newcombe_matches_statsmodels() {
        let cases: [([u64; 4], f64, f64); 4] = [
            (
                [3, 20, 0, 40],
                0.018_815_371_425_407_18,
                0.360_418_864_740_756_96,
            ),
            (
                [0, 35, 0, 100],
                -0.036_993_498_206_985_69,
                0.098_900_992_324_404_08,
            ),
            (
                [4, 50, 1, 60],
                -0.023_354_899_448_731_55,
                0.172_580_562_392_429_53,
            ),
            ([20, 20, 0, 30], 0.802_904_573_905_394_5, 1.0),
        ];
        for ([x1, n1, x2, n2], lo, hi) in cases {
            let (l, h) = newcombe_difference(x1, n1, x2, n2, Z95);
            assert!(
                close(l, lo, 1e-9) && close(h, hi, 1e-9),
                "{x1}/{n1} - {x2}/{n2}: {l} {h}"
            );
        }
    }
}
