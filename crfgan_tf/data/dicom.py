"""DICOM series as scans: finding every series under a folder, deciding for each whether
and how it converts (a reason code per decision, never silent), and reading one into the
canonical (z, y, x) volume that `preprocess.process_volume` takes.

Headers are read with pydicom, and only the 13 tags of HEADER_TAGS and PATIENT_TAG: none
of HEADER_TAGS names, dates or locates the patient, so no name, date, accession number or
institution ever enters this process's data structures. The one exception, PatientID
(PATIENT_TAG), is held in memory only, to keep a patient's series on one side of the
train/val split (`Series.patient`, excluded from every summary, repr and log); it is never
written, not even hashed. The study and series UIDs, which PS3.15's Basic Profile
replaces too, are used for grouping and leave only as hashes. Pixels are decoded
by SimpleITK (GDCM; raw, JPEG lossless and JPEG 2000 are tested), one slice at a time,
with each slice's own RescaleSlope and RescaleIntercept. Case ids are a hash of the SeriesInstanceUID unless asked otherwise
(`CASE_IDS`), and a series is described by its case id and slice count, never by its
path (folder names are often patient names), unless `--case_ids=path` asks for paths.

The rules, in the order they apply (docs/data.md, "Your own DICOM series"):
- a file is DICOM when it has the "DICM" marker at byte 128, whatever its name; DICOMDIR
  files (and media directory SOP instances) are ignored;
- one series per SeriesInstanceUID; a folder with several gives several;
- files whose SeriesInstanceUID an anonymiser left empty (and often StudyInstanceUID and
  SOPClassUID too) are grouped by what remains: folder, SeriesNumber, orientation, pixel
  spacing, size, ImageType and modality (`kept_regrouped` when they convert); a group
  with two files at one position holds several series that nothing tells apart, and is
  refused (`refused_ambiguous_series`);
- skipped (reason code, not a failure): no image (no Rows/Columns), another modality,
  multi-frame, localizer/scout (ImageType), derived (unless `include_derived`: then a
  derived series, such as crfgan-sample's synthetic ones, converts like any other) or
  secondary capture, fewer than `min_slices`;
- refused (a failure, named): mixed orientations, sizes or pixel spacings; duplicate
  positions whose pixels differ (identical duplicates are dropped); a gap over
  GAP_FACTOR x the median spacing (missing slices); spacing deviating from the median by
  more than `spacing_tolerance` (within it: resampled to uniform); gantry tilt (the
  positions drift in-plane by more than half a pixel) unless `allow_tilt` (then each slice
  is shifted back in-plane);
- slices are ordered by ImagePositionPatient projected on the slice normal;
- several reconstructions of one study: `series_policy` (thinnest, largest or all).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from crfgan_tf.data import preprocess
from crfgan_tf.data.preprocess import ScanError

SERIES_POLICIES = ("thinnest", "largest", "all")
CASE_IDS = ("hash", "series_uid", "path")
DEFAULT_MIN_SLICES = 16
DEFAULT_SPACING_TOLERANCE = 0.2  # of the median spacing
GAP_FACTOR = 1.5  # an increment over 1.5x the median spacing is a missing slice
_EVEN = 0.01  # increments within 1 % of the median need no resampling
_SAME_POSITION_MM = 1e-3

# The only tags read: geometry, series identity, what decides a series' fate. Nothing that
# names, dates or locates the patient; the two UIDs leave this module only as hashes.
HEADER_TAGS = ("SOPClassUID", "Modality", "ImageType", "SeriesInstanceUID", "StudyInstanceUID",
               "SeriesNumber", "ImagePositionPatient", "ImageOrientationPatient",
               "PixelSpacing", "Rows", "Columns", "ConvolutionKernel", "NumberOfFrames")
# the decisions of a series that converts
KEPT = ("kept", "kept_regrouped")
# read in memory only, to group a patient's series for the split; never written
PATIENT_TAG = "PatientID"
MEDIA_DIRECTORY_SOP = "1.2.840.10008.1.3.10"
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
DICOM_MODALITY = {"ct": ("CT",), "mri": ("MR",)}

# decision code -> what it means (manifest["dicom"]["reasons"])
REASONS = {
    "kept": "converted",
    "kept_regrouped": ("converted; its SeriesInstanceUID was empty (anonymised), so its "
                       "files were grouped by folder, series number, geometry and image type"),
    "refused_ambiguous_series": ("files with empty SeriesInstanceUID whose folder, series "
                                 "number, geometry and image type are the same hold two "
                                 "files at one position: several series, not told apart"),
    "skipped_no_image": "no image (no Rows/Columns): a report, structure set or similar",
    "skipped_modality": "another modality than `modality`",
    "skipped_multiframe": "a multi-frame (enhanced) image: not read by this version",
    "skipped_localizer": "localizer or scout (ImageType)",
    "skipped_derived": "derived image (without `include_derived`) or secondary capture",
    "skipped_too_few_slices": "fewer slices than `min_slices`",
    "skipped_series_policy": "another reconstruction of its study was chosen (`series_policy`)",
    "refused_mixed_geometry": "orientations, sizes or pixel spacings differ within the series",
    "refused_missing_slices": f"a gap over {GAP_FACTOR}x the median slice spacing",
    "refused_uneven_spacing": "slice spacing deviates beyond `slice_spacing_tolerance`",
    "refused_gantry_tilt": "gantry tilt (convert it with `allow_tilt`)",
    "refused_duplicate_position": "two slices at one position with different pixels",
    "refused_undecodable": "pixel data that SimpleITK/GDCM cannot decode",
    "failed": "kept, but its conversion failed (the detail says why)",
}


@dataclasses.dataclass(frozen=True)
class SeriesOptions:
    """How series are chosen and checked (the dicom flags of crfgan-convert)."""

    modality: str = "ct"  # "ct" or "mri"
    min_slices: int = DEFAULT_MIN_SLICES
    series_policy: str = "thinnest"
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE
    allow_tilt: bool = False
    case_ids: str = "hash"
    include_derived: bool = False

    def validate(self) -> None:
        if self.min_slices < 2:
            raise ValueError(f"`min_slices` must be >= 2, got {self.min_slices}")
        if self.series_policy not in SERIES_POLICIES:
            raise ValueError(f"`series_policy` must be one of {SERIES_POLICIES}, got "
                             f"{self.series_policy!r}")
        if not 0.0 <= self.spacing_tolerance < GAP_FACTOR - 1.0:
            raise ValueError("`slice_spacing_tolerance` must be in [0, "
                             f"{GAP_FACTOR - 1.0:g}), got {self.spacing_tolerance}")
        if self.case_ids not in CASE_IDS:
            raise ValueError(f"`case_ids` must be one of {CASE_IDS}, got {self.case_ids!r}")


@dataclasses.dataclass(frozen=True)
class Slice:
    """The header facts of one DICOM file."""

    path: str
    series_uid: str
    study_uid: str
    sop_class: str
    modality: str
    image_type: Tuple[str, ...]
    series_number: Optional[int]
    position: Optional[Tuple[float, float, float]]
    orientation: Optional[Tuple[float, ...]]
    pixel_spacing: Optional[Tuple[float, float]]
    rows: Optional[int]
    columns: Optional[int]
    kernel: str
    transfer_syntax: str
    frames: int = 1
    patient: str = dataclasses.field(default="", repr=False)  # PATIENT_TAG: memory only


@dataclasses.dataclass(frozen=True)
class Series:
    """One series and what was decided about it; picklable (the conversion's workers read
    it). `files` and `offsets` are in slice order (position along the normal)."""

    case_id: str
    source: str  # what the manifest and the logs call it: no path unless asked
    study: str  # a hash of the StudyInstanceUID (the split keeps a study together)
    decision: str  # a REASONS code
    detail: str
    files: Tuple[str, ...] = ()
    offsets: Tuple[float, ...] = ()  # mm along the normal from the first slice
    shifts: Tuple[Tuple[float, float], ...] = ()  # in-plane drift (row, column) in pixels
    orientation: Tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    origin: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    pixel_spacing: Tuple[float, float] = (1.0, 1.0)  # (row spacing, column spacing) mm
    plane: Tuple[int, int] = (0, 0)  # (rows, columns)
    spacing: float = 0.0  # the median spacing along the normal
    resample: bool = False  # spacing uneven within tolerance: resample to `spacing`
    transfer_syntax: str = ""
    modality: str = ""
    kernel: str = ""
    # PATIENT_TAG of its slices, in memory only (the split's grouping); never in summary()
    patient: str = dataclasses.field(default="", repr=False)

    @property
    def kept(self) -> bool:
        return self.decision in KEPT

    @property
    def voxels(self) -> int:
        return len(set(self.offsets)) * self.plane[0] * self.plane[1]

    @property
    def refused(self) -> bool:
        return self.decision.startswith("refused_")

    def summary(self) -> dict:
        """The manifest's entry of this series (no path unless `case_ids=path`)."""
        return {"decision": self.decision, "detail": self.detail, "slices": len(self.files),
                "study": self.study, "spacing_mm": round(self.spacing, 4),
                "modality": self.modality, "kernel": self.kernel,
                "transfer_syntax": self.transfer_syntax}


