"""Sources of volumes for evaluation. A *source*  of volumes is one of:
  - a TFRecord glob (or comma-separated globs) written by data_prep.convert;
  - a folder, file or glob of NIfTI / MetaImage / NRRD volumes (crfgan_tf.sample output, or
    anything at the model's resolution): integer images are read as intensities in the
    training window (HU for CT) and mapped to [-1, 1]; floating-point images must already be
    in [-1, 1];
  - an export of crfgan_tf.export (a weights package or a SavedModel; the package is
    loaded where a directory holds both): `num_samples` volumes are generated from `seed`,
    sample i from latent (seed, i), as crfgan_tf.sample does.
With a class `label`, a TFRecord source keeps the records of that class and a conditional
SavedModel generates that class (compare one class of generated volumes with the real
volumes of the same class). Every source yields float32 (S, S, S) volumes in [-1, 1], canonical LPS (z, y, x), one at a
time; only the 2048-feature rows are kept, so memory does not grow with the volume count.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
from typing import Callable, Iterator, Optional

import numpy as np

from crfgan_tf.core import intensity
from crfgan_tf.data import preprocess, records
from crfgan_tf.generation import sample as sample_lib

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".npy")


class EvaluationError(Exception):
    """Bad input for the evaluation: a source that cannot be read, missing weights."""


def parse_range(values, flag: str) -> tuple:
    """A LOW,HIGH flag value (a list of two strings) -> (low, high) floats, high > low."""
    try:
        low, high = (float(v) for v in values)
    except ValueError:
        raise EvaluationError(f"`{flag}` must be two numbers LOW,HIGH, got {values}") from None
    if not high > low:
        raise EvaluationError(f"`{flag}`: HIGH must exceed LOW, got {values}")
    return low, high


@dataclasses.dataclass
class Source:
    """A stream of volumes; `fingerprint` identifies the data for the feature cache."""

    spec: str
    kind: str  # "tfrecord", "volumes" or "savedmodel"
    count: int
    fingerprint: str
    volumes: Callable[[], Iterator[np.ndarray]]


def file_fingerprint(paths) -> str:
    digest = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        digest.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _content_sha256(paths, base: str) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(os.path.relpath(p, base).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _is_volume_file(path: str) -> bool:
    return path.lower().endswith(VOLUME_SUFFIXES)


def _is_record_file(path: str) -> bool:
    return ".tfrecord" in os.path.basename(path).lower()


def read_volume_file(path: str, window) -> np.ndarray:
    """One NIfTI/MetaImage/NRRD volume -> float32 [-1, 1], canonical LPS (z, y, x); a
    `.npy` (crfgan_tf.sample `format=npy`) is taken as already (z, y, x) canonical."""
    if path.lower().endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise EvaluationError(f"{path}: unreadable .npy: {err}") from None
        if array.ndim != 3:
            raise EvaluationError(f"{path}: expected a 3D array, got shape {array.shape}")
    else:
        try:
            array, _, _, _ = preprocess.read_canonical(path)
        except preprocess.ScanError as err:
            raise EvaluationError(f"{path}: {err}") from None
    return _model_range(array, path, window)


def _model_range(array: np.ndarray, path: str, window) -> np.ndarray:
    """A volume file's array in [-1, 1]: integers are intensities in `window`, floats must
    already be in [-1, 1]."""
    if array.dtype.kind in "iu":
        return intensity.to_unit(array, window)
    array = array.astype(np.float32)
    lo, hi = float(array.min()), float(array.max())
    if lo < -1.001 or hi > 1.001:
        raise EvaluationError(
            f"{path}: floating-point volume with values in [{lo:.3g}, {hi:.3g}]; float volumes "
            "must be in the model range [-1, 1] (integer volumes are read as HU / intensities "
            "and windowed with `window`)")
    return array


def _files_of(spec: str) -> list:
    """The files of a folder (recursively), or of a glob / comma-separated globs, sorted."""
    if os.path.isdir(spec):
        return sorted(p for p in glob.glob(os.path.join(spec, "**", "*"), recursive=True)
                      if os.path.isfile(p))
    return sorted(p for part in spec.split(",") if part
                  for p in glob.glob(part, recursive=True) if os.path.isfile(p))


def _saved_model_source(spec: str, num_samples: int, seed: int, batch_size: int,
                        label: Optional[int] = None, all_classes: bool = False) -> Source:
    if num_samples < 2:
        raise EvaluationError(f"{spec} is a SavedModel: at least 2 volumes must be generated "
                              f"from it, got {num_samples}")
    try:
        module, meta = sample_lib.load(spec)
        if all_classes and label is None:
            cycle = list(range(int(meta.get("num_classes", 0))))
        else:
            cycle = sample_lib.resolve_labels(meta, [] if label is None else [label])
    except (sample_lib.SavedModelError, ValueError) as err:
        raise EvaluationError(f"{spec}: {err}") from None
    files = sorted(p for p in glob.glob(os.path.join(spec, "**"), recursive=True)
                   if os.path.isfile(p))
    fingerprint = hashlib.sha256(
        f"savedmodel|{_content_sha256(files, spec)}|{num_samples}|{seed}"
        f"{f'|class{label}' if label is not None else ''}"
        f"{'|classes' + ','.join(map(str, cycle)) if cycle and label is None else ''}"
        .encode()).hexdigest()

    def volumes():
        latent_dim = int(module.latent_dim.numpy())
        for first in range(0, num_samples, batch_size):
            count = min(batch_size, num_samples - first)
            out = sample_lib.generate(module, sample_lib.latents(seed, first, count, latent_dim),
                                      [cycle[i % len(cycle)] for i in range(first, first + count)]
                                      if cycle else None)
            for volume in out:
                yield volume.astype(np.float32)

    return Source(spec, "savedmodel", num_samples, fingerprint, volumes)


def open_source(spec: str, num_samples: int = 0, seed: int = 0, batch_size: int = 1,
                window=intensity.CT_WINDOW,
                label: Optional[int] = None, all_classes: bool = False) -> Source:
    """Resolves `spec` (see the module docstring) without reading any volume yet; `label`
    selects one class (TFRecords with labels, conditional SavedModels); without it,
    `all_classes` has a conditional SavedModel generate its classes in turn (sample i of
    class i mod num_classes) where it would otherwise need a label."""
    if os.path.isdir(spec) and sample_lib.is_export(spec):
        return _saved_model_source(spec, num_samples, seed, batch_size, label, all_classes)
    candidates = _files_of(spec)
    record_files = [p for p in candidates if _is_record_file(p)]
    volumes = [p for p in candidates if _is_volume_file(p)]
    if record_files and volumes:
        raise EvaluationError(f"{spec!r} matches both TFRecords ({len(record_files)}) and volume "
                              f"files ({len(volumes)}); pass one kind")
    if record_files and label is not None:
        labels = records.record_labels(record_files)
        if not (labels >= 0).any():
            raise EvaluationError(f"`label={label}`: the records of {spec!r} have no labels "
                                  "(converted without `labels_csv`)")
        count = int((labels == label).sum())
        if count == 0:
            raise EvaluationError(f"`label={label}`: no record of {spec!r} has that label "
                                  f"(labels present: {sorted(set(labels.tolist()))})")
        pattern = ",".join(record_files)
        return Source(spec, "tfrecord", count,
                      hashlib.sha256(f"{file_fingerprint(record_files)}|class{label}".encode())
                      .hexdigest(),
                      lambda: (r.volume for r in records.read_volumes(pattern) if r.label == label))
    if record_files:
        count = records.count_records(record_files)
        pattern = ",".join(record_files)
        return Source(spec, "tfrecord", count, file_fingerprint(record_files),
                      lambda: (r.volume for r in records.read_volumes(pattern)))
    if volumes and label is not None:
        raise EvaluationError(f"`label` applies to TFRecords and SavedModels; {spec!r} holds "
                              "volume files, which carry no class (select them by name)")
    if volumes:
        fingerprint = hashlib.sha256(
            f"{file_fingerprint(volumes)}|{tuple(window)}".encode()).hexdigest()
        return Source(spec, "volumes", len(volumes), fingerprint,
                      lambda: (read_volume_file(p, window) for p in volumes))
    raise EvaluationError(
        f"{spec!r} is not an export (weights package or SavedModel) and matches no TFRecord (*.tfrecord*) or "
        f"volume ({', '.join(VOLUME_SUFFIXES)}) files")


@dataclasses.dataclass
class Case:
    """One real volume with its name: case id, label (None: unlabelled) and the float32
    (S, S, S) volume in [-1, 1]."""

    case_id: str
    label: Optional[int]
    volume: np.ndarray


def record_cases(pattern: str, flag: str = "`records`") -> Iterator[Case]:
    """The records of a TFRecord glob (several separated by commas) as Cases, in file
    order; EvaluationError (naming `flag`) when nothing matches or a file is damaged."""
    try:
        records.list_record_files(pattern)
    except (FileNotFoundError, records.RecordsError) as err:
        raise EvaluationError(f"{flag}: {err}") from None
    try:
        for r in records.read_volumes(pattern):
            yield Case(r.case_id, r.label, r.volume)
    except records.RecordsError as err:
        raise EvaluationError(f"{flag}: {err}") from None


def record_case_ids(pattern: str, flag: str = "`records`") -> list:
    """The case ids of a TFRecord glob's records, in file order (data.records); an
    EvaluationError naming `flag` when nothing matches or a file is damaged."""
    try:
        return records.record_case_ids(records.list_record_files(pattern))
    except (FileNotFoundError, records.RecordsError) as err:
        raise EvaluationError(f"{flag}: {err}") from None


def scan_paths(pattern: str, flag: str = "`scans`") -> list:
    """The volume files of a folder, file, glob or comma-separated globs, sorted;
    EvaluationError (naming `flag`) when there is none."""
    paths = [p for p in _files_of(pattern) if _is_volume_file(p)]
    if not paths:
        raise EvaluationError(f"{flag}: {pattern!r} matches no volume file "
                              f"({', '.join(VOLUME_SUFFIXES)})")
    return paths


def scan_cases(paths, size: int, window, flag: str = "`scans`") -> Iterator[Case]:
    """Volume files (scan_paths) as Cases named by their file stem: files already
    (size, size, size) are read as `read_volume_file` reads them; any other scan goes
    through the conversion's preprocessing (data.preprocess) to size^3 with the window."""
    options = preprocess.PreprocessOptions(size=size, hu_window=tuple(window))
    for path in paths:
        volume = read_volume_file(path, window) if path.lower().endswith(".npy") else None
        if volume is None:
            try:
                array, spacing, origin, orientation = preprocess.read_canonical(path)
                if array.shape == (size,) * 3:
                    volume = _model_range(array, path, window)
                else:
                    volume = preprocess.process_volume(
                        array, spacing, origin, orientation, options,
                        preprocess.case_id_from_path(path), path).volume
            except preprocess.ScanError as err:
                raise EvaluationError(f"{flag}: {path}: {err}") from None
        if volume.shape != (size,) * 3:
            raise EvaluationError(f"{flag}: {path}: shape {volume.shape}, the model needs "
                                  f"({size}, {size}, {size})")
        yield Case(preprocess.case_id_from_path(path), None, volume)
