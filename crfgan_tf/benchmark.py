"""Benchmarks (not tests): conversion speed against the reference pipeline's approach.

The reference (HA-GAN / CRF-GAN PyTorch code) preprocesses by loading the whole scan
and calling `skimage.transform.resize(volume, (S, S, S))` on the full array, with
skimage's default linear interpolation and Gaussian anti-aliasing.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np

from crfgan_tf import phantom, preprocess


def reference_like(path: str, size: int) -> np.ndarray:
    """The reference approach on one scan: read, window, skimage resize of the whole array."""
    from skimage.transform import resize  # optional: pip install -e '.[bench]'

    array, _, _, _ = preprocess.read_canonical(path)
    hu = np.clip(array.astype(np.float32), -1024, 600)
    unit = (hu + 1024) / 1624 * 2 - 1
    return resize(unit, (size, size, size), order=1, mode="constant", cval=-1,
                  anti_aliasing=True).astype(np.float32)


def convert_speed(in_plane: int = 512, num_slices: int = 300, size: int = 256,
                  repeats: int = 3, with_reference: bool = True, log=print) -> dict:
    """Seconds per scan (median of `repeats`) of process_scan vs the reference approach."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = phantom.PhantomSpec(in_plane=in_plane, num_slices=num_slices)
        path = phantom.write_scan(phantom.make_phantom(0, spec), os.path.join(tmp, "s.mhd"),
                                  spec.spacing_zyx)
        opts = preprocess.PreprocessOptions(size=size)
        ours = []
        for _ in range(repeats):
            t = time.perf_counter()
            preprocess.process_scan(path, opts)
            ours.append(time.perf_counter() - t)
            log(f"crfgan-tf process_scan: {ours[-1]:.2f} s")
        row = {"scan": f"{in_plane}x{in_plane}x{num_slices} int16", "size": size,
               "ours_s": round(statistics.median(ours), 3)}
        if with_reference:
            ref = []
            for _ in range(repeats):
                t = time.perf_counter()
                reference_like(path, size)
                ref.append(time.perf_counter() - t)
                log(f"reference (skimage resize): {ref[-1]:.2f} s")
            row["reference_s"] = round(statistics.median(ref), 3)
            row["speedup"] = round(row["reference_s"] / row["ours_s"], 2)
    return row
