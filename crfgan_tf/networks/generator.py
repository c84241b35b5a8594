"""Generator of CRF-GAN: trunk G1 (latent -> whole low-resolution embedding) and head G2
(embedding slab -> full-resolution sub-volume)."""

from __future__ import annotations

import keras
import tensorflow as tf

from crfgan_tf.geometry import check_size, embedding_side, extra_stages
from crfgan_tf.networks.layers import (GroupNorm, UpsampleConv3D, conv_gn_relu,
                                      scaled_channels)

TRUNK_CHANNELS = (512, 512, 256, 128, 64)
HEAD_CHANNELS = 32
EMBED_CHANNELS = 64


def trunk_channels(img_size: int) -> tuple:
    """G1's block channels at `img_size`: TRUNK_CHANNELS up to 256; past 256 one more
    EMBED_CHANNELS block per doubling (geometry's growth rule: 512 has six blocks)."""
    return TRUNK_CHANNELS + (EMBED_CHANNELS,) * max(extra_stages(img_size), 0)


def embedding_channels(width: float = 1.0) -> int:
    """Channels of the embedding shared by G1, G2, hE and the CRF."""
    return scaled_channels(EMBED_CHANNELS, width)


def build_trunk(img_size: int = 256, latent_dim: int = 1024, width: float = 1.0,
                name: str = "g1", num_classes: int = 0) -> keras.Model:
    """G1: latent z -> embedding of the whole volume.

    Dense(latent (+ num_classes) -> 4^3 x 512), then five 3^3 conv + GroupNorm(8) + ReLU blocks with
    512, 512, 256, 128, 64 channels (times `width`). Nearest-neighbour x2 up-sampling
    precedes the 2nd..5th block at 256^3; at 128^3 the last up-sampling is skipped and at
    64^3 the last two, so the embedding is always img_size / 4 per side. At 512^3 a sixth
    block of 64 channels follows a fifth up-sampling (trunk_channels).

    Args:
      img_size: output volume side S (64, 128, 256 or 512).
      latent_dim: size of z.
      width: channel multiplier (1.0 = the reference; small values for tests).
      num_classes: > 0 for a class-conditional G1: its input is z concatenated with the
        one-hot label (as the references build it; `model.SubVolumeGAN.trunk_input`).

    Returns:
      Model mapping (batch, latent_dim + num_classes) -> (batch, S/4, S/4, S/4, 64 * width).
    """
    check_size(img_size)
    num_up = (embedding_side(img_size) // 4).bit_length() - 1  # 4^3 doubled up to S/4
    ch = [scaled_channels(c, width) for c in trunk_channels(img_size)]
    z = keras.Input((latent_dim + num_classes,), name="z")
    x = keras.layers.Dense(4 * 4 * 4 * ch[0], name="fc")(z)
    x = keras.layers.Reshape((4, 4, 4, ch[0]), name="reshape")(x)
    for i, c in enumerate(ch):  # up-sampling fused into the block's conv (UpsampleConv3D)
        x = conv_gn_relu(x, c, 3, 1, 1, name=f"block{i}", upsample=1 <= i <= num_up)
    return keras.Model(z, x, name=name)


class Head(keras.Model):
    """G2: an axial slab of the embedding -> a full-resolution sub-volume.

    x2 up-sampling, 3^3 conv 32 + GroupNorm(8) + ReLU, x2 up-sampling, 3^3 conv 1 + tanh.
    The depth is free: S/32 embedding slices give the S/8-slice training sub-volume; the
    whole S/4 embedding gives the whole S^3 volume, in one call (`__call__`) or slab by
    slab in bounded memory (`by_slabs`, the same result).

    A functional model (its checkpoint layout is that of every G2 crfgan-tf has written);
    its three layers with weights are also kept, untracked, for `by_slabs`.
    Input (batch, d, S/4, S/4, C) -> output (batch, 4d, S, S, 1), float32 in [-1, 1].
    """

    def __init__(self, img_size: int = 256, width: float = 1.0, name: str = "g2"):
        check_size(img_size)
        n = embedding_side(img_size)
        emb = keras.Input((None, n, n, embedding_channels(width)), name="embedding")
        conv = UpsampleConv3D(scaled_channels(HEAD_CHANNELS, width), name="block1_conv")
        norm = GroupNorm(groups=8, epsilon=1e-5, name="block1_gn")
        out = UpsampleConv3D(1, name="out_conv")
        x = keras.layers.ReLU(name="block1_relu")(norm(conv(emb)))
        # tanh and the output in float32 under mixed precision: it is the image itself.
        x = keras.layers.Activation("tanh", dtype="float32", name="tanh")(out(x))
        super().__init__(emb, x, name=name)
        # object.__setattr__: not tracked, so checkpoints keep the functional layout
        object.__setattr__(self, "_slab_layers", (conv, norm, out))

    def by_slabs(self, embedding, slab: int):
        """G2 on the whole embedding, `slab` embedding slices at a time; equals
        self(embedding)[..., 0] while memory grows with the slab, not the volume (the
        one-shot G2 holds a (4N)^3 x 32-channel intermediate: 2 GiB per 256^3 volume).

        Both convolutions up-sample and pad by one voxel, so each slab is computed with a
        one-slice halo of embedding; G2's GroupNorm normalises over the whole volume, so it
        runs in two passes: (1) per slab, the first conv, accumulating the GroupNorm sums
        over the slab's own slices; (2) per slab, the same conv normalised with the
        whole-volume statistics, ReLU, the output conv and tanh, keeping its own slices.

        Args:
          embedding: (batch, N, N, N, C).
          slab: embedding slices per slab (>= 1; the last slab may be shorter).

        Returns:
          (batch, 4N, 4N, 4N) float32 volume in [-1, 1].
        """
        conv, norm, out = self._slab_layers
        n = embedding.shape[1]
        dtype = self.compute_dtype
        embedding = tf.cast(embedding, dtype)
        bounds = [(a, min(a + slab, n)) for a in range(0, n, slab)]

        def first_conv(a, b):
            lo, hi = max(a - 1, 0), min(b + 1, n)  # one embedding slice of halo each side
            return conv(embedding[:, lo:hi]), a - lo

        groups = norm.groups
        total = tf.zeros([tf.shape(embedding)[0], groups], tf.float64)
        total_sq = tf.zeros_like(total)
        count = 0
        for a, b in bounds:  # pass 1: whole-volume GroupNorm statistics
            x, off = first_conv(a, b)
            own = tf.cast(x[:, 2 * off: 2 * off + 2 * (b - a)], tf.float64)
            grouped = tf.reshape(own, [tf.shape(own)[0], -1, groups, own.shape[-1] // groups])
            total += tf.reduce_sum(grouped, axis=[1, 3])
            total_sq += tf.reduce_sum(tf.square(grouped), axis=[1, 3])
            count += (b - a) * 2 * own.shape[2] * own.shape[3] * (own.shape[-1] // groups)
        mean = total / count
        inv = tf.math.rsqrt(tf.maximum(total_sq / count - tf.square(mean), 0.0) + norm.epsilon)
        m = tf.cast(mean, tf.float32)[:, None, None, None, :, None]
        s = tf.cast(inv, tf.float32)[:, None, None, None, :, None]

        outputs = []
        for a, b in bounds:  # pass 2: normalise, finish G2, keep the slab's own slices
            x, off = first_conv(a, b)
            c = x.shape[-1]
            xg = tf.reshape(tf.cast(x, tf.float32),
                            tf.concat([tf.shape(x)[:4], [groups, c // groups]], 0))
            x = tf.reshape((xg - m) * s, tf.shape(x))
            x = x * tf.cast(norm.gamma, tf.float32) + tf.cast(norm.beta, tf.float32)
            x = out(tf.nn.relu(tf.cast(x, dtype)))
            outputs.append(tf.tanh(tf.cast(x[:, 4 * off: 4 * off + 4 * (b - a)], tf.float32)))
        return tf.concat(outputs, axis=1)[..., 0]


def build_head(img_size: int = 256, width: float = 1.0, name: str = "g2") -> Head:
    """G2 (see Head)."""
    return Head(img_size, width, name)
