"""Sampling volumes from an exported SavedModel and writing them as medical images."""

from __future__ import annotations

import gzip
import json
import os
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
import tensorflow as tf

from crfgan_tf.core import geometry, intensity
from crfgan_tf.generation import package
from crfgan_tf.utils import fileio, runtime
from crfgan_tf.utils.progress import Progress

FORMATS = {"nii.gz": ".nii.gz", "mha": ".mha", "nrrd": ".nrrd", "npy": ".npy"}
# besides FORMATS' files: a DICOM series per sample, in a folder (generation.dicom_output)
DICOM = "dicom"


class SavedModelError(Exception):
    """An export that is missing or not a crfgan-tf generator (a SavedModel or a weights
    package), or a weights package that is damaged, altered or does not fit."""


def is_export(path: str) -> bool:
    """Whether `path` is an export directory: a weights package or a SavedModel."""
    return package.is_package(path) or tf.io.gfile.exists(os.path.join(path, "saved_model.pb"))


def load(saved_model: str):
    """Loads an export of crfgan_tf.export; returns (module, metadata dict).

    A directory with a weights package (package.json) is loaded from it: the networks are
    rebuilt from this project's code and the package's arrays copied in, after their
    checksums are checked; nothing in the files is executed. Only a directory without one
    is loaded as a SavedModel (which runs its graph: load only SavedModels you trust).
    Both give a module with the same `generate`, `encode` and `reconstruct` functions and
    the variables `latent_dim`, `img_size`, `window`, `output_spacing`, `metadata_json`.
    """
    if package.is_package(saved_model):
        return _load_package(saved_model)
    if not tf.io.gfile.exists(os.path.join(saved_model, "saved_model.pb")):
        raise SavedModelError(f"no export at {saved_model!r} (expected a weights package, "
                              f"{package.PACKAGE_FILE}, or a SavedModel, saved_model.pb)")
    module = tf.saved_model.load(saved_model)
    if "generate" not in module.signatures or not hasattr(module, "metadata_json"):
        raise SavedModelError(f"{saved_model!r} is a SavedModel but not a crfgan-tf generator "
                              "(no 'generate' signature or metadata); export it with "
                              "python -m crfgan_tf.export")
    return module, json.loads(module.metadata_json.numpy().decode())


def _load_package(directory: str):
    from crfgan_tf.generation.export import SIGNATURES, GeneratorModule
    from crfgan_tf.models import options

    try:
        config, networks, manifest = package.read(directory)
    except package.PackageError as err:
        raise SavedModelError(str(err)) from None
    meta = manifest["metadata"]
    module = GeneratorModule(networks[options.TRUNK_KEY], networks[options.HEAD_KEY],
                             config.latent_dim, config.img_size, int(meta.get("slab", 8)),
                             meta, config.num_classes, networks.get(options.ENCODER_KEY),
                             networks.get(options.SUB_ENCODER_KEY))
    # what code written for a loaded SavedModel asks of it ("encode" in module.signatures)
    module.signatures = {name: getattr(module, name) for name in SIGNATURES
                         if hasattr(module, name)}
    return module, meta


def latents(seed: int, first: int, count: int, latent_dim: int) -> tf.Tensor:
    """z for samples first..first+count-1: sample i depends on (seed, i) alone, so a seed
    gives the same volumes whatever the batch size (up to float rounding of batched
    convolutions: at most 1 HU after rounding)."""
    return tf.stack([tf.random.stateless_normal([latent_dim], seed=[seed, i])
                     for i in range(first, first + count)])


