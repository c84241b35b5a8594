"""3D FID and MMD of generated volumes against real ones (tools/fid_mmd.py is the CLI).

A *source* of volumes is one of:
  - a TFRecord glob (or comma-separated globs) written by data_prep.convert;
  - a folder, file or glob of NIfTI / MetaImage / NRRD volumes (crfgan_tf.sample output, or
    anything at the model's resolution): integer images are read as intensities in the
    training window (HU for CT) and mapped to [-1, 1]; floating-point images must already be
    in [-1, 1];
  - a SavedModel from crfgan_tf.export: `num_samples` volumes are generated from `seed`,
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
import json
import os
import time
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

from crfgan_tf import data, fileio, metrics, preprocess, sample_lib
from crfgan_tf.networks import medicalnet

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".npy")
CACHE_VERSION = 1
WEIGHTS_HELP = (
    "3D FID needs the MedicalNet ResNet-50 weights: download resnet_50.pth from the "
    "MedicalNet release (github.com/Tencent/MedicalNet, 'pretrain' archive), then run "
    "`pip install torch` and `python -m tools.import_medicalnet --checkpoint=resnet_50.pth "
    "--output=medicalnet_resnet50.npz`, and pass --weights=medicalnet_resnet50.npz. For smoke "
    "tests and relative comparisons only, --allow_random_features uses a fixed-seed random "
    "network (labelled as such; its numbers are not comparable with published FIDs).")


class EvaluationError(Exception):
    """Bad input for the evaluation: a source that cannot be read, missing weights."""


def parse_range(values, flag: str) -> tuple:
    """A LOW,HIGH flag value (a list of two strings) -> (low, high) floats, high > low."""
    try:
        low, high = (float(v) for v in values)
    except ValueError:
        raise EvaluationError(f"--{flag} must be two numbers LOW,HIGH, got {values}") from None
    if not high > low:
        raise EvaluationError(f"--{flag}: HIGH must exceed LOW, got {values}")
    return low, high


# ---- sources -------------------------------------------------------------------------

@dataclasses.dataclass
class Source:
    """A stream of volumes; `fingerprint` identifies the data for the feature cache."""

    spec: str
    kind: str  # "tfrecord", "volumes" or "savedmodel"
    count: int
    fingerprint: str
    volumes: Callable[[], Iterator[np.ndarray]]


def _file_fingerprint(paths) -> str:
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
    `.npy` (crfgan_tf.sample --format=npy) is taken as already (z, y, x) canonical."""
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
    if array.dtype.kind in "iu":
        return preprocess.window_to_unit(array, *window)
    array = array.astype(np.float32)
    lo, hi = float(array.min()), float(array.max())
    if lo < -1.001 or hi > 1.001:
        raise EvaluationError(
            f"{path}: floating-point volume with values in [{lo:.3g}, {hi:.3g}]; float volumes "
            "must be in the model range [-1, 1] (integer volumes are read as HU / intensities "
            "and windowed with --window)")
    return array


def _saved_model_source(spec: str, num_samples: int, seed: int, batch_size: int,
                        label: Optional[int] = None) -> Source:
    if num_samples < 2:
        raise EvaluationError(f"{spec} is a SavedModel: at least 2 volumes must be generated "
                              f"from it, got {num_samples}")
    try:
        module, meta = sample_lib.load(spec)
        sample_lib.resolve_labels(meta, [] if label is None else [label])
    except (sample_lib.SavedModelError, ValueError) as err:
        raise EvaluationError(f"{spec}: {err}") from None
    files = sorted(p for p in glob.glob(os.path.join(spec, "**"), recursive=True)
                   if os.path.isfile(p))
    fingerprint = hashlib.sha256(
        f"savedmodel|{_content_sha256(files, spec)}|{num_samples}|{seed}"
        f"{'' if label is None else f'|class{label}'}".encode()).hexdigest()

    def volumes():
        latent_dim = int(module.latent_dim.numpy())
        for first in range(0, num_samples, batch_size):
            count = min(batch_size, num_samples - first)
            out = sample_lib.generate(module, sample_lib.latents(seed, first, count, latent_dim),
                                      None if label is None else [label] * count)
            for volume in out:
                yield volume.astype(np.float32)

    return Source(spec, "savedmodel", num_samples, fingerprint, volumes)


