"""LIDC-IDRI labels: the readers' XML annotations of each series -> physical nodules ->
one class label per scan, in the `case_id,label,name` CSV that conversion's `labels_csv`
reads (crfgan_tf/data/labels.py), plus a per-nodule table.

The XML (one file per series, up to four `readingSession`s): each `unblindedReadNodule`
whose contours span more than one point is a reader's ">= 3 mm nodule" (with its
`characteristics/malignancy`, 1-5); single-point marks (the readers' "< 3 mm nodules")
and `nonNodule` marks are not nodules here, as in LUNA16's reference standard.

Rules (stated in docs/data.md, "LIDC-IDRI and labels"; tests/data/test_lidc.py pins them):
- a mark's position is the mean of its contour points (x, y from the edge maps at the
  series' pixel spacing and origin, z = imageZposition), its diameter the largest
  in-plane distance between two contour points of one slice (mm; LIDC contours run on
  the first pixels outside the nodule, so this is up to a pixel wider on each side, as
  pylidc's estimate is);
- marks of different readers are one physical nodule when their positions are closer
  than half the larger diameter plus `cluster_tolerance_mm` (single linkage);
- a nodule's diameter and malignancy are the medians over its marks, its readers the
  number of distinct reading sessions;
- `presence`: label 1 (nodule) when the scan has a nodule of >= `min_diameter_mm` marked
  by >= `min_readers` readers (LUNA16: 3 mm, 3 of 4), else 0 (no_nodule);
- `malignancy`: among those nodules the worst median rating decides: < 3 benign (0),
  3 indeterminate (1), > 3 malignant (2); a scan without such a nodule gets no label.

Case ids are those conversion gives the series (`dicom.hashed_id` of the UID unless
case_ids="series_uid"), so the CSV and the records always agree.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from crfgan_tf.data import dicom, labels
from crfgan_tf.utils import fileio

CLASSES = {"presence": ("no_nodule", "nodule"),
           "malignancy": ("benign", "indeterminate", "malignant")}
DEFAULT_MIN_DIAMETER_MM = 3.0
DEFAULT_MIN_READERS = 3
DEFAULT_CLUSTER_TOLERANCE_MM = 2.0
NODULE_COLUMNS = ("case_id", "nodule", "readers", "diameter_mm", "malignancy", "x_mm", "y_mm",
                  "z_mm", "qualifies")


class LidcError(ValueError):
    """An annotation archive that cannot be labelled; names the file or setting."""


@dataclasses.dataclass(frozen=True)
class Mark:
    """One reader's >= 3 mm nodule."""

    reader: int  # the reading session's index in its file
    position: Tuple[float, float, float]  # (x, y, z) mm
    diameter: float  # mm
    malignancy: Optional[int]


@dataclasses.dataclass(frozen=True)
class Nodule:
    """A physical nodule: the marks of one cluster."""

    marks: Tuple[Mark, ...]

    @property
    def readers(self) -> int:
        return len({m.reader for m in self.marks})

    @property
    def diameter(self) -> float:
        return float(statistics.median(m.diameter for m in self.marks))

    @property
    def malignancy(self) -> Optional[float]:
        ratings = [m.malignancy for m in self.marks if m.malignancy is not None]
        return float(statistics.median(ratings)) if ratings else None

    @property
    def position(self) -> Tuple[float, float, float]:
        return tuple(float(v) for v in np.mean([m.position for m in self.marks], axis=0))

    def counts(self, min_diameter_mm: float, min_readers: int) -> bool:
        """Whether this nodule makes a scan a nodule scan (the module docstring's rule)."""
        return self.readers >= min_readers and self.diameter >= min_diameter_mm


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element, name):
    return [c for c in element if _local(c.tag) == name]


def _text(element, name) -> Optional[str]:
    found = _children(element, name)
    return found[0].text.strip() if found and found[0].text else None


