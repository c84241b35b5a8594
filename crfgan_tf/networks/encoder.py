"""The half-encoder hE: image -> embedding (the inverse of the head G2)."""

from __future__ import annotations

import keras
import tensorflow as tf

from crfgan_tf.core.geometry import check_size, EMBED_FACTOR, factor_stages
from crfgan_tf.networks import slabs
from crfgan_tf.networks.generator import embedding_channels
from crfgan_tf.networks.layers import conv_gn_relu, scaled_channels

# hE's blocks: (name, channels at width 1 (None: the embedding's), kernel, stride); each
# pads one voxel per side
BLOCKS = (("block1", 32, 4, 2), ("block2", 32, 3, 1), ("block3", None, 4, 2))
# at embedding factor 8 (512^3 only) a third stride-2 block of 32 channels comes before
# the last
BLOCKS_FACTOR_8 = (("block1", 32, 4, 2), ("block2", 32, 3, 1), ("block3", 32, 4, 2),
                   ("block4", None, 4, 2))
# input slices beyond a slab on each side that make the blocks' output exact over the slab,
# per embedding slice of the factor (two stride-2 4-tap convolutions and a 3-tap one need
# 8 at factor 4; encode_by_slabs checks it)
SLAB_HALO = 2 * EMBED_FACTOR


def encoder_blocks(factor: int = EMBED_FACTOR) -> tuple:
    """hE's BLOCKS at embedding factor `factor` (4 or 8)."""
    return {2: BLOCKS, 3: BLOCKS_FACTOR_8}[factor_stages(factor)]


def build_encoder(img_size: int = 256, width: float = 1.0, name: str = "encoder",
                  factor: int = EMBED_FACTOR) -> keras.Model:
    """hE: conv 4^3/2 32, conv 3^3/1 32, conv 4^3/2 64, each + GroupNorm(8) + ReLU (with
    factor 8, conv 4^3/2 32 + GroupNorm + ReLU before the last: BLOCKS_FACTOR_8).

    Maps a sub-volume (S/8, S, S) to its embedding slab (S/(8f), S/f, S/f, 64) and the whole
    volume (S, S, S) to the whole embedding; the depth is free (any multiple of f).
    `encode_by_slabs` computes the whole embedding in bounded memory.

    Returns:
      Model mapping (batch, d, S, S, 1) -> (batch, d/f, S/f, S/f, 64 * width).
    """
    check_size(img_size)
    x = x_in = keras.Input((None, img_size, img_size, 1), name="volume")
    for block, channels, kernel, stride in encoder_blocks(factor):
        filters = embedding_channels(width) if channels is None else scaled_channels(channels, width)
        x = conv_gn_relu(x, filters, kernel, stride, 1, name=block)
    return keras.Model(x_in, x, name=name)