def hashed_id(uid: str) -> str:
    """The case id of a series by default: stable across reruns, and not the UID."""
    return "s" + hashlib.sha256(f"crfgan-tf/series:{uid}".encode()).hexdigest()[:20]


def _study_key(uid: str) -> str:
    return "t" + hashlib.sha256(f"crfgan-tf/study:{uid}".encode()).hexdigest()[:12]


def is_dicom_file(path: str) -> bool:
    """Whether a file carries DICOM's "DICM" marker at byte 128 (any file name)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def find_files(input_dir: str, skip: Callable[[str], bool] = lambda p: False) -> List[str]:
    """The DICOM files under `input_dir` at any depth (DICOMDIR excluded), sorted."""
    found = []
    for root, dirs, files in os.walk(input_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            if name.upper() != "DICOMDIR" and not skip(path) and is_dicom_file(path):
                found.append(path)
    return found


def _floats(value, n) -> Optional[tuple]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _int(value, default):
    try:
        return int(value) if value is not None and str(value).strip() != "" else default
    except (TypeError, ValueError):
        return default


@contextlib.contextmanager
def _quiet_readers():
    """pydicom's warnings and log lines, and ITK's warnings, name the file they read:
    silenced while reading (folder and file names may be patient names)."""
    import SimpleITK as sitk

    logger = logging.getLogger("pydicom")
    disabled, itk_warnings = logger.disabled, sitk.ProcessObject.GetGlobalWarningDisplay()
    logger.disabled = True
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled
        sitk.ProcessObject.SetGlobalWarningDisplay(itk_warnings)


def read_header(path: str) -> Optional[Slice]:
    """The header facts of one DICOM file (HEADER_TAGS only); None for a media directory
    or a file pydicom cannot parse (then it is no series' slice)."""
    import pydicom  # deferred: only DICOM archives pay for it

    try:
        with _quiet_readers():
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=list(HEADER_TAGS) + [PATIENT_TAG])
    except Exception:  # noqa: BLE001 - pydicom raises many types for a broken file
        return None
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "")
                                                   if meta else ""))
    if sop_class == MEDIA_DIRECTORY_SOP or not (ds.get("SeriesInstanceUID") or ds.get("Rows")):
        return None  # no series and no image: nothing a series could be made of
    image_type = ds.get("ImageType", ())
    image_type = (image_type,) if isinstance(image_type, str) else tuple(image_type)
    number = _int(ds.get("SeriesNumber"), None)
    kernel = ds.get("ConvolutionKernel", "")
    return Slice(
        path=path, series_uid=str(ds.get("SeriesInstanceUID", "") or "").strip(),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        patient=str(ds.get(PATIENT_TAG, "") or "").strip(),
        sop_class=sop_class,
        modality=str(ds.get("Modality", "")).upper(),
        image_type=tuple(str(v).upper() for v in image_type), series_number=number,
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
        rows=int(ds.Rows) if ds.get("Rows") else None,
        columns=int(ds.Columns) if ds.get("Columns") else None,
        kernel="\\".join(kernel) if not isinstance(kernel, str) else str(kernel),
        transfer_syntax=str(meta.get("TransferSyntaxUID", "")) if meta else "",
        frames=_int(ds.get("NumberOfFrames"), 1))


