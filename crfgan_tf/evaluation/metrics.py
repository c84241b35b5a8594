"""Distribution distances between feature sets: Fréchet distance (FID) and MMD.

Both run in float64 on numpy arrays of features, one row per volume.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

# The median heuristic looks at every pair of at most this many pooled samples; beyond it,
# at a fixed-seed subsample of this size (2,048 real + 2,048 generated is exact).
MEDIAN_MAX_POINTS = 4096


def _centred_rows(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, A) with A^T A the unbiased covariance: the rows minus their mean, / sqrt(N-1)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need a (N >= 2, D) feature array, got shape {features.shape}")
    mean = features.mean(axis=0)
    return mean, (features - mean) / np.sqrt(features.shape[0] - 1)


def feature_statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N-1) covariance of `features` (N, D), in float64."""
    mean, rows = _centred_rows(features)
    return mean, rows.T @ rows


def _null_rounding(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise set to 0: those below
    max * dim * eps (numpy's matrix_rank tolerance). Without this, the square roots of the
    ~1e-14 noise on the zero eigenvalues of a rank-deficient covariance add up to ~1e-6."""
    tol = max(values.max(initial=0.0), 0.0) * values.size * np.finfo(np.float64).eps
    return np.where(values > tol, values, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(_null_rounding(values))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):

        |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    tr((sigma1 sigma2)^(1/2)) is computed as the sum of the square roots of the eigenvalues
    of the symmetric PSD matrix sigma1^(1/2) sigma2 sigma1^(1/2), which has the same
    eigenvalues as sigma1 sigma2. Unlike scipy.linalg.sqrtm of the (non-symmetric) product,
    this is real by construction (no imaginary parts to discard) and exact for singular
    covariances, such as those from fewer samples than features.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,):
        raise ValueError(f"means must be vectors of one length, got {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}), got {sigma1.shape} and {sigma2.shape}")
    for name, value in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name} has non-finite entries")
    sigma1 = (sigma1 + sigma1.T) / 2.0
    sigma2 = (sigma2 + sigma2.T) / 2.0
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    middle = (middle + middle.T) / 2.0
    tr_covmean = np.sqrt(_null_rounding(np.linalg.eigvalsh(middle))).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
    return float(max(value, 0.0))  # >= 0 mathematically; rounding can give -1e-13


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (N1, D), (N2, D).

    With sigma_i = A_i^T A_i (A_i the centred rows / sqrt(N_i - 1)), the non-zero eigenvalues
    of sigma1 sigma2 are those of (A1 A2^T)(A1 A2^T)^T, so tr((sigma1 sigma2)^(1/2)) is the
    sum of the singular values of the N1 x N2 matrix A1 A2^T, and tr(sigma_i) = |A_i|_F^2.
    While N1 N2 <= D^2 (an in-training evaluation: a few volumes, 2,048 features) that route
    is taken: it forms no D x D matrix (milliseconds instead of seconds). Otherwise the
    covariances go through frechet_distance. Both are the same number up to rounding.
    """
    mu1, a1 = _centred_rows(real)
    mu2, a2 = _centred_rows(fake)
    if a1.shape[1] != a2.shape[1]:
        raise ValueError(f"feature sets of different widths: {a1.shape[1]} and {a2.shape[1]}")
    if a1.shape[0] * a2.shape[0] > a1.shape[1] ** 2:
        return frechet_distance(mu1, a1.T @ a1, mu2, a2.T @ a2)
    for name, value in (("real", a1), ("fake", a2)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name} features have non-finite entries")
    tr_covmean = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    diff = mu1 - mu2
    value = diff @ diff + (a1 * a1).sum() + (a2 * a2).sum() - 2.0 * tr_covmean
    return float(max(value, 0.0))  # >= 0 mathematically; rounding can give -1e-13


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.clip(d2, 0.0, None)


def row_ids(x: np.ndarray) -> np.ndarray:
    """An integer per row of `x` (N, D), equal for rows that are exact copies of each
    other (bit for bit, with -0.0 taken as 0.0) and different otherwise.

    |a|^2 + |b|^2 - 2 a.b, the distance of the matrix-product route, is for two copies 0
    or rounding noise (~1e-7 |a|) depending on the CPU's vector width and the rows'
    places in the product; the distance functions set it to exactly 0 by these ids, so a
    generated copy of a real row is as far from every row as that row is from it on every
    CPU, and the median heuristic below sees its copies as 0."""
    x = np.ascontiguousarray(np.asarray(x, np.float64) + 0.0)  # -0.0 + 0.0 = 0.0
    if x.shape[0] == 0:
        return np.zeros(0, np.int64)
    rows = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    return np.unique(rows, return_inverse=True)[1].ravel()


def _copies_zeroed(d2: np.ndarray, ids_a: np.ndarray, ids_b: np.ndarray) -> np.ndarray:
    d2[ids_a[:, None] == ids_b[None, :]] = 0.0
    return d2


def _pair_distances(x: np.ndarray, block: int) -> np.ndarray:
    """The Euclidean distances of all pairs i < j of the rows of x, copies exactly 0."""
    ids = row_ids(x)
    n = x.shape[0]
    parts = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        d2 = _copies_zeroed(_squared_distances(x[start:stop], x[start:]), ids[start:stop],
                            ids[start:])
        rows, cols = np.triu_indices(stop - start, k=1, m=n - start)
        parts.append(d2[rows, cols])
    return np.sqrt(np.concatenate(parts))


def median_pairwise_distance(samples: np.ndarray, max_points: int = MEDIAN_MAX_POINTS,
                             seed: int = 0, block: int = 1024) -> float:
    """Median Euclidean distance over all pairs i < j of `samples` (N, D); above
    `max_points` samples, over the pairs of a fixed-seed subsample of that size.

    Exact copies are exactly 0 apart (row_ids). When more than half the pairs are copies
    (a collapsed or memorising generator: every generated row the same, or a copy of a
    real one), the median is 0, which is no kernel width: then the median of the nonzero
    distances is returned, the spread of the distinct rows, weighted by how often each
    pair occurs. Where the subsample holds no two distinct rows but the whole set does,
    the heuristic is taken over the set's distinct rows. 0.0 only when every row is the
    same (MMD is then 0 for every width)."""
    x = np.asarray(samples, np.float64)
    if x.shape[0] < 2:
        raise ValueError("the median heuristic needs at least 2 samples")
    whole = x
    if x.shape[0] > max_points:
        x = x[np.sort(np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False))]
    x = x - x.mean(axis=0)  # distances are translation invariant; centring keeps precision
    distances = _pair_distances(x, block)
    median = float(np.median(distances))
    if median > 0:
        return median
    nonzero = distances[distances > 0]
    if nonzero.size:
        return float(np.median(nonzero))
    if whole.shape[0] > x.shape[0]:  # a subsample of copies only: the set's distinct rows
        first = np.unique(row_ids(whole), return_index=True)[1]
        if 2 <= first.size < whole.shape[0]:
            return median_pairwise_distance(whole[np.sort(first)], max_points, seed, block)
    return 0.0


def _kernel_sum(a, b, ids_a, ids_b, sigma, block: int) -> float:
    total = 0.0
    for start in range(0, a.shape[0], block):
        stop = min(start + block, a.shape[0])
        # copies (the diagonal of a set with itself among them) are exactly 0 apart, so
        # k = 1 exactly: rounding leaks into neither
        d2 = _copies_zeroed(_squared_distances(a[start:stop], b), ids_a[start:stop], ids_b)
        total += np.exp(-0.5 * (d2 / sigma) / sigma).sum()  # no sigma^2: it can underflow
    return total


def mmd(x, y, sigma: Optional[float] = None, block: int = 1024) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy (Gretton et al. 2012,
    eq. 3) with the Gaussian kernel k(a, b) = exp(-|a - b|^2 / (2 sigma^2)):

        1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j)
          - 2/(mn) sum_{i, j} k(x_i, y_j)

    Args:
      x, y: (m, D) and (n, D) samples, m, n >= 2.
      sigma: kernel width, > 0; None uses the median pairwise distance of the pooled
        samples (median_pairwise_distance). Where more than half the pooled pairs are
        exact copies (a collapsed generator, or one that repeats a real sample) that
        median is 0, and the median of the nonzero pooled distances is used instead;
        where every pooled sample is the same, the result is 0.0 (one point mass against
        itself: 0 for every width), not an error.
      block: rows per block; memory is O(block * (m + n)).

    Raises:
      ValueError: fewer than 2 samples in a set, or an explicit sigma that is not > 0.

    Exact copies count as exactly 0 apart (k = 1), whatever the rounding of the matrix
    product. The unbiased estimate can be slightly negative when the distributions are
    equal.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (m, D) and (n, D), got {x.shape} and {y.shape}")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples per set, got {m} and {n}")
    centre = np.concatenate([x, y]).mean(axis=0)
    x, y = x - centre, y - centre
    if sigma is None:
        sigma = median_pairwise_distance(np.concatenate([x, y]))
        if sigma == 0:  # every pooled sample the same
            return 0.0
    if not sigma > 0:
        raise ValueError(f"kernel width sigma must be > 0, got {sigma} (all samples identical?)")
    ids = row_ids(np.concatenate([x, y]))
    ids_x, ids_y = ids[:m], ids[m:]
    kxx = _kernel_sum(x, x, ids_x, ids_x, sigma, block) - m
    kyy = _kernel_sum(y, y, ids_y, ids_y, sigma, block) - n
    kxy = _kernel_sum(x, y, ids_x, ids_y, sigma, block)
    return float(kxx / (m * (m - 1)) + kyy / (n * (n - 1)) - 2.0 * kxy / (m * n))