def _exact_conv(conv, x, lo, hi, depth, kernel, stride):
    """`conv` (padding one voxel per side) on the input slices [lo, hi) of a tensor `depth`
    slices deep: its output cropped to the slices it computes exactly, i.e. those whose
    window lies inside [lo, hi) or reaches past the tensor's true ends, where zero padding
    is what the whole-tensor convolution sees too.

    Returns:
      (output, its slices' range [lo', hi'), the output's whole depth).
    """
    if lo % stride:  # a slab starting off the stride grid computes other output slices
        skip = stride - lo % stride
        x, lo = x[:, skip:], lo + skip
    y = conv(x)
    out_depth = depth // stride
    new_lo = 0 if lo == 0 else -(-(lo + 1) // stride)
    new_hi = out_depth if hi == depth else (hi + 1 - kernel) // stride + 1
    first = lo // stride  # the global index of y's first slice
    return y[:, new_lo - first: new_hi - first], new_lo, new_hi, out_depth


def encoder_factor(encoder: keras.Model) -> int:
    """The embedding factor build_encoder built `encoder` for: its input side over its
    output side."""
    return encoder.input_shape[2] // encoder.output_shape[2]


def encode_by_slabs(encoder: keras.Model, volume, slab: int, prepare=None):
    """hE on the whole volume, `slab` embedding slices (f x slab volume slices, f the
    encoder's embedding factor, encoder_factor) at a time: encoder(prepare(volume)) up to
    float rounding, in memory that grows with the slab.

    The one-shot pass holds two (S/2)^3 x 32-channel tensors at once (4 GiB for one 512^3
    volume in float32). Each block's GroupNorm normalises over the whole volume, so the
    blocks run in passes over the slabs: pass k computes blocks 1..k-1 with the whole-
    volume statistics found so far and block k's convolution, and accumulates block k's
    statistics over each slab's own slices (per channel, merged in float64); the last pass
    also keeps the last convolution's output, which is the embedding's size, and
    normalises it. The convolutions of block 1 run three times, of block 2 twice (at
    factor 8: four and three times, block 3 twice). Each slab is computed from its input
    slices with 2f more on each side (SLAB_HALO at f = 4), and each slab
    starts after the previous one has finished (inside tf.function too), so one slab's
    tensors are alive at a time.

    Args:
      encoder: build_encoder's model.
      volume: (batch, S, S, S, 1), a static depth S; any dtype `prepare` accepts.
      slab: embedding slices per slab (>= 1; the last may be shorter).
      prepare: applied to each slab of input slices (element-wise, e.g. dequantising
        int16), so that the whole volume is never converted; default: none.

    Returns:
      (batch, S/f, S/f, S/f, C) in the encoder's compute dtype.
    """
    if slab < 1:
        raise ValueError(f"slab must be >= 1 embedding slice, got {slab}")
    depth = volume.shape[1]
    factor = encoder_factor(encoder)
    if depth is None or depth % factor:
        raise ValueError(f"encode_by_slabs needs a static depth divisible by {factor}, "
                         f"got {depth}")
    blocks = [(encoder.get_layer(f"{name}_conv"), encoder.get_layer(f"{name}_gn"), kernel,
               stride) for name, _, kernel, stride in encoder_blocks(factor)]
    halo = SLAB_HALO * factor // EMBED_FACTOR
    dtype = encoder.compute_dtype
    side = depth // factor
    bounds = [(a, min(a + slab, side)) for a in range(0, side, slab)]
    affines = []  # each finished block's GroupNorm as (scale, shift)
    order = slabs.SlabOrder()

    def forward(a, b, num_blocks):
        """Blocks 1..num_blocks on embedding slab [a, b): the last block's convolution
        output (before its GroupNorm) over the slab's own slices."""
        lo, hi = max(factor * a - halo, 0), min(factor * b + halo, depth)
        with order.next_slab():
            x = volume[:, lo:hi]
        x = prepare(x) if prepare is not None else x
        size = depth
        for i, (conv, _, kernel, stride) in enumerate(blocks[:num_blocks]):
            if i:
                x = slabs.normalize_relu(x, affines[i - 1], dtype)
            x, lo, hi, size = _exact_conv(conv, x, lo, hi, size, kernel, stride)
        per = size // side  # this block's slices per embedding slice
        if not (lo <= per * a and per * b <= hi):
            raise AssertionError(f"halo {halo} too small: block {num_blocks} is exact over "
                                 f"[{lo}, {hi}), slab needs [{per * a}, {per * b})")
        return x[:, per * a - lo: per * b - lo]

    kept = []  # the last pass's convolution outputs, the embedding before its GroupNorm

    def last_pass(a, b):
        kept.append(forward(a, b, len(blocks)))
        return kept[-1]

    for k in range(1, len(blocks) + 1):
        slab_outputs = (last_pass(a, b) if k == len(blocks) else forward(a, b, k)
                        for a, b in bounds)
        affines.append(slabs.group_norm_over_slabs(blocks[k - 1][1], slab_outputs, order))
    outputs = []
    for x in kept:
        with order.next_slab():
            outputs.append(order.finished(slabs.normalize_relu(x, affines[-1], dtype)))
    return tf.concat(outputs, axis=1)
