"""FID and MMD against closed forms and plain loop implementations."""

import itertools

import numpy as np
import pytest
import scipy.linalg

from crfgan_tf.evaluation import metrics


def test_frechet_distance_of_commuting_gaussians_closed_form():
    # Diagonal covariances commute: FD = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    a = np.array([1.0, 4.0, 9.0, 0.25])
    b = np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = 1.0 + 4.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0 + (0.5 - 1) ** 2
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected,
                                                                                       rel=1e-12)


def test_frechet_distance_rotated_and_scaled_closed_form():
    # sigma2 = c^2 sigma1: tr sqrt(s1 s2) = c tr(s1), so FD = (1 - c)^2 tr(s1)
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    s1 = q @ np.diag([5.0, 3.0, 2.0, 1.0, 0.5, 0.1]) @ q.T
    fd = metrics.frechet_distance(np.zeros(6), s1, np.zeros(6), 9.0 * s1)
    assert fd == pytest.approx(4.0 * 11.6, rel=1e-10)
    assert metrics.frechet_distance(np.ones(6), s1, np.ones(6), s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_on_full_rank():
    rng = np.random.default_rng(2)
    f1, f2 = rng.standard_normal((200, 8)), rng.standard_normal((150, 8)) * 1.5 + 0.3
    mu1, s1 = metrics.feature_statistics(f1)
    mu2, s2 = metrics.feature_statistics(f2)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * covmean)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_singular_covariances_fewer_samples_than_features():
    # 5 samples in 40 dimensions: rank-4 covariances. The distance of a set to itself is 0
    # and to a shifted copy is exactly the squared shift (covariances equal).
    rng = np.random.default_rng(3)
    f = rng.standard_normal((5, 40))
    mu, s = metrics.feature_statistics(f)
    assert np.linalg.matrix_rank(s) == 4
    shift = np.full(40, 0.5)
    assert metrics.frechet_distance(mu, s, mu + shift, s) == pytest.approx(10.0, rel=1e-7)
    value = metrics.frechet_distance(mu, s, *metrics.feature_statistics(rng.standard_normal((5, 40))))
    assert np.isfinite(value) and value > 0 and isinstance(value, float)


@pytest.mark.parametrize("n_real,n_fake,dim", [(5, 2, 512), (7, 5, 40), (300, 200, 8)])
def test_fid_from_features_equals_the_covariance_route(n_real, n_fake, dim, monkeypatch):
    """fid_from_features takes the sample route (the nuclear norm of A1 A2^T, no D x D
    matrix) while the samples are fewer than the features' dimension squared; it is the same
    number as the covariance route, rank-deficient or not."""
    rng = np.random.default_rng(n_real)
    real = rng.standard_normal((n_real, dim)) * 2.0 + 0.1
    fake = rng.standard_normal((n_fake, dim)) @ np.diag(rng.uniform(0.5, 1.5, dim))
    want = metrics.frechet_distance(*metrics.feature_statistics(real),
                                    *metrics.feature_statistics(fake))
    sample_route = n_real * n_fake <= dim * dim
    if sample_route:  # no D x D covariance is formed, so no eigendecomposition of one
        monkeypatch.setattr(metrics, "frechet_distance", None)
    got = metrics.fid_from_features(real, fake)
    assert got == pytest.approx(want, rel=1e-9)
    assert metrics.fid_from_features(real, real) == pytest.approx(0.0, abs=1e-9 * want)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="covariances"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="non-finite"):
        metrics.frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))


def _mmd_loop(x, y, sigma):
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * sigma ** 2))  # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_mmd_matches_loop_implementation():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((23, 5)), rng.standard_normal((17, 5)) + 0.7
    for sigma in (0.5, 2.0):
        assert metrics.mmd(x, y, sigma=sigma, block=4) == pytest.approx(_mmd_loop(x, y, sigma),
                                                                        rel=1e-10)


def test_mmd_median_heuristic_matches_loop():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((12, 3)), rng.standard_normal((9, 3)) * 2
    pooled = np.concatenate([x, y])
    dists = [np.linalg.norm(a - b) for a, b in itertools.combinations(pooled, 2)]
    sigma = float(np.median(dists))
    assert metrics.median_pairwise_distance(pooled, block=5) == pytest.approx(sigma, rel=1e-12)
    assert metrics.mmd(x, y) == pytest.approx(_mmd_loop(x, y, sigma), rel=1e-10)


