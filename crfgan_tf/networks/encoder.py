"""The half-encoder hE: image -> embedding (the inverse of the head G2)."""

from __future__ import annotations

import keras

from crfgan_tf.geometry import check_size
from crfgan_tf.networks.generator import embedding_channels
from crfgan_tf.networks.layers import conv_gn_relu, scaled_channels


def build_encoder(img_size: int = 256, width: float = 1.0, name: str = "encoder") -> keras.Model:
    """hE: conv 4^3/2 32, conv 3^3/1 32, conv 4^3/2 64, each + GroupNorm(8) + ReLU.

    Maps a sub-volume (S/8, S, S) to its embedding slab (S/32, S/4, S/4, 64) and the whole
    volume (S, S, S) to the whole embedding; the depth is free (any multiple of 4).

    Returns:
      Model mapping (batch, d, S, S, 1) -> (batch, d/4, S/4, S/4, 64 * width).
    """
    check_size(img_size)
    x_in = keras.Input((None, img_size, img_size, 1), name="volume")
    x = conv_gn_relu(x_in, scaled_channels(32, width), 4, 2, 1, name="block1")
    x = conv_gn_relu(x, scaled_channels(32, width), 3, 1, 1, name="block2")
    x = conv_gn_relu(x, embedding_channels(width), 4, 2, 1, name="block3")
    return keras.Model(x_in, x, name=name)
