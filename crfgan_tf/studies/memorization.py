"""Has a generator memorised its training scans? A nearest-neighbour audit.

For every generated volume g, in two spaces (MedicalNet features; voxels averaged over
blocks down to `voxel_size`^3, distances as RMS in the window's units, HU for CT):
  d_train(g): the distance to its nearest training scan, d_hold(g): to its nearest
  held-out real scan (scans the generator never saw), and ratio(g) = d_train / d_hold.
Two statistics, each with its reference under "no memorisation":
  - *copies*: the share of generated volumes closer to a training scan than any held-out
    scan comes to one (d_train(g) < min over held-out h of d_train(h)). A generator that
    has not seen the data produces such a volume about as often as a held-out scan
    would: with probability at most p_c = 1 / (held-out scans + 1); the one-sided binomial
    test of the copy count against p_c gives a p-value.
  - *closer to train*: the share with d_train < d_hold. For a generator independent of the
    data, the nearest of the pooled real scans is any of them with equal probability, so
    the share is binomial with p0 = train / (train + held-out); the one-sided binomial test
    gives a p-value.
The verdict: memorisation is flagged when, in either space, the copy share exceeds
`max_copy_share` with a copy p-value below `alpha` (more copies than chance makes with this
many held-out scans), or the closer-to-train p-value is below `alpha`. The closest pairs are
rendered as PNG (generated | nearest training | nearest held-out, mid-slices).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import List

import numpy as np

from crfgan_tf.core import intensity
from crfgan_tf.core.geometry import FEATURE_SIDE, MIN_FEATURE_SIDE
from crfgan_tf.studies.downstream import downsample
from crfgan_tf.utils import fileio
from crfgan_tf.evaluation.sources import (EvaluationError, open_source, record_case_ids,
                                          record_cases)
from crfgan_tf.utils.progress import Progress

FORMAT = "crfgan-tf-memorization/1"
SPACES = ("features", "voxels")


@dataclasses.dataclass
class AuditConfig:
    saved_model: str  # a SavedModel, or generated volume files (any evaluation source)
    train_records: str
    holdout_records: str
    output_dir: str
    num_samples: int = 64
    seed: int = 0
    batch_size: int = 1
    voxel_size: int = 32
    weights: str = ""
    allow_random_features: bool = False
    feature_side: int = FEATURE_SIDE
    max_copy_share: float = 0.05
    alpha: float = 0.01
    pairs: int = 8


@dataclasses.dataclass
class Embedded:
    """Volumes in both spaces, with a mid-slice picture of each (uint8)."""

    names: List[str]
    features: np.ndarray
    voxels: np.ndarray
    tiles: List[np.ndarray]
    side: int  # the volumes' largest side


def embed(volumes, count: int, extractor, voxel_size: int, what: str, log) -> Embedded:
    names, feats, voxels, tiles = [], [], [], []
    progress = Progress(count, log, f"memorization: {what}", "volumes")
    for name, volume in volumes:
        volume = np.asarray(volume, np.float32)
        names.append(name)
        feats.append(extractor(volume[None])[0])
        voxels.append(downsample(volume, voxel_size).ravel())
        tiles.append(np.round(intensity.mid_slice_tile(volume, (-1.0, 1.0)) * 255).astype(np.uint8))
        if len(names) % 10 == 0 or len(names) == count:
            progress.report(len(names))
    if not names:
        raise EvaluationError(f"memorization: no {what} volumes")
    return Embedded(names, np.stack(feats).astype(np.float64),
                    np.stack(voxels).astype(np.float64), tiles, max(volume.shape))


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of a and b, (len(a), len(b)); exactly 0 for
    equal rows."""
    from scipy.spatial.distance import cdist

    return cdist(a, b)


def nearest(a: np.ndarray, b: np.ndarray, exclude_self: bool = False) -> tuple:
    d = distances(a, b)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    idx = d.argmin(1)
    return d[np.arange(len(a)), idx], idx


