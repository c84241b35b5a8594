"""The networks of CRF-GAN (and, from issue #4, HA-GAN), one file each.

All networks are channels-last: volumes are (batch, depth=axial, height, width, channels)
with axial depth first, matching the canonical (z, y, x) arrays of `crfgan_tf.data`.
"""

from crfgan_tf.networks.crf import SliceCRF
from crfgan_tf.networks.discriminator import build_discriminator
from crfgan_tf.networks.encoder import build_encoder
from crfgan_tf.networks.generator import build_head, build_trunk
from crfgan_tf.networks.layers import scaled_channels, SNConv3D, SNDense

__all__ = ["SliceCRF", "build_discriminator", "build_encoder", "build_head", "build_trunk",
           "SNConv3D", "SNDense", "scaled_channels"]
