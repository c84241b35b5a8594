"""3D FID and MMD of generated volumes against real ones (`python -m tools.fid_mmd`)."""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from crfgan_tf.evaluation import metrics
from crfgan_tf.evaluation.features import cached_features, extract_features, Extractor
from crfgan_tf.evaluation.sources import EvaluationError, Source


def fid_mmd(real: Source, fake: Source, extractor: Extractor, batch_size: int = 1,
            cache_dir: Optional[str] = None, log=print) -> dict:
    """FID and MMD between two sources; the real features are cached in `cache_dir`."""
    for name, source in (("real", real), ("fake", fake)):
        if source.count < 2:
            raise EvaluationError(f"`{name}`: FID and MMD need at least 2 volumes, "
                                  f"{source.spec} has {source.count}")
    t0 = time.time()
    real_features, real_shape, cache = cached_features(real, extractor, cache_dir, batch_size,
                                                       "real", log)
    fake_features, fake_shape = extract_features(fake, extractor, batch_size, "fake", log)
    if real_shape != fake_shape:
        log(f"warning: real volumes are {real_shape}, generated ones {fake_shape}: features "
            "of different resolutions are rarely comparable")
    for name, f in (("real", real_features), ("fake", fake_features)):
        if f.shape[0] < 2:  # a manifest count can be stale; the features are what counts
            raise EvaluationError(f"`{name}`: FID and MMD need at least 2 volumes, got "
                                  f"{f.shape[0]}")
        if not np.all(np.isfinite(f)):
            raise EvaluationError(f"`{name}`: non-finite features (non-finite volumes?)")
    pooled = np.concatenate([real_features, fake_features]).astype(np.float64)
    sigma = metrics.median_pairwise_distance(pooled)
    return {
        "fid": metrics.fid_from_features(real_features, fake_features),
        "mmd": metrics.mmd(real_features, fake_features, sigma=sigma or None),
        "n_real": int(real_features.shape[0]), "n_fake": int(fake_features.shape[0]),
        "extractor": extractor.name, "weights_sha256": extractor.weights_sha256,
        "pretrained": extractor.pretrained, "feature_dim": int(real_features.shape[1]),
        "mmd_sigma": sigma, "mmd_kernel": "gaussian, sigma = median pooled pairwise distance",
        "real": real.spec, "fake": fake.spec, "real_shape": list(real_shape),
        "fake_shape": list(fake_shape), "real_cache": cache,
        "real_feature_side": extractor.input_side(max(real_shape)),
        "fake_feature_side": extractor.input_side(max(fake_shape)),
        "seconds": round(time.time() - t0, 1)}
