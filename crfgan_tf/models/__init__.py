"""The trainable models and what they are made of: keras.Models that own their networks,
optimizers and `train_step`, with their losses, optimizers, augmentation, choices and
checkpoint keys.

  base.SubVolumeGAN   what both share (G1, G2, D, hE, the phase optimizers)
  crfgan.CRFGAN       the paper
  hagan.HAGAN         the HA-GAN baseline
  losses, optimizers, augment, params (parameter counts and the reference's table)
  options             the models' choices and checkpoint keys (no TensorFlow)

The model classes load on first use (`crfgan_tf.models.CRFGAN`), so that
`crfgan_tf.models.options` imports without TensorFlow.
"""

import importlib

__all__ = ["CRFGAN", "HAGAN", "MODEL_CLASSES", "REPLICA_INVARIANT", "SubVolumeGAN"]

_NAMES = {"SubVolumeGAN": "base", "REPLICA_INVARIANT": "base", "CRFGAN": "crfgan",
          "HAGAN": "hagan"}
_SUBMODULES = ("augment", "base", "crfgan", "hagan", "losses", "optimizers", "options",
               "params")


def __getattr__(name):
    if name == "MODEL_CLASSES":
        from crfgan_tf.models.crfgan import CRFGAN
        from crfgan_tf.models.hagan import HAGAN

        value = {"crfgan": CRFGAN, "hagan": HAGAN}
    elif name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    elif name in _SUBMODULES:  # `crfgan_tf.models.crfgan` without importing it first
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # once: MODEL_CLASSES is one dict
    return value
