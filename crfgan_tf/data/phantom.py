"""Procedural chest-CT phantoms stored like LUNA16 scans.

The phantoms are the embedded default data of the project: the demo and the tests
train and convert them, so real data is never needed to run either. Each phantom has what
the conversion pipeline must cope with on real scans: a body outline with fat and muscle,
two lungs of different size that narrow toward the apex above a domed diaphragm (liver
and spleen below it), heart, aorta, vessels, spine and sternum, often a scanner table, a
field-of-view circle filled with a padding value, blank slices at both ends, anisotropic
spacing and int16 storage.

The seed varies the anatomy as chest CTs vary (phantom_anatomy lists it): body size,
AP/lateral aspect and position in the field of view, fat and muscle; the lungs' size and
how they narrow toward the apex, the diaphragm's level; heart size and position; spine
and sternum; the table (present in about 3 of 4 scans) and its height; the tissues' HU
within their physical ranges (lung about -860 HU, soft tissue 0-65, fat about -100, bone
several hundred). In an archive the number of slices varies too, and with it how much of
the body the scan covers. family_variety measures how much a family varies.

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
      coverage: the scan's length along the body relative to the chest the phantom is
        drawn in (archive_scan_spec sets it to num_slices over the archive spec's): above 1
        the scan reaches further down into the abdomen and up into the neck, below 1 less
        far. At 1 the lungs' base and apex lie near the scan's ends (both seed-varied).
    """

    in_plane: int = 512
    num_slices: int = 300
    spacing_zyx: tuple = (2.5, 0.7, 0.7)
    padding_value: int = -3024
    blank_slices: int = 3
    air_offset: float = 0.0
    noise_hu: float = 20.0
    coverage: float = 1.0


NODULE_HU = 40.0  # a solid nodule: soft-tissue density
TABLE_PROBABILITY = 0.75  # share of phantoms lying on a scanner table


def _u(rng, low, high) -> float:
    return float(rng.uniform(low, high))


