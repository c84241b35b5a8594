"""Learnable-parameter counts per module (the paper's Table 3)."""

from __future__ import annotations

import numpy as np

from crfgan_tf.models import options

# The PyTorch reference's counts (../shared/REFERENCE.md), latent 1024, full width,
# keyed (model, img_size, num_classes). The conditional ones were measured from the
# official code's modules built with num_class=N (issue #12).
REFERENCE = {
    ("crfgan", 64, 0): 57_079_938,
    ("crfgan", 128, 0): 57_209_762,
    ("crfgan", 256, 0): 57_244_594,
    ("hagan", 128, 0): 79_583_972,
    ("hagan", 256, 0): 79_744_884,
    ("crfgan", 64, 2): 57_145_604,
    ("crfgan", 128, 3): 57_308_261,
    ("crfgan", 256, 2): 57_310_260,
    ("hagan", 128, 2): 79_682_408,
    ("hagan", 256, 3): 79_892_538,
}


def trainable_count(layer) -> int:
    """Learnable parameters (spectral norm's u vectors and other state excluded)."""
    return int(sum(np.prod(v.shape) for v in layer.trainable_weights))


def count_parameters(model: str = "crfgan", img_size: int = 256, latent_dim: int = 1024,
                     width: float = 1.0, num_classes: int = 0,
                     embedding_factor: int = 0) -> dict:
    """Builds the networks (no training state) and counts their learnable parameters.

    Returns:
      {"model", "img_size", "embedding_factor", "total", "modules": {name: count},
       "reference": count or None}; embedding_factor 0 is the size's default
      (geometry.default_factor), and the result says which it was.
    """
    from crfgan_tf.models import MODEL_CLASSES

    if model not in MODEL_CLASSES:
        raise ValueError(f"unknown model {model!r}; one of {sorted(MODEL_CLASSES)}")
    net = MODEL_CLASSES[model](img_size=img_size, latent_dim=latent_dim, width=width,
                               num_classes=num_classes, embedding_factor=embedding_factor)
    modules = {name: trainable_count(m) for name, m in net.modules().items()}
    total = sum(modules.values())
    # the reference's grouping: G = G1 + G2 (+ G^L), D = D^H (+ D^L)
    modules["generator"] = sum(modules.get(k, 0) for k in
                               (options.TRUNK_KEY, options.HEAD_KEY, "low_generator"))
    modules["discriminator_total"] = modules["discriminator"] + modules.get("low_discriminator", 0)
    reference = REFERENCE.get((model, img_size, num_classes)) \
        if (latent_dim, width) == (1024, 1.0) else None
    return {"model": model, "img_size": img_size, "embedding_factor": net.embedding_factor,
            "num_classes": num_classes, "total": total,
            "modules": modules, "reference": reference}