def transfer_syntax_name(uid: str) -> str:
    """`uid (its name)`, e.g. `1.2.840.10008.1.2.4.90 (JPEG 2000 Image Compression ...)`."""
    import pydicom

    name = pydicom.uid.UID(uid).name if uid else ""
    return f"{uid} ({name})" if name and name != uid else uid or "unknown"


def find_series(input_dir: str, options: SeriesOptions,
                skip: Callable[[str], bool] = lambda p: False,
                progress: Optional[Callable[[int, int], None]] = None,
                unread: Optional[list] = None,
                read_headers: Callable[[List[str]], Iterable[Optional[Slice]]] = None
                ) -> List[Series]:
    """Every series under `input_dir`, each with its decision; in case-id order (files
    with an empty SeriesInstanceUID grouped by what remains, `_blank_key`). DICOM files
    that belong to no series (a header pydicom cannot parse, a media directory) are
    appended to `unread` when given. `read_headers` maps
    `read_header` over the files in their order (default: here, one by one; the
    conversion passes its worker pool for large archives)."""
    files = find_files(input_dir, skip)
    by_uid: Dict[str, List[Slice]] = collections.defaultdict(list)
    headers = (read_headers or (lambda paths: map(read_header, paths)))(files)
    for k, (path, header) in enumerate(zip(files, headers)):
        if header is not None:
            by_uid[header.series_uid or _blank_key(header)].append(header)
        elif unread is not None:
            unread.append(path)
        if progress:
            progress(k + 1, len(files))
    series = []
    folders = collections.Counter(os.path.dirname(s[0].path) for s in by_uid.values())
    for uid, slices in by_uid.items():
        slices.sort(key=lambda s: s.path)
        decided = _decide(uid, slices, options, input_dir, folders)
        if uid.startswith(_BLANK):
            decided = _regrouped(decided, slices)
        series.append(decided)
    series = _apply_policy(series, options.series_policy)
    return sorted(series, key=lambda s: s.case_id)