def _draw_anatomy(rng: np.random.Generator, spec: PhantomSpec) -> dict:
    """The anatomy of one phantom, drawn from `rng` in a fixed order (the phantom of a
    seed depends on it). Lengths are in normalised in-plane units (the field-of-view circle
    has radius 1) and in levels along the body (0: the bottom of a scan of coverage 1,
    1: its top); the keys are documented in phantom_anatomy."""
    cov = float(spec.coverage)
    a = {"level0": (1.0 - cov) * _u(rng, 0.3, 0.7) + _u(rng, -0.03, 0.03), "coverage": cov}
    # Body: lateral half-width, AP/lateral ratio, narrowing toward the shoulders, centre
    # (kept inside the field of view).
    a["body_a"] = _u(rng, 0.60, 0.88)
    a["aspect"] = _u(rng, 0.60, 0.86)
    a["body_b"] = a["body_a"] * a["aspect"]
    a["taper_a"], a["taper_b"] = _u(rng, 0.02, 0.14), _u(rng, 0.0, 0.08)
    cx, cy = _u(rng, -0.05, 0.05), _u(rng, -0.10, 0.10)
    room = 0.97 - a["body_a"]  # the whole body inside the field of view
    if np.hypot(cx, cy) > room:
        cx, cy = (v * room / np.hypot(cx, cy) for v in (cx, cy))
    a["body_cx"], a["body_cy"] = cx, cy
    # Subcutaneous fat and the muscle layer: thicker on a larger body.
    a["fat"] = a["body_b"] * _u(rng, 0.05, 0.20)
    a["muscle"] = a["body_a"] * _u(rng, 0.05, 0.10)
    a["fat_hu"], a["muscle_hu"], a["tissue_hu"] = (_u(rng, -115, -85), _u(rng, 40, 55),
                                                   _u(rng, 20, 40))
    # Diaphragm: the right dome higher than the left; the lungs reach `dome_depth` lower
    # at their rim (the costophrenic recesses). Apex: where the lungs end above.
    a["dome_right"] = _u(rng, 0.16, 0.38)
    a["dome_left"] = a["dome_right"] - _u(rng, 0.0, 0.07)
    a["dome_depth"] = _u(rng, 0.08, 0.18)
    a["apex"] = _u(rng, 0.90, 1.04)  # above 1: the scan cuts the apex
    # how the lungs narrow toward the apex: their width at a fraction u of the way down
    # from the apex to the base is (1 - (1 - u)^q)^(1/q) of the base's; q = 1 a cone,
    # 2 a round cap, more: steeper sides narrowing later
    a["apex_shape"] = _u(rng, 1.2, 2.4)
    # Lungs: lateral edge against the ribs, medial edge against the mediastinum (wider on
    # the left, the heart's side), AP extent and posterior shift, as fractions of the
    # thoracic cavity; lung HU rises toward the back (dependent lung).
    a["lung_lateral"] = (_u(rng, 0.90, 0.98), _u(rng, 0.90, 0.98))  # (right, left)
    a["lung_medial"] = (_u(rng, 0.04, 0.12), _u(rng, 0.10, 0.22))
    a["lung_depth"] = _u(rng, 0.72, 0.92)
    a["lung_depth_right"] = _u(rng, 1.0, 1.08)
    a["lung_shift"] = _u(rng, -0.02, 0.12)
    a["lung_gradient_hu"] = _u(rng, 0.0, 30.0)
    a["liver_hu"], a["spleen_hu"] = _u(rng, 50, 60), _u(rng, 30, 45)
    # Heart: left of the midline, anterior, resting on the left dome.
    a["heart_x"], a["heart_y"] = _u(rng, 0.04, 0.20), _u(rng, -0.32, -0.05)
    a["heart_a"], a["heart_b"] = _u(rng, 0.26, 0.40), _u(rng, 0.30, 0.45)
    a["heart_height"] = _u(rng, 0.13, 0.24)
    a["heart_level"] = a["dome_left"] + a["heart_height"] * _u(rng, 0.3, 0.7)
    a["heart_hu"] = _u(rng, 35, 50)
    # Spine: vertebral body radius, its depth in front of the back muscles, a lateral
    # offset and a gentle lateral curve; the aorta left of it.
    a["spine_r"] = _u(rng, 0.07, 0.10)
    a["spine_tip"] = _u(rng, 0.2, 0.55)  # how far the arch's tip stays inside the muscle
    a["spine_x"] = _u(rng, -0.03, 0.03)
    a["spine_curve"], a["spine_phase"] = _u(rng, 0.0, 0.04), _u(rng, 0.0, 2 * np.pi)
    a["cortical_hu"], a["cancellous_hu"] = _u(rng, 800, 1100), _u(rng, 180, 320)
    a["aorta_r"] = _u(rng, 0.045, 0.07)
    # Sternum: from its lower end (the xiphoid, about the domes' level) up.
    a["sternum_low"] = a["dome_left"] + _u(rng, -0.05, 0.12)
    a["sternum_a"], a["sternum_b"] = _u(rng, 0.045, 0.08), _u(rng, 0.025, 0.045)
    a["sternum_hu"] = _u(rng, 350, 600)
    # Table: present or not; the body lies on it (`table_gap` above), a curved board.
    a["table"] = bool(rng.random() < TABLE_PROBABILITY)
    a["table_gap"], a["table_thickness"] = _u(rng, 0.0, 0.03), _u(rng, 0.035, 0.07)
    a["table_curve"] = _u(rng, 0.0, 0.12)
    a["table_y"] = a["body_cy"] + a["body_b"] + a["table_gap"]
    a["table_hu"] = (_u(rng, 150, 400), _u(rng, -300, -150))  # (skin, core)
    return a


def _ellipse(x, y, half_x, half_y):
    return (x / half_x) ** 2 + (y / half_y) ** 2 <= 1.0