def audit_space(gen: np.ndarray, train: np.ndarray, hold: np.ndarray, scale: float,
                config: AuditConfig) -> dict:
    """The statistics of one space (see the module docstring); `scale` converts distances
    to the reported unit."""
    from scipy.stats import binomtest

    d_train, i_train = nearest(gen, train)
    d_hold, i_hold = nearest(gen, hold)
    hold_to_train, _ = nearest(hold, train)
    threshold = float(hold_to_train.min())
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d_hold > 0, d_train / np.where(d_hold > 0, d_hold, 1.0),
                         np.where(d_train > 0, np.inf, 1.0))
    copies = d_train < threshold
    closer = int((d_train < d_hold).sum())
    p0 = len(train) / (len(train) + len(hold))
    p_value = float(binomtest(closer, len(gen), p0, alternative="greater").pvalue)
    copy_share = float(copies.mean())
    copy_p0 = 1.0 / (len(hold) + 1)
    copy_p_value = float(binomtest(int(copies.sum()), len(gen), copy_p0,
                                   alternative="greater").pvalue)
    flagged = (copy_share > config.max_copy_share and copy_p_value < config.alpha) \
        or p_value < config.alpha
    finite = ratio[np.isfinite(ratio)]
    return {
        "copy_threshold": threshold * scale,
        "copy_share": copy_share, "copies": int(copies.sum()),
        "copy_share_expected_at_most": copy_p0, "copy_p_value": copy_p_value,
        "closer_to_train_share": closer / len(gen), "closer_to_train_expected": p0,
        "closer_to_train_p_value": p_value,
        "ratio_quantiles": {q: float(np.percentile(finite, float(q[1:]))) if len(finite) else None
                            for q in ("p0", "p5", "p25", "p50", "p75", "p95")},
        "d_train_median": float(np.median(d_train)) * scale,
        "d_hold_median": float(np.median(d_hold)) * scale,
        "holdout_to_train_median": float(np.median(hold_to_train)) * scale,
        "flagged": bool(flagged),
        "_rows": (d_train * scale, i_train, d_hold * scale, i_hold, ratio),
    }


def _pair_image(gen: Embedded, train: Embedded, hold: Embedded, g: int, t: int, h: int):
    gap = np.full((gen.tiles[g].shape[0], 4), 255, np.uint8)
    return np.concatenate([gen.tiles[g], gap, train.tiles[t], gap, hold.tiles[h]], axis=1)


def _write_png(path: str, image_u8: np.ndarray) -> None:
    fileio.atomic_write_bytes(path, intensity.png_bytes(image_u8.astype(np.float32) / 255.0))


