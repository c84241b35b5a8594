"""A quality gate on generated CT volumes: each sample's anatomy statistics against the
range of the training data's (`crfgan-export` stores the range as quality_ranges.json
in the export; `crfgan-sample --quality_check` regenerates a sample that falls outside
it and writes quality.json).

The statistics (canonical (z, y, x) volumes in HU; body and lungs as evaluation.physical
defines them: body = voxels above -500 HU with each axial slice's holes filled, lungs =
body voxels at or below -500 HU):
  body_fraction          body voxels / all voxels
  lung_fraction          lung voxels / body voxels
  lung_median_hu         the median HU of the lungs (NaN without lungs)
  soft_tissue_median_hu  the median HU of the body outside the lungs
  air_median_hu          the median HU outside the body (air and the field of view's edge)

The range of each statistic is the training volumes' [min, max] widened on both sides by
MARGIN_FRACTION of its spread or by its MIN_MARGIN, whichever is larger. A sample passes
when every statistic lies within its range. What it catches: an intensity shift (air,
lungs and tissue move together), lungs missing or filled, a body that is too large, too
small or absent, a volume of noise. What it cannot see: the shape of the anatomy within
those proportions, texture and fine structures (vessels, nodules), artefacts that leave
the proportions and medians alone, or a copy of a training scan (crfgan-memorization).
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable, Optional

import numpy as np

from crfgan_tf.evaluation.physical import body_and_lungs
from crfgan_tf.utils import fileio

RANGES_FILE = "quality_ranges.json"
REPORT_FILE = "quality.json"
FORMAT = "crfgan-tf-quality-ranges/1"
STATISTICS = ("body_fraction", "lung_fraction", "lung_median_hu", "soft_tissue_median_hu",
              "air_median_hu")
MARGIN_FRACTION = 0.25
MIN_MARGIN = {"body_fraction": 0.02, "lung_fraction": 0.02, "lung_median_hu": 30.0,
              "soft_tissue_median_hu": 30.0, "air_median_hu": 30.0}
MAX_VOLUMES = 256  # training volumes read for the range (the first ones of the records)


class QualityError(ValueError):
    """A quality check that cannot run (no ranges in the export); says what to do."""


def statistics(hu: np.ndarray, masks=None) -> dict:
    """The statistics of the module docstring of one (z, y, x) HU volume; `masks`: its
    (body, lungs) from physical.body_and_lungs where the caller has them already."""
    hu = np.asarray(hu, np.float32)
    body, lungs = body_and_lungs(hu) if masks is None else masks
    tissue = body & ~lungs
    n_body = int(body.sum())
    median = lambda mask: float(np.median(hu[mask])) if mask.any() else math.nan  # noqa: E731
    return {"body_fraction": n_body / hu.size,
            "lung_fraction": float(lungs.sum()) / n_body if n_body else 0.0,
            "lung_median_hu": median(lungs), "soft_tissue_median_hu": median(tissue),
            "air_median_hu": median(~body)}


def ranges_from(rows: list) -> dict:
    """{statistic: {min, max, low, high}} of the statistics of the training volumes."""
    out = {}
    for name in STATISTICS:
        values = np.array([r[name] for r in rows if not math.isnan(r[name])], np.float64)
        if not values.size:
            continue
        lo, hi = float(values.min()), float(values.max())
        margin = max(MARGIN_FRACTION * (hi - lo), MIN_MARGIN[name])
        out[name] = {"min": lo, "max": hi, "low": lo - margin, "high": hi + margin}
    return out


def training_ranges(records: str, window, log: Callable[[str], None] = print,
                    max_volumes: int = MAX_VOLUMES) -> dict:
    """quality_ranges.json's dict from up to `max_volumes` volumes of the training
    records (`records`: a glob)."""
    from crfgan_tf.core import intensity
    from crfgan_tf.data.records import read_volumes

    rows = []
    for record in read_volumes(records):
        rows.append(statistics(intensity.from_unit(record.volume, window)))
        if len(rows) >= max_volumes:
            break
    if not rows:
        raise QualityError(f"no training volume in {records!r} to take the quality ranges from")
    log(f"quality: ranges of {len(rows)} training volumes")
    # the pattern's file part only: quality_ranges.json goes into shared exports
    return {"format": FORMAT, "volumes": len(rows), "records": os.path.basename(records),
            "window": [float(w) for w in window],
            "margin": {"fraction_of_spread": MARGIN_FRACTION, "at_least": MIN_MARGIN},
            "ranges": ranges_from(rows)}


def write_ranges(export_dir: str, records: str, window, log: Callable[[str], None] = print) -> dict:
    """Writes quality_ranges.json into an export, and its ranges into the export's model
    card (model_card.json and MODEL_CARD.md)."""
    from crfgan_tf.generation import model_card

    ranges = training_ranges(records, window, log)
    fileio.atomic_write(os.path.join(export_dir, RANGES_FILE), json.dumps(ranges, indent=2))
    card_path = os.path.join(export_dir, model_card.CARD_JSON)
    if os.path.exists(card_path):
        with open(card_path) as f:
            card = json.load(f)
        card["quality_gate"] = {"volumes": ranges["volumes"], "ranges": ranges["ranges"],
                                "definition": "crfgan_tf/evaluation/quality.py"}
        model_card.write(export_dir, card)
    return ranges


def export_ranges(model_dir: str, export_dir: str, metadata: dict,
                  log: Callable[[str], None] = print) -> Optional[dict]:
    """write_ranges for an export of the run `model_dir` (`metadata`: the export's), from
    the run's training records; None, with a warning, for a run that is not CT or whose
    records are gone (crfgan-sample --quality_check then refuses the export)."""
    from crfgan_tf.data import record_files
    from crfgan_tf.run import rundir

    if metadata.get("modality", "ct") != "ct":
        return None
    records = rundir.read_config(model_dir).train_records
    try:
        record_files.list_record_files(records)
    except (FileNotFoundError, record_files.RecordsError):
        log(f"export: WARNING: the training records ({records or 'none'}) are gone: no "
            "quality ranges, so crfgan-sample --quality_check refuses this export")
        return None
    return write_ranges(export_dir, records, metadata["window"], log)


def read_ranges(export_dir: str) -> dict:
    """The ranges stored with an export.

    Raises:
      QualityError: the export has none (exported before the gate, or its records were
        gone at export); names the command that adds them.
    """
    path = os.path.join(export_dir, RANGES_FILE)
    if not os.path.exists(path):
        raise QualityError(
            f"`saved_model` {export_dir!r} has no {RANGES_FILE}: export the run again while "
            "its training records are present (crfgan-export computes the ranges from them)")
    with open(path) as f:
        return json.load(f)


def failed(stats: dict, limits: dict) -> list:
    """The statistics of `stats` (statistics()) outside their range in `limits`
    (ranges_from's {statistic: {low, high}}); NaN is outside."""
    return [name for name, r in limits.items()
            if math.isnan(stats[name]) or not r["low"] <= stats[name] <= r["high"]]


def gate(ranges: dict):
    """accept(HU volume, spacing) -> (passed, {statistics, failed}) for sample.sample."""
    limits = ranges["ranges"]

    def accept(hu, spacing):
        stats = statistics(hu)
        outside = failed(stats, limits)
        return not outside, {"statistics": {k: round(v, 4) for k, v in stats.items()},
                             "failed": outside}
    return accept


def observed(source, ranges: dict, window):
    """(a Source yielding `source`'s volumes, a tally): each volume ([-1, 1]) is checked
    against the gate as it passes, for crfgan-fid-mmd's pass rate; the tally's
    summary() is {passed, volumes, pass_rate, failed: {statistic: volumes}}."""
    import collections
    import dataclasses

    from crfgan_tf.core import intensity

    accept = gate(ranges)
    tally = {"passed": 0, "volumes": 0, "failed": collections.Counter()}

    def volumes():
        for volume in source.volumes():
            passed, record = accept(intensity.from_unit(volume, window), None)
            tally["volumes"] += 1
            tally["passed"] += passed
            tally["failed"].update(record["failed"])
            yield volume

    def summary():
        n = tally["volumes"]
        return {"passed": tally["passed"], "volumes": n,
                "pass_rate": tally["passed"] / n if n else None,
                "failed": dict(tally["failed"])}
    return dataclasses.replace(source, volumes=volumes), summary


def sample_checked(saved_model: str, num_samples: int, seed: int, output_dir: str,
                   fmt: str = "nii.gz", batch_size: int = 1, log: Callable[[str], None] = print,
                   labels: Optional[list] = None, max_tries: int = 5) -> dict:
    """generation.sample.sample with the gate of the export's ranges: a failing sample is
    regenerated from its next latent up to `max_tries` times. Writes quality.json beside
    the samples (every sample's latent, statistics and verdict) and returns it."""
    from crfgan_tf.generation import sample as sample_lib

    if max_tries < 1:
        raise ValueError(f"`quality_tries` must be >= 1, got {max_tries}")
    ranges = read_ranges(saved_model)
    sample_lib.sample(saved_model, num_samples, seed, output_dir, fmt, batch_size, log,
                      labels, accept=gate(ranges), max_tries=max_tries)
    with open(os.path.join(output_dir, "samples.json")) as f:
        listing = json.load(f)["samples"]
    passed = sum(s["passed"] for s in listing)
    report = {"saved_model": saved_model, "ranges": ranges["ranges"], "max_tries": max_tries,
              "passed": passed, "failed": len(listing) - passed,
              "pass_rate_first_try": sum(len(s["tries"]) == 1 and s["passed"] for s in listing)
              / len(listing),
              "samples": [{k: s[k] for k in ("file", "seed", "index", "latent_index", "passed",
                                             "tries")} for s in listing]}
    fileio.atomic_write(os.path.join(output_dir, REPORT_FILE), json.dumps(report, indent=2))
    log(f"quality: {passed}/{len(listing)} samples passed ({report['pass_rate_first_try']:.0%} "
        f"at the first try); {os.path.join(output_dir, REPORT_FILE)}")
    return report