def _paint_slice(plane: np.ndarray, s: float, a: dict, x: np.ndarray, y: np.ndarray,
                 lung_hu: float) -> np.ndarray:
    """Paints the anatomy of level `s` into `plane` (one axial slice of air, in place);
    returns the slice's lung mask (lung parenchyma only: heart, aorta and bone excluded)."""
    sc = min(max(s, 0.0), 1.0)  # the abdomen below and the neck above keep the end shapes
    if a["table"]:  # first: the body lies on it
        depth = y - (a["table_y"] - a["table_curve"] * x ** 2)
        th = a["table_thickness"]
        board = (depth >= 0.0) & (depth <= th)
        plane[board] = a["table_hu"][1]
        plane[board & ((depth <= 0.25 * th) | (depth >= 0.75 * th))] = a["table_hu"][0]
    bx, by = x - a["body_cx"], y - a["body_cy"]
    ba = a["body_a"] * (1.0 - a["taper_a"] * sc)
    bb = a["body_b"] * (1.0 - a["taper_b"] * sc)
    fat, muscle = a["fat"], a["muscle"]
    ia, ib = ba - fat - muscle, bb - fat - muscle  # the thoracic cavity
    plane[_ellipse(bx, by, ba, bb)] = a["fat_hu"]
    plane[_ellipse(bx, by, ba - fat, bb - fat)] = a["muscle_hu"]
    cavity = _ellipse(bx, by, ia, ib)
    plane[cavity] = a["tissue_hu"]
    lungs = np.zeros(plane.shape, bool)
    base = min(a["dome_right"], a["dome_left"]) - a["dome_depth"]
    u, q = min(max((a["apex"] - s) / (a["apex"] - base), 0.0), 1.0), a["apex_shape"]
    size = (1.0 - (1.0 - u) ** q) ** (1.0 / q)
    for k, side in enumerate((-1.0, 1.0)):  # patient right (low x index), then left
        lateral, medial = a["lung_lateral"][k] * ia, a["lung_medial"][k] * ia
        half_x = (lateral - medial) / 2.0
        cy = a["lung_shift"] * ib
        half_y = ib * a["lung_depth"] * (a["lung_depth_right"] if k == 0 else 1.0)
        half_y = min(half_y, 0.97 * ib - abs(cy))
        cx = side * (medial + half_x)
        rho2 = ((bx - cx) / half_x) ** 2 + ((by - cy) / half_y) ** 2  # the base's footprint
        dome = a["dome_right"] if k == 0 else a["dome_left"]
        # the diaphragm's surface: the dome's top in the middle, lowest at the rim behind
        # (the posterior costophrenic recess), less low in front
        behind = 0.6 + 0.4 * np.clip((by - cy) / half_y, -1.0, 1.0)
        floor = dome - a["dome_depth"] * np.minimum(rho2, 1.0) * behind
        organ = cavity & (rho2 <= 1.2) & (s < floor)  # liver (right), spleen (left)
        plane[organ] = a["liver_hu"] if k == 0 else a["spleen_hu"]
        if size <= 0.0:
            continue
        # narrowing toward the apex: the lateral edge recedes, the medial edge stays
        lx, ly = side * (medial + half_x * size), cy + half_y * (1.0 - size ** 0.5) * 0.5
        la, lb = half_x * size, half_y * size ** 0.5
        lung = cavity & _ellipse(bx - lx, by - ly, la, lb) & (s >= floor)
        values = lung_hu + a["lung_gradient_hu"] * np.clip((by - ly) / lb, -1.0, 1.0)
        plane[lung] = np.broadcast_to(values, plane.shape)[lung]  # denser toward the back
        lungs |= lung
    dz = (s - a["heart_level"]) / a["heart_height"]
    if abs(dz) < 1.0:
        k = np.sqrt(1.0 - dz * dz)
        heart = cavity & _ellipse(bx - a["heart_x"] * ia, by - a["heart_y"] * ib,
                                  a["heart_a"] * ia * k, a["heart_b"] * ib * k)
        plane[heart] = a["heart_hu"]
        lungs &= ~heart
    scale = a["body_a"] / 0.75  # bones and vessels scale with the body
    sr = a["spine_r"] * scale
    sx = a["spine_x"] + a["spine_curve"] * np.sin(np.pi * s + a["spine_phase"])
    sy = bb - fat - muscle * a["spine_tip"] - 2.1 * sr  # the arch ends 2.1 sr behind
    aorta = _ellipse(bx - sx - sr - 1.1 * a["aorta_r"] * scale, by - sy + 0.3 * sr,
                     a["aorta_r"] * scale, a["aorta_r"] * scale)
    plane[aorta] = a["heart_hu"]
    canal = ((bx - sx) / sr) ** 2 + ((by - sy - 1.35 * sr) / sr) ** 2
    vertebra = _ellipse(bx - sx, by - sy, sr, sr)
    bone = vertebra | ((canal <= 0.75 ** 2) & (canal > 0.4 ** 2))
    plane[bone] = a["cortical_hu"]
    plane[_ellipse(bx - sx, by - sy, 0.78 * sr, 0.78 * sr)] = a["cancellous_hu"]
    plane[canal <= 0.4 ** 2] = 15.0  # the spinal canal (cerebrospinal fluid)
    lungs &= ~(aorta | bone | (canal <= 0.4 ** 2))
    if s >= a["sternum_low"]:
        sternum = _ellipse(bx, by + bb - fat - 0.5 * muscle, a["sternum_a"] * scale,
                           a["sternum_b"] * scale)
        plane[sternum] = a["sternum_hu"]
        lungs &= ~sternum
    return lungs