def open_source(spec: str, num_samples: int = 0, seed: int = 0, batch_size: int = 1,
                window=(preprocess.HU_FLOOR, preprocess.HU_CEIL),
                label: Optional[int] = None) -> Source:
    """Resolves `spec` (see the module docstring) without reading any volume yet; `label`
    selects one class (TFRecords with labels, conditional SavedModels)."""
    if os.path.isdir(spec) and os.path.exists(os.path.join(spec, "saved_model.pb")):
        return _saved_model_source(spec, num_samples, seed, batch_size, label)
    if os.path.isdir(spec):
        candidates = sorted(p for p in glob.glob(os.path.join(spec, "**", "*"), recursive=True)
                            if os.path.isfile(p))
    else:
        candidates = sorted(p for part in spec.split(",") if part
                            for p in glob.glob(part, recursive=True) if os.path.isfile(p))
    records = [p for p in candidates if _is_record_file(p)]
    volumes = [p for p in candidates if _is_volume_file(p)]
    if records and volumes:
        raise EvaluationError(f"{spec!r} matches both TFRecords ({len(records)}) and volume "
                              f"files ({len(volumes)}); pass one kind")
    if records and label is not None:
        labels = data.record_labels(records)
        if not (labels >= 0).any():
            raise EvaluationError(f"--label={label}: the records of {spec!r} have no labels "
                                  "(converted without --labels_csv)")
        count = int((labels == label).sum())
        if count == 0:
            raise EvaluationError(f"--label={label}: no record of {spec!r} has that label "
                                  f"(labels present: {sorted(set(labels.tolist()))})")
        pattern = ",".join(records)
        return Source(spec, "tfrecord", count,
                      hashlib.sha256(f"{_file_fingerprint(records)}|class{label}".encode())
                      .hexdigest(),
                      lambda: (r.volume for r in data.read_volumes(pattern) if r.label == label))
    if records:
        count = data.count_records(records)
        pattern = ",".join(records)
        return Source(spec, "tfrecord", count, _file_fingerprint(records),
                      lambda: (r.volume for r in data.read_volumes(pattern)))
    if volumes and label is not None:
        raise EvaluationError(f"--label applies to TFRecords and SavedModels; {spec!r} holds "
                              "volume files, which carry no class (select them by name)")
    if volumes:
        fingerprint = hashlib.sha256(
            f"{_file_fingerprint(volumes)}|{tuple(window)}".encode()).hexdigest()
        return Source(spec, "volumes", len(volumes), fingerprint,
                      lambda: (read_volume_file(p, window) for p in volumes))
    raise EvaluationError(
        f"{spec!r} is not a SavedModel directory and matches no TFRecord (*.tfrecord*) or "
        f"volume ({', '.join(VOLUME_SUFFIXES)}) files")


# ---- the feature extractor -----------------------------------------------------------

@dataclasses.dataclass
class Extractor:
    model: object
    name: str
    weights_sha256: str
    pretrained: bool

    def __post_init__(self):
        self._forward = tf.function(lambda x: self.model(x, training=False),
                                    reduce_retracing=True)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(tf.convert_to_tensor(batch[..., None])).numpy()


def load_extractor(weights: Optional[str], allow_random: bool = False,
                   random_seed: int = 0) -> Extractor:
    """The MedicalNet ResNet-50 with `weights` (.npz from tools.import_medicalnet); without
    weights, a fixed-seed random network only when `allow_random`, else EvaluationError."""
    if weights and not os.path.isfile(weights):
        raise EvaluationError(f"--weights: no file {weights!r}. {WEIGHTS_HELP}")
    if not weights and not allow_random:
        raise EvaluationError(f"no feature-extractor weights given (--weights). {WEIGHTS_HELP}")
    model = medicalnet.build_resnet50()
    if weights:
        try:
            state = medicalnet.load_state(weights)
            medicalnet.set_weights(model, state)
        except (ValueError, OSError) as err:
            raise EvaluationError(f"--weights {weights!r}: {err}") from None
        return Extractor(model, medicalnet.NAME, medicalnet.state_sha256(state), True)
    state = medicalnet.random_state(model, random_seed)
    medicalnet.set_weights(model, state)
    return Extractor(model, f"{medicalnet.NAME}-random-seed{random_seed}",
                     medicalnet.state_sha256(state), False)


