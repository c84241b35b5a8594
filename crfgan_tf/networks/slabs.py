"""Networks run slab by slab in bounded memory: the whole-volume GroupNorm statistics
gathered over slabs, and the order that keeps one slab's tensors alive at a time.

G2's `Head.by_slabs` (the exported `generate`) and hE's `encode_by_slabs` (the CRF phase
with `--crf_encoder_slab`) both run their blocks in passes over axial slabs: a block's
GroupNorm normalises over the whole volume, so pass k finds block k's statistics, slab by
slab, before any later block can run. This module is the one place those statistics are
merged, turned into the GroupNorm's multiply-add and applied, and the one place the slabs
are put in order.
"""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf


def moments(x):
    """Per (example, channel) statistics of a slab (batch, d, h, w, C) over its voxels:
    (count, mean, sum of squared deviations from the mean), mean and sum in float64."""
    x = tf.cast(x, tf.float32)
    mean = tf.reduce_mean(x, axis=(1, 2, 3))
    m2 = tf.reduce_sum(tf.math.squared_difference(x, mean[:, None, None, None]),
                       axis=(1, 2, 3))
    return int(np.prod(x.shape[1:4])), tf.cast(mean, tf.float64), tf.cast(m2, tf.float64)


def merge_moments(acc, new):
    """Chan et al.'s pairwise update of (count, mean, sum of squared deviations): the
    statistics of two slabs together; `acc` None is nothing yet."""
    if acc is None:
        return new
    n_a, mean_a, m2_a = acc
    n_b, mean_b, m2_b = new
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + tf.square(delta) * (n_a * n_b / n)


def group_norm_affine(merged, norm):
    """The whole volume's GroupNorm `norm` (networks.layers.GroupNorm) as float32 per
    (example, channel) (scale, shift), shaped to broadcast over (batch, d, h, w, C), from
    the volume's per-channel `merged` moments (merge_moments)."""
    count, mean, m2 = merged
    channels = mean.shape[-1]
    per_group = channels // norm.groups
    grouped_mean = tf.reshape(mean, (-1, norm.groups, per_group))
    group_mean = tf.reduce_mean(grouped_mean, axis=-1, keepdims=True)
    group_m2 = tf.reduce_sum(tf.reshape(m2, (-1, norm.groups, per_group))
                             + count * tf.square(grouped_mean - group_mean), axis=-1,
                             keepdims=True)
    shape = tf.shape(grouped_mean)
    per_channel = lambda g: tf.cast(tf.reshape(tf.broadcast_to(g, shape), (-1, channels)),
                                    tf.float32)
    scale, shift = norm.scale_shift(per_channel(group_mean),
                                    per_channel(group_m2 / (count * per_group)))
    return scale[:, None, None, None, :], shift[:, None, None, None, :]


def group_norm_over_slabs(norm, slab_outputs, order):
    """One statistics pass: the whole volume's GroupNorm `norm` as group_norm_affine's
    (scale, shift), from `slab_outputs` (an iterable that builds each slab's tensor when
    asked, over the slab's own slices), each slab put after the previous one by `order`."""
    merged = None
    for x in slab_outputs:
        merged = merge_moments(merged, moments(x))
        order.finished(merged[2])
    return group_norm_affine(merged, norm)


def normalize_relu(x, affine, dtype):
    """A block's GroupNorm (group_norm_affine's (scale, shift)) and ReLU on a slab, in
    `dtype`."""
    scale, shift = affine
    return tf.nn.relu(tf.cast(tf.cast(x, tf.float32) * scale + shift, dtype))


class SlabOrder:
    """Puts the slabs of a traced function in order: `with order.next_slab():` around a
    slab's first op (reading its input slices) makes it wait for the tensor the previous
    slab `finished`. Without it TensorFlow may run independent slabs side by side and hold
    them all at once. Eagerly, ops run in order anyway and this does nothing."""

    def __init__(self):
        self._last = None

    def next_slab(self):
        if self._last is None:
            return contextlib.nullcontext()
        return tf.control_dependencies([self._last])

    def finished(self, tensor):
        """`tensor` is what the previous slab computes last; the next slab waits for it."""
        self._last = tensor
        return tensor