def phantom_anatomy(seed: int, spec: PhantomSpec = PhantomSpec()) -> dict:
    """The anatomy drawn for the phantom of `seed` (what make_phantom paints).

    In-plane lengths are normalised (the field-of-view circle has radius 1, x runs patient
    right -> left, y anterior -> posterior); levels run along the body, 0 at the bottom
    and 1 at the top of a scan of coverage 1 (slice k of n lies at level
    `level0 + coverage * k / (n - 1)`). The keys: body_a, body_b (half-width and
    half-depth at the bottom; aspect = body_b / body_a), taper_a/taper_b (their narrowing
    toward the top), body_cx/body_cy (its centre), fat and muscle (layer thicknesses);
    dome_right/dome_left (levels of the diaphragm's domes), dome_depth (how much lower the
    lungs reach at their rim), apex (level where the lungs end), apex_shape (how they
    narrow toward it: 1 a cone, 2 a round cap, more: steeper sides); the lungs' lateral
    and medial edges (right, left), AP depth and shift as fractions of the thoracic
    cavity; heart_x/heart_y/heart_a/heart_b (centre and half-axes, fractions of the cavity),
    heart_level/heart_height; spine_r, spine_x, spine_curve (a lateral curve); sternum_low
    (level of its lower end); table (present or not), table_y (its top at the midline),
    table_thickness, table_curve; the HU of each tissue.
    """
    return _draw_anatomy(np.random.default_rng(seed), spec)


def make_phantom(seed: int, spec: PhantomSpec = PhantomSpec()) -> np.ndarray:
    """Draws one phantom chest CT in HU.

    Args:
      seed: varies the anatomy (phantom_anatomy: body size, aspect and position, lung
        size and shape, diaphragm level, heart, spine, sternum, table), the vessel paths
        and the noise.
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

    One random stream draws the anatomy (phantom_anatomy), then the vessels, then the
    noise, in that order: the order fixes every phantom of a seed.

    Returns:
      (int16 volume, [(centre (z, y, x) in voxels, diameter in mm), ...]).
    """
    rng = np.random.default_rng(seed)
    anatomy = _draw_anatomy(rng, spec)
    n, nz = spec.in_plane, spec.num_slices
    # Normalised in-plane coordinates in [-1, 1]; the level of each slice along the body.
    y = np.linspace(-1.0, 1.0, n, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, n, dtype=np.float32)[None, :]
    levels = anatomy["level0"] + anatomy["coverage"] * np.linspace(0.0, 1.0, nz)

    vol = np.full((nz, n, n), -1000.0 + spec.air_offset, dtype=np.float32)
    lung_mask = np.zeros(vol.shape, dtype=bool)
    lung_hu = -860.0 + spec.air_offset * 0.2
    for k, s in enumerate(levels):
        lung_mask[k] = _paint_slice(vol[k], float(s), anatomy, x, y, lung_hu)
    _draw_vessels(vol, lung_mask, rng)
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