def run_audit(config: AuditConfig, log=print) -> dict:
    """The audit (module docstring): writes memorization.json, the closest pairs as PNG
    and ratios.png into config.output_dir; returns the result."""
    from crfgan_tf.data import manifest, records
    from crfgan_tf.evaluation import features

    for name, low in (("num_samples", 2), ("batch_size", 1), ("voxel_size", 4), ("pairs", 0),
                      ("feature_side", MIN_FEATURE_SIDE)):
        if getattr(config, name) < low:
            raise EvaluationError(f"`{name}` must be >= {low}, got {getattr(config, name)}")
    if not 0 <= config.max_copy_share < 1 or not 0 < config.alpha < 1:
        raise EvaluationError("`max_copy_share` must be in [0, 1) and `alpha` in (0, 1)")
    fileio.ensure_output_dir(config.output_dir, "`output_dir`")
    generated = open_source(config.saved_model, config.num_samples, config.seed,
                            config.batch_size, all_classes=True)
    train_ids = record_case_ids(config.train_records, "`train_records`")
    hold_ids = record_case_ids(config.holdout_records, "`holdout_records`")
    shared = sorted(set(train_ids) & set(hold_ids))
    if shared:
        raise EvaluationError(f"`train_records` and `holdout_records` share {len(shared)} "
                              f"case(s) (e.g. {shared[0]}): held-out scans must be unseen")
    checked = None
    if generated.kind == "savedmodel":
        from crfgan_tf.generation import sample as sample_lib

        _, meta = sample_lib.load(config.saved_model)
        trained_on = manifest.training_case_digests(meta)
        if trained_on is not None:  # compared by digest: an export never holds the ids
            seen = manifest.cases_among(hold_ids, trained_on)
            if seen:
                raise EvaluationError(
                    f"{len(seen)} `holdout_records` case(s) were in the generator's training "
                    f"data (e.g. {seen[0]}): the held-out scans must be ones it never saw")
            missing = len(set(train_ids)) - len(manifest.cases_among(train_ids, trained_on))
            checked = {"generator_training_cases": len(trained_on),
                       "train_records_not_in_them": missing}
            if missing:
                log(f"memorization: warning: {missing} `train_records` case(s) are not in the "
                    "generator's training data (audit the records it was trained on)")
    window = records.records_metadata(records.list_record_files(config.train_records))["window"]
    scale = {"features": 1.0, "voxels": (float(window[1]) - float(window[0])) / 2.0
             / float(config.voxel_size ** 3) ** 0.5}
    extractor = features.load_extractor(config.weights or None, config.allow_random_features,
                                        max_side=config.feature_side)
    log(f"memorization: extractor {extractor.name}; {generated.count} generated ({generated.kind}),"
        f" {len(train_ids)} training, {len(hold_ids)} held-out volumes")
    gen = embed(((f"generated {i}", v) for i, v in enumerate(generated.volumes())),
                generated.count, extractor, config.voxel_size, "generated", log)
    train = embed(((c.case_id, c.volume) for c in record_cases(config.train_records,
                                                                "`train_records`")),
                  len(train_ids), extractor, config.voxel_size, "training", log)
    hold = embed(((c.case_id, c.volume) for c in record_cases(config.holdout_records,
                                                               "`holdout_records`")),
                 len(hold_ids), extractor, config.voxel_size, "held-out", log)
    result = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "generated": {"source": config.saved_model, "kind": generated.kind,
                            "count": len(gen.names), "seed": config.seed},
              "train_records": config.train_records, "train": len(train.names),
              "holdout_records": config.holdout_records, "holdout": len(hold.names),
              "holdout_unseen_by_generator": checked,
              "extractor": extractor.name, "pretrained": extractor.pretrained,
              "feature_side": extractor.input_side(train.side),
              "voxel_size": config.voxel_size,
              "units": {"features": "Euclidean, feature units",
                        "voxels": "RMS difference in the window's units (HU for CT) at "
                                  f"{config.voxel_size}^3"},
              "thresholds": {"max_copy_share": config.max_copy_share, "alpha": config.alpha},
              "spaces": {}, "closest": {}}
    for space in SPACES:
        stats = audit_space(getattr(gen, space), getattr(train, space), getattr(hold, space),
                            scale[space], config)
        d_train, i_train, d_hold, i_hold, ratio = stats.pop("_rows")
        result["spaces"][space] = stats
        order = np.argsort(ratio, kind="stable")
        rows = []
        for rank, g in enumerate(order):
            row = {"generated": gen.names[g], "nearest_train": train.names[i_train[g]],
                   "d_train": float(d_train[g]), "nearest_holdout": hold.names[i_hold[g]],
                   "d_holdout": float(d_hold[g]),
                   "ratio": float(ratio[g]) if np.isfinite(ratio[g]) else None}
            if rank < config.pairs:
                row["png"] = f"closest_{space}_{rank + 1:02d}.png"
                _write_png(os.path.join(config.output_dir, row["png"]),
                           _pair_image(gen, train, hold, g, i_train[g], i_hold[g]))
            rows.append(row)
        result["closest"][space] = rows
    flagged = [s for s in SPACES if result["spaces"][s]["flagged"]]
    result["memorisation_flagged"] = bool(flagged)
    result["verdict"] = verdict(result)
    _plot_ratios(result, os.path.join(config.output_dir, "ratios.png"))
    path = os.path.join(config.output_dir, "memorization.json")
    fileio.atomic_write(path, json.dumps(result, indent=2))
    log(f"memorization: wrote {path}")
    return result


def verdict(result: dict) -> str:
    t = result["thresholds"]
    parts = []
    for space, s in result["spaces"].items():
        parts.append(f"{space}: {s['copies']}/{result['generated']['count']} closer to a training "
                     f"scan than any held-out scan ({s['copy_share']:.1%}, chance at most "
                     f"{s['copy_share_expected_at_most']:.1%}, p = {s['copy_p_value']:.3g}), "
                     f"{s['closer_to_train_share']:.1%} closer to train than to held-out "
                     f"(expected {s['closer_to_train_expected']:.1%}, p = "
                     f"{s['closer_to_train_p_value']:.3g})")
    head = ("MEMORISATION SUSPECTED" if result["memorisation_flagged"]
            else "no memorisation detected")
    return (f"{head} (flagged when, in either space, the copy share exceeds "
            f"{t['max_copy_share']:.0%} beyond chance or the closer-to-train p-value is below "
            f"{t['alpha']:g}; p-values one-sided binomial): "
            + "; ".join(parts))


def _plot_ratios(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SPACES), figsize=(10, 3.5))
    for ax, space in zip(axes, SPACES):
        ratios = [r["ratio"] for r in result["closest"][space] if r["ratio"] is not None]
        ax.hist(ratios, bins=30, color="#1f4e79")
        ax.axvline(1.0, color="grey", ls=":")
        ax.set_title(f"{space}: d(nearest train) / d(nearest held-out)", fontsize=9)
        ax.set_xlabel("ratio (< 1: closer to a training scan)")
    fig.tight_layout()
    with fileio.atomic_output(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
