"""The TFRecord schema of converted volumes (one `tf.train.Example` per scan): SCHEMA is the
one table of its features; writing, parsing, reading back and checking records derive
from it. `python -c "from crfgan_tf.data import records; print(records.schema_table())"`
prints it; docs/data.md shows the same table.

Volumes are stored as int16 (intensity.quantize): 3e-5 resolution in [-1, 1] (0.025 HU for
CT) at half the size of float32.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

from crfgan_tf.core import intensity
from crfgan_tf.data import manifest
from crfgan_tf.data.record_files import (RecordsError, check_records, compression_of,  # noqa: F401
                                         first_example, list_record_files)


@dataclasses.dataclass(frozen=True)
class Feature:
    """One feature of a record: its name, kind, length (0 = a scalar) and meaning; `default`
    is what records written before the feature existed read as."""

    name: str
    kind: str  # "bytes", "int64" or "float"
    length: int
    doc: str
    default: object = None


SCHEMA = (
    Feature("volume", "bytes", 0, "int16 little-endian, C order (S, S, S); value = q / "
            f"{intensity.VOLUME_SCALE:g}"),
    Feature("shape", "int64", 3, "(S, S, S)"),
    Feature("case_id", "bytes", 0, "LUNA16 series UID, file stem, or DICOM series id"),
    Feature("source", "bytes", 0, "path of the source file as given to the converter; "
            "DICOM: `dicom series <id> (<n> files)`, no path"),
    Feature("modality", "bytes", 0, '"ct" or "mri"'),
    Feature("original_size", "int64", 3, "(z, y, x) after reorientation, before trimming"),
    Feature("original_spacing", "float", 3, "(z, y, x) mm"),
    Feature("output_spacing", "float", 3, "(z, y, x) mm"),
    Feature("output_origin", "float", 3, "(x, y, z) mm, LPS"),
    Feature("window", "float", 2, "input intensities mapped to -1 and 1 (HU for CT)"),
    Feature("intercept_shift", "float", 0, "HU added for a missing intercept"),
    Feature("air_shift", "float", 0, "HU added by the air density correction"),
    Feature("trimmed_slices", "int64", 2, "blank slices removed (inferior, superior)"),
    Feature("label", "int64", 0, "class index (only when converted with `labels_csv`; -1: none)",
            default=-1),
)
_BY_NAME = {f.name: f for f in SCHEMA}
_TF_KIND = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}
FEATURES = {f.name: tf.io.FixedLenFeature([f.length] if f.length else [], _TF_KIND[f.kind],
                                          default_value=f.default) for f in SCHEMA}

# A record read back: the features except `shape`, as Python values (volume: float32
# (S, S, S) in [-1, 1], canonical LPS; label None when the record has none).
VolumeRecord = dataclasses.make_dataclass(
    "VolumeRecord", [(f.name, object) for f in SCHEMA if f.name not in ("shape", "label")]
    + [("label", Optional[int], dataclasses.field(default=None))])


def schema_table() -> str:
    """SCHEMA as a Markdown table (docs/data.md shows it)."""
    rows = ["| feature | type | meaning |", "|---|---|---|"]
    for f in SCHEMA:
        kind = f"{f.kind}[{f.length}]" if f.length else f.kind
        rows.append(f"| `{f.name}` | {kind} | {f.doc} |")
    return "\n".join(rows)


def encode_volume(volume: np.ndarray) -> bytes:
    """float32 [-1, 1] (or already quantized int16) -> little-endian int16 bytes."""
    q = volume if volume.dtype == np.int16 else intensity.quantize(volume)
    return np.ascontiguousarray(q, dtype="<i2").tobytes(order="C")


def _feature(f: Feature, value) -> tf.train.Feature:
    values = list(value) if f.length else [value]
    if f.kind == "bytes":
        return tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[v if isinstance(v, bytes) else str(v).encode() for v in values]))
    if f.kind == "int64":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def serialize_result(result) -> bytes:
    """Serialises a `preprocess.ScanResult` (any object with SCHEMA's attributes) as a
    tf.train.Example; an optional feature (one with a default) is left out when None."""
    features = {}
    for f in SCHEMA:
        if f.name == "volume":
            value = encode_volume(result.volume)
        elif f.name == "shape":
            value = result.volume.shape
        else:
            value = getattr(result, f.name, None)
            if value is None and f.default is not None:
                continue
        features[f.name] = _feature(f, value)
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def decode_quantized(volume_bytes: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """int16 bytes -> the int16 tensor of `shape` as stored."""
    q = tf.io.decode_raw(volume_bytes, tf.int16, little_endian=True)
    return tf.reshape(q, tf.cast(shape, tf.int32))


def decode_volume(volume_bytes: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """int16 bytes -> float32 tensor of `shape` in [-1, 1]."""
    return intensity.dequantize(tf.cast(decode_quantized(volume_bytes, shape), tf.float32))


def parse_example(serialized: tf.Tensor) -> dict:
    """Parses one serialised record into a dict of tensors; `volume` is float32 (S, S, S)."""
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    parsed["volume"] = decode_volume(parsed["volume"], parsed["shape"])
    return parsed


def parse_volume(serialized: tf.Tensor, size: int, with_label: bool = False,
                 quantized: bool = False):
    """Parses only the volume, with a static (size, size, size) shape (training input);
    with_label: (volume, int32 label, -1 when the record has none). quantized: the int16
    values as stored (intensity.dequantize gives the float32 volume), half the bytes."""
    keys = ("volume", "shape", "label") if with_label else ("volume", "shape")
    parsed = tf.io.parse_single_example(serialized, {k: FEATURES[k] for k in keys})
    decode = decode_quantized if quantized else decode_volume
    volume = tf.ensure_shape(decode(parsed["volume"], parsed["shape"]), (size, size, size))
    return (volume, tf.cast(parsed["label"], tf.int32)) if with_label else volume


def _python_value(f: Feature, value: np.ndarray):
    if f.name == "label":
        return int(value) if int(value) >= 0 else None
    if f.kind == "bytes":
        return value.decode()
    cast = int if f.kind == "int64" else float
    return tuple(cast(v) for v in value) if f.length else cast(value)


def raw_record_dataset(files) -> tf.data.Dataset:
    """Serialised records of `files` in file order (compression from each name)."""
    gz = [f for f in files if compression_of(f)]
    if gz and len(gz) != len(files):
        raise ValueError("mixing compressed (.gz) and uncompressed record files is not supported")
    return tf.data.TFRecordDataset(files, compression_type="GZIP" if gz else None)


def read_volumes(file_pattern: str) -> Iterator:
    """Yields every record (a VolumeRecord) of the files matching `file_pattern` (a glob,
    or several separated by commas), in file order.

    Raises:
      RecordsError: a damaged file (named).
    """
    files = list_record_files(file_pattern)
    for serialized in named_errors(raw_record_dataset(files), files):
        p = parse_example(serialized)
        values = {f.name: _python_value(f, p[f.name].numpy()) for f in SCHEMA
                  if f.name not in ("volume", "shape")}
        yield VolumeRecord(volume=p["volume"].numpy(), **values)


def named_errors(dataset: tf.data.Dataset, files) -> Iterator:
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


# ---- counting and checking, without reading volumes ----------------------------------

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
    """Records in each of `files`: from the converter's manifest beside them, else from
    the record headers (uncompressed) or by reading the file once (GZIP)."""
    counts = []
    for f in files:
        known = manifest.shard_records(f)
        if known is not None:
            counts.append(known)
        elif compression_of(f):
            counts.append(sum(1 for _ in named_errors(raw_record_dataset([f]), [f])))
        else:
            counts.append(len(scan_record_lengths(f)))
    return counts


def count_records(files) -> int:
    """Records in `files` (see records_per_file)."""
    return sum(records_per_file(files))


def check_labels(files, num_classes: int) -> None:
    """For a conditional run: the records carry labels below num_classes (from each
    directory's manifest, else the first record of each file).

    Raises:
      RecordsError: records converted without `labels_csv`, or labels >= num_classes.
    """
    for f in files:
        if manifest.of_file(f):
            problem = manifest.label_problem(os.path.dirname(f), num_classes)
            if problem:
                raise RecordsError(problem)
        elif "label" not in first_example(f).features.feature:
            raise RecordsError(
                f"`num_classes={num_classes}` needs labelled records, but {f} has no "
                "label feature; convert again with `labels_csv=FILE`")


def _record_values(files, from_manifest, name: str) -> list:
    """One feature of every record of `files`, in stream index order: from the manifests
    (`from_manifest(file)`: a shard's list, or None) when they account for every record,
    else by reading the feature of every record."""
    out = []
    for f in files:
        values = from_manifest(f)
        if values is None:
            out = None
            break
        out += values
    if out is None or len(out) != sum(records_per_file(files)):
        parse = lambda s: tf.io.parse_single_example(s, {name: FEATURES[name]})[name]
        out = list(raw_record_dataset(files).map(parse).as_numpy_iterator())
    return out


def record_labels(files) -> np.ndarray:
    """The label of every record of `files`, in stream index order."""
    return np.asarray(_record_values(files, manifest.shard_labels, "label"), np.int64)


def record_case_ids(files) -> list:
    """The case id of every record of `files`, in stream index order."""
    return [c.decode() if isinstance(c, bytes) else c
            for c in _record_values(files, manifest.shard_cases, "case_id")]


def records_metadata(files, num_classes: int = 0) -> dict:
    """What generation needs to know of the training data, from the first record and the
    manifest: window, modality, a representative output spacing (the median of the
    converted cases) and the class names. Written into the run directory at training time
    (rundir.write_data_metadata), so an export never has to find the records again."""
    feature = first_example(files[0]).features.feature
    window = tuple(feature["window"].float_list.value)
    meta = {"window": list(window) if len(window) == 2 else list(intensity.CT_WINDOW),
            "modality": (feature["modality"].bytes_list.value or [b"ct"])[0].decode(),
            "output_spacing": list(feature["output_spacing"].float_list.value) or [1.0] * 3,
            "records": files[0]}
    directory = os.path.dirname(files[0])
    meta["output_spacing"] = manifest.median_output_spacing(directory) or meta["output_spacing"]
    converted = manifest.read(directory)
    if converted:  # the dataset kind (luna16, gsp, dicom, generic), for the model card
        meta["dataset"] = converted.get("settings", {}).get("dataset")
    if num_classes:
        meta["class_names"] = manifest.class_names(directory, num_classes)
    # the cases the generator learnt from: evaluations on real scans (crfgan-downstream,
    # crfgan-memorization) check that their held-out scans are not among them
    meta["train_case_ids"] = record_case_ids(files)
    return meta
