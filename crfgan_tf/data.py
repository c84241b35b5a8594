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
  label           int64     class index (only when converted with --labels_csv)

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
    if getattr(result, "label", None) is not None:
        features["label"] = _ints([result.label])
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
    "label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),  # -1: no label
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


def parse_volume(serialized: tf.Tensor, size: int, with_label: bool = False):
    """Parses only the volume, with a static (size, size, size) shape (training input);
    with_label: (volume, int32 label, -1 when the record has none)."""
    keys = ("volume", "shape", "label") if with_label else ("volume", "shape")
    parsed = tf.io.parse_single_example(serialized, {k: FEATURES[k] for k in keys})
    volume = tf.ensure_shape(decode_volume(parsed["volume"], parsed["shape"]), (size, size, size))
    return (volume, tf.cast(parsed["label"], tf.int32)) if with_label else volume


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
    label: Optional[int] = None  # class index; None for records converted without labels


def read_volumes(file_pattern: str) -> Iterator[VolumeRecord]:
    """Yields every record of the files matching `file_pattern`, in file order.

    Args:
      file_pattern: a glob, or several separated by commas.

    Raises:
      RecordsError: a damaged file (named).
    """
    files = list_record_files(file_pattern)
    for serialized in _named_errors(raw_record_dataset(files), files):
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
            trimmed_slices=tuple(int(v) for v in p["trimmed_slices"].numpy()),
            label=int(p["label"]) if int(p["label"]) >= 0 else None)


# ---- training input pipeline ---------------------------------------------------------

class RecordsError(ValueError):
    """Training records that are missing, damaged or of another size; names the file."""


def _manifest(directory: str) -> dict:
    path = os.path.join(directory, "manifest.json")
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


def scan_record_lengths(path: str) -> list:
    """Lengths of the records of an uncompressed TFRecord file, from their headers alone
    (each record is length, crc, data, crc; the data is skipped, not read).

    Raises:
      RecordsError: the file ends inside a record (truncated), naming it.
    """
    lengths = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            header = f.read(12)
            if len(header) < 12:
                raise RecordsError(f"{path} is truncated: it ends inside the header of record "
                                   f"{len(lengths)} (byte {pos} of {size})")
            n = int.from_bytes(header[:8], "little")
            pos += 12 + n + 4
            if pos > size:
                raise RecordsError(f"{path} is truncated: record {len(lengths)} needs bytes up "
                                   f"to {pos}, the file has {size}")
            f.seek(pos)
            lengths.append(n)
    return lengths


def records_per_file(files) -> list:
    """Records in each of `files`: from the converter's manifest.json beside them, else
    from the record headers (uncompressed) or by reading the file once (GZIP)."""
    counts = []
    for f in files:
        shards = _manifest(os.path.dirname(f)).get("shards", {})
        entry = shards.get(os.path.basename(f))
        if entry is not None and os.path.getsize(f) == entry.get("bytes", os.path.getsize(f)):
            counts.append(int(entry["num_records"]))
        elif compression_of(f):
            counts.append(sum(1 for _ in _named_errors(raw_record_dataset([f]), [f])))
        else:
            counts.append(len(scan_record_lengths(f)))
    return counts


def count_records(files) -> int:
    """Records in `files` (see records_per_file)."""
    return sum(records_per_file(files))


