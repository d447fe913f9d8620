//! The unbiased estimator of pass@k (Chen et al. 2021, "Evaluating Large Language
//! Models Trained on Code", eq. 1): with n samples of which c pass, the chance that
//! at least one of k drawn without replacement passes, 1 − C(n−c, k) / C(n, k),
//! computed as a product so large n does not overflow.

/// pass@k of one problem with `n` samples of which `correct` passed; `k` ≤ `n`.
pub fn pass_at_k(n: u64, correct: u64, k: u64) -> f64 {
    assert!(
        k >= 1 && k <= n && correct <= n,
        "pass@{k} of {correct}/{n}"
    );
    if n - correct < k {
        return 1.0;
    }
    1.0 - (n - correct + 1..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product::<f64>()
}

/// The ks worth reporting for `n` samples: 1, 10 and 100 where they fit.
pub fn ks_for(n: u64) -> Vec<u64> {
    [1, 10, 100].into_iter().filter(|&k| k <= n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binomial(n: u64, k: u64) -> f64 {
        (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
    }

    #[test]
    fn matches_the_closed_form() {
        for (n, c, k) in [
            (10, 3, 1),
            (10, 3, 5),
            (20, 1, 10),
            (200, 17, 100),
            (5, 0, 1),
        ] {
            let exact = 1.0 - binomial(n - c, k) / binomial(n, k);
            let got = pass_at_k(n, c, k);
            assert!(
                (got - exact).abs() < 1e-9,
                "n={n} c={c} k={k}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn pass_at_one_is_the_share_that_passed() {
        assert_eq!(pass_at_k(4, 1, 1), 0.25);
        assert_eq!(pass_at_k(1, 1, 1), 1.0);
        assert_eq!(pass_at_k(1, 0, 1), 0.0);
        // Fewer failures than k: every draw of k holds a pass.
        assert_eq!(pass_at_k(10, 8, 3), 1.0);
        assert_eq!(ks_for(1), [1]);
        assert_eq!(ks_for(20), [1, 10]);
    }
}