_BLANK = "blanked:"  # the key of files whose SeriesInstanceUID is empty


def _blank_key(s: Slice) -> str:
    """What groups files whose SeriesInstanceUID is empty: their folder, series number,
    orientation, pixel spacing, size, ImageType, modality and (where left) study; a
    hash, so that the case id derived from it is stable across reruns and names nothing."""
    round_ = lambda v, n: None if v is None else tuple(round(x, n) for x in v)  # noqa: E731
    key = repr((os.path.dirname(s.path), s.series_number, round_(s.orientation, 4),
                round_(s.pixel_spacing, 4), s.rows, s.columns, s.image_type, s.modality,
                s.study_uid))
    return _BLANK + hashlib.sha256(key.encode()).hexdigest()


def _regrouped(series: Series, slices: List[Slice]) -> Series:
    """A group of files with an empty SeriesInstanceUID: refused when two of its files
    share a position (several series, not told apart), else its own reason code."""
    positions = collections.Counter(s.position for s in slices if s.position is not None)
    shared = sum(n for n in positions.values() if n > 1)
    if shared:
        return dataclasses.replace(
            series, decision="refused_ambiguous_series",
            detail=f"SeriesInstanceUID empty in {len(slices)} files of one folder with the same "
                   f"series number ({slices[0].series_number}), geometry and image type, and "
                   f"{shared} of them share {sum(n > 1 for n in positions.values())} "
                   "positions: several series that nothing left in their headers tells "
                   "apart. Export each series into a folder of its own, or keep their "
                   "SeriesInstanceUID or SeriesNumber when anonymising")
    if series.kept:
        blank = [t for t, v in (("StudyInstanceUID", slices[0].study_uid),
                                ("SOPClassUID", slices[0].sop_class)) if not v]
        return dataclasses.replace(
            series, decision="kept_regrouped",
            detail=f"SeriesInstanceUID{''.join(', ' + t for t in blank)} empty: grouped by "
                   f"folder, series number, geometry and image type; {series.detail}")
    return series


