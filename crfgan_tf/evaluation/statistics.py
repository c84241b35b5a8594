"""Which model is better, and how sure: intervals, tests and diversity measures that noise
cannot fake, on per-volume feature vectors and anatomy statistics (crfgan-study,
docs/evaluation.md "Statistics").

  bootstrap_interval   a statistic of (real, generated) with its 95 % interval (the
                       estimate +- 1.96 bootstrap standard errors; summary says why not
                       the percentiles), real and generated resampled with replacement,
                       each within itself;
  difference           statistic(real, A) - statistic(real, B) with its bootstrap interval
                       (real, A and B resampled) and a permutation test's p-value (A and B
                       pooled and re-split, real fixed);
  knn_coverage         precision and recall of the k-nearest-neighbour manifolds
                       (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al.
                       2020) of generated features against real ones;
  anatomy_spread       per anatomy statistic: the generated and real means and standard
                       deviations, their ratio and the Wasserstein-1 distance;
  collapse_alarms      the alarms that the in-training monitor and the study raise from
                       the two above.

What each resamples, assumes and where it is biased is written beside it and in
docs/evaluation.md. Everything is float64 numpy on arrays with one row per volume; the
random generator is seeded, so a rerun gives the same intervals.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np

from crfgan_tf.evaluation import metrics

# The alarm thresholds (docs/evaluation.md): below these the generated set is not diverse.
COVERAGE_ALARM = 0.5     # share of real volumes with a generated volume in their k-NN ball
SPREAD_ALARM = 0.5       # generated sd / real sd of an anatomy statistic
SPREAD_STATISTICS = ("body_fraction", "lung_fraction")  # the alarm's anatomy statistics
DEFAULT_K = 5
CONFIDENCE = 0.95


Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def summary(value: float, draws: np.ndarray) -> dict:
    """The interval of `value` from its bootstrap `draws`: value +- Z95 x the draws'
    standard deviation (the bootstrap standard error), with the draws' bias (mean - value)
    and their 2.5 and 97.5 percentiles beside it.

    Why not the percentiles themselves: a resample with replacement repeats volumes, and a
    set distance sees the repeats (FD's covariance loses rank, MMD's within-set pairs
    include identical volumes), so the draws sit above the estimate, by more than their
    spread with a few dozen volumes; the percentile interval then misses the estimate it
    belongs to. The standard error is what the resampling does measure well."""
    finite = draws[np.isfinite(draws)]
    if finite.size < 2:
        return {"value": float(value), "ci95": [float("nan"), float("nan")],
                "se": float("nan"), "bootstrap_bias": float("nan"),
                "percentile_ci95": [float("nan"), float("nan")]}
    se = float(finite.std(ddof=1))
    return {"value": float(value), "ci95": [float(value - Z95 * se), float(value + Z95 * se)],
            "se": se, "bootstrap_bias": float(finite.mean() - value),
            "percentile_ci95": [float(np.percentile(finite, 2.5)),
                                float(np.percentile(finite, 97.5))]}


def _resample(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    return x[rng.integers(0, x.shape[0], x.shape[0])]


def bootstrap_interval(statistic: Callable[[np.ndarray, np.ndarray], float],
                       real: np.ndarray, fake: np.ndarray, resamples: int = 1000,
                       seed: int = 0) -> dict:
    """statistic(real, fake) with its 95 % interval (summary: value +- 1.96 bootstrap
    standard errors; also the bias and the percentiles of the draws), from `resamples`
    draws of statistic(real*, fake*), real* and fake* drawn with replacement from real and
    fake, each of its own size.

    Assumes the volumes of each set are independent draws, and the estimate roughly
    normal. It measures the sampling spread of the estimate at these sample sizes, not
    its bias: FD and MMD^2 are biased upward with few volumes (FD by O(1/n)), so two sets
    of other sizes do not compare even within their intervals."""
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(_resample(rng, real), _resample(rng, fake))
                      for _ in range(resamples)], np.float64)
    return dict(summary(statistic(real, fake), draws), resamples=int(resamples))


def difference(statistic: Callable[[np.ndarray, np.ndarray], float], real: np.ndarray,
               a: np.ndarray, b: np.ndarray, resamples: int = 1000,
               permutations: int = 1000, seed: int = 0) -> dict:
    """statistic(real, a) - statistic(real, b) (negative: a is closer to real when the
    statistic is a distance) with

      ci95     the bootstrap interval (summary): real, a and b each resampled with
               replacement (the biases of the two distances largely cancel);
      p_value  a two-sided permutation test of "a and b come from one distribution": the
               rows of a and b pooled and re-split at random into sets of their sizes,
               real fixed; p = (1 + #{|d*| >= |d|}) / (1 + permutations).

    The permutation test assumes the generated volumes are exchangeable under the null;
    with several training seeds per arm, pooling them treats a seed's volumes as
    independent of each other, which they are not (they share a generator), so the
    p-value answers "these volumes" rather than "this method": the seeds' spread is
    reported beside it (the report's mean +- sd over seeds)."""
    rng = np.random.default_rng(seed)
    observed = float(statistic(real, a) - statistic(real, b))
    boot = np.array([statistic(_resample(rng, real), _resample(rng, a))
                     - statistic(_resample(rng, real), _resample(rng, b))
                     for _ in range(resamples)], np.float64)
    pooled = np.concatenate([a, b])
    n_a = a.shape[0]
    extreme = 0
    for _ in range(permutations):
        order = rng.permutation(pooled.shape[0])
        d = statistic(real, pooled[order[:n_a]]) - statistic(real, pooled[order[n_a:]])
        extreme += abs(d) >= abs(observed) - 1e-12 * max(abs(observed), 1.0)
    return dict(summary(observed, boot), p_value=float((1 + extreme) / (1 + permutations)),
                resamples=int(resamples), permutations=int(permutations))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.clip(d2, 0.0, None))


def _distance_blocks(real: np.ndarray, fake: np.ndarray):
    """(real-real, generated-generated, real-generated) Euclidean distances, all read from
    one symmetric table over the distinct rows of both sets (metrics.row_ids): an exact
    copy of a row has exactly that row's distances, and 0 to it. Computed pair by pair,
    copies would be 0 or ~1e-7 apart, and a copy on the edge of a ball in or out of it, by
    the CPU's rounding (a collapsed generator's copies, a duplicated real volume)."""
    pooled = np.concatenate([real, fake])
    ids = metrics.row_ids(pooled)
    distinct = pooled[np.unique(ids, return_index=True)[1]]  # distinct[ids] == pooled
    table = _distances(distinct, distinct)
    table = (table + table.T) / 2.0
    np.fill_diagonal(table, 0.0)
    r, f = ids[:real.shape[0]], ids[real.shape[0]:]
    return table[np.ix_(r, r)], table[np.ix_(f, f)], table[np.ix_(r, f)]


def _kth_neighbour_radii(d: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row to its k-th nearest other row, from the set's distance matrix
    (a zero diagonal: column 0 after sorting is the row itself, or a copy of it)."""
    return np.sort(d, axis=1)[:, k]


def knn_coverage(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K) -> dict:
    """Precision, recall, density and coverage of `fake` (m, D) against `real` (n, D)
    with k nearest neighbours (k lowered to n - 1 and m - 1 when a set is smaller):

      precision  share of generated volumes inside the real manifold (the union of the
                 balls around each real volume reaching its k-th nearest real neighbour):
                 fidelity;
      recall     share of real volumes inside the generated manifold: diversity;
      density    mean number of real balls holding a generated volume, / k (about 1 when
                 the two match; above 1 where generated volumes crowd dense real regions);
      coverage   share of real volumes whose ball holds at least one generated volume:
                 diversity, robust to outliers (Naeem et al. 2020).

    Features are centred on the pooled mean and scaled by the pooled feature-wise
    standard deviation first, so no feature dominates by its scale. Assumes the feature
    space's Euclidean distance means something (it does for pretrained features; for the
    random-feature fallback it is a relative measure only). Biased with few volumes:
    with n real volumes the balls are wide, so precision and coverage run high; recall
    runs low when m is small. Noise added to one repeated anatomy moves its features
    together, so it does not buy coverage or recall.

    Balls are closed (a volume at exactly the radius is inside). Exact copies are exactly
    0 apart and have exactly their original's distances (_distance_blocks), so duplicated
    rows are well defined on every CPU: a ball whose k-th neighbour is a copy has radius 0
    and holds the copies only, and a collapsed generator's copies of one real volume lie
    in exactly the balls that volume lies in."""
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need (n, D) and (m, D) features, got {real.shape} and {fake.shape}")
    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise ValueError(f"k-NN coverage needs at least 2 volumes per set, got "
                         f"{real.shape[0]} and {fake.shape[0]}")
    pooled = np.concatenate([real, fake])
    scale = pooled.std(axis=0)
    scale[scale == 0] = 1.0
    real = (real - pooled.mean(0)) / scale
    fake = (fake - pooled.mean(0)) / scale
    k_real = min(k, real.shape[0] - 1)
    k_fake = min(k, fake.shape[0] - 1)
    real_d, fake_d, cross = _distance_blocks(real, fake)  # cross: (n, m)
    real_radii = _kth_neighbour_radii(real_d, k_real)
    fake_radii = _kth_neighbour_radii(fake_d, k_fake)
    inside_real = cross <= real_radii[:, None]    # fake j in the ball of real i
    inside_fake = cross <= fake_radii[None, :]    # real i in the ball of fake j
    return {"precision": float(inside_real.any(axis=0).mean()),
            "recall": float(inside_fake.any(axis=1).mean()),
            "density": float(inside_real.sum(axis=0).mean() / k_real),
            "coverage": float(inside_real.any(axis=1).mean()),
            "k": int(k_real), "k_generated": int(k_fake),
            "n_real": int(real.shape[0]), "n_fake": int(fake.shape[0])}


def wasserstein_1d(p: Sequence[float], q: Sequence[float]) -> float:
    """Wasserstein-1 distance between two empirical 1D distributions (scipy)."""
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(np.asarray(p, np.float64), np.asarray(q, np.float64)))


def anatomy_spread(real_rows: Sequence[dict], fake_rows: Sequence[dict],
                   names: Optional[Sequence[str]] = None) -> Dict[str, dict]:
    """Per statistic (evaluation.quality.STATISTICS by default): {"real_mean", "real_sd",
    "fake_mean", "fake_sd", "sd_ratio" (fake / real; None when the real sd is 0), "w1"
    (Wasserstein-1 between the two sets' values)}. NaN values (a volume without lungs has
    no lung median) are left out. Sample standard deviations (n - 1)."""
    if names is None:
        from crfgan_tf.evaluation.quality import STATISTICS as names
    out = {}
    for name in names:
        r = np.array([row[name] for row in real_rows], np.float64)
        f = np.array([row[name] for row in fake_rows], np.float64)
        r, f = r[np.isfinite(r)], f[np.isfinite(f)]
        if r.size < 2 or f.size < 2:
            continue
        real_sd, fake_sd = float(r.std(ddof=1)), float(f.std(ddof=1))
        out[name] = {"real_mean": float(r.mean()), "real_sd": real_sd,
                     "fake_mean": float(f.mean()), "fake_sd": fake_sd,
                     "sd_ratio": fake_sd / real_sd if real_sd > 0 else None,
                     "w1": wasserstein_1d(r, f), "n_real": int(r.size), "n_fake": int(f.size)}
    return out


def collapse_alarms(coverage: Optional[dict], spread: Dict[str, dict]) -> list:
    """The mode-collapse alarms from knn_coverage and anatomy_spread (empty: none):
    coverage below COVERAGE_ALARM, or the generated standard deviation of a
    SPREAD_STATISTICS statistic below SPREAD_ALARM x the real one."""
    alarms = []
    if coverage is not None and coverage["coverage"] < COVERAGE_ALARM:
        alarms.append(f"coverage {coverage['coverage']:.2f}: generated volumes reach the "
                      f"neighbourhoods of {coverage['coverage']:.0%} of the {coverage['n_real']} "
                      f"real volumes (alarm below {COVERAGE_ALARM:.0%}): mode collapse?")
    for name in SPREAD_STATISTICS:
        row = spread.get(name)
        if row and row["sd_ratio"] is not None and row["sd_ratio"] < SPREAD_ALARM:
            alarms.append(f"{name} varies {row['sd_ratio']:.2f} x as much as in the real "
                          f"volumes (sd {row['fake_sd']:.3g} against {row['real_sd']:.3g}; "
                          f"alarm below {SPREAD_ALARM}): one anatomy repeated?")
    return alarms


def mean_sd(values: Sequence[float]) -> dict:
    """{"mean", "sd" (n - 1; None for one value), "n", "values"} of finite values."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], np.float64)
    return {"mean": float(v.mean()) if v.size else None,
            "sd": float(v.std(ddof=1)) if v.size > 1 else None,
            "n": int(v.size), "values": [float(x) for x in v]}
