"""Generator of CRF-GAN: trunk G1 (latent -> whole low-resolution embedding) and head G2
(embedding slab -> full-resolution sub-volume)."""

from __future__ import annotations

import keras

from crfgan_tf.networks.layers import (UpsampleConv3D, check_size, conv_gn_relu,
                                      scaled_channels)

TRUNK_CHANNELS = (512, 512, 256, 128, 64)
HEAD_CHANNELS = 32
EMBED_CHANNELS = 64


def embedding_channels(width: float = 1.0) -> int:
    """Channels of the embedding shared by G1, G2, hE and the CRF."""
    return scaled_channels(EMBED_CHANNELS, width)


def build_trunk(img_size: int = 256, latent_dim: int = 1024, width: float = 1.0,
                name: str = "g1", num_classes: int = 0) -> keras.Model:
    """G1: latent z -> embedding of the whole volume.

    Dense(latent (+ num_classes) -> 4^3 x 512), then five 3^3 conv + GroupNorm(8) + ReLU blocks with
    512, 512, 256, 128, 64 channels (times `width`). Nearest-neighbour x2 up-sampling
    precedes the 2nd..5th block at 256^3; at 128^3 the last up-sampling is skipped and at
    64^3 the last two, so the embedding is always img_size / 4 per side.

    Args:
      img_size: output volume side S (64, 128 or 256).
      latent_dim: size of z.
      width: channel multiplier (1.0 = the reference; small values for tests).
      num_classes: > 0 for a class-conditional G1: its input is z concatenated with the
        one-hot label (as the references build it; `model.SubVolumeGAN.trunk_input`).

    Returns:
      Model mapping (batch, latent_dim + num_classes) -> (batch, S/4, S/4, S/4, 64 * width).
    """
    check_size(img_size)
    num_up = {64: 2, 128: 3, 256: 4}[img_size]
    ch = [scaled_channels(c, width) for c in TRUNK_CHANNELS]
    z = keras.Input((latent_dim + num_classes,), name="z")
    x = keras.layers.Dense(4 * 4 * 4 * ch[0], name="fc")(z)
    x = keras.layers.Reshape((4, 4, 4, ch[0]), name="reshape")(x)
    for i, c in enumerate(ch):  # up-sampling fused into the block's conv (UpsampleConv3D)
        x = conv_gn_relu(x, c, 3, 1, 1, name=f"block{i}", upsample=1 <= i <= num_up)
    return keras.Model(z, x, name=name)


def build_head(img_size: int = 256, width: float = 1.0, name: str = "g2") -> keras.Model:
    """G2: an axial slab of the embedding -> a full-resolution sub-volume.

    x2 up-sampling, 3^3 conv 32 + GroupNorm(8) + ReLU, x2 up-sampling, 3^3 conv 1 + tanh.
    The depth is free: S/32 embedding slices give the S/8-slice training sub-volume; the
    whole S/4 embedding gives the whole S^3 volume.

    Returns:
      Model mapping (batch, d, S/4, S/4, C) -> (batch, 4d, S, S, 1), float32 in [-1, 1].
    """
    check_size(img_size)
    n = img_size // 4
    emb = keras.Input((None, n, n, embedding_channels(width)), name="embedding")
    x = conv_gn_relu(emb, scaled_channels(HEAD_CHANNELS, width), 3, 1, 1, name="block1",
                     upsample=True)
    x = UpsampleConv3D(1, name="out_conv")(x)
    # tanh and the output in float32 under mixed precision: it is the image itself.
    x = keras.layers.Activation("tanh", dtype="float32", name="tanh")(x)
    return keras.Model(emb, x, name=name)
