"""3D differentiable augmentation of what the discriminators see (DiffAugment, Zhao et al.
2020; ADA, Karras et al. 2020), for volumes.

Every transform is applied, with probability p per example and transform, to the real and
the generated volumes alike wherever D sees them, in D's update and in G's: D never sees
an un-augmented volume, so the augmentation does not leak into what G learns to draw,
while G's gradients pass through it (each transform is differentiable in the volume).
Left-right and other flips are deliberately absent: chest anatomy is asymmetric (the right
lung is the larger), and a flip-invariant D would let G draw mirrored chests.

Transforms, on (batch, D, H, W, 1) volumes in [-1, 1] (the training window):
  translation: an integer shift of up to 1/8 of each side, independently per axis; the
               voxels shifted in are -1 (the window floor: air);
  cutout:      a box of half of each side at a uniform position set to 0;
  intensity:   x -> (x - c) * s + c + b in HU terms: contrast s in [0.9, 1.1] about
               c = -500 HU, brightness b in [-50, 50] HU (converted with the window).

Randomness is stateless: the parameters are a function of (seed, step, call site,
replica), so a resumed run augments exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from crfgan_tf.core.intensity import CT_WINDOW
from crfgan_tf.models.options import AUGMENT_TRANSFORMS as TRANSFORMS
TRANSLATION = 1.0 / 8.0
CUTOUT = 0.5
CONTRAST = (0.9, 1.1)
BRIGHTNESS_HU = 50.0
CONTRAST_CENTRE_HU = -500.0


def _apply(mask, new, old):
    """new where the per-example `mask` (batch,) is true, else old."""
    m = tf.cast(tf.reshape(mask, [-1, 1, 1, 1, 1]), old.dtype)
    return new * m + old * (1 - m)


def _shift_axis(x, shift, axis):
    """x shifted by per-example integer `shift` along spatial `axis` (1..3); voxels shifted
    in are -1. A gather (differentiable in x)."""
    n = tf.shape(x)[axis]
    src = tf.range(n)[None, :] - shift[:, None]  # (batch, n): where each voxel comes from
    valid = (src >= 0) & (src < n)
    moved = tf.gather(x, tf.clip_by_value(src, 0, n - 1), axis=axis, batch_dims=1)
    shape = [-1, 1, 1, 1, 1]
    shape[axis] = n
    keep = tf.reshape(tf.cast(valid, x.dtype), tf.stack(shape))
    return moved * keep - (1 - keep)


def translation(x, seed):
    out = x
    for axis in (1, 2, 3):
        n = tf.shape(x)[axis]
        limit = tf.cast(tf.round(tf.cast(n, tf.float32) * TRANSLATION), tf.int32)
        shift = tf.random.stateless_uniform([tf.shape(x)[0]], seed=seed + [0, axis],
                                            minval=-limit, maxval=limit + 1, dtype=tf.int32)
        out = _shift_axis(out, shift, axis)
    return out


def cutout(x, seed):
    batch = tf.shape(x)[0]
    keep = tf.ones_like(x[..., 0], dtype=x.dtype)
    masks = []
    for axis in (1, 2, 3):
        n = tf.shape(x)[axis]
        size = tf.cast(tf.cast(n, tf.float32) * CUTOUT, tf.int32)
        start = tf.random.stateless_uniform([batch], seed=seed + [1, axis], minval=0,
                                            maxval=n - size + 1, dtype=tf.int32)
        idx = tf.range(n)[None, :]
        masks.append((idx >= start[:, None]) & (idx < start[:, None] + size))  # (batch, n)
    box = (masks[0][:, :, None, None] & masks[1][:, None, :, None] & masks[2][:, None, None, :])
    keep = keep * (1 - tf.cast(box, x.dtype))
    return x * keep[..., None]  # the box becomes 0


def intensity(x, seed, window: Sequence[float]):
    low, high = (float(v) for v in window)
    unit = 2.0 / (high - low)  # [-1, 1] units per HU
    centre = (CONTRAST_CENTRE_HU - low) * unit - 1.0
    batch = tf.shape(x)[0]
    s = tf.random.stateless_uniform([batch, 1, 1, 1, 1], seed=seed + [2, 1],
                                    minval=CONTRAST[0], maxval=CONTRAST[1], dtype=x.dtype)
    b = tf.random.stateless_uniform([batch, 1, 1, 1, 1], seed=seed + [2, 2],
                                    minval=-BRIGHTNESS_HU * unit, maxval=BRIGHTNESS_HU * unit,
                                    dtype=x.dtype)
    return (x - centre) * s + centre + b


def augment(x, transforms: Sequence[str], p, seed, window=CT_WINDOW):
    """Each transform of `transforms`, in that order, applied to each example with
    probability p.

    Args:
      x: (batch, D, H, W, 1) volumes.
      transforms: names from TRANSFORMS.
      p: probability (python float or scalar tensor).
      seed: int32/int64 [2] stateless seed; distinct per call site and step.
      window: the intensity window of [-1, 1] (HU for CT).
    """
    if not transforms:
        return x
    seed = tf.cast(seed, tf.int64)
    batch = tf.shape(x)[0]
    for k, name in enumerate(transforms):
        step_seed = seed + tf.constant([0, 1000], tf.int64) * (k + 1)
        use = tf.random.stateless_uniform([batch], seed=step_seed + [0, 7]) < tf.cast(p, tf.float32)
        if name not in TRANSFORMS:
            raise ValueError(f"unknown transform {name!r}; one of {TRANSFORMS}")
        if name == "translation":
            new = translation(x, step_seed)
        elif name == "cutout":
            new = cutout(x, step_seed)
        else:
            new = intensity(x, step_seed, window)
        x = _apply(use, new, x)
    return x