def _first_record(path: str) -> bytes:
    """The first serialised record of a file, read without TensorFlow ops."""
    import gzip

    opener = gzip.open if compression_of(path) else open
    with opener(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12:
            raise RecordsError(f"{path} holds no record (empty or truncated)")
        n = int.from_bytes(header[:8], "little")
        payload = f.read(n)
    if len(payload) < n:
        raise RecordsError(f"{path} is truncated inside its first record")
    return payload


def check_records(file_pattern: str, img_size: int) -> list:
    """The training record files, checked before anything is built: they exist, and their
    volumes are img_size^3 (from manifest.json's settings, else the first record).

    Returns:
      The sorted file list.

    Raises:
      RecordsError: no files match (with the command that makes them), or the size differs
        (with both sizes and the two ways out).
    """
    try:
        files = list_record_files(file_pattern)
    except FileNotFoundError:
        first = file_pattern.split(",")[0]
        out = os.path.dirname(first) or "."
        raise RecordsError(
            f"--train_records: no TFRecord files match {file_pattern!r}. Convert the scans "
            f"first: python -m data_prep.convert --dataset=luna16|gsp|generic "
            f"--input_dir=<archive> --output_dir={out} --size={img_size}") from None
    for f in files:
        size = _manifest(os.path.dirname(f)).get("settings", {}).get("size")
        source = "manifest.json"
        if size is None:
            example = tf.train.Example.FromString(_first_record(f))
            shape = list(example.features.feature["shape"].int64_list.value)
            size, source = (shape[0] if len(shape) == 3 and len(set(shape)) == 1 else shape), \
                "its first record"
        if size != img_size:
            raise RecordsError(
                f"--train_records: {f} holds {size}^3 volumes (from {source}) but "
                f"--img_size={img_size}; train with --img_size={size}, or convert the scans "
                f"again with --size={img_size}")
    return files


def records_window(files) -> tuple:
    """The intensity window (HU for CT) of the first record of `files`."""
    example = tf.train.Example.FromString(_first_record(files[0]))
    window = tuple(example.features.feature["window"].float_list.value)
    return window if len(window) == 2 else (-1024.0, 600.0)


def check_labels(files, num_classes: int) -> None:
    """For a conditional run: the records carry labels below num_classes (from each
    directory's manifest.json, else the first record of each file).

    Raises:
      RecordsError: records converted without --labels_csv, or labels >= num_classes.
    """
    for f in files:
        manifest = _manifest(os.path.dirname(f))
        if manifest:
            classes = manifest.get("classes")
            if not classes:
                raise RecordsError(
                    f"--num_classes={num_classes} needs labelled records, but {f} was converted "
                    "without labels; convert again with --labels_csv=FILE")
            train, val = classes["counts"]["train"], classes["counts"]["val"]
            counts = [sum(c[k] for c in (train, val) if k < len(c))
                      for k in range(max(len(train), len(val)))]
            top = max((k for k, c in enumerate(counts) if c), default=-1)
            if top >= num_classes:
                raise RecordsError(
                    f"--num_classes={num_classes} but the records in {os.path.dirname(f)} "
                    f"hold labels up to {top} ({classes['num_classes']} classes: "
                    f"{classes.get('names')}); train with --num_classes={classes['num_classes']}")
        else:
            example = tf.train.Example.FromString(_first_record(f))
            if "label" not in example.features.feature:
                raise RecordsError(
                    f"--num_classes={num_classes} needs labelled records, but {f} has no "
                    "label feature; convert again with --labels_csv=FILE")


def record_labels(files) -> np.ndarray:
    """The label of every record of `files`, in stream index order (from the manifests'
    shard and case lists, else by reading the label feature of every record)."""
    out = []
    for f in files:
        manifest = _manifest(os.path.dirname(f))
        shard = manifest.get("shards", {}).get(os.path.basename(f))
        cases = manifest.get("cases", {})
        if shard is None:
            out = None
            break
        out += [cases[c]["label"] for c in shard["cases"]
                if cases.get(c, {}).get("status") == "ok"]
    if out is None or len(out) != sum(records_per_file(files)):
        parse = lambda s: tf.io.parse_single_example(s, {"label": FEATURES["label"]})["label"]
        out = list(raw_record_dataset(files).map(parse).as_numpy_iterator())
    return np.asarray(out, np.int64)


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


def _named_errors(dataset: tf.data.Dataset, files) -> Iterator:
    """Iterates `dataset`; a read error is raised as RecordsError naming the damaged file."""
    try:
        yield from dataset
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError,
            tf.errors.OutOfRangeError) as err:
        raise RecordsError(describe_read_error(err, files)) from None


def describe_read_error(err: Exception, files) -> str:
    """The message for a read error of records from `files`: which file is damaged (found
    by reading each of them again) and how to make it anew."""
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    for f in files:
        try:
            for _ in raw_record_dataset([f]):
                pass
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError,
                tf.errors.OutOfRangeError) as one:
            reason = str(one).strip().splitlines()[0][:200]
            return (f"damaged record file {f}: {reason}. Delete it and run the same "
                    "data_prep.convert command again: it rewrites missing shards only")
    return f"reading the records failed ({type(err).__name__}: {first}); files: {list(files)}"


