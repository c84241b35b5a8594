"""Learnable-parameter counts per module (the paper's Table 3)."""

from __future__ import annotations

import numpy as np

# The PyTorch reference's counts (../shared/REFERENCE.md), latent 1024, full width.
REFERENCE = {
    ("crfgan", 64): 57_079_938,
    ("crfgan", 128): 57_209_762,
    ("crfgan", 256): 57_244_594,
}


def trainable_count(layer) -> int:
    """Learnable parameters (spectral norm's u vectors and other state excluded)."""
    return int(sum(np.prod(v.shape) for v in layer.trainable_weights))


def count_parameters(model: str = "crfgan", img_size: int = 256, latent_dim: int = 1024,
                     width: float = 1.0) -> dict:
    """Builds the networks (no training state) and counts their learnable parameters.

    Returns:
      {"model", "img_size", "total", "modules": {name: count}, "reference": count or None}
    """
    from crfgan_tf.model import CRFGAN

    if model != "crfgan":
        raise ValueError(f"unknown model {model!r}")
    net = CRFGAN(img_size=img_size, latent_dim=latent_dim, width=width)
    modules = {name: trainable_count(m) for name, m in net.modules().items()}
    modules["generator"] = modules["generator_trunk"] + modules["generator_head"]
    total = sum(v for k, v in modules.items() if k != "generator")
    reference = REFERENCE.get((model, img_size)) if (latent_dim, width) == (1024, 1.0) else None
    return {"model": model, "img_size": img_size, "total": total, "modules": modules,
            "reference": reference}