def _case_id_and_source(uid: str, slices: List[Slice], options: SeriesOptions, input_dir: str,
                        folders: collections.Counter) -> Tuple[str, str]:
    if options.case_ids == "path":
        folder = os.path.dirname(slices[0].path)
        rel = os.path.relpath(folder, input_dir).replace(os.sep, "/")
        if folders[folder] > 1:  # several series in one folder: the series number tells
            number = slices[0].series_number
            rel += f"#{number if number is not None else hashed_id(uid)}"
        return rel, rel
    cid = uid if options.case_ids == "series_uid" else hashed_id(uid)
    return cid, f"dicom series {cid} ({len(slices)} files)"


def _decide(uid: str, slices: List[Slice], options: SeriesOptions, input_dir: str,
            folders: collections.Counter) -> Series:
    """The decision about one series from its headers (see the module docstring)."""
    cid, source = _case_id_and_source(uid, slices, options, input_dir, folders)
    first = slices[0]
    base = dict(case_id=cid, source=source, study=_study_key(first.study_uid or uid),
                modality=first.modality, kernel=first.kernel,
                transfer_syntax=first.transfer_syntax,
                patient=next((s.patient for s in slices if s.patient), ""))

    def verdict(code, detail, **kw):
        return Series(decision=code, detail=detail, **{**base, **kw})

    if any(s.rows is None or s.columns is None for s in slices):
        return verdict("skipped_no_image", f"SOP class {first.sop_class or 'unknown'}")
    if first.modality not in DICOM_MODALITY[options.modality]:
        return verdict("skipped_modality", f"Modality {first.modality or 'missing'}")
    if max(s.frames for s in slices) > 1:
        return verdict("skipped_multiframe",
                       f"{max(s.frames for s in slices)} frames in one file (SOP class "
                       f"{first.sop_class}); export the series as single-frame images")
    localizer = next((s for s in slices if {"LOCALIZER", "SCOUT"} & set(s.image_type)), None)
    if localizer is not None:
        return verdict("skipped_localizer", "ImageType " + "\\".join(localizer.image_type))
    if first.sop_class.startswith(SECONDARY_CAPTURE_PREFIX) or (
            first.image_type and first.image_type[0] == "DERIVED"
            and not options.include_derived):
        return verdict("skipped_derived", "ImageType " + "\\".join(first.image_type)
                       + " (`include_derived` converts it)"
                       if first.image_type else f"SOP class {first.sop_class}")
    problem = _mixed_geometry(slices)
    if problem:
        return verdict("refused_mixed_geometry", problem)
    orientation = np.array(first.orientation)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    heights = np.array([float(np.dot(s.position, normal)) for s in slices])
    order = np.argsort(heights, kind="stable")
    slices = [slices[k] for k in order]
    heights = heights[order]
    unique = np.concatenate([[True], np.diff(heights) > _SAME_POSITION_MM])
    if int(unique.sum()) < options.min_slices:
        return verdict("skipped_too_few_slices",
                       f"{int(unique.sum())} slice positions, `min_slices={options.min_slices}`")
    steps = np.diff(heights[unique])
    spacing = float(np.median(steps))
    geometry = dict(files=tuple(s.path for s in slices),
                    offsets=tuple(float(h - heights[0]) for h in heights),
                    orientation=tuple(first.orientation), origin=tuple(slices[0].position),
                    pixel_spacing=tuple(first.pixel_spacing),
                    plane=(first.rows, first.columns), spacing=spacing)
    worst = int(np.argmax(np.abs(steps - spacing)))
    where = (f"between {heights[unique][worst]:.2f} and {heights[unique][worst + 1]:.2f} mm "
             "along the slice normal")
    if steps[worst] > GAP_FACTOR * spacing:
        missing = int(round(steps[worst] / spacing)) - 1
        return verdict("refused_missing_slices",
                       f"a gap of {steps[worst]:.2f} mm {where} (median spacing {spacing:.3f} mm:"
                       f" about {missing} slice(s) missing)", **geometry)
    deviation = float(np.max(np.abs(steps - spacing)) / spacing)
    if deviation > options.spacing_tolerance:
        return verdict("refused_uneven_spacing",
                       f"spacing {steps[worst]:.3f} mm {where} deviates {deviation:.0%} from "
                       f"the median {spacing:.3f} mm (`slice_spacing_tolerance`="
                       f"{options.spacing_tolerance:g})", **geometry)
    drift = np.array([np.subtract(s.position, slices[0].position) for s in slices])
    in_plane = np.stack([drift @ col / first.pixel_spacing[0],  # rows move along col
                         drift @ row / first.pixel_spacing[1]], axis=1)
    extent = float(heights[-1] - heights[0])
    notes = []
    if float(np.abs(in_plane).max()) > 0.5:
        moved = float(np.linalg.norm(np.subtract(slices[-1].position, slices[0].position)
                                     - extent * normal))
        angle = math.degrees(math.atan2(moved, extent))
        if not options.allow_tilt:
            return verdict("refused_gantry_tilt",
                           f"gantry tilt of {angle:.1f} degrees (positions drift {moved:.1f} mm "
                           "in-plane over the series); `allow_tilt` resamples it", **geometry)
        geometry["shifts"] = tuple((float(a), float(b)) for a, b in in_plane)
        notes.append(f"gantry tilt of {angle:.1f} degrees resampled (`allow_tilt`)")
    if deviation > _EVEN:
        geometry["resample"] = True
        notes.append(f"uneven spacing (up to {deviation:.0%} off) resampled to {spacing:.3f} mm")
    duplicates = int(len(heights) - unique.sum())
    if duplicates:
        notes.append(f"{duplicates} duplicate position(s) (dropped if identical)")
    detail = (f"{int(unique.sum())} slices of {first.rows}x{first.columns}, "
              f"{spacing:.3f} mm apart" + "".join("; " + n for n in notes))
    return verdict("kept", detail, **geometry)