def _draw_vessels(vol, lung_mask, rng, num_vessels: int = 12) -> None:
    """Random walks inside the lungs, painted as small soft-tissue balls (in place)."""
    nz, n = vol.shape[0], vol.shape[1]
    rad = max(1, n // 96)
    zz, yy, xx = np.nonzero(lung_mask[:: max(1, nz // 32), :: max(1, n // 64), :: max(1, n // 64)])
    if not zz.size:
        return
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
    (default a tenth; `spec.num_slices` is the centre) at the same slice spacing, so that
    the scan covers that much more or less of the body (its `coverage`), its padding value
    alternating between -3024 and -2000 and its air miscalibrated by up to 15 HU, as across
    scanners. Returns (spec, the scan's random stream, for further draws)."""
    jitter = spec.num_slices // 10 if slice_jitter is None else slice_jitter
    rng = np.random.default_rng(seed + i + 7919)
    num_slices = int(spec.num_slices + rng.integers(-jitter, jitter + 1))
    scan_spec = dataclasses.replace(
        spec,
        num_slices=num_slices,
        padding_value=(-3024, -2000)[i % 2],
        air_offset=float(rng.uniform(-15, 15)),
        coverage=spec.coverage * num_slices / spec.num_slices,
    )
    return scan_spec, rng


def make_luna_archive(output_dir: str, num_scans: int, spec: PhantomSpec = PhantomSpec(),
                      seed: int = 0, num_subsets: int = 2,
                      slice_jitter: Optional[int] = None, nodules: bool = False,
                      nodule_diameter_mm: Sequence[float] = (4.0, 30.0)) -> list:
    """Writes a LUNA16-like archive of phantom scans: `subsetK/<series uid>.mhd/.raw`.

    Padding value, air calibration and the number of slices (and with it how much of the
    body a scan covers) vary with the seed like they do across scanners; the anatomy
    varies with each scan's seed (phantom_anatomy).

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


def converted_phantoms(num_scans: int, spec: PhantomSpec = PhantomSpec(), seed: int = 0,
                       size: int = 64) -> list:
    """The first `num_scans` phantoms of `make_luna_archive(..., num_scans, spec, seed)`
    (no nodules) as the conversion makes them: `preprocess.process_volume` (HU calibration,
    air correction, the CT window to [-1, 1], blank end slices trimmed, resized to size^3)
    and the records' int16 storage. Nothing is written to disk; the array read back from
    a scan file is the one drawn, so the volumes equal the records' (tests/data/test_phantom.py).
    Returns float32 (size, size, size) volumes in [-1, 1]."""
    from crfgan_tf.core import intensity
    from crfgan_tf.data import preprocess  # deferred: phantom drawing needs numpy only

    options = preprocess.PreprocessOptions(size=size, modality="ct")
    out = []
    for i in range(num_scans):
        scan_spec, _ = archive_scan_spec(spec, seed, i)
        volume = make_phantom(seed + i, scan_spec)
        result = preprocess.process_volume(volume, scan_spec.spacing_zyx, (0.0, 0.0, 0.0),
                                           "LPS", options, f"phantom{seed + i}", "phantom")
        out.append(intensity.dequantize(intensity.quantize(result.volume)).astype(np.float32))
    return out


def family_variety(volumes: Sequence[np.ndarray], sigma: float = 1.0) -> float:
    """How much a family of volumes varies: each volume smoothed by a Gaussian of `sigma`
    voxels (scipy.ndimage.gaussian_filter; 0: not smoothed), then the mean over all pairs
    (i < j) of the mean squared voxel difference.

    On the [-1, 1] volumes the model sees (converted_phantoms) this is the figure the
    phantom generator is held to (docs/data.md): the smoothing keeps the voxel noise out
    of it, so that it measures anatomy (body size, shape and position, lungs, diaphragm,
    heart, bones, table). Computed as n * sum |v_i|^2 - |sum v_i|^2 over the pairs, in
    float64.

    Raises:
      ValueError: fewer than two volumes, or volumes of different shapes.
    """
    from scipy import ndimage  # deferred: phantom drawing needs numpy only

    if len(volumes) < 2:
        raise ValueError(f"family_variety needs at least two volumes, got {len(volumes)}")
    shapes = {np.shape(v) for v in volumes}
    if len(shapes) != 1:
        raise ValueError(f"family_variety needs volumes of one shape, got {sorted(shapes)}")
    total = np.zeros(shapes.pop(), np.float64)
    squares = 0.0
    for v in volumes:
        v = np.asarray(v, np.float64)
        if sigma:
            v = ndimage.gaussian_filter(v, sigma)
        total += v
        squares += float(np.sum(v * v))
    n = len(volumes)
    pairs = n * (n - 1) / 2.0
    return float((n * squares - np.sum(total * total)) / pairs / total.size)
