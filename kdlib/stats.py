"""Comparing two methods over seeds: the paired difference and its confidence interval.

When two methods are run on the same seeds (same data, same batches, same initialisation of
the student; only the method differs, see :mod:`kdlib.population`), the question "is A better
than B?" is a question about the *differences* ``d_s = a_s - b_s``, one per seed. Seed-to-seed
luck that moves both methods together (a good initialisation, say) cancels in ``d_s``; what is
left is the effect of the method plus the noise that is not shared. The 95% t interval of the
mean difference is::

    d_bar ± t_{0.975, n-1} * sd(d) / sqrt(n)          (sd with ddof = 1)

It excludes 0 when the data say the sign of the effect; it includes 0 when they cannot ("no
difference detected", which is not the same as "no difference"). :func:`paired_difference`
computes it (``method="bootstrap"``: the percentile bootstrap of the mean difference instead,
which assumes no normality), :meth:`Comparison.verdict` says it in words, and
:func:`unpaired_difference` is Welch's interval, which ignores the pairing: it is what the
comparison would give if the two methods had been run on unrelated seeds, and it is wider
whenever the two methods' results go up and down together over the seeds.

The t quantile is computed here (regularised incomplete beta function, bisection) so that kdlib
needs no statistics package; ``tests/test_stats.py`` checks it against scipy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "Comparison",
    "paired_difference",
    "unpaired_difference",
    "mean_interval",
    "t_quantile",
]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The ``q``-quantile of Student's t with ``df > 0`` degrees of freedom (bisection on the
    CDF to 1e-12), e.g. ``t_quantile(0.975, 7) = 2.3646``."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie in (0, 1), got {q!r}")
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df!r}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


@dataclass
class Comparison:
    """A difference between two methods (or one quantity) over seeds, with its interval.

    ``estimate`` and ``ci95`` are in the unit of the data times ``scale`` (accuracies given as
    fractions with ``scale=100`` are in points); ``n_seeds`` pairs; ``sd`` the standard
    deviation of the per-seed differences (same unit); ``method`` "t", "bootstrap" or "welch";
    ``a`` and ``b`` name the methods (``b`` is ``None`` for a single quantity); ``over`` names
    what the pairs are ("seeds"; "simulated experiments" in a simulation).
    """

    a: str
    b: str | None
    estimate: float
    ci95: tuple[float, float]
    n_seeds: int
    sd: float
    method: str
    unit: str = "points"
    over: str = "seeds"

    @property
    def excludes_zero(self) -> bool:
        return self.ci95[0] > 0 or self.ci95[1] < 0

    def _interval(self) -> str:
        return f"[{self.ci95[0]:+.1f}, {self.ci95[1]:+.1f}]"

    def verdict(self) -> str:
        """The comparison in words, e.g. ``"KD beats labels only by 4.6 points [+3.9, +5.3],
        8 seeds"`` or ``"no difference detected between KD and labels only: +0.2 points
        [-0.5, +0.9], 8 seeds"``."""
        seeds = f"{self.n_seeds} {self.over}"
        unit = f" {self.unit}" if self.unit else ""
        if self.b is None:
            return f"{self.a}: {self.estimate:.1f}{unit} {self._interval()}, {seeds}"
        if self.ci95[0] > 0:
            return (
                f"{self.a} beats {self.b} by {self.estimate:.1f}{unit} {self._interval()}, {seeds}"
            )
        if self.ci95[1] < 0:
            return (
                f"{self.a} is below {self.b} by {-self.estimate:.1f}{unit} "
                f"{self._interval()}, {seeds}"
            )
        return (
            f"no difference detected between {self.a} and {self.b}: {self.estimate:+.1f}{unit} "
            f"{self._interval()}, {seeds}"
        )

    def holds(self, expected) -> bool:
        """Whether the interval supports ``expected``: ``"greater"`` (it lies above 0),
        ``"less"`` (below 0), ``"no-difference"`` (it contains 0), ``{"above": x}`` (above x),
        ``{"below": x}`` (below x), ``{"within": x}`` (inside (-x, x): "at most x either way")."""
        lo, hi = self.ci95
        if expected == "greater":
            return lo > 0
        if expected == "less":
            return hi < 0
        if expected == "no-difference":
            return lo <= 0 <= hi
        if isinstance(expected, dict) and len(expected) == 1:
            ((kind, bound),) = expected.items()
            if kind == "above":
                return lo > bound
            if kind == "below":
                return hi < bound
            if kind == "within":
                return -bound < lo and hi < bound
        raise ValueError(
            f"expected must be 'greater', 'less', 'no-difference', {{'above': x}}, "
            f"{{'below': x}} or {{'within': x}}, got {expected!r}"
        )

    def __str__(self) -> str:
        return self.verdict()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        return d