def write_volume(array: np.ndarray, path: str, spacing_zyx, fmt: str,
                 label: Optional[int] = None, class_name: str = "") -> None:
    """Writes (z, y, x) canonical LPS int16 with spacing, origin (centred at 0) and
    identity direction; `npy` writes the array plus a `.json` sidecar with the geometry.
    A conditional sample's class goes into the file's metadata: the NIfTI `descrip`
    ("crfgan-tf class K (name)"), `crfgan_class`/`crfgan_class_name` keys in MHA and
    NRRD headers, `class`/`class_name` in the npy sidecar.

    The file appears whole or not at all (written beside `path`, checked, renamed).

    Raises:
      fileio.DiskFullError: no space for it (ITK's NIfTI writer only prints a write error
        and leaves a truncated file; that is caught by reading the file back).
    """
    spacing = [float(s) for s in spacing_zyx]
    origin_xyz = geometry.centred_origin_xyz(array.shape, spacing)
    try:
        if fmt == "npy":
            with fileio.atomic_output(path, ".npy") as tmp:
                np.save(tmp, array)
            meta = {"axes": "z (inferior->superior), y (anterior->posterior), x (right->left)",
                    "spacing_zyx_mm": spacing, "origin_xyz_mm": origin_xyz, "units": "HU"}
            if label is not None:
                meta.update({"class": label, "class_name": class_name})
            fileio.atomic_write(path[:-4] + ".json", json.dumps(meta, indent=2))
            return
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(list(reversed(spacing)))
        image.SetOrigin(origin_xyz)
        image.SetDirection([1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
        if label is not None:
            image.SetMetaData("ITK_FileNotes", f"crfgan-tf class {label} ({class_name})"[:79])
            image.SetMetaData("crfgan_class", str(label))
            image.SetMetaData("crfgan_class_name", class_name)
        with fileio.atomic_output(path, FORMATS[fmt]) as tmp:
            sitk.WriteImage(image, tmp, useCompression=fmt != "mha")
            if fmt.startswith("nii") and not _nifti_complete(tmp, array.nbytes):
                raise _Incomplete("ITK's NIfTI writer left it incomplete (no space left on "
                                  "the device, or a file-size limit)")
    except Exception as err:  # noqa: BLE001 - ITK reports a full disk as RuntimeError text
        reason = str(err) if isinstance(err, _Incomplete) else fileio.disk_full_reason(err)
        if reason is None and any(t in str(err) for t in _SHORT_WRITE):
            reason = ("the writer could write only part of it (no space left on the device, "
                      "or a file-size limit)")
        if reason is None:
            raise
        raise fileio.disk_full_error(path, reason, array.nbytes, "The samples written before "
                                     "it are complete", "free space and sample again") from None


# how NRRD's writer (through ITK) and numpy's np.save report a short write
_SHORT_WRITE = ("failed to write to file", " requested and ")


class _Incomplete(Exception):
    """A file that a writer reported as written but that is not whole."""


def _nifti_complete(path: str, data_bytes: int) -> bool:
    """Whether a NIfTI file holds its whole header and `data_bytes` of voxels (gzip read
    to its end-of-stream marker)."""
    try:
        if path.endswith(".gz"):
            size = 0
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    size += len(chunk)
        else:
            size = os.path.getsize(path)
    except (OSError, EOFError):  # a gzip stream that stops early
        return False
    return size >= 348 + data_bytes


def resolve_labels(meta: dict, labels: Optional[Sequence[int]]) -> list:
    """The labels to cycle through: [] for an unconditional SavedModel (none may be
    given), else the given ones, checked against its classes.

    Raises:
      ValueError: naming `label`/`labels` (missing, out of range, or given to an
        unconditional model).
    """
    n = int(meta.get("num_classes", 0))
    names = class_names(meta)
    if not n:
        if labels:
            raise ValueError("`label`/`labels` given, but this SavedModel is unconditional")
        return []
    if not labels:
        raise ValueError(f"this SavedModel is conditional ({n} classes: "
                         f"{dict(enumerate(names))}); give `label=K` or `labels=0`,1,...")
    bad = [k for k in labels if not 0 <= k < n]
    if bad:
        raise ValueError(f"`label`/`labels` {bad} out of range 0..{n - 1} "
                         f"({dict(enumerate(names))})")
    return list(labels)


def class_names(meta: dict) -> list:
    n = int(meta.get("num_classes", 0))
    return list(meta.get("class_names") or [str(k) for k in range(n)])


def generate(module, z: tf.Tensor, labels: Optional[Sequence[int]] = None) -> np.ndarray:
    """Volumes [b, S, S, S] from a loaded SavedModel; labels (one per z) for a conditional
    one."""
    if labels:
        return module.generate(z=z, label=tf.constant(labels, tf.int32))["volume"].numpy()
    return module.generate(z=z)["volume"].numpy()


def _dicom_writer(meta: dict):
    """write(array, path, spacing, seed, index, label, class_name) of a synthetic CT series
    (generation.dicom_output), marked with the export's model card id."""
    from crfgan_tf import __version__
    from crfgan_tf.generation import dicom_output, model_card
    from crfgan_tf.run import rundir

    card = model_card.card_id(meta, rundir.checkpoint_step(meta.get("checkpoint", "")))
    name = model_card.MODEL_NAMES.get(meta.get("model"), str(meta.get("model")))

    def write(array, path, spacing, seed, index, label, class_name):
        dicom_output.write_sample(array, path, spacing, card, seed, index, __version__, name,
                                  label, class_name)
    return write


def _gated(module, accept, array, spacing, window, seed: int, index: int, num_samples: int,
           latent_dim: int, label, max_tries: int):
    """(the volume to write, its gate record): `array` (latent index `index`) or, while the
    gate refuses, the volume of the next latent of this sample, up to `max_tries`."""
    tries, latent_index = [], index
    for attempt in range(max_tries):
        if attempt:
            latent_index = index + attempt * num_samples
            z = latents(seed, latent_index, 1, latent_dim)
            array = intensity.from_unit(generate(module, z, [label] if label is not None
                                                 else None)[0], window)
        passed, record = accept(array, spacing)
        tries.append({"latent_index": latent_index, **record})
        if passed:
            break
    return array, {"latent_index": latent_index, "passed": bool(passed), "tries": tries}


def preview_png(array: np.ndarray, path: str, window) -> None:
    """Axial, coronal and sagittal mid-slices side by side (superior up) at `window`."""
    fileio.atomic_write_bytes(path, intensity.png_bytes(intensity.mid_slice_tile(array, window)))


def sample(saved_model: str, num_samples: int, seed: int, output_dir: str, fmt: str = "nii.gz",
           batch_size: int = 1, log=print, labels: Optional[Sequence[int]] = None,
           accept=None, max_tries: int = 1) -> list:
    """Generates `num_samples` volumes; returns the paths written.

    labels: for a conditional SavedModel, sample i gets labels[i % len(labels)] (its z is
    the same whatever the label). `samples.json` in output_dir lists every file (for
    `fmt="dicom"`, every series folder) with its seed, index and class.
    accept: a quality gate (evaluation.quality): accept(HU volume, spacing) -> (passed,
    record). A sample it does not pass is generated again from the next latent of its
    own (latent index i + t * num_samples at try t) up to `max_tries` times; the last
    try is written whatever its verdict. Each listing entry then holds `latent_index`,
    `passed` and `tries` (every try's latent index and record)."""
    if fmt not in FORMATS and fmt != DICOM:
        raise ValueError(f"`format` must be one of {sorted(FORMATS) + [DICOM]}, got {fmt!r}")
    if num_samples < 1 or batch_size < 1:
        raise ValueError("`num_samples` and `batch_size` must be >= 1")
    fileio.ensure_output_dir(output_dir, "`output_dir`")
    module, meta = load(saved_model)
    cycle = resolve_labels(meta, labels)
    dicom = _dicom_writer(meta) if fmt == DICOM else None
    names = class_names(meta)
    latent_dim = int(module.latent_dim.numpy())
    window = [float(v) for v in module.window.numpy()]
    spacing = [float(v) for v in module.output_spacing.numpy()]
    preview_window = intensity.LUNG_WINDOW if meta.get("modality", "ct") == "ct" else window
    paths, listing = [], []
    progress = Progress(num_samples, log, "sample:", "volumes")
    for first in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - first)
        batch_labels = [cycle[i % len(cycle)] for i in range(first, first + count)] \
            if cycle else None
        runtime.inject_out_of_memory("sampling")  # tests only: runtime.FAULT_OOM_VARIABLE
        volumes = generate(module, latents(seed, first, count, latent_dim), batch_labels)
        for k in range(count):
            i = first + k
            label = batch_labels[k] if cycle else None
            name = f"sample_seed{seed}_{i:05d}" + (f"_class{label}" if cycle else "")
            array = intensity.from_unit(volumes[k], window)
            gate = None
            if accept is not None:
                array, gate = _gated(module, accept, array, spacing, window, seed, i,
                                     num_samples, latent_dim, label, max_tries)
            path = os.path.join(output_dir, name + FORMATS.get(fmt, ""))
            if dicom:
                dicom(array, path, spacing, seed, i, label, names[label] if cycle else "")
            else:
                write_volume(array, path, spacing, fmt, label, names[label] if cycle else "")
            preview_png(array, os.path.join(output_dir, name + ".png"), preview_window)
            paths.append(path)
            listing.append({"file": os.path.basename(path), "seed": seed, "index": i,
                            "class": label, "class_name": names[label] if cycle else None,
                            **(gate or {})})
        progress.report(first + count)
    fileio.atomic_write(os.path.join(output_dir, "samples.json"),
                        json.dumps({"saved_model": saved_model, "samples": listing}, indent=2))
    return paths
