"""Writes a canonical HU volume as a DICOM CT series, one file per slice (pydicom; JPEG
lossless and JPEG 2000 through SimpleITK's GDCM). It makes the DICOM inputs of the tests,
of `crfgan-make-phantoms --format=dicom` and of the conversion benchmark, and can write
every way real series differ: shuffled file names without extension, InstanceNumber not
in position order, per-slice RescaleSlope/Intercept, gantry tilt, missing slices, uneven
spacing, a localizer's ImageType, header tags given by the caller (patient data included,
to prove it never comes out).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
COMPRESSORS = {"": None, "jpeg": "JPEG", "jpeg2000": "JPEG2000"}


def uid(seed: str) -> str:
    """A valid DICOM UID derived from `seed` (the same seed, the same UID)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[seed])


def fresh_uid(_key: str = "") -> str:
    """A new UID, never issued before: `2.25.` and a random UUID as an integer."""
    from pydicom.uid import generate_uid

    return generate_uid(prefix=None)


def write_series(volume: np.ndarray, out_dir: str, spacing_zyx: Sequence[float],
                 origin_xyz: Sequence[float] = (0.0, 0.0, 0.0), *, seed: str = "series",
                 study_uid: str = "", series_number: int = 1, modality: str = "CT",
                 image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
                 tags: Optional[Dict[str, object]] = None,
                 rescale: Callable[[int], Tuple[float, float]] = lambda k: (1.0, -1024.0),
                 slice_offsets: Optional[Sequence[float]] = None, tilt_deg: float = 0.0,
                 shuffled_names: bool = False, compression: str = "",
                 fresh_uids: bool = False) -> List[str]:
    """Writes `volume` (z, y, x canonical LPS, HU) as one file per axial slice.

    Args:
      volume: HU; slice k is written at z = origin_z + offset_k.
      out_dir: the series' folder (created; other series may share it).
      spacing_zyx: voxel spacing in mm.
      origin_xyz: the first slice's ImagePositionPatient.
      seed: derives the SeriesInstanceUID and SOPInstanceUIDs.
      study_uid: StudyInstanceUID (default derived from `seed`).
      tags: further header tags by keyword (e.g. PatientName), on every slice.
      rescale: slice index -> (RescaleSlope, RescaleIntercept); stored values are
        round((HU - intercept) / slope) as int16.
      slice_offsets: each slice's z offset in mm (default k * spacing_z): gaps, uneven
        spacing, duplicates.
      tilt_deg: gantry tilt: positions drift along y by tan(tilt) per mm of z, and each
        slice's pixels are shifted back so that the anatomy stays where it is.
      shuffled_names: random file names without extension and InstanceNumber reversed
        (neither is position order); else IM0001.dcm, ... in position order.
      compression: "" (explicit VR little endian), "jpeg" (lossless) or "jpeg2000".
      fresh_uids: new UIDs for the series, the study (unless `study_uid`) and every
        instance, UUID-derived (`2.25.<UUID as an integer>`, ISO/IEC 9834-8), instead of
        UIDs derived from `seed`.

    Returns:
      The paths written, in slice order.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    volume = np.asarray(volume)
    count = volume.shape[0]
    offsets = (np.arange(count) * float(spacing_zyx[0]) if slice_offsets is None
               else np.asarray(slice_offsets, dtype=np.float64))
    new_uid = fresh_uid if fresh_uids else (lambda key: uid(f"{seed}/{key}"))
    series_uid = new_uid("series")
    study_uid = study_uid or new_uid("study")
    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16))
    os.makedirs(out_dir, exist_ok=True)
    drift = np.tan(np.radians(tilt_deg))
    paths = []
    for k in range(count):
        plane = volume[k].astype(np.float64)
        shift_mm = drift * offsets[k]
        if shift_mm:
            from scipy import ndimage

            plane = ndimage.shift(plane, (-shift_mm / spacing_zyx[1], 0.0), order=1,
                                  mode="nearest")
        slope, intercept = rescale(k)
        stored = np.clip(np.round((plane - intercept) / slope), -32768, 32767).astype(np.int16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = new_uid(f"slice/{k}")
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.ImageType = modality, list(image_type)
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series_uid, study_uid
        ds.SeriesNumber = series_number
        ds.InstanceNumber = count - k if shuffled_names else k + 1
        ds.ImagePositionPatient = [float(origin_xyz[0]),
                                   float(origin_xyz[1]) + float(drift * offsets[k]),
                                   float(origin_xyz[2]) + float(offsets[k])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing_zyx[1]), float(spacing_zyx[2])]
        ds.SliceThickness = float(spacing_zyx[0])
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        for keyword, value in (tags or {}).items():
            setattr(ds, keyword, value)
        ds.PixelData = stored.tobytes()
        if compression:
            _compress(ds, stored, COMPRESSORS[compression])
        name = (f"{rng.integers(16 ** 12):012x}" if shuffled_names else f"IM{k + 1:04d}.dcm")
        path = os.path.join(out_dir, name)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _compress(ds, stored: np.ndarray, compressor: str) -> None:
    """Replaces the dataset's pixel data by GDCM's lossless encoding of `stored`."""
    import pydicom
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.dcm")
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.SetFileName(path)
        writer.SetUseCompression(True)
        writer.SetCompressor(compressor)
        writer.Execute(sitk.GetImageFromArray(stored[None]))
        encoded = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = encoded.file_meta.TransferSyntaxUID
    ds.PixelData = encoded.PixelData
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def write_phantom_archive(output_dir: str, num_scans: int, spec, seed: int = 0) -> List[str]:
    """`num_scans` phantom CTs (crfgan_tf.data.phantom, varied like the scans of
    `make_luna_archive`) as DICOM series, one folder each
    (`caseK/`), shuffled file names without extension, no patient data: an archive to try
    `crfgan-convert --dataset=dicom` on. Returns the folders."""
    from crfgan_tf.data import phantom

    folders = []
    for i in range(num_scans):
        scan_spec, _ = phantom.archive_scan_spec(spec, seed, i)
        folder = os.path.join(output_dir, f"case{i:03d}")
        write_series(phantom.make_phantom(seed + i, scan_spec), folder, scan_spec.spacing_zyx,
                     (-180.0, -180.0, -300.0 + 1.5 * i), seed=f"phantom/{seed + i}",
                     shuffled_names=True)
        folders.append(folder)
    return folders
