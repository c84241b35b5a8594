"""Intensities: the windows that map scanner values to the networks' [-1, 1], the int16
storage form of a volume, and rendering slices for people (PNG, TensorBoard).

  CT_WINDOW     [-1024, 600] HU -> [-1, 1], the paper's window (section 2.1)
  LUNG_WINDOW   W1500 L-600: how generated CT is shown (sample previews, reader study)
  VOLUME_SCALE  a stored int16 q stands for q / 32767 in [-1, 1] (0.025 HU for CT)

Volumes are canonical (z, y, x): axis 0 runs inferior -> superior, so coronal and sagittal
slices are flipped to show superior at the top. Imports numpy only (TensorFlow lazily, to
encode PNG), so the conversion's worker processes stay small.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

CT_WINDOW: Tuple[float, float] = (-1024.0, 600.0)
LUNG_WINDOW: Tuple[float, float] = (-1350.0, 150.0)  # width 1500, level -600 HU
UNIT_WINDOW: Tuple[float, float] = (-1.0, 1.0)  # the networks' own range
VOLUME_SCALE = 32767.0
PLANES = ("axial", "coronal", "sagittal")


def to_unit(values: np.ndarray, window: Sequence[float] = CT_WINDOW) -> np.ndarray:
    """Clips to the window and maps it linearly to [-1, 1] (float32)."""
    low, high = float(window[0]), float(window[1])
    out = np.clip(values.astype(np.float32, copy=False), low, high)
    return ((out - low) * (2.0 / (high - low)) - 1.0).astype(np.float32)


def from_unit(unit: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """[-1, 1] -> the window's intensities (HU for CT), rounded to int16."""
    low, high = window
    values = (np.clip(unit, -1.0, 1.0) + 1.0) / 2.0 * (high - low) + low
    return np.round(values).astype(np.int16)


def quantize(unit: np.ndarray) -> np.ndarray:
    """float32 [-1, 1] -> int16 (value * VOLUME_SCALE), the storage form of a volume."""
    return np.round(np.clip(unit, -1.0, 1.0) * VOLUME_SCALE).astype(np.int16)


def dequantize(q):
    """int16 (numpy or a TensorFlow tensor cast to float32) -> [-1, 1]."""
    return q / VOLUME_SCALE


def slice_at(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """Slice `index` along `plane` of a canonical (z, y, x) volume, superior at the top."""
    if plane == "axial":
        return volume[index]
    if plane == "coronal":
        return volume[:, index, :][::-1]
    if plane == "sagittal":
        return volume[:, :, index][::-1]
    raise ValueError(f"unknown plane {plane!r}; one of {PLANES}")


def mid_slices(volume: np.ndarray) -> dict:
    """Axial, coronal and sagittal mid-slices of a canonical (z, y, x) volume (slice_at)."""
    return {plane: slice_at(volume, plane, n // 2) for plane, n in zip(PLANES, volume.shape)}


def display(image: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """An image at a display window -> float32 in [0, 1] (low -> black, high -> white)."""
    low, high = float(window[0]), float(window[1])
    return np.clip((np.asarray(image, np.float32) - low) / (high - low), 0.0, 1.0)


def mid_slice_tile(volume: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Axial, coronal and sagittal mid-slices side by side at `window`, each on a square
    tile of the largest side (black padding): float32 [0, 1] (rows, 3 * side)."""
    views = list(mid_slices(volume).values())
    size = max(max(v.shape) for v in views)
    tiles = []
    for v in views:
        tile = np.zeros((size, size), np.float32)
        tile[: v.shape[0], : v.shape[1]] = display(v, window)
        tiles.append(tile)
    return np.concatenate(tiles, axis=1)


def png_bytes(image01: np.ndarray) -> bytes:
    """A float [0, 1] image -> 8-bit grey PNG bytes."""
    import tensorflow as tf  # deferred: only rendering needs it

    grey = np.round(np.clip(image01, 0.0, 1.0) * 255.0).astype(np.uint8)
    return tf.io.encode_png(grey[..., None]).numpy()
