"""Which record files a glob names and what size their volumes are, without TensorFlow:
`crfgan-train --dry_run` checks its records with this before anything loads TensorFlow.
crfgan_tf.data.records (the schema, reading, writing) exports the same names."""

from __future__ import annotations

import glob
import os
from typing import Optional

from crfgan_tf.data import manifest


class RecordsError(ValueError):
    """Records that are missing, damaged or of another size; names the file."""


def compression_of(path: str) -> Optional[str]:
    """The TFRecord compression implied by a file name (`.gz` -> GZIP)."""
    return "GZIP" if path.endswith(".gz") else None


def list_record_files(file_pattern: str) -> list:
    """Sorted files matching a glob (or comma-separated globs); raises if none match."""
    files = sorted({f for p in file_pattern.split(",") if p for f in glob.glob(p)})
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {file_pattern!r}")
    return files


def first_example(path: str):
    """The first record of a file (a tf.train.Example), read without TensorFlow ops;
    TensorFlow is loaded for the Example's class."""
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
    import tensorflow as tf

    return tf.train.Example.FromString(payload)


def check_records(file_pattern: str, img_size: int) -> list:
    """The training record files, checked before anything is built: they exist, and their
    volumes are img_size^3 (from the manifest's settings, else the first record).

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
            f"`train_records`: no TFRecord files match {file_pattern!r}. Convert the scans "
            f"first: crfgan-convert --dataset=luna16|gsp|generic|dicom "
            f"--input_dir=<archive> --output_dir={out} --size={img_size}") from None
    for f in files:
        size = manifest.of_file(f).get("settings", {}).get("size")
        source = manifest.MANIFEST
        if size is None:
            shape = list(first_example(f).features.feature["shape"].int64_list.value)
            size, source = (shape[0] if len(shape) == 3 and len(set(shape)) == 1 else shape), \
                "its first record"
        if size != img_size:
            raise RecordsError(
                f"`train_records`: {f} holds {size}^3 volumes (from {source}) but "
                f"`img_size={img_size}`; train with `img_size={size}`, or convert the scans "
                f"again with `size={img_size}`")
    return files
