"""Small helpers shared by the conversion, training, export and sampling code."""

from __future__ import annotations

import os

import numpy as np


def atomic_write(path: str, text: str) -> None:
    """Writes `text` to a temporary file, fsyncs it and renames it over `path`: readers
    never see a half-written file, a killed writer leaves the old file intact."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def mid_slices(volume: np.ndarray) -> dict:
    """Axial, coronal and sagittal mid-slices of a canonical (z, y, x) volume, each with
    superior at the top (axis 0 runs inferior -> superior, so it is flipped)."""
    d, h, w = volume.shape
    return {"axial": volume[d // 2], "coronal": volume[:, h // 2, :][::-1],
            "sagittal": volume[:, :, w // 2][::-1]}
