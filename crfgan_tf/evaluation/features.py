"""The feature extractor of the evaluation (MedicalNet ResNet-50, crfgan_tf.evaluation.
medicalnet) and the on-disk cache of real-set features."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from crfgan_tf.core import geometry
from crfgan_tf.evaluation import medicalnet
from crfgan_tf.evaluation.sources import EvaluationError, Source
from crfgan_tf.core.geometry import FEATURE_SIDE
from crfgan_tf.utils import fileio
from crfgan_tf.utils.progress import Progress

CACHE_VERSION = 2  # 2: the key names the feature side
WEIGHTS_HELP = (
    "The volume features (FID, the k-NN measures, the memorisation audit, the downstream "
    "probe) come from MedicalNet's ResNet-50: download resnet_50.pth from the MedicalNet "
    "release (github.com/Tencent/MedicalNet, 'pretrain' archive), then run `pip install "
    "torch` and `crfgan-import-medicalnet --checkpoint=resnet_50.pth "
    "--output=weights/medicalnet_resnet50.npz` (in a checkout also `python -m "
    "tools.import_medicalnet`), and pass --weights=weights/medicalnet_resnet50.npz. For "
    "smoke tests and relative comparisons only, --allow_random_features uses a fixed-seed "
    "random network (labelled as such; its numbers are not comparable with published FIDs).")


def average_down(batch: np.ndarray, factor: int) -> np.ndarray:
    """(b, d, h, w) -> (b, d/f, h/f, w/f): the mean of each f^3 block, in float32, one
    volume at a time (geometry.block_mean: no float64 or whole-batch temporary)."""
    return np.stack([geometry.block_mean(v, factor) for v in batch])


@dataclasses.dataclass
class Extractor:
    """MedicalNet features of [-1, 1] volumes (b, S, S, S); volumes with S above
    `max_side` are first averaged over f^3 blocks, f = S / max_side, so memory stays that
    of max_side^3 whatever the resolution (MedicalNet at 512^3 would keep a 256^3 x 64
    first feature map: 4 GiB per volume)."""
    model: object
    name: str
    weights_sha256: str
    pretrained: bool
    max_side: int = FEATURE_SIDE

    def __post_init__(self):
        self._forward = tf.function(lambda x: self.model(x, training=False),
                                    reduce_retracing=True)

    def input_side(self, side: int) -> int:
        """The side the features of a side^3 volume are taken at."""
        return min(side, self.max_side)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        side = max(batch.shape[1:4])
        if side > self.max_side:
            if any(n % self.max_side for n in batch.shape[1:4]):
                raise EvaluationError(
                    f"volumes of shape {batch.shape[1:4]} cannot be averaged down to "
                    f"`feature_side={self.max_side}`: their sides must be multiples of it "
                    f"(`feature_side={side}` takes the features at full size)")
            batch = average_down(batch, side // self.max_side)
        return self._forward(tf.convert_to_tensor(batch[..., None])).numpy()


def load_extractor(weights: Optional[str], allow_random: bool = False,
                   random_seed: int = 0, max_side: int = FEATURE_SIDE) -> Extractor:
    """The MedicalNet ResNet-50 with `weights` (.npz from tools.import_medicalnet); without
    weights, a fixed-seed random network only when `allow_random`, else EvaluationError.
    Volumes larger than max_side^3 are averaged down to it first (Extractor)."""
    if weights and not os.path.isfile(weights):
        raise EvaluationError(f"`weights`: no file {weights!r}. {WEIGHTS_HELP}")
    if not weights and not allow_random:
        raise EvaluationError(f"no feature-extractor weights given (`weights`). {WEIGHTS_HELP}")
    model = medicalnet.build_resnet50()
    if weights:
        try:
            state = medicalnet.load_state(weights)
            medicalnet.set_weights(model, state)
        except (ValueError, OSError) as err:
            raise EvaluationError(f"`weights` {weights!r}: {err}") from None
        return Extractor(model, medicalnet.NAME, medicalnet.state_sha256(state), True, max_side)
    state = medicalnet.random_state(model, random_seed)
    medicalnet.set_weights(model, state)
    return Extractor(model, f"{medicalnet.NAME}-random-seed{random_seed}",
                     medicalnet.state_sha256(state), False, max_side)


def extract_features(source: Source, extractor: Extractor, batch_size: int = 1,
                     label: str = "", log=print, log_every_s: float = 10.0) -> tuple:
    """Features of every volume of `source`, `batch_size` at a time: returns ((N, 2048)
    float32 features, the volume shape)."""
    rows, batch, shape = [], [], None
    progress = Progress(source.count, log, f"features {label}:", "volumes")
    last = progress.t0 - log_every_s

    def flush():
        nonlocal last
        rows.append(extractor(np.stack(batch)))
        progress.done += len(batch)
        batch.clear()
        if progress.clock() - last >= log_every_s or progress.done == source.count:
            progress.report(progress.done)
            last = progress.clock()

    for volume in source.volumes():
        if shape is None:
            shape = volume.shape
        elif volume.shape != shape:
            raise EvaluationError(f"{source.spec}: volume {progress.done + len(batch)} has shape "
                                  f"{volume.shape}, the first had {shape}")
        batch.append(volume)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not rows:
        raise EvaluationError(f"{source.spec}: no volumes")
    return np.concatenate(rows).astype(np.float32), shape


def cache_key(source: Source, extractor: Extractor) -> str:
    return hashlib.sha256(f"v{CACHE_VERSION}|{source.fingerprint}|{extractor.name}|"
                          f"{extractor.weights_sha256}|side<={extractor.max_side}"
                          .encode()).hexdigest()[:32]


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


