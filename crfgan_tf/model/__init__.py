"""The trainable models: keras.Models that own their networks, optimizers and `train_step`.

  base.SubVolumeGAN   what both share (G1, G2, D, hE, the phase optimizers)
  crfgan.CRFGAN       the paper
  hagan.HAGAN         the HA-GAN baseline
"""

from crfgan_tf.model.base import REPLICA_INVARIANT, SubVolumeGAN
from crfgan_tf.model.crfgan import CRFGAN
from crfgan_tf.model.hagan import HAGAN

MODEL_CLASSES = {"crfgan": CRFGAN, "hagan": HAGAN}

__all__ = ["CRFGAN", "HAGAN", "MODEL_CLASSES", "REPLICA_INVARIANT", "SubVolumeGAN"]
