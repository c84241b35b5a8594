"""HA-GAN's extra networks (Sun et al. 2022), the baseline CRF-GAN replaces: the
low-resolution generator G^L, the low-resolution discriminator D^L and the sub-encoder."""

from __future__ import annotations

import keras

from crfgan_tf.core.geometry import check_size, embedding_side, extra_stages
from crfgan_tf.networks.generator import embedding_channels
from crfgan_tf.networks.layers import (SNConv3D, conv3d, conv_gn_relu,
                                       scaled_channels)


LOW_D_CHANNELS_256 = (32, 64, 128, 256)  # D^L's stride-2 convs at 256^3
SUB_ENCODER_CHANNELS = {128: (64, 128, 256), 256: (32, 64, 128, 256),
                        512: (16, 32, 64, 128, 256)}


def low_discriminator_channels(img_size: int) -> tuple:
    """D^L's stride-2 conv channels: LOW_D_CHANNELS_256 without its first at 128^3, with
    a first of 16 at 512^3 (geometry's growth rule), so the map reaches 4^3."""
    extra = extra_stages(img_size)
    return (16,) * extra + LOW_D_CHANNELS_256 if extra >= 0 else LOW_D_CHANNELS_256[-extra:]


def build_low_generator(img_size: int = 256, width: float = 1.0,
                        name: str = "low_generator") -> keras.Model:
    """G^L: embedding -> low-resolution volume at S/4.

    3^3 conv 32 + GroupNorm(8) + ReLU, 3^3 conv 16 + GroupNorm(8) + ReLU, 3^3 conv 1 + tanh.

    Returns:
      Model mapping (batch, S/4, S/4, S/4, C) -> (batch, S/4, S/4, S/4, 1) float32.
    """
    check_size(img_size)
    n = embedding_side(img_size)
    emb = keras.Input((n, n, n, embedding_channels(width)), name="embedding")
    x = conv_gn_relu(emb, scaled_channels(32, width), 3, 1, 1, name="block1")
    x = conv_gn_relu(x, scaled_channels(16, width), 3, 1, 1, name="block2")
    x = conv3d(x, 1, 3, 1, 1, name="out")
    x = keras.layers.Activation("tanh", dtype="float32", name="tanh")(x)
    return keras.Model(emb, x, name=name)


def build_low_discriminator(img_size: int = 256, width: float = 1.0,
                            name: str = "low_discriminator", num_classes: int = 0) -> keras.Model:
    """D^L: the S/4 low-resolution volume -> logit.

    SN convs 4^3/2 with 32, 64, 128, 256 channels (LeakyReLU 0.2), then an SN 4^3 valid conv
    to 1 (to 1 + num_classes when conditional: the class logits share the last conv, as
    in the reference). At 128^3 the first conv is dropped (the next takes 1 channel), at
    512^3 one of 16 channels comes first, so the map always reaches 4^3 before the last
    conv.

    Returns:
      Model mapping (batch, S/4, S/4, S/4, 1) -> (batch, 1) float32 logits, or with
      num_classes > 0 -> [(batch, 1) logits, (batch, num_classes) class logits].
    """
    check_size(img_size, "hagan")  # at 64^3 D^L would need 4^3 input after dropping two layers
    n = embedding_side(img_size)
    channels = low_discriminator_channels(img_size)
    multiple = 1 if width == 1.0 else 4
    x_in = keras.Input((n, n, n, 1), name="low_volume")
    x = x_in
    for i, c in enumerate(channels):
        x = SNConv3D(scaled_channels(c, width, multiple), 4, 2, 1, name=f"conv{i + 1}")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"lrelu{i + 1}")(x)
    x = SNConv3D(1 + num_classes, 4, 1, 0, dtype="float32", name="conv_out")(x)
    out = keras.layers.Flatten(dtype="float32", name="logit")(x)
    if num_classes:
        return keras.Model(x_in, [out[:, :1], out[:, 1:]], name=name)
    return keras.Model(x_in, out, name=name)


def build_sub_encoder(img_size: int = 256, latent_dim: int = 1024, width: float = 1.0,
                      name: str = "sub_encoder") -> keras.Model:
    """Sub-encoder: the whole hE embedding -> latent z (trained to reconstruct through G).

    Convs 4^3/2 with 32, 64, 128, 256 channels, each + GroupNorm(8) + ReLU, then a 4^3
    valid conv to the latent. At 128^3 the first two are replaced by one 64 -> 64 conv; at
    512^3 one of 16 channels comes first (SUB_ENCODER_CHANNELS).

    Returns:
      Model mapping (batch, S/4, S/4, S/4, C) -> (batch, latent_dim).
    """
    check_size(img_size, "hagan")
    n = embedding_side(img_size)
    channels = SUB_ENCODER_CHANNELS[img_size]
    emb = keras.Input((n, n, n, embedding_channels(width)), name="embedding")
    x = emb
    for i, c in enumerate(channels):
        x = conv_gn_relu(x, scaled_channels(c, width), 4, 2, 1, name=f"block{i + 1}")
    x = keras.layers.Conv3D(latent_dim, 4, padding="valid", name="to_latent")(x)
    return keras.Model(emb, keras.layers.Flatten(name="latent")(x), name=name)