def _mixed_geometry(slices: List[Slice]) -> Optional[str]:
    """Why the slices do not make one volume (differing orientation, size, pixel spacing,
    or a missing position/orientation/pixel spacing), or None."""
    for name, key in (("position", lambda s: s.position), ("orientation", lambda s: s.orientation),
                      ("pixel spacing", lambda s: s.pixel_spacing)):
        missing = sum(key(s) is None for s in slices)
        if missing:
            return f"{missing} of {len(slices)} slices have no valid {name}"
    checks = (("sizes", lambda s: f"{s.rows}x{s.columns}"),
              ("orientations", lambda s: " ".join(f"{v:.4f}" for v in s.orientation)),
              ("pixel spacings", lambda s: " ".join(f"{v:.4f}" for v in s.pixel_spacing)))
    for name, key in checks:
        counts = collections.Counter(key(s) for s in slices)
        if len(counts) > 1:
            return f"{len(counts)} {name}: " + ", ".join(f"{k} ({n} slices)"
                                                          for k, n in counts.most_common())
    return None


def _apply_policy(series: List[Series], policy: str) -> List[Series]:
    """One kept series per study (thinnest: smallest spacing, then most slices; largest:
    most voxels), the other kept ones skipped; `all` keeps them all."""
    if policy == "all":
        return series
    studies = collections.defaultdict(list)
    for s in series:
        if s.kept:
            studies[s.study].append(s)
    chosen = set()
    for members in studies.values():
        if policy == "thinnest":
            best = min(members, key=lambda s: (round(s.spacing, 3), -len(s.files), s.case_id))
        else:
            best = min(members, key=lambda s: (-s.voxels, round(s.spacing, 3), s.case_id))
        chosen.add(best.case_id)
    out = []
    for s in series:
        if s.kept and s.case_id not in chosen:
            peer = next(m for m in studies[s.study] if m.case_id in chosen)
            s = dataclasses.replace(s, decision="skipped_series_policy",
                                    detail=f"{policy}: {peer.case_id} chosen ({peer.plane[0]}x"
                                           f"{peer.plane[1]}, {len(set(peer.offsets))} slices "
                                           f"{peer.spacing:.3f} mm apart) of this study")
        out.append(s)
    return out


