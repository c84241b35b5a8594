"""The 2.5D FID as MAISI computes it (Guo et al. 2024; NV-Generate-CTMR's
compute_fid_2-5d_ct.py), beside the 3D MedicalNet FID: 2D ResNet-50 features of the
central slices of each plane, one Fréchet distance per plane, and their mean.

The protocol (docs/evaluation.md "2.5D FID"), for a canonical (z, y, x) CT volume:
  1. HU, then [-1000, 1000] HU -> [0, 1], clipped (MAISI's ScaleIntensityRange);
  2. per plane (axial: slices along z, MAISI's "xy"; coronal: along y, "zx"; sagittal:
     along x, "yz") the central CENTRE_RATIO of the slices, index
     int((1 - r) / 2 * n) to int((1 + r) / 2 * n) (MAISI's paper setting r = 0.4);
  3. those slices of one volume and plane min-max scaled together to [0, 1] (one min and
     max over them: MAISI's radimagenet_intensity_normalisation of a 4D batch), repeated
     to three channels, minus the channel means (0.406, 0.456, 0.485) (BGR order; the
     channels are equal, so the order changes nothing);
  4. ResNet-50 without its classifier, global average pooling: 2048 features per slice
     (keras.applications.ResNet50 with the RadImageNet weights file the user supplies,
     RadImageNet-ResNet50_notop.h5; MAISI loads the same network's PyTorch port);
  5. per plane, the Fréchet distance between all real and all generated slice features
     (evaluation.metrics.fid_from_features); the 2.5D FID is the mean of the three.

Without weights the network is the fixed-seed random ResNet-50, labelled as such
(`pretrained` False, the name ends in -random-seedN): its numbers compare runs of one
study, never published FIDs. No network access: the weights come from a file.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from crfgan_tf.core import intensity
from crfgan_tf.evaluation import metrics
from crfgan_tf.evaluation.sources import EvaluationError
from crfgan_tf.utils import fileio

CENTRE_RATIO = 0.4
HU_RANGE = (-1000.0, 1000.0)
CHANNEL_MEANS = (0.406, 0.456, 0.485)
PLANES = ("axial", "coronal", "sagittal")   # slices along z, y, x
MAISI_PLANE_NAMES = {"axial": "xy", "coronal": "zx", "sagittal": "yz"}
NAME = "radimagenet-resnet50-2d"
WEIGHTS_HELP = (
    "The 2.5D FID needs the RadImageNet ResNet-50 weights: RadImageNet-ResNet50_notop.h5 "
    "from the RadImageNet release (github.com/BMEII-AI/RadImageNet, the Keras models), "
    "passed as --fid25d_weights. Without it, --allow_random_features uses a fixed-seed "
    "random ResNet-50, labelled as such (for comparing runs of one study only).")


def centre_range(n: int, ratio: float = CENTRE_RATIO) -> tuple:
    """[start, stop) of the central slices MAISI takes of an axis of n slices."""
    return int((1.0 - ratio) / 2.0 * n), int((1.0 + ratio) / 2.0 * n)


def plane_slices(unit_volume: np.ndarray, window, ratio: float = CENTRE_RATIO) -> dict:
    """{plane: (K, h, w, 3) float32 network inputs} of one (z, y, x) volume in [-1, 1]
    (window: its HU window), steps 1-3 of the module docstring."""
    hu = intensity.from_unit(np.asarray(unit_volume, np.float32), window)
    x = np.clip((hu - HU_RANGE[0]) / (HU_RANGE[1] - HU_RANGE[0]), 0.0, 1.0).astype(np.float32)
    out = {}
    for axis, plane in enumerate(PLANES):
        start, stop = centre_range(x.shape[axis], ratio)
        slices = np.moveaxis(x, axis, 0)[start:stop]
        low, high = float(slices.min()), float(slices.max())
        slices = (slices - low) / (high - low + 1e-10)
        out[plane] = np.stack([slices - m for m in CHANNEL_MEANS], axis=-1).astype(np.float32)
    return out


@dataclasses.dataclass
class SliceExtractor:
    """2D ResNet-50 features of plane slices: __call__(volume) -> {plane: (K, 2048)}."""
    model: object
    name: str
    weights_sha256: str
    pretrained: bool
    window: tuple = intensity.CT_WINDOW
    ratio: float = CENTRE_RATIO
    batch: int = 32

    def features(self, slices: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(self.model(slices[i:i + self.batch], training=False))
                               for i in range(0, slices.shape[0], self.batch)])

    def __call__(self, unit_volume: np.ndarray) -> dict:
        return {plane: self.features(s).astype(np.float32)
                for plane, s in plane_slices(unit_volume, self.window, self.ratio).items()}


def build_resnet50():
    """keras.applications.ResNet50 without its classifier, global average pooling, any
    input size."""
    import keras

    return keras.applications.ResNet50(include_top=False, weights=None, pooling="avg",
                                       input_shape=(None, None, 3))


def load_extractor(weights: Optional[str], allow_random: bool = False, seed: int = 0,
                   window=intensity.CT_WINDOW, ratio: float = CENTRE_RATIO) -> SliceExtractor:
    """The ResNet-50 with the RadImageNet `weights` (a Keras .h5), or without them and
    with `allow_random` the fixed-seed random network; otherwise EvaluationError."""
    import keras

    if weights and not os.path.isfile(weights):
        raise EvaluationError(f"`fid25d_weights`: no file {weights!r}. {WEIGHTS_HELP}")
    if not weights and not allow_random:
        raise EvaluationError(f"no 2.5D FID weights given (`fid25d_weights`). {WEIGHTS_HELP}")
    keras.utils.set_random_seed(seed)
    model = build_resnet50()
    if weights:
        try:
            model.load_weights(weights)
        except (ValueError, OSError, KeyError) as err:
            raise EvaluationError(f"`fid25d_weights` {weights!r} does not fit keras.applications"
                                  f".ResNet50(include_top=False): {err}") from None
        return SliceExtractor(model, NAME, fileio.sha256(weights), True, tuple(window), ratio)
    return SliceExtractor(model, f"resnet50-2d-random-seed{seed}", "", False, tuple(window),
                          ratio)


def stack(rows: list) -> dict:
    """{plane: (V, K, 2048)} of a list of per-volume {plane: (K, 2048)} (every volume of
    one shape has the same K)."""
    return {plane: np.stack([r[plane] for r in rows]) for plane in PLANES}


def fid25d(real: dict, fake: dict) -> dict:
    """{"axial", "coronal", "sagittal": FD of the slice features, "mean": their mean} of
    {plane: (V, K, D)} per-volume slice features (stack)."""
    out = {}
    for plane in PLANES:
        r, f = real[plane], fake[plane]
        out[plane] = metrics.fid_from_features(r.reshape(-1, r.shape[-1]),
                                               f.reshape(-1, f.shape[-1]))
    out["mean"] = float(np.mean([out[p] for p in PLANES]))
    return out


def mean_statistic(real: np.ndarray, fake: np.ndarray) -> float:
    """fid25d's mean on (V, 3, K, D) arrays (the planes on axis 1): the form the
    bootstrap of evaluation.statistics resamples, whole volumes at a time."""
    return float(np.mean([metrics.fid_from_features(real[:, i].reshape(-1, real.shape[-1]),
                                                    fake[:, i].reshape(-1, fake.shape[-1]))
                          for i in range(real.shape[1])]))


def as_array(features: dict) -> np.ndarray:
    """{plane: (V, K, D)} -> (V, 3, K, D), the planes in PLANES order."""
    return np.stack([features[p] for p in PLANES], axis=1)