def read_xml(path: str) -> Tuple[Optional[str], List[List[dict]]]:
    """(series UID, [per reading session: [{per_slice: {z mm: [(x px, y px)]},
    malignancy}]]) of one LIDC XML file; (None, []) for a file that is no CT read message
    (the chest X-ray ones).

    Raises:
      LidcError: not XML, or a roi without numeric coordinates (the file named).
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise LidcError(f"{os.path.basename(path)}: not readable XML ({err})") from None
    try:
        return _read_message(root)
    except (TypeError, ValueError) as err:  # a missing or non-numeric coordinate
        raise LidcError(f"{os.path.basename(path)}: a roi without a numeric imageZposition "
                        f"or edgeMap coordinate ({err})") from None


def _read_message(root) -> Tuple[Optional[str], List[List[dict]]]:
    header = next((c for c in root if _local(c.tag) == "ResponseHeader"), None)
    uid = None
    if header is not None:
        uid = _text(header, "SeriesInstanceUid") or _text(header, "SeriesInstanceUID")
    sessions = []
    for session in _children(root, "readingSession"):
        marks = []
        for nodule in _children(session, "unblindedReadNodule"):
            per_slice: Dict[float, list] = {}
            for roi in _children(nodule, "roi"):
                if (_text(roi, "inclusion") or "TRUE").upper() != "TRUE":
                    continue
                z = float(_text(roi, "imageZposition"))
                for edge in _children(roi, "edgeMap"):
                    per_slice.setdefault(z, []).append((float(_text(edge, "xCoord")),
                                                        float(_text(edge, "yCoord"))))
            rating = None
            for ch in _children(nodule, "characteristics"):
                value = _text(ch, "malignancy")
                rating = int(value) if value and value.isdigit() else rating
            marks.append({"per_slice": per_slice, "malignancy": rating})
        sessions.append(marks)
    return uid, sessions


def to_marks(sessions: List[List[dict]], series: dicom.Series) -> List[Mark]:
    """The >= 3 mm marks of a file's sessions in mm (the series' pixel grid)."""
    row = np.array(series.orientation[:3])
    col = np.array(series.orientation[3:])
    origin = np.array(series.origin)
    dr, dc = series.pixel_spacing
    marks = []
    for reader, session in enumerate(sessions):
        for mark in session:
            points = [(x, y, z) for z, xy in mark["per_slice"].items() for x, y in xy]
            if len(points) < 2:
                continue  # a "< 3 mm" point mark
            mm = [origin + x * dc * row + y * dr * col for x, y, _ in points]
            xy = np.array([[p[0], p[1]] for p in mm])
            z = np.array([p[2] for p in points])
            diameter = 0.0
            for zk in mark["per_slice"]:
                k = z == zk
                pts = xy[k]
                if len(pts) > 1:
                    diameter = max(diameter, float(np.max(np.linalg.norm(
                        pts[:, None, :] - pts[None, :, :], axis=-1))))
            centre = (float(xy[:, 0].mean()), float(xy[:, 1].mean()), float(z.mean()))
            marks.append(Mark(reader, centre, diameter, mark["malignancy"]))
    return marks


def cluster(marks: Sequence[Mark],
            tolerance_mm: float = DEFAULT_CLUSTER_TOLERANCE_MM) -> List[Nodule]:
    """Single-linkage clusters of marks of different readers (see the module docstring),
    ordered by position (z, y, x)."""
    parent = list(range(len(marks)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(marks):
        for j in range(i + 1, len(marks)):
            b = marks[j]
            if a.reader == b.reader:
                continue
            reach = max(a.diameter, b.diameter) / 2.0 + tolerance_mm
            if float(np.linalg.norm(np.subtract(a.position, b.position))) <= reach:
                parent[find(i)] = find(j)
    groups: Dict[int, list] = {}
    for i, mark in enumerate(marks):
        groups.setdefault(find(i), []).append(mark)
    nodules = [Nodule(tuple(g)) for g in groups.values()]
    return sorted(nodules, key=lambda n: tuple(reversed(n.position)))


def scan_label(nodules: Sequence[Nodule], classes: str, min_diameter_mm: float,
               min_readers: int) -> Optional[int]:
    """The scan's class under `classes` (module docstring); None: no label."""
    real = [n for n in nodules if n.counts(min_diameter_mm, min_readers)]
    if classes == "presence":
        return int(bool(real))
    rated = [n.malignancy for n in real if n.malignancy is not None]
    if not rated:
        return None
    worst = max(rated)
    return 0 if worst < 3 else 1 if worst == 3 else 2


