"""Physical statistics of chest-CT volumes that need no network: the body, the lungs and
the dense structures inside the lungs (vessels, nodules), from HU thresholds alone; and
the per-class comparison of a conditional model's samples with the real volumes of each
class (crfgan_tf/cli/class_contrast.py).

Definitions (canonical (z, y, x) volumes in HU):
- body: voxels above AIR_HU (-500) with the holes of each axial slice filled;
- lungs: body voxels below AIR_HU;
- lung envelope: the lungs closed in-plane with a disk of CLOSING_MM radius, then the
  holes of each axial slice filled: what lies inside or against the lungs (vessels,
  nodules, also those touching the pleura);
- dense: envelope voxels that are not lung and above DENSE_HU (-300), i.e. soft-tissue
  structures within the lungs. A solid nodule adds to them; vessels (and the heart where
  it borders the lungs) are their baseline.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
from scipy import ndimage

AIR_HU = -500.0
DENSE_HU = -300.0
CLOSING_MM = 15.0
_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)  # fill holes slice by slice


def _fill_axial(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(mask, structure=_IN_PLANE)


def body_and_lungs(hu: np.ndarray):
    """(body, lungs) masks of one (z, y, x) HU volume, as the module docstring defines them."""
    body = _fill_axial(hu > AIR_HU)
    return body, body & (hu <= AIR_HU)


def lung_statistics(hu: np.ndarray, spacing_zyx=(1.0, 1.0, 1.0)) -> Dict[str, float]:
    """Of one (z, y, x) HU volume with voxel spacing `spacing_zyx` (mm):
    {"lung_fraction": lungs / body, "dense_fraction": dense / lung envelope,
     "dense_ml": the dense volume in millilitres} (fractions 0 where the body or the
    envelope is empty)."""
    hu = np.asarray(hu, np.float32)
    body, lungs = body_and_lungs(hu)
    ry, rx = (max(1, int(round(CLOSING_MM / s))) for s in spacing_zyx[1:])
    yy, xx = np.mgrid[-ry:ry + 1, -rx:rx + 1]
    disk = ((yy / ry) ** 2 + (xx / rx) ** 2 <= 1.0)[None]
    pad = ((0, 0), (ry, ry), (rx, rx))  # closing must not erode from the array's edge
    closed = ndimage.binary_closing(np.pad(lungs, pad), disk)[:, ry:-ry, rx:-rx]
    envelope = _fill_axial(closed)
    dense = envelope & ~lungs & (hu > DENSE_HU)
    n_body, n_env = int(body.sum()), int(envelope.sum())
    return {"lung_fraction": float(lungs.sum()) / n_body if n_body else 0.0,
            "dense_fraction": float(dense.sum()) / n_env if n_env else 0.0,
            "dense_ml": float(dense.sum()) * float(np.prod(spacing_zyx)) / 1000.0}


def _summary(values: list) -> dict:
    a = np.asarray(values, np.float64)
    return {"n": int(a.size), "mean": float(a.mean()),
            "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0}


def class_contrast(saved_model: str, records: str, num_samples: int = 32, seed: int = 0,
                   log: Callable[[str], None] = print,
                   window: Optional[tuple] = None) -> dict:
    """lung_statistics of a conditional model's samples of every class (the same latents
    (seed, i) for each class, so that class k and class 0 pair up) and of the real
    volumes of each class.

    Returns:
      {"classes": [...names], "real": {k: {stat: summary}}, "generated": {k: ...},
       "paired": {k: {stat: summary of (class k - class 0) over the same z}}}
    """
    from crfgan_tf.core import intensity
    from crfgan_tf.data.records import read_volumes
    from crfgan_tf.generation import sample as sample_lib

    module, meta = sample_lib.load(saved_model)
    names = sample_lib.class_names(meta)
    if not names:
        raise ValueError(f"{saved_model!r} is an unconditional SavedModel: nothing to contrast")
    window = window or tuple(meta["window"])
    latent_dim = int(module.latent_dim.numpy())
    spacing = [float(v) for v in module.output_spacing.numpy()]
    out = {"classes": names, "real": {}, "generated": {}, "paired": {}, "num_samples": num_samples,
           "seed": seed, "saved_model": saved_model, "records": records}
    real: Dict[int, list] = {}
    for r in read_volumes(records):
        if r.label is not None:
            real.setdefault(r.label, []).append(lung_statistics(
                intensity.from_unit(r.volume, window), r.output_spacing))
    per_class = {}
    for k in range(len(names)):
        stats = []
        for i in range(num_samples):
            z = sample_lib.latents(seed, i, 1, latent_dim)
            volume = sample_lib.generate(module, z, [k])[0]
            stats.append(lung_statistics(intensity.from_unit(volume, window), spacing))
        per_class[k] = stats
        log(f"class_contrast: class {k} ({names[k]}): {num_samples} samples")
    for k in range(len(names)):
        keys = per_class[k][0].keys()
        out["generated"][k] = {s: _summary([v[s] for v in per_class[k]]) for s in keys}
        if real.get(k):
            out["real"][k] = {s: _summary([v[s] for v in real[k]]) for s in keys}
        if k:
            out["paired"][k] = {s: dict(_summary([a[s] - b[s] for a, b in zip(per_class[k],
                                                                              per_class[0])]),
                                        larger=float(np.mean([a[s] > b[s] for a, b in
                                                              zip(per_class[k], per_class[0])])))
                                for s in keys}
    return out
