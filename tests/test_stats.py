"""kdlib.stats against scipy: the t quantile, the paired and Welch intervals, the bootstrap."""

import numpy as np
import pytest

from kdlib.stats import mean_interval, paired_difference, t_quantile, unpaired_difference

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [1, 2, 3, 7, 15, 2.5, 40.3, 300])
@pytest.mark.parametrize("q", [0.6, 0.9, 0.975, 0.995, 0.025])
def test_t_quantile_matches_scipy(q, df):
    assert t_quantile(q, df) == pytest.approx(scipy_stats.t.ppf(q, df), rel=1e-8, abs=1e-9)


def _pairs(n=8, effect=0.04, seed=0):
    rng = np.random.default_rng(seed)
    shared = rng.normal(0.9, 0.03, n)  # the seed's luck, shared by both methods
    return shared + effect + rng.normal(0, 0.005, n), shared + rng.normal(0, 0.005, n)


def test_paired_interval_matches_scipy():
    a, b = _pairs()
    c = paired_difference(a, b, ("KD", "labels only"))
    d = (a - b) * 100
    lo, hi = scipy_stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy_stats.sem(d))
    assert c.estimate == pytest.approx(d.mean())
    assert c.ci95 == pytest.approx((lo, hi), rel=1e-9)
    assert c.n_seeds == 8 and c.sd == pytest.approx(d.std(ddof=1))
    # the interval excludes 0 exactly when scipy's paired t-test rejects at 5%
    assert c.excludes_zero == (scipy_stats.ttest_rel(a, b).pvalue < 0.05)


def test_welch_interval_matches_scipy_and_is_wider_than_the_paired_one():
    a, b = _pairs(effect=0.015)
    c = unpaired_difference(a, b, ("KD", "labels only"))
    res = scipy_stats.ttest_ind(a * 100, b * 100, equal_var=False)
    lo, hi = res.confidence_interval(0.95)
    assert c.ci95 == pytest.approx((lo, hi), rel=1e-8)
    paired = paired_difference(a, b)
    assert paired.ci95[1] - paired.ci95[0] < (c.ci95[1] - c.ci95[0]) / 3
    assert paired.excludes_zero and not c.excludes_zero  # the shared luck hides the effect


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap():
    a, b = _pairs(n=12)
    c = paired_difference(a, b, method="bootstrap", n_resamples=20_000, seed=1)
    d = (a - b) * 100
    ref = scipy_stats.bootstrap(
        (d,), np.mean, method="percentile", n_resamples=20_000, random_state=2
    ).confidence_interval
    width = ref.high - ref.low
    assert c.ci95[0] == pytest.approx(ref.low, abs=0.05 * width)
    assert c.ci95[1] == pytest.approx(ref.high, abs=0.05 * width)


def test_verdicts_in_words():
    a, b = _pairs(effect=0.046)
    text = paired_difference(a, b, ("KD", "labels only")).verdict()
    assert text.startswith("KD beats labels only by 4.") and text.endswith("8 seeds")
    assert "below" in paired_difference(b, a, ("X", "Y")).verdict()
    rng = np.random.default_rng(3)
    x = rng.normal(0.9, 0.01, 8)
    same = paired_difference(x, x + rng.normal(0, 0.01, 8) * 0.01, ("A", "B"))
    assert same.verdict().startswith("no difference detected between A and B: ")


def test_holds_follows_the_interval():
    c = paired_difference([0.95, 0.96, 0.97], [0.90, 0.92, 0.91])
    assert c.holds("greater") and not c.holds("less") and not c.holds("no-difference")
    assert c.holds({"above": 1.0}) and not c.holds({"above": 10.0})
    assert mean_interval([0.01, 0.02, 0.0]).holds({"below": 5})
    assert c.holds({"within": 10.0}) and not c.holds({"within": 5.0})
    with pytest.raises(ValueError, match="expected must be"):
        c.holds("bigger")


@pytest.mark.parametrize(
    "a, b, match",
    [
        ([1.0], [0.5], "at least 2 seeds"),
        ([1, 2], [1], "one value per seed"),
        ([1, float("nan")], [1, 2], "NaN"),
    ],
)
def test_bad_input_is_refused_by_name(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_difference(a, b)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method must be"):
        paired_difference([1, 2], [0, 1], method="z")