@dataclasses.dataclass(frozen=True)
class LabelOptions:
    classes: str = "presence"
    min_diameter_mm: float = DEFAULT_MIN_DIAMETER_MM
    min_readers: int = DEFAULT_MIN_READERS
    cluster_tolerance_mm: float = DEFAULT_CLUSTER_TOLERANCE_MM
    case_ids: str = "hash"

    def validate(self) -> None:
        if self.classes not in CLASSES:
            raise LidcError(f"`classes` must be one of {tuple(CLASSES)}, got {self.classes!r}")
        if self.min_diameter_mm < 0:
            raise LidcError(f"`min_diameter_mm` must be >= 0, got {self.min_diameter_mm}")
        if not 1 <= self.min_readers <= 4:
            raise LidcError(f"`min_readers` must be 1-4, got {self.min_readers}")
        if self.cluster_tolerance_mm < 0:
            raise LidcError(f"`cluster_tolerance_mm` must be >= 0, got {self.cluster_tolerance_mm}")
        if self.case_ids not in ("hash", "series_uid"):
            raise LidcError(f"`case_ids` must be hash or series_uid (the ids conversion gives "
                            f"the series), got {self.case_ids!r}")


def label_archive(input_dir: str, options: LabelOptions) -> dict:
    """Labels every series of `input_dir` that has an LIDC XML file beside it.

    Returns:
      {"labels": {case_id: label}, "nodules": [(case_id, Nodule, qualifies)],
       "unlabelled": [case_id, ...], "problems": [message, ...]}

    Raises:
      LidcError: bad options, or no XML file of a series found under input_dir.
    """
    options.validate()
    series = dicom.find_series(input_dir, dicom.SeriesOptions(
        series_policy="all", min_slices=2, allow_tilt=True, case_ids=options.case_ids))
    by_id = {s.case_id: s for s in series if s.offsets}
    out = {"labels": {}, "nodules": [], "unlabelled": [], "problems": []}
    xml_files = sorted(os.path.join(root, name) for root, _, names in os.walk(input_dir)
                       for name in names if name.lower().endswith(".xml"))
    matched = 0
    for path in xml_files:
        try:
            uid, sessions = read_xml(path)
        except LidcError as err:
            out["problems"].append(str(err))
            continue
        if uid is None:
            continue  # a chest X-ray read: not ours
        cid = uid if options.case_ids == "series_uid" else dicom.hashed_id(uid)
        if cid not in by_id:
            out["problems"].append(f"{os.path.basename(path)}: its series {cid} is not a CT "
                                   "series under `input_dir`")
            continue
        matched += 1
        nodules = cluster(to_marks(sessions, by_id[cid]), options.cluster_tolerance_mm)
        label = scan_label(nodules, options.classes, options.min_diameter_mm, options.min_readers)
        out["nodules"] += [(cid, n, n.counts(options.min_diameter_mm, options.min_readers))
                           for n in nodules]
        if label is None:
            out["unlabelled"].append(cid)
        else:
            out["labels"][cid] = label
    if not matched:
        raise LidcError(f"no LIDC XML file of a CT series under `input_dir` {input_dir!r} "
                        f"({len(xml_files)} .xml files, {len(by_id)} series)")
    return out


def write_outputs(result: dict, options: LabelOptions, labels_csv: str, nodules_csv: str) -> None:
    """The labels CSV (`labels_csv` of conversion) and the per-nodule table, atomically."""
    labels.write_labels_csv(labels_csv, result["labels"], CLASSES[options.classes])
    rows = [",".join(NODULE_COLUMNS)]
    index: Dict[str, int] = {}
    for cid, n, qualifies in result["nodules"]:
        index[cid] = index.get(cid, 0) + 1
        rating = "" if n.malignancy is None else f"{n.malignancy:g}"
        x, y, z = n.position
        rows.append(f"{cid},{index[cid]},{n.readers},{n.diameter:.2f},{rating},{x:.2f},{y:.2f},"
                    f"{z:.2f},{int(qualifies)}")
    fileio.atomic_write(nodules_csv, "\n".join(rows) + "\n")
