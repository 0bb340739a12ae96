//! The statistics behind canary verdicts: the Mann-Whitney U test with the Hodges-Lehmann shift
//! and its confidence interval (as Kayenta's judge uses), and Fisher's exact test for pass/fail
//! counts. Tested against values computed with SciPy 1.17 (`scipy.stats.mannwhitneyu`,
//! `scipy.stats.fisher_exact`).

use statrs::distribution::{ContinuousCDF, Normal};

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
    let z = normal().inverse_cdf(0.975);
    let k = (a * b / 2.0 - z * (a * b * (a + b + 1.0) / 12.0).sqrt()).floor();
    let k = if k < 0.0 { 0 } else { (k as usize).min(m - 1) };
    let ci = (diffs[k], diffs[m - 1 - k]);
    Some(MannWhitney {
        u,
        p_value,
        shift,
        ci,
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
}
