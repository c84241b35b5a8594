"""The TFRecord schema of converted volumes: writing, parsing and reading back.

One `tf.train.Example` per scan. Features (all documented in README.md):

  volume          bytes   int16 little-endian, C order (S, S, S); value = q / 32767
  shape           int64[3]
  case_id         bytes   LUNA16 series UID or file stem
  source          bytes   path of the source file as given to the converter
  modality        bytes   "ct" or "mri"
  original_size   int64[3]  (z, y, x) after reorientation, before trimming
  original_spacing float[3] (z, y, x) mm
  output_spacing  float[3]  (z, y, x) mm
  output_origin   float[3]  (x, y, z) mm, LPS
  window          float[2]  input intensities mapped to -1 and 1 (HU for CT)
  intercept_shift float     HU added for a missing intercept
  air_shift       float     HU added by the air density correction
  trimmed_slices  int64[2]  blank slices removed (inferior, superior)

The int16 encoding keeps 3e-5 resolution in [-1, 1] (0.025 HU for CT) at half the size of
float32; the same `parse_example` is what the training input pipeline builds on.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

VOLUME_SCALE = 32767.0


def compression_of(path: str) -> Optional[str]:
    """The TFRecord compression implied by a file name (`.gz` -> GZIP)."""
    return "GZIP" if path.endswith(".gz") else None


def encode_volume(volume: np.ndarray) -> bytes:
    """float32 [-1, 1] (or already quantized int16) -> little-endian int16 bytes."""
    from crfgan_tf import preprocess  # deferred: SimpleITK costs training ~90 MiB of RSS

    q = volume if volume.dtype == np.int16 else preprocess.quantize(volume)
    return np.ascontiguousarray(q, dtype="<i2").tobytes(order="C")


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def serialize_result(result) -> bytes:
    """Serialises a `preprocess.ScanResult` as a tf.train.Example."""
    features = {
        "volume": _bytes([encode_volume(result.volume)]),
        "shape": _ints(result.volume.shape),
        "case_id": _bytes([result.case_id.encode()]),
        "source": _bytes([result.source.encode()]),
        "modality": _bytes([result.modality.encode()]),
        "original_size": _ints(result.original_size),
        "original_spacing": _floats(result.original_spacing),
        "output_spacing": _floats(result.output_spacing),
        "output_origin": _floats(result.output_origin),
        "window": _floats(result.window),
        "intercept_shift": _floats([result.intercept_shift]),
        "air_shift": _floats([result.air_shift]),
        "trimmed_slices": _ints(result.trimmed_slices),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


FEATURES = {
    "volume": tf.io.FixedLenFeature([], tf.string),
    "shape": tf.io.FixedLenFeature([3], tf.int64),
    "case_id": tf.io.FixedLenFeature([], tf.string),
    "source": tf.io.FixedLenFeature([], tf.string),
    "modality": tf.io.FixedLenFeature([], tf.string),
    "original_size": tf.io.FixedLenFeature([3], tf.int64),
    "original_spacing": tf.io.FixedLenFeature([3], tf.float32),
    "output_spacing": tf.io.FixedLenFeature([3], tf.float32),
    "output_origin": tf.io.FixedLenFeature([3], tf.float32),
    "window": tf.io.FixedLenFeature([2], tf.float32),
    "intercept_shift": tf.io.FixedLenFeature([], tf.float32),
    "air_shift": tf.io.FixedLenFeature([], tf.float32),
    "trimmed_slices": tf.io.FixedLenFeature([2], tf.int64),
}


def decode_volume(volume_bytes: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """int16 bytes -> float32 tensor of `shape` in [-1, 1]."""
    q = tf.io.decode_raw(volume_bytes, tf.int16, little_endian=True)
    return tf.reshape(tf.cast(q, tf.float32) / VOLUME_SCALE, tf.cast(shape, tf.int32))


def parse_example(serialized: tf.Tensor) -> dict:
    """Parses one serialised record into a dict of tensors; `volume` is float32 (S, S, S)."""
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    parsed["volume"] = decode_volume(parsed["volume"], parsed["shape"])
    return parsed


def parse_volume(serialized: tf.Tensor, size: int) -> tf.Tensor:
    """Parses only the volume, with a static (size, size, size) shape (training input)."""
    parsed = tf.io.parse_single_example(
        serialized, {"volume": FEATURES["volume"], "shape": FEATURES["shape"]})
    return tf.ensure_shape(decode_volume(parsed["volume"], parsed["shape"]), (size, size, size))


def list_record_files(file_pattern: str) -> list:
    """Sorted files matching a glob (or comma-separated globs); raises if none match."""
    files = sorted({f for p in file_pattern.split(",") if p for f in glob.glob(p)})
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {file_pattern!r}")
    return files


def raw_record_dataset(files) -> tf.data.Dataset:
    """Serialised records of `files` in file order (compression from each name)."""
    gz = [f for f in files if compression_of(f)]
    if gz and len(gz) != len(files):
        raise ValueError("mixing compressed (.gz) and uncompressed record files is not supported")
    return tf.data.TFRecordDataset(files, compression_type="GZIP" if gz else None)


@dataclasses.dataclass
class VolumeRecord:
    """One record read back; `volume` is float32 (S, S, S) in [-1, 1], canonical LPS."""

    case_id: str
    volume: np.ndarray
    source: str
    modality: str
    original_size: tuple
    original_spacing: tuple
    output_spacing: tuple
    output_origin: tuple
    window: tuple
    intercept_shift: float
    air_shift: float
    trimmed_slices: tuple


def read_volumes(file_pattern: str) -> Iterator[VolumeRecord]:
    """Yields every record of the files matching `file_pattern`, in file order.

    Args:
      file_pattern: a glob, or several separated by commas.
    """
    for serialized in raw_record_dataset(list_record_files(file_pattern)):
        p = parse_example(serialized)
        yield VolumeRecord(
            case_id=p["case_id"].numpy().decode(), volume=p["volume"].numpy(),
            source=p["source"].numpy().decode(), modality=p["modality"].numpy().decode(),
            original_size=tuple(int(v) for v in p["original_size"].numpy()),
            original_spacing=tuple(float(v) for v in p["original_spacing"].numpy()),
            output_spacing=tuple(float(v) for v in p["output_spacing"].numpy()),
            output_origin=tuple(float(v) for v in p["output_origin"].numpy()),
            window=tuple(float(v) for v in p["window"].numpy()),
            intercept_shift=float(p["intercept_shift"].numpy()),
            air_shift=float(p["air_shift"].numpy()),
            trimmed_slices=tuple(int(v) for v in p["trimmed_slices"].numpy()))


# ---- training input pipeline ---------------------------------------------------------

def count_records(files) -> int:
    """Records in `files`: from the converter's manifest.json beside them when it lists
    every file, otherwise by reading them once."""
    by_dir = {}
    for f in files:
        by_dir.setdefault(os.path.dirname(f), []).append(os.path.basename(f))
    total = 0
    for directory, names in by_dir.items():
        path = os.path.join(directory, "manifest.json")
        shards = {}
        if os.path.exists(path):
            with open(path) as fh:
                shards = json.load(fh).get("shards", {})
        if all(n in shards for n in names):
            total += sum(shards[n]["num_records"] for n in names)
        else:
            total += sum(1 for _ in raw_record_dataset([os.path.join(directory, n) for n in names]))
    return total


def training_example(volume: tf.Tensor, index: tf.Tensor, img_size: int, latent_dim: int,
                     seed: int) -> dict:
    """One training example from a volume and its global stream index.

    The crop start r is a multiple of 4 drawn uniformly from 0..7S/8, so that the real
    crop x[r : r + S/8] and the generator's embedding slab [r/4, r/4 + S/32) cover the same
    slices (the reference draws any r and misaligns the two by up to 3 slices). r and the
    three latents are stateless functions of (seed, index): a resumed run sees exactly the
    stream an uninterrupted one would, and replicas need no shared random state.
    """
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])
    k = tf.random.stateless_uniform([], seed=key, minval=0, maxval=7 * img_size // 32 + 1,
                                    dtype=tf.int32)
    r = 4 * k
    z = tf.random.stateless_normal([2, latent_dim], seed=key + tf.constant([0, 1 << 40], tf.int64))
    # z_c (the CRF phase's) from its own key, so that z_d and z_g are those of earlier runs
    z_c = tf.random.stateless_normal([latent_dim], seed=key + tf.constant([0, 2 << 40], tf.int64))
    volume = volume[..., None]
    return {"volume": volume, "crop": volume[r:r + img_size // 8], "position": r,
            "z_d": z[0], "z_g": z[1], "z_c": z_c}


def _epoch_records(files, seed: int, epoch: tf.Tensor, block: int) -> tf.data.Dataset:
    """Epoch `epoch` of the raw records: file order permuted and every block of `block`
    consecutive records permuted, both by stateless draws from (seed, epoch).

    Stateless on purpose: Dataset.shuffle with a per-epoch tensor seed depends on (and
    breaks with) TensorFlow's global seed; this order depends on nothing but its inputs.
    """
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    order = tf.random.experimental.stateless_shuffle(tf.constant(files), seed=key)
    compression = "GZIP" if compression_of(files[0]) else ""
    blocks = tf.data.TFRecordDataset(order, compression_type=compression).batch(block)

    def permute(j, records):
        keys = tf.random.stateless_uniform(tf.shape(records), seed=key + tf.stack([1, j]))
        return tf.gather(records, tf.argsort(keys))

    return blocks.enumerate().map(permute).unbatch()


def make_train_dataset(file_pattern: str, img_size: int, batch_size: int, latent_dim: int,
                       seed: int = 0, start_step: int = 0, shuffle_buffer: int = 8,
                       num_records: Optional[int] = None) -> tf.data.Dataset:
    """The training stream: parse, shuffle, repeat, crop, batch, prefetch (autotuned).

    Epoch e visits every record once: the shard files in an order permuted by (seed, e),
    and within them blocks of `shuffle_buffer` records permuted (see _epoch_records).
    Elements are numbered globally; element i gets its crop position and latents from
    (seed, i). Starting at `start_step` skips the first start_step * batch_size elements
    (reading at most one epoch of raw records), which makes a resumed run identical to an
    uninterrupted one.

    Args:
      file_pattern: glob(s) of training records of side `img_size`.
      img_size: S.
      batch_size: global batch size.
      latent_dim: size of z.
      seed: stream seed.
      start_step: first step to produce.
      shuffle_buffer: records permuted together (each is S^3 int16 in memory).
      num_records: records per epoch (default: from manifest.json or by counting).

    Returns:
      Dataset of dicts: volume (B, S, S, S, 1), crop (B, S/8, S, S, 1), position (B,)
      int32, z_d, z_g and z_c (B, latent_dim), float32.
    """
    files = list_record_files(file_pattern)
    raw_record_dataset(files)  # rejects a mix of compressed and uncompressed files
    n = num_records or count_records(files)
    if n < 1:
        raise ValueError(f"no records in {file_pattern!r}")
    first = start_step * batch_size
    first_epoch = first // n
    records = tf.data.Dataset.range(first_epoch, 1 << 40).flat_map(
        lambda e: _epoch_records(files, seed, e, shuffle_buffer))
    records = records.skip(first - first_epoch * n)
    stream = tf.data.Dataset.zip(records, tf.data.Dataset.range(first, 1 << 60))
    stream = stream.map(
        lambda s, i: training_example(parse_volume(s, img_size), i, img_size, latent_dim, seed),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    stream = stream.batch(batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return stream.with_options(options).prefetch(tf.data.AUTOTUNE)
