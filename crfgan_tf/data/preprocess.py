"""Per-scan preprocessing: the paper's section 2.1, made robust.

Each transform is a named, separately tested function. `process_scan` chains them:

CT:  read -> canonical orientation (LPS) -> HU calibration -> air density correction
     -> CT window (intensity.CT_WINDOW) to [-1, 1] -> trim blank end slices -> resize to size^3.
MRI: read -> canonical orientation -> robust percentile window -> trim -> resize.

Arrays are (z, y, x) in the canonical orientation: axis 0 inferior -> superior, axis 1
anterior -> posterior, axis 2 patient right -> left. Spacings are given in the same
(z, y, x) order; origins in ITK's physical (x, y, z) order.

This module imports numpy, scipy and SimpleITK only (no TensorFlow), so that the
conversion's worker processes start fast and stay small.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from crfgan_tf.core import intensity
from crfgan_tf.data.scan_files import metaimage_data_problem, nifti_nonfinite_count

HU_FLOOR = intensity.CT_WINDOW[0]  # padding and air at or below it are one floor class
AIR_HU = -1000.0

SCAN_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz")


class ScanError(Exception):
    """A scan that cannot be converted; the message says why."""


@dataclasses.dataclass
class ScanResult:
    """One converted scan and everything done to it (all of it goes into the record)."""

    case_id: str
    source: str
    volume: np.ndarray  # float32 (S, S, S) in [-1, 1]
    modality: str
    original_size: Tuple[int, int, int]  # (z, y, x) after reorientation
    original_spacing: Tuple[float, float, float]  # (z, y, x) mm
    output_spacing: Tuple[float, float, float]  # (z, y, x) mm
    output_origin: Tuple[float, float, float]  # (x, y, z) mm, canonical orientation
    window: Tuple[float, float]  # input intensities mapped to -1 and 1
    intercept_shift: float = 0.0  # added to fix a missing -1024 intercept
    padding_voxels: int = 0  # voxels at or below -1024 HU (padding, floor air) set to -1024
    air_estimate: Optional[float] = None  # HU of outside air before correction
    air_shift: float = 0.0  # HU added to all non-padding voxels
    trimmed_slices: Tuple[int, int] = (0, 0)  # blank slices removed (inferior, superior)
    reoriented_from: str = "LPS"  # the stored orientation code
    label: Optional[int] = None  # class index from conversion's --labels_csv

    def corrections(self) -> dict:
        """The corrections applied, for the manifest."""
        return {
            "intercept_shift": self.intercept_shift,
            "padding_voxels": self.padding_voxels,
            "air_estimate": self.air_estimate,
            "air_shift": self.air_shift,
            "trimmed_slices": list(self.trimmed_slices),
            "reoriented_from": self.reoriented_from,
        }


def case_id_from_path(path: str) -> str:
    """The case id of a scan: its file name without the scan suffix (LUNA16: the UID)."""
    name = os.path.basename(path)
    for suffix in sorted(SCAN_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def read_canonical(path: str) -> Tuple[np.ndarray, Tuple[float, float, float],
                                       Tuple[float, float, float], str]:
    """Reads a scan and reorients it to the canonical LPS orientation.

    Args:
      path: a MetaImage (`.mhd` + data file, `.mha`) or NIfTI (`.nii`, `.nii.gz`) file.

    Returns:
      (array, spacing_zyx, origin_xyz, stored_orientation): the array is (z, y, x) with
      its original pixel type, so a flipped copy of a scan yields the identical array.

    Raises:
      ScanError: unreadable file, not a 3D scalar image, or non-finite values.
    """
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as err:  # ITK reports truncated data and broken headers so
        data_problem = metaimage_data_problem(path) if path.lower().endswith(".mhd") else None
        if data_problem:
            raise ScanError(data_problem) from None
        first = str(err).strip().splitlines()
        raise ScanError(f"unreadable: {first[-1] if first else err}") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanError(f"not a 3D scalar image (dimension {image.GetDimension()}, "
                        f"{image.GetNumberOfComponentsPerPixel()} components)")
    if min(image.GetSize()) < 2:
        raise ScanError(f"degenerate size {image.GetSize()}")
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        image.GetDirection())
    # DICOM convention: "LPS" means the axes increase toward Left, Posterior, Superior,
    # which is the identity direction matrix.
    image = sitk.DICOMOrient(image, "LPS")
    array = sitk.GetArrayFromImage(image)
    # ITK's NIfTI reader replaces NaN and inf by 0, so NIfTI is checked in the file itself
    bad = (nifti_nonfinite_count(path) if path.lower().endswith((".nii", ".nii.gz"))
           else int(np.size(array) - np.count_nonzero(np.isfinite(array)))
           if array.dtype.kind == "f" else 0)
    if bad:
        raise ScanError(f"{bad} non-finite voxels (NaN or inf)")
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ScanError(f"invalid spacing {spacing}")
    return array, spacing, tuple(float(v) for v in image.GetOrigin()), orientation


def calibrate_hu(array: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
    """Puts stored values on the HU scale and marks the voxels at the window floor.

    A scan stored without its -1024 rescale intercept (unsigned storage: air near 0, no
    value below -100) is shifted by -1024. Every voxel at or below -1024 HU is set to
    -1024 and marked: scanner padding outside the field of view (-3024, -2048, -2000, or
    exactly -1024, which is 0 in unsigned storage) and air stored at or below the floor.
    Storage cannot tell these apart (unsigned storage clips them all to 0), so everything
    after this treats them alike: the same anatomy stored any of these ways gives the same
    result.

    Args:
      array: (z, y, x) stored values.

    Returns:
      (hu, floor_mask, intercept_shift): float32 HU, bool mask of the voxels at the floor,
      and the shift that was added (0 or -1024). A float32 `array` is not copied: `hu` is
      `array`, changed in place.
    """
    hu = array.astype(np.float32, copy=False)
    shift = 0.0
    # A real CT holds air (inside the lungs if not outside the body) far below -100 HU;
    # a scan whose lowest value is above that was stored without its intercept.
    if float(hu.min()) > -100.0:
        shift = -1024.0
        hu += shift
    floor = hu <= HU_FLOOR
    hu[floor] = HU_FLOOR
    return hu, floor, shift


def estimate_outside_air(hu: np.ndarray, padding: np.ndarray) -> Optional[float]:
    """Estimates the HU of the air around the body.

    Outside air is the low-density (-500 > HU > -1024) region connected to the in-plane
    border of the scan, or to the floor voxels (padding, see calibrate_hu) that are
    themselves connected to that border; the lungs are connected to neither (floor voxels
    inside the lungs are not connected to the border). Floor voxels are not counted: they
    may be padding. Works on a subsampled copy: the median of thousands of voxels does
    not need all of them.

    Returns:
      The median HU of outside air, or None when fewer than 50 such voxels exist (the body
      fills the field of view).
    """
    step = max(1, hu.shape[1] // 128)
    zstep = max(1, hu.shape[0] // 128)
    sub = hu[::zstep, ::step, ::step]
    pad = padding[::zstep, ::step, ::step]
    low = (sub < -500.0) & ~pad
    labels, count = ndimage.label(low)
    if count == 0:
        return None
    border = np.zeros(sub.shape, bool)
    border[:, 0, :] = border[:, -1, :] = border[:, :, 0] = border[:, :, -1] = True
    pad_labels, _ = ndimage.label(pad)
    outer = np.unique(pad_labels[border & pad])
    outer_pad = np.isin(pad_labels, outer[outer > 0])
    seeds = ndimage.binary_dilation(outer_pad, structure=np.ones((1, 3, 3), bool)) | border
    outside_labels = np.unique(labels[seeds & low])
    outside = np.isin(labels, outside_labels[outside_labels > 0])
    if np.count_nonzero(outside) < 50:
        return None
    return float(np.median(sub[outside]))


def correct_air(hu: np.ndarray, padding: np.ndarray, air_estimate: Optional[float],
                max_shift: float = 100.0) -> Tuple[np.ndarray, float]:
    """Shifts the scan so that outside air sits at -1000 HU.

    The floor voxels (`padding`, see calibrate_hu) stay at the window floor, so that blank
    end slices stay blank and are trimmed however the scan was stored. A shift larger than `max_shift` means the estimate
    is not air (say, a scan cropped to the body); it is not applied.

    Returns:
      (hu, shift): the corrected array (modified in place) and the shift applied.
    """
    if air_estimate is None:
        return hu, 0.0
    shift = AIR_HU - air_estimate
    if abs(shift) > max_shift:
        return hu, 0.0
    hu[~padding] += shift
    return hu, float(shift)


def mri_window(array: np.ndarray, high_percentile: float = 99.5) -> Tuple[np.ndarray, Tuple[float, float]]:
    """Robust MRI intensity window: background 0 -> -1, the bright tail -> 1.

    The upper bound is the `high_percentile` of the non-zero voxels, so that a few very
    bright voxels (vessels, fat, artefacts) do not compress the brain's range.

    Returns:
      (unit, (low, high)): float32 in [-1, 1] and the window used.
    """
    values = array.astype(np.float32)
    foreground = values[values > 0]
    if foreground.size == 0:
        raise ScanError("MRI has no voxel above 0")
    high = float(np.percentile(foreground, high_percentile))
    if high <= 0:
        raise ScanError("MRI window is empty")
    return intensity.to_unit(values, (0.0, high)), (0.0, high)


def trim_blank_slices(unit: np.ndarray, floor: float = -1.0) -> Tuple[np.ndarray, Tuple[int, int]]:
    """Removes axial slices at both ends that lie entirely at the window floor.

    Interior blank slices are kept: removing them would change the anatomy's geometry.

    Returns:
      (array, (removed_inferior, removed_superior)).

    Raises:
      ScanError: when every slice is blank.
    """
    nonblank = np.flatnonzero(unit.reshape(unit.shape[0], -1).max(axis=1) > floor + 1e-6)
    if nonblank.size == 0:
        raise ScanError("every axial slice is blank (entirely at the window floor)")
    lo, hi = int(nonblank[0]), int(nonblank[-1])
    return unit[lo:hi + 1], (lo, unit.shape[0] - 1 - hi)


def resize_volume(unit: np.ndarray, spacing_zyx, origin_xyz, size: int,
                  antialias: bool = True) -> Tuple[np.ndarray, tuple, tuple]:
    """Resizes to size^3 by linear interpolation, keeping the physical extent.

    The output covers the same field (voxel edges to voxel edges) as the input, so its
    spacing is `extent / size` per axis and its origin moves by half a voxel difference.
    Anti-aliasing: an axis downsampled by a factor f >= 2 is first box-averaged over
    floor(f) voxels (ITK's BinShrink, which keeps the physical geometry), so that fine
    structure does not alias; the remaining factor (< 2) is left to linear interpolation.
    This replaces a Gaussian prefilter that cost more for the same purpose
    (docs/benchmarks/2026-11-24-conversion-seconds-per-scan.md).

    Args:
      unit: (z, y, x) float32 array.
      spacing_zyx: input spacing in mm.
      origin_xyz: physical position of voxel (0, 0, 0), canonical orientation.
      size: output side.
      antialias: box-average before downsampling by 2 or more.

    Returns:
      (volume, out_spacing_zyx, out_origin_xyz): float32 (size, size, size) array.
    """
    image = sitk.GetImageFromArray(np.ascontiguousarray(unit, dtype=np.float32))
    spacing_xyz = np.array(list(reversed(spacing_zyx)), dtype=np.float64)
    image.SetSpacing(spacing_xyz.tolist())
    image.SetOrigin([float(v) for v in origin_xyz])
    in_size = np.array(image.GetSize(), dtype=np.float64)
    out_spacing = spacing_xyz * in_size / size
    shrink = [max(1, int(f)) for f in out_spacing / spacing_xyz]
    if antialias and max(shrink) > 1:
        image = sitk.BinShrink(image, shrink)
    out_origin = np.array(origin_xyz) - spacing_xyz / 2 + out_spacing / 2
    resized = sitk.Resample(image, [size] * 3, sitk.Transform(), sitk.sitkLinear,
                            out_origin.tolist(), out_spacing.tolist(),
                            [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], -1.0, sitk.sitkFloat32,
                            True)
    out = np.clip(sitk.GetArrayFromImage(resized), -1.0, 1.0)
    return (out.astype(np.float32), tuple(float(s) for s in reversed(out_spacing)),
            tuple(float(v) for v in out_origin))


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
    """What `process_scan` does; part of the conversion's recorded settings."""

    size: int = 256
    modality: str = "ct"  # "ct" or "mri"
    hu_window: Tuple[float, float] = intensity.CT_WINDOW
    air_correction: bool = True
    max_air_shift: float = 100.0
    mri_percentile: float = 99.5
    antialias: bool = True


def process_scan(path: str, options: PreprocessOptions) -> ScanResult:
    """Converts one scan file to a size^3 volume in [-1, 1].

    Raises:
      ScanError: with the reason, for any scan that cannot be converted.
    """
    array, spacing, origin, orientation = read_canonical(path)
    return process_volume(array, spacing, origin, orientation, options,
                          case_id_from_path(path), path)


def process_volume(array: np.ndarray, spacing: Tuple[float, float, float],
                   origin: Tuple[float, float, float], orientation: str,
                   options: PreprocessOptions, case_id: str, source: str) -> ScanResult:
    """Converts one canonical volume (what `read_canonical` or `dicom.read_series`
    returns) to a size^3 volume in [-1, 1]; `source` is what the record calls it. The
    array is consumed: a float32 one is changed in place.

    Raises:
      ScanError: with the reason, for any scan that cannot be converted.
    """
    original_size = tuple(int(v) for v in array.shape)
    extra = {}
    if options.modality == "ct":
        hu, padding, intercept_shift = calibrate_hu(array)
        del array
        air = estimate_outside_air(hu, padding) if options.air_correction else None
        hu, air_shift = correct_air(hu, padding, air, options.max_air_shift)
        unit = intensity.to_unit(hu, options.hu_window)
        window = tuple(float(v) for v in options.hu_window)
        extra = dict(intercept_shift=intercept_shift, padding_voxels=int(padding.sum()),
                     air_estimate=air, air_shift=air_shift)
        del hu, padding
    elif options.modality == "mri":
        unit, window = mri_window(array, options.mri_percentile)
    else:
        raise ValueError(f"unknown modality {options.modality!r}")
    unit, trimmed = trim_blank_slices(unit)
    # Trimming inferior slices moves the first voxel up along z (axis 2 physically).
    origin = (origin[0], origin[1], origin[2] + trimmed[0] * spacing[0])
    volume, out_spacing, out_origin = resize_volume(unit, spacing, origin, options.size,
                                                    options.antialias)
    return ScanResult(case_id=case_id, source=source, volume=volume,
                      modality=options.modality, original_size=original_size,
                      original_spacing=spacing, output_spacing=out_spacing,
                      output_origin=out_origin, window=window, trimmed_slices=trimmed,
                      reoriented_from=orientation, **extra)
