"""The training input stream: records -> (volume, crop, position, latents[, labels]) batches.

Epoch e visits every record once, in a full permutation of all records across all shards
drawn from (seed, e); each record is read by seeking to it in its shard. Element i of the
stream gets its crop position and latents from (seed, i) alone, so a resumed run sees
exactly the stream an uninterrupted one would, and replicas need no shared random state.
The crop and slab geometry is crfgan_tf.core.geometry's.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from crfgan_tf.core import geometry, intensity
from crfgan_tf.data import records
from crfgan_tf.data.records import RecordsError


def balanced_order(labels: np.ndarray, seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """n record indices for epoch `epoch` drawn with replacement so that every class
    present is equally likely (each record with probability 1 / (K * its class's count)),
    statelessly from (seed, epoch)."""
    counts = np.bincount(labels[labels >= 0])
    present = np.count_nonzero(counts)
    weights = np.where(labels >= 0, 1.0 / (present * np.maximum(counts[np.maximum(labels, 0)], 1)),
                       0.0)
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.stateless_categorical(tf.math.log(tf.constant(weights[None], tf.float32)),
                                           len(labels), seed=key, dtype=tf.int64)[0]


def training_example(volume: tf.Tensor, index: tf.Tensor, img_size: int, latent_dim: int,
                     seed: int, label: Optional[tf.Tensor] = None, num_classes: int = 0,
                     fake_labels: str = "batch", factor: int = geometry.EMBED_FACTOR) -> dict:
    """One training example from a volume and its global stream index.

    The crop start r is a multiple of the embedding factor f (4; 8 with
    `embedding_factor=8`) drawn uniformly from 0..7S/8, so that the real crop
    x[r : r + S/8] and the generator's embedding slab [r/f, r/f + S/(8f)) cover the same
    slices (the reference draws any r and misaligns the two by up to 3 slices). r and the
    three latents are stateless functions of (seed, index): a resumed run sees exactly the
    stream an uninterrupted one would, and replicas need no shared random state.

    An int16 `volume` (the stored values) stays int16 and only the crop is dequantised to
    float32: the models dequantise the whole volume where they use it
    (SubVolumeGAN.real_volume), so the stream's buffers hold half the bytes (a 512^3
    volume: 256 MiB, not 512).

    With num_classes > 0 the example also has `label` (the record's) and `fake_label`, the
    class its generated samples are conditioned on: the same label (fake_labels="batch",
    as the references do) or one drawn uniformly from (seed, index) ("uniform").
    """
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])
    k = tf.random.stateless_uniform([], seed=key, minval=0,
                                    maxval=geometry.num_positions(img_size, factor),
                                    dtype=tf.int32)
    r = geometry.position(k, factor)
    z = tf.random.stateless_normal([2, latent_dim], seed=key + tf.constant([0, 1 << 40], tf.int64))
    # z_c (the CRF phase's) from its own key, so that z_d and z_g are those of earlier runs
    z_c = tf.random.stateless_normal([latent_dim], seed=key + tf.constant([0, 2 << 40], tf.int64))
    volume = volume[..., None]
    crop = volume[r:r + geometry.crop_depth(img_size)]
    if volume.dtype == tf.int16:  # stored values: only the crop is made float32 here
        crop = intensity.dequantize(tf.cast(crop, tf.float32))
    out = {"volume": volume, "crop": crop, "position": r,
           "z_d": z[0], "z_g": z[1], "z_c": z_c}
    if num_classes:
        check = tf.debugging.assert_less(
            label, num_classes, message=f"a record's label is >= `num_classes={num_classes}`")
        with tf.control_dependencies([check, tf.debugging.assert_non_negative(
                label, message="a record has no label (converted without `labels_csv`)")]):
            out["label"] = tf.identity(label)
        out["fake_label"] = label if fake_labels == "batch" else tf.random.stateless_uniform(
            [], seed=key + tf.constant([0, 3 << 40], tf.int64), maxval=num_classes,
            dtype=tf.int32)
    return out


def epoch_order(num_records: int, seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """The record indices of epoch `epoch`: a full permutation of 0..n-1 drawn statelessly
    from (seed, epoch) (Dataset.shuffle would depend on TensorFlow's global seed)."""
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(num_records, dtype=tf.int64),
                                                    seed=key)


def _records_by_index(files, counts, order: tf.data.Dataset) -> tf.data.Dataset:
    """The serialised records of global indices `order` (files concatenated), read by
    seeking: a record costs one read of itself whatever its position."""
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    file_names = tf.constant(files)
    boundaries = tf.constant(starts[1:])

    def read(index):
        f = tf.searchsorted(boundaries, [index], side="right")[0]
        local = index - tf.gather(tf.constant(starts), f)
        return tf.data.TFRecordDataset(tf.gather(file_names, f)).skip(local).take(1)

    return order.interleave(read, cycle_length=4, block_length=1,
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _records_interleaved(files, seed: int, epoch: tf.Tensor, buffer: int) -> tf.data.Dataset:
    """GZIP records cannot be sought: epoch `epoch` reads every shard at once in a
    permuted order, one record from each in turn, through a shuffle buffer."""
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    order = tf.random.experimental.stateless_shuffle(tf.constant(files), seed=key)
    serialized = tf.data.Dataset.from_tensor_slices(order).interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=len(files), block_length=1, deterministic=True)
    blocks = serialized.batch(buffer)

    def permute(j, block):
        keys = tf.random.stateless_uniform(tf.shape(block), seed=key + tf.stack([1, j]))
        return tf.gather(block, tf.argsort(keys))

    return blocks.enumerate().map(permute).unbatch()


def make_train_dataset(file_pattern: str, img_size: int, batch_size: int, latent_dim: int,
                       seed: int = 0, start_step: int = 0, shuffle_buffer: int = 8,
                       num_records: Optional[int] = None, num_classes: int = 0,
                       fake_labels: str = "batch", balance_classes: bool = False,
                       factor: int = geometry.EMBED_FACTOR) -> tf.data.Dataset:
    """The training stream: read, parse, crop, batch, prefetch (autotuned).

    Epoch e visits every record once, in a full permutation of all records across all
    shards drawn from (seed, e); each record is read by seeking to it in its shard. (GZIP
    shards cannot be sought: their epochs read all shards interleaved, in a permuted
    order, through blocks of `shuffle_buffer` records permuted together.) Elements are
    numbered globally; element i gets its crop position and latents from (seed, i).
    Starting at `start_step` skips the first start_step * batch_size elements without
    reading them, which makes a resumed run identical to an uninterrupted one.

    Args:
      file_pattern: glob(s) of training records of side `img_size`.
      img_size: S.
      batch_size: global batch size.
      latent_dim: size of z.
      seed: stream seed.
      start_step: first step to produce.
      shuffle_buffer: GZIP records only: records permuted together (each S^3 int16).
      num_records: records per epoch (default: from manifest.json or the files).
      num_classes, fake_labels: > 0 adds `label` and `fake_label` (training_example).
      balance_classes: epochs draw n records with replacement, every class equally
        likely (balanced_order), instead of a permutation (uncompressed records only).

    Returns:
      Dataset of dicts: volume (B, S, S, S, 1) int16 as stored (intensity.dequantize
      maps it to [-1, 1]), crop (B, S/8, S, S, 1) float32 in [-1, 1], position (B,) int32,
      z_d, z_g and z_c (B, latent_dim) float32.
    """
    files = records.list_record_files(file_pattern)
    records.raw_record_dataset(files)  # rejects a mix of compressed and uncompressed files
    counts = records.records_per_file(files)
    n = num_records or sum(counts)
    if n < 1:
        raise RecordsError(f"no records in {file_pattern!r}")
    if balance_classes and records.compression_of(files[0]):
        raise RecordsError("`balance_classes` needs uncompressed records (GZIP shards "
                           "cannot be read by index); convert with `compression=none`")
    first = start_step * batch_size
    serialized = _serialized_stream(files, counts, n, seed, first, shuffle_buffer,
                                    balance_classes)
    stream = tf.data.Dataset.zip(serialized, tf.data.Dataset.range(first, 1 << 60))

    def example(record, i):
        if not num_classes:
            return training_example(records.parse_volume(record, img_size, quantized=True),
                                    i, img_size, latent_dim, seed, factor=factor)
        volume, label = records.parse_volume(record, img_size, with_label=True, quantized=True)
        return training_example(volume, i, img_size, latent_dim, seed, label, num_classes,
                                fake_labels, factor)

    stream = stream.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    stream = stream.batch(batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return stream.with_options(options).prefetch(tf.data.AUTOTUNE)


def _serialized_stream(files, counts, n: int, seed: int, first: int, shuffle_buffer: int,
                       balance_classes: bool) -> tf.data.Dataset:
    """The serialised records from global element `first` on, epoch after epoch."""
    first_epoch = first // n
    epochs = tf.data.Dataset.range(first_epoch, 1 << 40)
    if records.compression_of(files[0]):
        stream = epochs.flat_map(lambda e: _records_interleaved(files, seed, e, shuffle_buffer))
        return stream.skip(first - first_epoch * n)
    if balance_classes:
        labels = records.record_labels(files)
        draw = lambda e: balanced_order(labels, seed, e)
    else:
        draw = lambda e: epoch_order(n, seed, e)
    order = epochs.flat_map(lambda e: tf.data.Dataset.from_tensor_slices(draw(e)))
    return _records_by_index(files, counts, order.skip(first - first_epoch * n))


def synthetic_batch(img_size: int, batch: int, latent_dim: int, seed: int = 0,
                    factor: int = geometry.EMBED_FACTOR) -> dict:
    """A training batch of uniform random volumes, as make_train_dataset's batches are
    shaped: crop starts cycled over every position, each crop cut at its start, latents
    normal (profiling and tests; tf.random.Generator from `seed`)."""
    g = tf.random.Generator.from_seed(seed)
    volume = g.uniform((batch, img_size, img_size, img_size, 1), -1, 1)
    positions = [geometry.position(i % geometry.num_positions(img_size, factor), factor)
                 for i in range(batch)]
    depth = geometry.crop_depth(img_size)
    return {"volume": volume, "crop": tf.stack([volume[i, r:r + depth] for i, r in
                                                enumerate(positions)]),
            "position": tf.constant(positions, tf.int32),
            "z_d": g.normal((batch, latent_dim)), "z_g": g.normal((batch, latent_dim)),
            "z_c": g.normal((batch, latent_dim))}