def training_example(volume: tf.Tensor, index: tf.Tensor, img_size: int, latent_dim: int,
                     seed: int, label: Optional[tf.Tensor] = None, num_classes: int = 0,
                     fake_labels: str = "batch") -> dict:
    """One training example from a volume and its global stream index.

    The crop start r is a multiple of 4 drawn uniformly from 0..7S/8, so that the real
    crop x[r : r + S/8] and the generator's embedding slab [r/4, r/4 + S/32) cover the same
    slices (the reference draws any r and misaligns the two by up to 3 slices). r and the
    three latents are stateless functions of (seed, index): a resumed run sees exactly the
    stream an uninterrupted one would, and replicas need no shared random state.

    With num_classes > 0 the example also has `label` (the record's) and `fake_label`, the
    class its generated samples are conditioned on: the same label (fake_labels="batch",
    as the references do) or one drawn uniformly from (seed, index) ("uniform").
    """
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])
    k = tf.random.stateless_uniform([], seed=key, minval=0, maxval=7 * img_size // 32 + 1,
                                    dtype=tf.int32)
    r = 4 * k
    z = tf.random.stateless_normal([2, latent_dim], seed=key + tf.constant([0, 1 << 40], tf.int64))
    # z_c (the CRF phase's) from its own key, so that z_d and z_g are those of earlier runs
    z_c = tf.random.stateless_normal([latent_dim], seed=key + tf.constant([0, 2 << 40], tf.int64))
    volume = volume[..., None]
    out = {"volume": volume, "crop": volume[r:r + img_size // 8], "position": r,
           "z_d": z[0], "z_g": z[1], "z_c": z_c}
    if num_classes:
        check = tf.debugging.assert_less(
            label, num_classes, message=f"a record's label is >= --num_classes={num_classes}")
        with tf.control_dependencies([check, tf.debugging.assert_non_negative(
                label, message="a record has no label (converted without --labels_csv)")]):
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
    records = tf.data.Dataset.from_tensor_slices(order).interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
        cycle_length=len(files), block_length=1, deterministic=True)
    blocks = records.batch(buffer)

    def permute(j, block):
        keys = tf.random.stateless_uniform(tf.shape(block), seed=key + tf.stack([1, j]))
        return tf.gather(block, tf.argsort(keys))

    return blocks.enumerate().map(permute).unbatch()


def make_train_dataset(file_pattern: str, img_size: int, batch_size: int, latent_dim: int,
                       seed: int = 0, start_step: int = 0, shuffle_buffer: int = 8,
                       num_records: Optional[int] = None, num_classes: int = 0,
                       fake_labels: str = "batch",
                       balance_classes: bool = False) -> tf.data.Dataset:
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
      Dataset of dicts: volume (B, S, S, S, 1), crop (B, S/8, S, S, 1), position (B,)
      int32, z_d, z_g and z_c (B, latent_dim), float32.
    """
    files = list_record_files(file_pattern)
    raw_record_dataset(files)  # rejects a mix of compressed and uncompressed files
    counts = records_per_file(files)
    n = num_records or sum(counts)
    if n < 1:
        raise RecordsError(f"no records in {file_pattern!r}")
    if balance_classes and compression_of(files[0]):
        raise RecordsError("--balance_classes needs uncompressed records (GZIP shards "
                           "cannot be read by index); convert with --compression=none")
    first = start_step * batch_size
    first_epoch = first // n
    epochs = tf.data.Dataset.range(first_epoch, 1 << 40)
    if compression_of(files[0]):
        records = epochs.flat_map(lambda e: _records_interleaved(files, seed, e, shuffle_buffer))
        records = records.skip(first - first_epoch * n)
    else:
        if balance_classes:
            labels = record_labels(files)
            draw = lambda e: balanced_order(labels, seed, e)
        else:
            draw = lambda e: epoch_order(n, seed, e)
        order = epochs.flat_map(lambda e: tf.data.Dataset.from_tensor_slices(draw(e)))
        records = _records_by_index(files, counts, order.skip(first - first_epoch * n))
    stream = tf.data.Dataset.zip(records, tf.data.Dataset.range(first, 1 << 60))
    def example(serialized, i):
        if not num_classes:
            return training_example(parse_volume(serialized, img_size), i, img_size,
                                    latent_dim, seed)
        volume, label = parse_volume(serialized, img_size, with_label=True)
        return training_example(volume, i, img_size, latent_dim, seed, label, num_classes,
                                fake_labels)

    stream = stream.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    stream = stream.batch(batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return stream.with_options(options).prefetch(tf.data.AUTOTUNE)