def test_mmd_is_unbiased_near_zero_for_equal_distributions_and_grows_with_shift():
    rng = np.random.default_rng(6)
    same = metrics.mmd(rng.standard_normal((500, 4)), rng.standard_normal((500, 4)))
    shifted = metrics.mmd(rng.standard_normal((500, 4)), rng.standard_normal((500, 4)) + 1.0)
    assert abs(same) < 0.01 and shifted > 0.1


def test_mmd_thousands_of_samples_blocked():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((3000, 64)), rng.standard_normal((2500, 64))
    assert abs(metrics.mmd(x, y)) < 1e-3


def test_mmd_rejects_too_few_samples_and_zero_width():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.mmd(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="sigma"):
        metrics.mmd(np.ones((3, 3)), np.zeros((4, 3)), sigma=0.0)


# ---- MMD when most pooled pairs are copies (issue #52 item 8) -------------------------

def _copies_of_one_real_row():
    """3 real feature rows and 6 generated ones that are exact copies of the first: 21 of
    the 36 pooled pairs are copies, so the median pooled distance is 0."""
    rng = np.random.default_rng(8)
    real = rng.standard_normal((3, 2048)).astype(np.float32) * 3 + 5
    return real, np.repeat(real[:1], 6, axis=0)


def test_mmd_of_generated_copies_of_one_real_row_uses_the_median_nonzero_distance():
    real, fake = _copies_of_one_real_row()
    pooled = np.concatenate([real, fake]).astype(np.float64)
    dists = np.array([np.linalg.norm(a - b) for a, b in itertools.combinations(pooled, 2)])
    assert np.count_nonzero(dists == 0) == 21 and np.median(dists) == 0
    sigma = float(np.median(dists[dists > 0]))  # the fallback width
    assert metrics.median_pairwise_distance(pooled, block=4) == pytest.approx(sigma, rel=1e-12)
    got = metrics.mmd(real, fake, block=4)
    assert np.isfinite(got)
    assert got == pytest.approx(_mmd_loop(real.astype(np.float64), fake.astype(np.float64),
                                          sigma), rel=1e-10)
    assert got > 0.1  # one real row repeated is far from the 3 real rows


def test_mmd_of_all_identical_rows_is_zero_and_an_explicit_zero_width_is_refused():
    row = np.random.default_rng(9).standard_normal((1, 2048)) * 7 + 11
    x, y = np.repeat(row, 3, axis=0), np.repeat(row, 5, axis=0)
    assert metrics.median_pairwise_distance(np.concatenate([x, y])) == 0.0
    assert metrics.mmd(x, y) == 0.0  # one point mass against itself, whatever the width
    assert metrics.mmd(x, y, sigma=1.0) == pytest.approx(0.0, abs=1e-15)
    for sigma in (0.0, -1.0):
        with pytest.raises(ValueError, match="sigma must be > 0"):
            metrics.mmd(x, y, sigma=sigma)


def test_copies_are_exactly_zero_apart_whatever_the_matrix_product_rounds():
    """|a|^2 + |b|^2 - 2 a.b of two copies is 0 or rounding noise, by the CPU's luck, unless
    copies are recognised as such: 11 of these 21 pairs are copies, so the median is the
    fallback's, the distance of the two distinct rows, on every CPU."""
    rng = np.random.default_rng(10)
    base = rng.standard_normal((2, 512))
    x = np.repeat(base, [5, 2], axis=0)  # 10 + 1 pairs of copies out of 21
    d01 = float(np.linalg.norm(base[0] - base[1]))
    assert metrics.median_pairwise_distance(x) == pytest.approx(d01, rel=1e-6)
    # above max_points: a subsample of copies only still finds the set's spread
    many = np.repeat(base, [200, 1], axis=0)
    assert metrics.median_pairwise_distance(many, max_points=8, seed=0) == \
        pytest.approx(d01, rel=1e-6)