def read_series(series: Series) -> Tuple[np.ndarray, Tuple[float, float, float],
                                         Tuple[float, float, float], str]:
    """Reads a kept series into the canonical LPS orientation, like
    `preprocess.read_canonical` reads a file: (array, spacing_zyx, origin_xyz, orientation).
    The array is float32 in the series' rescaled units (HU for CT).

    Raises:
      ScanError: undecodable pixel data (transfer syntax named), a slice of another size,
        or two slices at one position with different pixels. Messages never hold a path.
    """
    import SimpleITK as sitk

    count = len(series.files)
    rows, columns = series.plane
    volume = np.empty((count, rows, columns), np.float32)  # one float32 copy, filled in place
    keep = []
    for k, path in enumerate(series.files):
        try:
            with _quiet_readers():
                image = sitk.ReadImage(path, sitk.sitkFloat32)
        except RuntimeError:
            syntax = transfer_syntax_name(series.transfer_syntax)
            raise ScanError(
                f"refused_undecodable: slice {k + 1} of {count} cannot be decoded "
                f"by SimpleITK/GDCM (transfer syntax {syntax})") from None
        plane = sitk.GetArrayFromImage(image)
        if plane.ndim == 3 and plane.shape[0] == 1:
            plane = plane[0]
        if plane.shape != (rows, columns):
            raise ScanError(f"refused_mixed_geometry: slice {k + 1} of {count} is not one "
                            f"{rows}x{columns} plane")
        if keep and series.offsets[k] - series.offsets[keep[-1]] <= _SAME_POSITION_MM:
            if not np.array_equal(plane, volume[len(keep) - 1]):
                raise ScanError(f"refused_duplicate_position: two slices at "
                                f"{series.offsets[k]:.3f} mm along the normal hold different "
                                "pixels")
            continue  # an identical duplicate
        volume[len(keep)] = plane
        keep.append(k)
    volume = volume[:len(keep)]
    offsets = np.asarray(series.offsets)[keep]
    shifts = tuple(series.shifts[k] for k in keep) if series.shifts else ()
    if shifts:
        fill = float(volume.min())
        from scipy import ndimage

        for k, (dr, dc) in enumerate(shifts):
            if abs(dr) > 1e-6 or abs(dc) > 1e-6:
                volume[k] = ndimage.shift(volume[k], (dr, dc), order=1, mode="constant",
                                          cval=fill)
    if series.resample:
        volume = _resample_uniform(volume, offsets, series.spacing)
    spacing_xyz = [series.pixel_spacing[1], series.pixel_spacing[0], series.spacing]
    row, col = np.array(series.orientation[:3]), np.array(series.orientation[3:])
    direction = np.stack([row, col, np.cross(row, col)], axis=1)
    if np.allclose(direction, np.eye(3), atol=1e-6):  # axial LPS already: no ITK copies
        return (volume, tuple(float(v) for v in reversed(spacing_xyz)),
                tuple(float(v) for v in series.origin), "LPS")
    image = sitk.GetImageFromArray(volume)
    del volume  # ITK holds its own copy
    image.SetSpacing(spacing_xyz)
    image.SetOrigin([float(v) for v in series.origin])
    image.SetDirection([float(v) for v in direction.ravel()])
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
        image.GetDirection())
    image = sitk.DICOMOrient(image, "LPS")
    array = sitk.GetArrayFromImage(image)
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    return array, spacing, tuple(float(v) for v in image.GetOrigin()), orientation


def _resample_uniform(volume: np.ndarray, offsets: np.ndarray, spacing: float) -> np.ndarray:
    """Slices at uneven `offsets` -> slices `spacing` apart from the first, linearly."""
    count = int(round(offsets[-1] / spacing)) + 1
    target = np.minimum(np.arange(count) * spacing, offsets[-1])
    upper = np.clip(np.searchsorted(offsets, target, side="right"), 1, len(offsets) - 1)
    lower = upper - 1
    t = ((target - offsets[lower]) / (offsets[upper] - offsets[lower]))[:, None, None]
    return ((1.0 - t) * volume[lower] + t * volume[upper]).astype(np.float32)


def process_series(series: Series, options: preprocess.PreprocessOptions) -> preprocess.ScanResult:
    """A kept series -> its record's ScanResult (`preprocess.process_volume`)."""
    array, spacing, origin, orientation = read_series(series)
    return preprocess.process_volume(array, spacing, origin, orientation, options,
                                     series.case_id, series.source)
