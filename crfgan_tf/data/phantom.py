"""Procedural chest-CT phantoms stored like LUNA16 scans.

The phantoms are the embedded default data of the project: the demo and the tests
train and convert them, so real data is never needed to run either. Each phantom is
seed-varied and has what the conversion pipeline must cope with on real scans: a body
outline with fat and muscle, two lungs of different size that narrow toward the apex,
vessels, spine and sternum, a scanner field-of-view circle filled with a padding value,
blank slices at both ends, anisotropic spacing and int16 storage.

Arrays here are in the canonical orientation of the project (LPS): axis 0 runs
inferior -> superior, axis 1 anterior -> posterior, axis 2 patient right -> left.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from crfgan_tf.utils import fileio

# LUNA16 case ids are DICOM series UIDs under this root.
LUNA_UID_ROOT = "1.3.6.1.4.1.14519.5.2.1.6279.6001."


@dataclasses.dataclass(frozen=True)
class PhantomSpec:
    """How one phantom scan is drawn and stored.

    Attributes:
      in_plane: rows and columns of each axial slice (512 like LUNA16, down to 16 in tests).
      num_slices: number of axial slices.
      spacing_zyx: voxel spacing in mm, (axial, row, column).
      padding_value: HU written outside the scanner's field of view (-3024, -2000, ...).
      blank_slices: slices at each end filled entirely with the padding value.
      air_offset: HU added to every air voxel (a miscalibrated scanner, for air correction).
      noise_hu: standard deviation of the Gaussian noise.
    """

    in_plane: int = 512
    num_slices: int = 300
    spacing_zyx: tuple = (2.5, 0.7, 0.7)
    padding_value: int = -3024
    blank_slices: int = 3
    air_offset: float = 0.0
    noise_hu: float = 20.0


NODULE_HU = 40.0  # a solid nodule: soft-tissue density


def make_phantom(seed: int, spec: PhantomSpec = PhantomSpec()) -> np.ndarray:
    """Draws one phantom chest CT in HU.

    Args:
      seed: varies body size, lung sizes, vessel paths and noise.
      spec: geometry and storage options.

    Returns:
      int16 array of shape (spec.num_slices, spec.in_plane, spec.in_plane), canonical
      (LPS) orientation, values in HU (padding outside the field of view).
    """
    return make_phantom_with_nodules(seed, spec)[0]


def make_phantom_with_nodules(seed: int, spec: PhantomSpec = PhantomSpec(),
                              num_nodules: int = 0,
                              diameter_mm: Sequence[float] = (4.0, 30.0)) -> tuple:
    """Like make_phantom, with `num_nodules` solid spherical nodules (NODULE_HU) of
    diameters drawn uniformly in `diameter_mm`, centred in the lungs (their own random
    stream: the rest of the scan is the nodule-free phantom of the same seed).

    Returns:
      (int16 volume, [(centre (z, y, x) in voxels, diameter in mm), ...]).

    Longer than 60 lines on purpose: one anatomical structure after another drawn from one
    random stream, whose order of draws fixes every phantom of a seed (the demo's and the
    tests' pinned numbers); splitting it would not change that it reads as a sequence.
    """
    rng = np.random.default_rng(seed)
    n, nz = spec.in_plane, spec.num_slices
    # Normalised coordinates: t in [0, 1] inferior -> superior, y/x in [-1, 1].
    t = np.linspace(0.0, 1.0, nz, dtype=np.float32)[:, None, None]
    y = np.linspace(-1.0, 1.0, n, dtype=np.float32)[None, :, None]
    x = np.linspace(-1.0, 1.0, n, dtype=np.float32)[None, None, :]

    vol = np.full((nz, n, n), -1000.0 + spec.air_offset, dtype=np.float32)

    # Body: an ellipse that narrows slightly toward the shoulders/apex.
    body_a = rng.uniform(0.72, 0.86) * (1.0 - 0.08 * t)  # half-width (x)
    body_b = rng.uniform(0.50, 0.62) * (1.0 - 0.05 * t)  # half-depth (y)
    body_r = (x / body_a) ** 2 + (y / body_b) ** 2
    fat_thickness = rng.uniform(0.05, 0.12)
    body = body_r <= 1.0
    inner = ((x / (body_a - fat_thickness)) ** 2 + (y / (body_b - fat_thickness)) ** 2) <= 1.0
    muscle_ring = ((x / (body_a - fat_thickness - 0.06)) ** 2
                   + (y / (body_b - fat_thickness - 0.06)) ** 2) <= 1.0
    vol[body] = -100.0  # subcutaneous fat
    vol[inner] = 45.0  # muscle
    vol[muscle_ring] = 30.0  # mediastinum / soft tissue

    # Lungs: the right lung (patient right = low x index) is larger; both narrow toward
    # the apex (t -> 1) and stop short of the diaphragm (t small).
    lung_mask = np.zeros(vol.shape, dtype=bool)
    right_scale = rng.uniform(1.05, 1.2)
    for side, scale in ((-1.0, right_scale), (1.0, 1.0)):
        cx = side * rng.uniform(0.33, 0.40)
        taper = np.clip(1.0 - t, 0.0, 1.0) ** 0.5 * np.clip((t - 0.04) / 0.15, 0.0, 1.0)
        ax = rng.uniform(0.20, 0.25) * scale * taper + 1e-6
        ay = rng.uniform(0.30, 0.36) * scale * taper + 1e-6
        cy = rng.uniform(-0.05, 0.05)
        lung = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0
        lung_mask |= lung & body
    vol[lung_mask] = -860.0 + spec.air_offset * 0.2

    # Heart in the lower, anterior mediastinum.
    heart = (((x - 0.05) / 0.22) ** 2 + ((y + 0.1) / 0.25) ** 2
             + ((t - 0.3) / 0.25) ** 2) <= 1.0
    vol[heart] = 40.0

    # Vessels: random walks inside the lungs, drawn as small balls.
    num_vessels = 12
    rad = max(1, n // 96)
    zz, yy, xx = np.nonzero(lung_mask[:: max(1, nz // 32), :: max(1, n // 64), :: max(1, n // 64)])
    if zz.size:
        for _ in range(num_vessels):
            k = rng.integers(zz.size)
            p = np.array([zz[k] * max(1, nz // 32), yy[k] * max(1, n // 64), xx[k] * max(1, n // 64)],
                         dtype=np.float32)
            d = rng.normal(size=3)
            d /= np.linalg.norm(d) + 1e-6
            for _step in range(max(8, n // 8)):
                iz, iy, ix = (int(v) for v in np.round(p))
                if not (0 <= iz < nz and 0 <= iy < n and 0 <= ix < n):
                    break
                if lung_mask[iz, iy, ix]:
                    vol[max(0, iz - rad):iz + rad + 1, max(0, iy - rad):iy + rad + 1,
                        max(0, ix - rad):ix + rad + 1] = 40.0
                d = d + 0.3 * rng.normal(size=3)
                d /= np.linalg.norm(d) + 1e-6
                p = p + d * np.array([max(1.0, nz / n), 1.0, 1.0]) * max(1, n // 128)

    # Spine (posterior, midline): cortical rim around a cancellous body.
    spine_r = ((x / 0.11) ** 2 + ((y - 0.38) / 0.11) ** 2)
    vol[np.broadcast_to(spine_r <= 1.0, vol.shape)] = 1000.0
    vol[np.broadcast_to(spine_r <= 0.6, vol.shape)] = 300.0
    # Sternum (anterior, midline), absent at the bottom of the scan.
    sternum = ((x / 0.06) ** 2 + ((y + body_b - fat_thickness - 0.06) / 0.035) ** 2 <= 1.0) & (t > 0.2)
    vol[sternum] = 500.0
    nodules = _draw_nodules(vol, lung_mask, spec, num_nodules, diameter_mm,
                            np.random.default_rng(seed + 104_729))

    vol += rng.normal(0.0, spec.noise_hu, size=vol.shape).astype(np.float32)

    # Scanner field of view: a circle inscribed in the slice, padded outside.
    fov = np.broadcast_to((x ** 2 + y ** 2) <= 1.0, vol.shape)
    vol[~fov] = spec.padding_value
    if spec.blank_slices:
        vol[: spec.blank_slices] = spec.padding_value
        vol[-spec.blank_slices:] = spec.padding_value
    return np.clip(np.round(vol), -32768, 32767).astype(np.int16), nodules


def _draw_nodules(vol, lung_mask, spec, count, diameter_mm, rng) -> list:
    """Paints `count` balls of NODULE_HU into `vol` (in place), each centred on a lung
    voxel whose ball lies at least 80 % in the lung (50 tries, then the best one)."""
    nodules = []
    if not count:
        return nodules
    zz, yy, xx = np.nonzero(lung_mask)
    if zz.size == 0:
        return nodules
    spacing = np.asarray(spec.spacing_zyx, np.float32)
    for _ in range(count):
        diameter = float(rng.uniform(*diameter_mm))
        radius_vox = diameter / 2.0 / spacing
        best = None
        for _try in range(50):
            k = rng.integers(zz.size)
            centre = np.array([zz[k], yy[k], xx[k]], np.float32)
            lo = np.maximum(np.floor(centre - radius_vox), 0).astype(int)
            hi = np.minimum(np.ceil(centre + radius_vox) + 1, vol.shape).astype(int)
            grid = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
            ball = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius_vox)) <= 1.0
            inside = lung_mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][ball].mean() \
                if ball.any() else 0.0
            if best is None or inside > best[0]:
                best = (inside, centre, lo, hi, ball)
            if inside >= 0.8:
                break
        _, centre, lo, hi, ball = best
        vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][ball] = NODULE_HU
        nodules.append((tuple(float(c) for c in centre), diameter))
    return nodules


def write_scan(array: np.ndarray, path: str, spacing_zyx: Sequence[float],
               origin_xyz: Sequence[float] = (0.0, 0.0, 0.0),
               flip_axes: Sequence[int] = (), intercept_missing: bool = False) -> str:
    """Writes a canonical (LPS) HU array as a MetaImage or NIfTI file.

    Args:
      array: (z, y, x) canonical-orientation volume.
      path: output path; `.mhd` writes a header and a `.raw` beside it like LUNA16.
      spacing_zyx: spacing in mm, array axis order.
      origin_xyz: physical position of voxel (0, 0, 0) of the canonical array.
      flip_axes: array axes (0, 1, 2) to store reversed, with the direction matrix and
        origin changed so that the same anatomy sits at the same physical place. Readers
        that reorient must recover `array` exactly.
      intercept_missing: store HU + 1024 as unsigned 16-bit (a scanner export without
        its rescale intercept: air near 0).

    Returns:
      The path written.
    """
    import SimpleITK as sitk  # deferred: phantom drawing itself needs numpy only

    data = np.asarray(array)
    spacing_xyz = [float(s) for s in reversed(spacing_zyx)]
    direction = np.eye(3)
    origin = np.array(origin_xyz, dtype=np.float64)
    for axis in flip_axes:
        data = np.flip(data, axis=axis)
        phys = 2 - axis  # array axis -> ITK (x, y, z) axis
        # The stored first voxel is the canonical last one along this axis.
        origin[phys] += (array.shape[axis] - 1) * spacing_xyz[phys]
        direction[phys, phys] = -1.0
    if intercept_missing:
        data = np.clip(data.astype(np.int32) + 1024, 0, 65535).astype(np.uint16)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data))
    image.SetSpacing(spacing_xyz)
    image.SetOrigin([float(v) for v in origin])
    image.SetDirection([float(v) for v in direction.ravel()])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sitk.WriteImage(image, path)
    return path


def archive_scan_spec(spec: PhantomSpec, seed: int, i: int,
                      slice_jitter: Optional[int] = None) -> tuple:
    """Scan i of an archive: `spec` with its number of slices varied by +-slice_jitter
    (default a tenth), its padding value alternating between -3024 and -2000 and its air
    miscalibrated by up to 15 HU, as across scanners. Returns (spec, the scan's random
    stream, for further draws)."""
    jitter = spec.num_slices // 10 if slice_jitter is None else slice_jitter
    rng = np.random.default_rng(seed + i + 7919)
    scan_spec = dataclasses.replace(
        spec,
        num_slices=int(spec.num_slices + rng.integers(-jitter, jitter + 1)),
        padding_value=(-3024, -2000)[i % 2],
        air_offset=float(rng.uniform(-15, 15)),
    )
    return scan_spec, rng


def make_luna_archive(output_dir: str, num_scans: int, spec: PhantomSpec = PhantomSpec(),
                      seed: int = 0, num_subsets: int = 2,
                      slice_jitter: Optional[int] = None, nodules: bool = False,
                      nodule_diameter_mm: Sequence[float] = (4.0, 30.0)) -> list:
    """Writes a LUNA16-like archive of phantom scans: `subsetK/<series uid>.mhd/.raw`.

    Padding value, air calibration and the number of slices vary with the seed like they
    do across scanners.

    Args:
      output_dir: archive root.
      num_scans: number of scans.
      spec: base geometry; padding value alternates between -3024 and -2000.
      seed: base seed; scan i uses seed + i.
      num_subsets: scans are spread over `subset0..subset{num_subsets-1}`.
      slice_jitter: +- variation of the number of slices (default: a tenth of it).
      nodules: draw 1-3 solid nodules (diameters in `nodule_diameter_mm`) in half of the
        scans (scans 0, 1, 4, 5, 8, 9, ...: not aligned with the alternating padding value)
        and write LUNA16's `annotations.csv` (seriesuid, coordX/Y/Z in world mm,
        diameter_mm) in output_dir, one row per nodule.

    Returns:
      The list of `.mhd` paths written.
    """
    paths, rows = [], []
    for i in range(num_scans):
        scan_spec, rng = archive_scan_spec(spec, seed, i, slice_jitter)
        count = int(rng.integers(1, 4)) if nodules and (i // 2) % 2 == 0 else 0
        volume, drawn = make_phantom_with_nodules(seed + i, scan_spec, count, nodule_diameter_mm)
        uid = f"{LUNA_UID_ROOT}{seed + i:012d}"
        path = os.path.join(output_dir, f"subset{i % num_subsets}", uid + ".mhd")
        origin = (-180.0, -180.0, -300.0 + 1.5 * i)
        write_scan(volume, path, scan_spec.spacing_zyx, origin_xyz=origin)
        paths.append(path)
        for (cz, cy, cx), diameter in drawn:  # world = origin + index * spacing (LPS)
            sz, sy, sx = scan_spec.spacing_zyx
            rows.append([uid, origin[0] + cx * sx, origin[1] + cy * sy, origin[2] + cz * sz,
                         diameter])
    if nodules:
        text = ",".join(("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")) + "\n"
        text += "".join(f"{r[0]},{r[1]:.4f},{r[2]:.4f},{r[3]:.4f},{r[4]:.4f}\n" for r in rows)
        fileio.atomic_write(os.path.join(output_dir, "annotations.csv"), text)
    return paths