def extract_features(source: Source, extractor: Extractor, batch_size: int = 1,
                     label: str = "", log=print, log_every_s: float = 10.0) -> tuple:
    """Features of every volume of `source`, `batch_size` at a time: returns ((N, 2048)
    float32 features, the volume shape)."""
    rows, batch, shape = [], [], None
    done, t0, last = 0, time.time(), 0.0

    def flush():
        nonlocal done, last
        rows.append(extractor(np.stack(batch)))
        done += len(batch)
        batch.clear()
        now = time.time()
        if now - last >= log_every_s or done == source.count:
            rate = done / max(now - t0, 1e-9)
            log(f"features {label}: {done}/{source.count} volumes | {rate:.2f} volumes/s | "
                f"ETA {max(source.count - done, 0) / rate:.0f} s")
            last = now

    for volume in source.volumes():
        if shape is None:
            shape = volume.shape
        elif volume.shape != shape:
            raise EvaluationError(f"{source.spec}: volume {done + len(batch)} has shape "
                                  f"{volume.shape}, the first had {shape}")
        batch.append(volume)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not rows:
        raise EvaluationError(f"{source.spec}: no volumes")
    return np.concatenate(rows).astype(np.float32), shape


# ---- cache ---------------------------------------------------------------------------

def cache_key(source: Source, extractor: Extractor) -> str:
    return hashlib.sha256(f"v{CACHE_VERSION}|{source.fingerprint}|{extractor.name}|"
                          f"{extractor.weights_sha256}".encode()).hexdigest()[:32]


def cached_features(source: Source, extractor: Extractor, cache_dir: Optional[str],
                    batch_size: int, label: str, log=print):
    """extract_features with an on-disk cache keyed on the data, the extractor and its
    weights. Returns (features, volume shape, "hit" | "miss" | "off")."""
    if not cache_dir:
        return (*extract_features(source, extractor, batch_size, label, log), "off")
    path = os.path.join(cache_dir, f"features-{cache_key(source, extractor)}.npz")
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as cached:
            log(f"features {label}: {cached['features'].shape[0]} from cache {path}")
            return cached["features"], tuple(int(v) for v in cached["shape"]), "hit"
    features, shape = extract_features(source, extractor, batch_size, label, log)
    os.makedirs(cache_dir, exist_ok=True)
    with fileio.atomic_output(path, ".npz") as tmp:
        np.savez(tmp, features=features, shape=np.array(shape),
                 meta=np.array(json.dumps({"spec": source.spec, "extractor": extractor.name,
                                           "weights_sha256": extractor.weights_sha256})))
    return features, shape, "miss"


# ---- the metrics ---------------------------------------------------------------------

def fid_mmd(real: Source, fake: Source, extractor: Extractor, batch_size: int = 1,
            cache_dir: Optional[str] = None, log=print) -> dict:
    """FID and MMD between two sources; the real features are cached in `cache_dir`."""
    for name, source in (("real", real), ("fake", fake)):
        if source.count < 2:
            raise EvaluationError(f"--{name}: FID and MMD need at least 2 volumes, "
                                  f"{source.spec} has {source.count}")
    t0 = time.time()
    real_features, real_shape, cache = cached_features(real, extractor, cache_dir, batch_size,
                                                       "real", log)
    fake_features, fake_shape = extract_features(fake, extractor, batch_size, "fake", log)
    if real_shape != fake_shape:
        log(f"warning: real volumes are {real_shape}, generated ones {fake_shape}: features "
            "of different resolutions are rarely comparable")
    for name, f in (("real", real_features), ("fake", fake_features)):
        if f.shape[0] < 2:  # a manifest count can be stale; the features are what counts
            raise EvaluationError(f"--{name}: FID and MMD need at least 2 volumes, got "
                                  f"{f.shape[0]}")
        if not np.all(np.isfinite(f)):
            raise EvaluationError(f"--{name}: non-finite features (non-finite volumes?)")
    pooled = np.concatenate([real_features, fake_features]).astype(np.float64)
    sigma = metrics.median_pairwise_distance(pooled)
    return {
        "fid": metrics.fid_from_features(real_features, fake_features),
        "mmd": metrics.mmd(real_features, fake_features, sigma=sigma),
        "n_real": int(real_features.shape[0]), "n_fake": int(fake_features.shape[0]),
        "extractor": extractor.name, "weights_sha256": extractor.weights_sha256,
        "pretrained": extractor.pretrained, "feature_dim": int(real_features.shape[1]),
        "mmd_sigma": sigma, "mmd_kernel": "gaussian, sigma = median pooled pairwise distance",
        "real": real.spec, "fake": fake.spec, "real_shape": list(real_shape),
        "fake_shape": list(fake_shape), "real_cache": cache,
        "seconds": round(time.time() - t0, 1)}
