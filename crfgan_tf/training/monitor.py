"""Evaluation during training (`eval_every`): is the run getting better, and is it
collapsing?

Each evaluation generates `eval_samples` whole volumes from fixed latents (the same at
every evaluation, so the points are comparable; G2 slab-wise, bounded memory) and compares
them with the evaluation records (default: the val-* split beside the training records),
whose statistics are computed once per start (their features cached in the run
directory):

  fd, mmd         Fréchet distance and MMD^2 of feature vectors: MedicalNet ResNet-50 with
                  `fid_weights` (FID), else the fixed-seed random ResNet-50 (labelled as
                  such in eval.jsonl: for the run's own trend, not comparable elsewhere);
  hist_w1_hu      Wasserstein-1 distance of the intensity histograms (HU for CT);
  lung_fraction   lungs / body of the generated and the real volumes (CT), and their
                  difference (crfgan_tf/evaluation/physical.py);
  profile_l1_hu   mean |difference| of the mean axial, coronal and sagittal intensity
                  profiles;
  ms_ssim         mean 3D MS-SSIM of disjoint pairs of generated volumes and of real
                  volumes; diversity = 1 - ms_ssim, and diversity_ratio = generated / real
                  (shown, no longer an alarm: noise lowers MS-SSIM, so a collapsed model
                  with noisy output looks diverse by it);
  precision, recall, density, coverage
                  k-NN manifolds of the generated features against the diversity
                  reference (evaluation.statistics.knn_coverage);
  body_fraction_sd_ratio, lung_fraction_sd_ratio
                  the generated volumes' standard deviation of each over the reference's
                  (evaluation.statistics.anatomy_spread);
  structure_precision, structure_recall, structure_coverage
                  the same k-NN measures on the volumes themselves, average-pooled to
                  STRUCTURE_SIDE^3 (the body, the lungs, the bones: where a voxel-level
                  noise averages out, so noise cannot fake them and no feature network's
                  view decides them);
  quality_pass_rate
                  (CT) the share of generated volumes inside the quality gate's ranges
                  built from the diversity reference's volumes (evaluation.quality: body
                  and lung fraction, lung, soft-tissue and air median HU);
  lung_profile_corr
                  (CT) the correlation of the generated and the real volumes' mean lung
                  area per axial slice (each volume's profile normalised to sum 1): the
                  lungs' shape from base to apex;
  r_t             the share of D's real logits above 0 since the last evaluation (ADA's
                  overfitting heuristic; passed in by the training loop).

The diversity reference: the evaluation records, and when they are fewer than
DIVERSITY_REAL volumes, the first training records up to that many (diversity is a
property of the data, not of held-out cases; two val volumes cannot show a spread).

Alarms (logged as warnings, in eval.jsonl and TensorBoard's eval/alarm): mode collapse by
evaluation.statistics.collapse_alarms (coverage below its threshold, or the body or lung
fraction varying less than half as much as in the reference; not at the step-0 baseline,
whose volumes are an untrained network's), r_t above R_T_ALARM (D tells every real volume
apart: overfitting, or D overpowering G).
"""

from __future__ import annotations

import glob
import json
import os
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from crfgan_tf.core import intensity
from crfgan_tf.data import records
from crfgan_tf.evaluation import features as features_lib
from crfgan_tf.evaluation import metrics, physical, quality, sources, statistics
from crfgan_tf.run import config as config_lib
from crfgan_tf.run import rundir
from crfgan_tf.utils import fileio

STRUCTURE_SIDE = 16  # the side the structure measures pool every volume to
DIVERSITY_REAL = 16  # real volumes the diversity measures compare with, at least
# the reference setup runs just below it on the phantoms
# (docs/benchmarks/2026-11-30-evaluation-alarms-augmentation.md)
R_T_ALARM = 0.99
HIST_BIN_HU = 5.0


def default_eval_records(train_records: str) -> str:
    """The val-* records beside each training pattern's files (data_prep.convert's split)."""
    dirs = sorted({os.path.dirname(p) for p in train_records.split(",") if p})
    return ",".join(os.path.join(d, "val-*.tfrecord*") for d in dirs)