# ---- 3D MS-SSIM (diversity of generated volumes) ---------------------------------------

# Wang, Simoncelli & Bovik (2003), the five scale weights; fewer scales are renormalised.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_SIGMA = 1.5
SSIM_MIN_SIDE = 8  # a scale is used while every side is at least this


def _ssim_terms(a: np.ndarray, b: np.ndarray, data_range: float):
    """Mean luminance-contrast-structure (SSIM) and contrast-structure (cs) of two
    volumes, Gaussian-weighted (sigma 1.5 voxels, reflected at the borders)."""
    from scipy import ndimage

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    blur = lambda v: ndimage.gaussian_filter(v, SSIM_SIGMA, mode="reflect", truncate=3.5)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    luminance = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
    return float(np.mean(luminance * cs)), float(np.mean(cs))


def ms_ssim_3d(a: np.ndarray, b: np.ndarray, data_range: float = 2.0,
               max_scales: int = 5) -> float:
    """Multi-scale structural similarity of two 3D volumes (Wang et al. 2003, in 3D):
    prod_j cs_j^w_j over the finer scales times ssim^w_J at the coarsest, each scale a 2x
    average-pooled copy of the last; as many scales (up to 5) as keep every side >= 8
    voxels, their weights renormalised to sum to 1; negative terms count as 0 (as
    tf.image.ssim_multiscale does). 1 for identical volumes, about 0 for independent noise.

    Args:
      a, b: volumes of one shape, values in a range of width `data_range` ([-1, 1] -> 2).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"need two 3D volumes of one shape, got {a.shape} and {b.shape}")
    scales = 1
    while scales < max_scales and min(a.shape) // 2 ** scales >= SSIM_MIN_SIDE:
        scales += 1
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
    weights = weights / weights.sum()
    value = 1.0
    for j in range(scales):
        ssim, cs = _ssim_terms(a, b, data_range)
        term = ssim if j == scales - 1 else cs
        value *= max(term, 0.0) ** weights[j]
        if j < scales - 1:
            a, b = (_pool2(v) for v in (a, b))
    return float(value)


def _pool2(v: np.ndarray) -> np.ndarray:
    """2x average pooling of a 3D volume (odd trailing voxels dropped)."""
    d, h, w = (s // 2 * 2 for s in v.shape)
    v = v[:d, :h, :w]
    return v.reshape(d // 2, 2, h // 2, 2, w // 2, 2).mean(axis=(1, 3, 5))


def mean_pairwise_ms_ssim(volumes, max_pairs: int = 64) -> float:
    """Mean 3D MS-SSIM over pairs (i, i + 1), (i + 2, i + 3), ... of a list of volumes
    (disjoint pairs: each volume counted once), at most `max_pairs` pairs. Lower = more
    diverse."""
    pairs = [(volumes[i], volumes[i + 1]) for i in range(0, len(volumes) - 1, 2)][:max_pairs]
    if not pairs:
        raise ValueError("need at least 2 volumes")
    return float(np.mean([ms_ssim_3d(x, y) for x, y in pairs]))