def _values(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of numbers, got {x!r}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf: {arr.tolist()}")
    return arr


def _check_n(n: int, name: str) -> None:
    if n < 2:
        raise ValueError(
            f"{name} needs at least 2 seeds for an interval (a spread from one value does not "
            f"exist), got {n}"
        )


def _t_interval(d: np.ndarray, confidence: float) -> tuple[float, float, float]:
    n = len(d)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _bootstrap(d: np.ndarray, confidence: float, n_resamples: int, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_resamples, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return float(d.mean()), float(lo), float(hi)


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    names: tuple[str, str] = ("A", "B"),
    *,
    scale: float = 100.0,
    unit: str = "points",
    method: str = "t",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    over: str = "seeds",
) -> Comparison:
    """The mean of ``a[s] - b[s]`` over the seeds ``s`` and its confidence interval.

    Args:
        a, b: one value per seed, the same seeds in the same order (lists, arrays, tensors).
        names: the two methods' names, for the verdict.
        scale, unit: the difference is reported times ``scale`` in ``unit`` (default:
            accuracies as fractions, reported in points).
        method: ``"t"``: ``d_bar ± t_{(1+confidence)/2, n-1} sd(d) / sqrt(n)``;
            ``"bootstrap"``: the percentile bootstrap of the mean difference (``n_resamples``
            resamples of the seeds, drawn with ``seed``).
        confidence: the interval's level (default 0.95; the field is still called ``ci95``).

    Raises:
        ValueError: ``a`` and ``b`` of different lengths, fewer than 2 seeds, NaN or inf, an
            unknown ``method``, ``confidence`` outside (0, 1).
    """
    a, b = _values(a, "a"), _values(b, "b")
    if len(a) != len(b):
        raise ValueError(
            f"a and b must hold one value per seed for the same seeds, got {len(a)} and {len(b)}"
        )
    return _compare((a - b) * scale, names, unit, method, confidence, n_resamples, seed, over)


def mean_interval(
    values: Sequence[float],
    name: str = "value",
    *,
    scale: float = 100.0,
    unit: str = "%",
    method: str = "t",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    over: str = "seeds",
) -> Comparison:
    """The mean of one quantity over seeds and its interval (``b`` is ``None``), e.g. a
    recall that a claim bounds: ``mean_interval(recalls).holds({"below": 5})``."""
    v = _values(values, "values") * scale
    return _compare(v, (name, None), unit, method, confidence, n_resamples, seed, over)


def _compare(d, names, unit, method, confidence, n_resamples, seed, over) -> Comparison:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    _check_n(len(d), "the comparison")
    if method == "t":
        mean, lo, hi = _t_interval(d, confidence)
    elif method == "bootstrap":
        mean, lo, hi = _bootstrap(d, confidence, n_resamples, seed)
    else:
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    return Comparison(
        names[0], names[1], mean, (lo, hi), len(d), float(d.std(ddof=1)), method, unit, over
    )


def unpaired_difference(
    a: Sequence[float],
    b: Sequence[float],
    names: tuple[str, str] = ("A", "B"),
    *,
    scale: float = 100.0,
    unit: str = "points",
    confidence: float = 0.95,
) -> Comparison:
    """Welch's interval for ``mean(a) - mean(b)``, treating the two lists as unrelated samples
    (``a`` and ``b`` may differ in length). With paired seeds this ignores what the pairing
    knows; notebook 03 puts the two side by side. ``sd`` is the standard error's
    ``sqrt(var_a / n_a + var_b / n_b)`` times ``sqrt(min(n_a, n_b))``, for comparison with the
    paired ``sd``."""
    a, b = _values(a, "a") * scale, _values(b, "b") * scale
    _check_n(min(len(a), len(b)), "the comparison")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    mean = float(a.mean() - b.mean())
    if se == 0:
        lo = hi = mean
    else:
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
        half = t_quantile(0.5 + confidence / 2, df) * se
        lo, hi = mean - half, mean + half
    n = min(len(a), len(b))
    return Comparison(names[0], names[1], mean, (lo, hi), n, se * math.sqrt(n), "welch", unit)
