"""Generator of CRF-GAN: trunk G1 (latent -> whole low-resolution embedding) and head G2
(embedding slab -> full-resolution sub-volume)."""

from __future__ import annotations

import keras
import tensorflow as tf

from crfgan_tf.core.geometry import (EMBED_FACTOR, check_size, embedding_side, extra_stages,
                                     factor_stages)
from crfgan_tf.networks import slabs
from crfgan_tf.networks.layers import (GroupNorm, UpsampleConv3D, conv_gn_relu,
                                       scaled_channels)

TRUNK_CHANNELS = (512, 512, 256, 128, 64)
HEAD_CHANNELS = 32
EMBED_CHANNELS = 64


def trunk_channels(img_size: int, factor: int = EMBED_FACTOR) -> tuple:
    """G1's block channels at `img_size`: TRUNK_CHANNELS up to 256; past 256 one more
    EMBED_CHANNELS block per doubling of the embedding (geometry's growth rule: 512 has six
    blocks at factor 4; at factor 8 its embedding is 64^3 and G1 is 256's)."""
    extra = extra_stages(img_size) - (factor_stages(factor) - factor_stages(EMBED_FACTOR))
    return TRUNK_CHANNELS + (EMBED_CHANNELS,) * max(extra, 0)


def embedding_channels(width: float = 1.0) -> int:
    """Channels of the embedding shared by G1, G2, hE and the CRF."""
    return scaled_channels(EMBED_CHANNELS, width)


