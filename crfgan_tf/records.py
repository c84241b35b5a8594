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
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

from crfgan_tf import preprocess

VOLUME_SCALE = 32767.0


def compression_of(path: str) -> Optional[str]:
    """The TFRecord compression implied by a file name (`.gz` -> GZIP)."""
    return "GZIP" if path.endswith(".gz") else None


def encode_volume(volume: np.ndarray) -> bytes:
    """float32 [-1, 1] (or already quantized int16) -> little-endian int16 bytes."""
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