def check_eval_records(config: config_lib.TrainConfig) -> str:
    """The evaluation record files, checked before training writes anything.

    Raises:
      records.RecordsError: none match, or they hold fewer than 2 volumes (names
        `eval_records` or the default pattern, and the remedies).
    """
    pattern = config.eval_records or default_eval_records(config.train_records)
    files = [f for part in pattern.split(",") for f in sorted(glob.glob(part))]
    which = "`eval_records`" if config.eval_records else \
        "the val-* split beside `train_records` (the default of `eval_records`)"
    if not files:
        raise records.RecordsError(
            f"`eval_every` needs evaluation records: nothing matches {pattern!r}, {which}; "
            "convert with `val_fraction` > 0, or give `eval_records`, or `eval_every=0`")
    count = len(records.record_case_ids(files))
    if count < 2:
        raise records.RecordsError(
            f"`eval_every`: evaluation needs at least 2 volumes (the distances compare "
            f"sets), {pattern!r} ({which}) holds {count}; give `eval_records` with more "
            f"scans (the training records will do: `eval_records={config.train_records}`), "
            "or `eval_every=0`")
    return ",".join(files)


class Evaluator:
    """Computes the real side once; `evaluate(model, step, r_t)` the rest.

    Raises (at construction):
      records.RecordsError: no evaluation records (names `eval_records` and the pattern).
      sources.EvaluationError: unreadable `fid_weights`.
    """

    def __init__(self, config: config_lib.TrainConfig, log: Callable[[str], None] = print):
        self.config = config
        self.log = log
        self.pattern = check_eval_records(config)
        pattern = config.eval_records or default_eval_records(config.train_records)
        self.extractor = features_lib.load_extractor(config.fid_weights or None,
                                                   allow_random=not config.fid_weights,
                                                   max_side=config.eval_feature_side)
        self.cache_dir = os.path.join(config.model_dir, rundir.EVAL_CACHE_DIR)
        t0 = time.time()
        self.real = self._real_side()
        log(f"eval: {self.real['count']} real volumes from {pattern} "
            f"({self.extractor.name}{'' if self.extractor.pretrained else ', RANDOM features: FD is not FID'}) "
            f"in {time.time() - t0:.1f} s")

    # ---- the real side, once ---------------------------------------------------------
    def _real_side(self) -> dict:
        first = next(iter(records.read_volumes(self.pattern)))
        self.window = tuple(first.window)
        self.modality = first.modality
        source = sources.open_source(self.pattern)
        features, shape, _ = features_lib.cached_features(
            source, self.extractor, self.cache_dir, 1, "eval records", log=lambda m: None)
        if shape != (self.config.img_size,) * 3:
            raise records.RecordsError(f"evaluation records {self.pattern} hold {shape} volumes, "
                                    f"`img_size={self.config.img_size}`")
        stats = _VolumeStats(self.window, self.modality)
        for r in records.read_volumes(self.pattern):
            stats.add(r.volume)
        out = stats.finish()
        out.update(features=features, count=int(features.shape[0]))
        if out["count"] < 2:
            raise records.RecordsError(f"evaluation needs at least 2 volumes, {self.pattern} "
                                    f"holds {out['count']}; give `eval_records` with more "
                                    "scans, or `eval_every=0`")
        (out["diversity_features"], out["anatomy"],
         out["structure"]) = self._diversity_reference(features, stats.anatomy, stats.structure)
        if self.modality == "ct" and len(out["anatomy"]) >= 2:  # the quality gate's rule
            out["quality_ranges"] = quality.ranges_from(out["anatomy"])
        return out

    def _diversity_reference(self, features, anatomy, structure):
        """(features, anatomy rows, structure vectors) of the evaluation records, topped up
        from the first training records to DIVERSITY_REAL volumes (their features cached
        like the rest)."""
        missing = DIVERSITY_REAL - features.shape[0]
        if missing <= 0:
            return features, anatomy, np.stack(structure)
        train = [f for part in self.config.train_records.split(",")
                 for f in sorted(glob.glob(part))]
        eval_files = set(self.pattern.split(","))
        train = [f for f in train if f not in eval_files]
        if not train:
            return features, anatomy, np.stack(structure)
        volumes = []
        for r in records.read_volumes(",".join(train)):
            volumes.append(r.volume)
            if len(volumes) == missing:
                break
        source = sources.Source(
            f"the first {len(volumes)} training records", "tfrecord", len(volumes),
            sources.file_fingerprint(train) + f"|first{len(volumes)}", lambda: iter(volumes))
        extra, _, _ = features_lib.cached_features(source, self.extractor, self.cache_dir, 1,
                                                   "diversity reference", log=lambda m: None)
        rows = [quality.statistics(intensity.from_unit(v, self.window)) for v in volumes] \
            if self.modality == "ct" else []
        return (np.concatenate([features, extra]), anatomy + rows,
                np.stack(structure + [structure_vector(v) for v in volumes]))

    # ---- one evaluation ------------------------------------------------------------
    def latents(self):
        """The fixed latents (and labels, cycled, for a conditional model)."""
        c = self.config
        z = tf.stack([tf.random.stateless_normal([c.latent_dim], seed=[c.seed, (1 << 20) + i])
                      for i in range(c.eval_samples)])
        labels = [i % c.num_classes for i in range(c.eval_samples)] if c.num_classes else None
        return z, labels

    def generate(self, model):
        z, labels = self.latents()
        trunk, head = model.generation_networks()  # G's moving average, where kept
        for i in range(self.config.eval_samples):
            label = None if labels is None else tf.constant([labels[i]])
            embedding = trunk(model.trunk_input(z[i:i + 1], label), training=False)
            yield head.by_slabs(embedding, 8)[0].numpy().astype(np.float32)

    def evaluate(self, model, step: int, r_t: Optional[float] = None) -> dict:
        t0 = time.time()
        stats = _VolumeStats(self.window, self.modality)
        volumes, rows = [], []
        for volume in self.generate(model):
            stats.add(volume)
            volumes.append(volume)
            if len(volumes) == 4:  # the extractor's batch; memory stays at 4 volumes
                rows.append(self.extractor(np.stack(volumes)))
                volumes = []
        if volumes:
            rows.append(self.extractor(np.stack(volumes)))
        fake = stats.finish()
        features = np.concatenate(rows).astype(np.float32)
        real = self.real
        result = {"step": int(step), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        finite = np.all(np.isfinite(features))
        result["fd"] = metrics.fid_from_features(real["features"], features) if finite else None
        result["mmd"] = metrics.mmd(real["features"], features) if finite else None
        result["hist_w1_hu"] = _w1(real["histogram"], fake["histogram"], HIST_BIN_HU)
        result["profile_l1_hu"] = float(np.mean([np.mean(np.abs(real["profiles"][k] - fake["profiles"][k]))
                                                 for k in range(3)]))
        if self.modality == "ct":
            result.update(lung_fraction=fake["lung_fraction"],
                          lung_fraction_real=real["lung_fraction"],
                          lung_fraction_diff=fake["lung_fraction"] - real["lung_fraction"])
        result.update(ms_ssim=fake["ms_ssim"], ms_ssim_real=real["ms_ssim"])
        diversity = (1 - fake["ms_ssim"], 1 - real["ms_ssim"])
        result["diversity_ratio"] = diversity[0] / diversity[1] if diversity[1] > 0 else None
        result["r_t"] = r_t
        coverage = statistics.knn_coverage(real["diversity_features"], features) \
            if finite and features.shape[0] >= 2 else None
        spread = statistics.anatomy_spread(real["anatomy"], fake["anatomy"],
                                           statistics.SPREAD_STATISTICS) \
            if self.modality == "ct" else {}
        if coverage:
            result.update({k: coverage[k] for k in ("precision", "recall", "density",
                                                    "coverage")})
        for name, row in spread.items():
            result[f"{name}_sd_ratio"] = row["sd_ratio"]
        structure = statistics.knn_coverage(real["structure"], np.stack(fake["structure"]))
        result.update({f"structure_{k}": structure[k]
                       for k in ("precision", "recall", "coverage")})
        if real.get("quality_ranges"):
            limits = real["quality_ranges"]
            result["quality_pass_rate"] = float(np.mean(
                [not quality.failed(row, limits) for row in fake["anatomy"]]))
        if self.modality == "ct":
            result["lung_profile_corr"] = _correlation(real["lung_profile"],
                                                       fake["lung_profile"])
        result["n_real_diversity"] = int(real["diversity_features"].shape[0])
        alarms = statistics.collapse_alarms(coverage, spread) if step > 0 else []
        if r_t is not None and r_t > R_T_ALARM:
            alarms.append(f"r_t = {r_t:.3f}: D calls nearly every real volume real (overfitting "
                          "or D overpowering G; `augment` / `ada_target`, a lower `lr_d`)")
        result.update(alarms=alarms, extractor=self.extractor.name,
                      feature_side=self.extractor.input_side(self.config.img_size),
                      pretrained=self.extractor.pretrained, n_real=real["count"],
                      n_fake=int(features.shape[0]), seconds=round(time.time() - t0, 2))
        return result


class _VolumeStats:
    """Streaming statistics of [-1, 1] volumes: intensity histogram, mean profiles, lung
    fraction (CT) and MS-SSIM of disjoint pairs."""

    def __init__(self, window, modality):
        self.window, self.modality = window, modality
        low, high = window
        self.edges = np.arange(low, high + HIST_BIN_HU, HIST_BIN_HU)
        self.histogram = np.zeros(len(self.edges) - 1, np.float64)
        self.profiles = None
        self.lungs, self.pairs, self.pending, self.n = [], [], None, 0
        self.anatomy, self.structure, self.lung_profiles = [], [], []

    def add(self, volume):
        hu = intensity.from_unit(volume, self.window).astype(np.float32)
        self.histogram += np.histogram(hu, self.edges)[0]
        profiles = [hu.mean(axis=tuple(a for a in range(3) if a != k)) for k in range(3)]
        self.profiles = profiles if self.profiles is None else \
            [p + q for p, q in zip(self.profiles, profiles)]
        self.n += 1
        self.structure.append(structure_vector(volume))
        if self.modality == "ct":  # lungs / body, as evaluation.physical defines them
            masks = physical.body_and_lungs(hu)  # once, for both
            self.anatomy.append(quality.statistics(hu, masks))
            self.lungs.append(self.anatomy[-1]["lung_fraction"])
            self.lung_profiles.append(lung_area_profile(masks[1]))
        if self.pending is None:
            self.pending = volume
        else:
            self.pairs.append(metrics.ms_ssim_3d(self.pending, volume))
            self.pending = None

    def finish(self) -> dict:
        return {"histogram": self.histogram / max(self.histogram.sum(), 1),
                "profiles": [p / self.n for p in self.profiles],
                "lung_fraction": float(np.mean(self.lungs)) if self.lungs else None,
                "ms_ssim": float(np.mean(self.pairs)) if self.pairs else float("nan"),
                "anatomy": self.anatomy, "structure": self.structure,
                "lung_profile": np.mean(self.lung_profiles, axis=0)
                if self.lung_profiles else None}


def structure_vector(volume: np.ndarray, side: int = STRUCTURE_SIDE) -> np.ndarray:
    """A (z, y, x) volume in [-1, 1] average-pooled to side^3 (each side divisible by
    `side`, else the volume's own side), flattened: the structure measures' features."""
    v = np.asarray(volume, np.float32)
    shape = []
    for n in v.shape:
        f = n // side if n >= side and n % side == 0 else 1
        shape += [n // f, f]
    return v.reshape(shape).mean(axis=(1, 3, 5)).ravel()


def lung_area_profile(lungs: np.ndarray) -> np.ndarray:
    """The lung voxels of each axial slice of a (z, y, x) lung mask
    (physical.body_and_lungs) over all of its lung voxels (zeros without lungs): where
    along the body the lungs are, and how wide."""
    area = lungs.sum(axis=(1, 2)).astype(np.float64)
    return area / area.sum() if area.sum() else area


def _correlation(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> Optional[float]:
    if a is None or b is None or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _w1(p: np.ndarray, q: np.ndarray, bin_width: float) -> float:
    """Wasserstein-1 distance of two normalised histograms on the same bins."""
    return float(np.abs(np.cumsum(p) - np.cumsum(q)).sum() * bin_width)


# ---- eval.jsonl, TensorBoard and the best checkpoint -----------------------------------

def truncate_log(model_dir: str, step: int) -> int:
    """Drops eval.jsonl lines after `step` (a resumed run redoes those evaluations);
    returns the lines kept."""
    path = os.path.join(model_dir, rundir.EVAL_FILE)
    if not os.path.exists(path):
        return 0
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    keep = [r for r in rows if r["step"] <= step]
    if len(keep) != len(rows):
        fileio.atomic_write(path, "".join(json.dumps(r) + "\n" for r in keep))
    return len(keep)


def append_log(model_dir: str, result: dict) -> None:
    """Appends one evaluation to eval.jsonl, whole or not at all.

    Raises:
      fileio.DiskFullError: no space for the line (the file is cut back to its earlier
        lines, so no half line is ever read).
    """
    path = os.path.join(model_dir, rundir.EVAL_FILE)
    line = (json.dumps(result) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        before = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(line):  # unbuffered: a short write is seen, not hidden
                written += os.write(fd, line[written:])
            os.fsync(fd)
        except OSError as err:
            reason = fileio.disk_full_reason(err)
            if reason is None:
                raise
            os.ftruncate(fd, before)
            raise fileio.disk_full_error(
                path, reason, len(line), f"Its {before}-byte earlier part and the checkpoints "
                "are intact", "free space and run the same command again: the run resumes "
                "from its last checkpoint and evaluates again from there") from None
    finally:
        os.close(fd)


def write_summaries(writer, result: dict) -> None:
    with writer.as_default(step=result["step"]):
        for key in ("fd", "mmd", "hist_w1_hu", "profile_l1_hu", "lung_fraction",
                    "lung_fraction_real", "ms_ssim", "ms_ssim_real", "diversity_ratio",
                    "precision", "recall", "density", "coverage", "body_fraction_sd_ratio",
                    "lung_fraction_sd_ratio", "structure_precision", "structure_recall",
                    "structure_coverage", "quality_pass_rate", "lung_profile_corr", "r_t",
                    "seconds"):
            if result.get(key) is not None:
                tf.summary.scalar(f"eval/{key}", result[key])
        tf.summary.scalar("eval/alarm", float(bool(result["alarms"])))
        if result["alarms"]:
            tf.summary.text("eval/alarms", "\n\n".join(result["alarms"]))


def read_best(model_dir: str) -> Optional[dict]:
    path = os.path.join(model_dir, rundir.BEST_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def is_better(result: dict, best: Optional[dict], metric: str) -> bool:
    """Whether `result` beats `best` by `metric`: lower is better for the distances, higher
    for config.HIGHER_IS_BETTER ("coverage"), whose ties (it moves in steps of 1 / the
    real volumes) go to the lower FD."""
    value = result.get(metric)
    if value is None or not np.isfinite(value):
        return False
    if best is None:
        return True
    if metric not in config_lib.HIGHER_IS_BETTER:
        return value < best["value"]
    if value != best["value"]:
        return value > best["value"]
    fd, best_fd = result.get("fd"), best.get("fd")
    return fd is not None and (best_fd is None or fd < best_fd)


def record_best(model_dir: str, result: dict, metric: str, checkpoint: str) -> dict:
    best = {"step": result["step"], "metric": metric, "value": result[metric],
            "checkpoint": checkpoint, "extractor": result["extractor"], "fd": result.get("fd")}
    for key in ("coverage", "recall", "body_fraction_sd_ratio", "lung_fraction_sd_ratio"):
        if result.get(key) is not None:  # the figures the model card shows beside it
            best[key] = result[key]
    fileio.atomic_write(os.path.join(model_dir, rundir.BEST_FILE), json.dumps(best, indent=2))
    return best