def build_trunk(img_size: int = 256, latent_dim: int = 1024, width: float = 1.0,
                name: str = "g1", num_classes: int = 0,
                factor: int = EMBED_FACTOR) -> keras.Model:
    """G1: latent z -> embedding of the whole volume.

    Dense(latent (+ num_classes) -> 4^3 x 512), then five 3^3 conv + GroupNorm(8) + ReLU blocks with
    512, 512, 256, 128, 64 channels (times `width`). Nearest-neighbour x2 up-sampling
    precedes the 2nd..5th block at 256^3; at 128^3 the last up-sampling is skipped and at
    64^3 the last two, so the embedding is always img_size / 4 per side. At 512^3 a sixth
    block of 64 channels follows a fifth up-sampling (trunk_channels); with factor 8 the
    embedding is img_size / 8 = 64^3 and G1 is the 256^3 one.

    Args:
      img_size: output volume side S (64, 128, 256 or 512).
      latent_dim: size of z.
      width: channel multiplier (1.0 = the reference; small values for tests).
      num_classes: > 0 for a class-conditional G1: its input is z concatenated with the
        one-hot label (as the references build it; `model.SubVolumeGAN.trunk_input`).
      factor: the embedding factor f (geometry; 4, or 8 at 512).

    Returns:
      Model mapping (batch, latent_dim + num_classes) -> (batch, S/f, S/f, S/f, 64 * width).
    """
    check_size(img_size)
    num_up = (embedding_side(img_size, factor) // 4).bit_length() - 1  # 4^3 doubled to S/f
    ch = [scaled_channels(c, width) for c in trunk_channels(img_size, factor)]
    z = keras.Input((latent_dim + num_classes,), name="z")
    x = keras.layers.Dense(4 * 4 * 4 * ch[0], name="fc")(z)
    x = keras.layers.Reshape((4, 4, 4, ch[0]), name="reshape")(x)
    for i, c in enumerate(ch):  # up-sampling fused into the block's conv (UpsampleConv3D)
        x = conv_gn_relu(x, c, 3, 1, 1, name=f"block{i}", upsample=1 <= i <= num_up)
    return keras.Model(z, x, name=name)


class Head(keras.Model):
    """G2: an axial slab of the embedding -> a full-resolution sub-volume.

    x2 up-sampling, 3^3 conv 32 + GroupNorm(8) + ReLU, x2 up-sampling, 3^3 conv 1 + tanh
    (the reference's, factor 4); with factor 8 a second up-sampling block of 32 channels
    (block2) precedes the output. The depth is free: S/(8f) embedding slices give the
    S/8-slice training sub-volume; the whole S/f embedding gives the whole S^3 volume, in
    one call (`__call__`) or slab by slab in bounded memory (`by_slabs`, the same result).

    A functional model (its checkpoint layout is that of every G2 crfgan-tf has written);
    its layers with weights are also kept, untracked, for `by_slabs`.
    Input (batch, d, S/f, S/f, C) -> output (batch, f d, S, S, 1), float32 in [-1, 1].
    """

    def __init__(self, img_size: int = 256, width: float = 1.0, name: str = "g2",
                 factor: int = EMBED_FACTOR, hidden_width: float = 0.0):
        check_size(img_size)
        n = embedding_side(img_size, factor)
        x = emb = keras.Input((None, n, n, embedding_channels(width)), name="embedding")
        blocks = []
        hidden = scaled_channels(HEAD_CHANNELS, hidden_width or width)
        for i in range(1, factor_stages(factor)):
            conv = UpsampleConv3D(hidden, name=f"block{i}_conv")
            norm = GroupNorm(groups=8, epsilon=1e-5, name=f"block{i}_gn")
            x = keras.layers.ReLU(name=f"block{i}_relu")(norm(conv(x)))
            blocks.append((conv, norm))
        out = UpsampleConv3D(1, name="out_conv")
        # tanh and the output in float32 under mixed precision: it is the image itself.
        x = keras.layers.Activation("tanh", dtype="float32", name="tanh")(out(x))
        super().__init__(emb, x, name=name)
        # object.__setattr__: not tracked, so checkpoints keep the functional layout
        object.__setattr__(self, "_slab_layers", (tuple(blocks), out))

    def by_slabs(self, embedding, slab: int):
        """G2 on the whole embedding, `slab` embedding slices at a time; equals
        self(embedding)[..., 0] while memory grows with the slab, not the volume (the
        one-shot G2 holds a (4N)^3 x 32-channel intermediate: 2 GiB per 256^3 volume).

        Every convolution up-samples and pads by one voxel, so each slab is computed with
        a one-slice halo of embedding (after each block the halo's inner slice is exact).
        G2's GroupNorms normalise over the whole volume, so it runs in passes: pass k
        (one per GroupNorm) computes, per slab, blocks 1..k-1 normalised with the
        whole-volume statistics found so far and block k's convolution, merging block
        k's statistics over the slab's own slices (networks.slabs); the last pass
        normalises every block, runs the output conv and tanh, and keeps the slab's own
        slices. Each slab starts after the previous one has finished (inside tf.function
        too, as in the exported `generate`), so one slab's tensors are alive at a time.

        Args:
          embedding: (batch, N, N, N, C).
          slab: embedding slices per slab (>= 1; the last slab may be shorter).

        Returns:
          (batch, fN, fN, fN) float32 volume in [-1, 1].
        """
        blocks, out = self._slab_layers
        n = embedding.shape[1]
        dtype = self.compute_dtype
        embedding = tf.cast(embedding, dtype)
        bounds = [(a, min(a + slab, n)) for a in range(0, n, slab)]
        affines = []  # each finished block's GroupNorm as (scale, shift)
        order = slabs.SlabOrder()

        def forward(a, b, num_blocks):
            """Blocks 1..num_blocks on slab [a, b) with a one-slice halo: the last one's
            convolution output (before its GroupNorm), and the halo's depth."""
            lo = max(a - 1, 0)
            with order.next_slab():
                x = embedding[:, lo:min(b + 1, n)]
            for i, (conv, _) in enumerate(blocks[:num_blocks]):
                if i:  # the previous block's GroupNorm, with its whole-volume statistics
                    x = slabs.normalize_relu(x, affines[i - 1], dtype)
                x = conv(x)
            return x, a - lo

        def own_slices(a, b, k):
            """Block k's convolution output over slab [a, b)'s own slices."""
            x, off = forward(a, b, k)
            scale = 2 ** k  # block k's slices per embedding slice
            return x[:, scale * off: scale * (off + b - a)]

        for k, (_, norm) in enumerate(blocks, start=1):  # whole-volume GroupNorm statistics
            affines.append(slabs.group_norm_over_slabs(
                norm, (own_slices(a, b, k) for a, b in bounds), order))

        outputs = []
        scale = 2 ** (len(blocks) + 1)  # output slices per embedding slice
        for a, b in bounds:  # the last pass: normalise, finish G2, keep the slab's own slices
            x, off = forward(a, b, len(blocks))
            if blocks:
                x = slabs.normalize_relu(x, affines[-1], dtype)
            x = out(x)
            outputs.append(order.finished(
                tf.tanh(tf.cast(x[:, scale * off: scale * (off + b - a)], tf.float32))))
        return tf.concat(outputs, axis=1)[..., 0]


def build_head(img_size: int = 256, width: float = 1.0, name: str = "g2",
               factor: int = EMBED_FACTOR, hidden_width: float = 0.0) -> Head:
    """G2 (see Head). hidden_width: the channel multiplier of its hidden blocks (0:
    `width`; the embedding it reads keeps `width`'s channels)."""
    return Head(img_size, width, name, factor, hidden_width)
