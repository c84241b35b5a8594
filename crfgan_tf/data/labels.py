"""Class labels of scans: the `case_id,label[,name]` CSV that conversion reads, and the
LUNA16 nodule labels made from the challenge's `annotations.csv`.

A labels CSV (UTF-8, a BOM as Excel writes it is accepted):

  case_id,label,name
  1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860,1,nodule
  1.3.6.1.4.1.14519.5.2.1.6279.6001.100332161840553388986847034053,0,no_nodule

`label` is an integer class index 0..N-1; `name` is optional and, when given, must be the
same for every row of a class.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from typing import Dict, Iterable, List, Optional, Sequence

from crfgan_tf.utils import fileio

LUNA_CLASS_NAMES = ("no_nodule", "nodule")
ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")


class LabelsError(ValueError):
    """A labels or annotations file that cannot be used; names the rows at fault."""


@dataclasses.dataclass(frozen=True)
class LabelTable:
    """case id -> class index, with the class names ("" where none was given)."""

    labels: Dict[str, int]
    names: tuple

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def counts(self, case_ids: Optional[Iterable[str]] = None) -> List[int]:
        """Cases per class (of `case_ids`, default all)."""
        out = [0] * self.num_classes
        for c in (self.labels if case_ids is None else case_ids):
            out[self.labels[c]] += 1
        return out


def _rows(path: str, required: Sequence[str]) -> List[dict]:
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's BOM
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in columns]
        if missing:
            raise LabelsError(f"{path}: missing column(s) {missing}; found {columns}")
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def _raise_if(problems: List[str], path: str, what: str) -> None:
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise LabelsError(f"{path}: {len(problems)} {what}: " + "; ".join(problems[:10]) + more)


def read_labels_csv(path: str, num_classes: int = 0) -> LabelTable:
    """Reads and checks a labels CSV.

    Args:
      path: the CSV (`case_id,label` and optionally `name`).
      num_classes: the number of classes; 0 infers it (max label + 1).

    Raises:
      LabelsError: naming every row with a non-integer, negative or out-of-range label,
        a duplicate case id or a class name that differs between rows of one class.
    """
    rows = _rows(path, ("case_id", "label"))
    labels: Dict[str, int] = {}
    names: Dict[int, str] = {}
    problems = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        cid, text = row["case_id"], row["label"]
        if not cid:
            problems.append(f"line {line}: empty case_id")
            continue
        try:
            label = int(text)
        except ValueError:
            problems.append(f"line {line} ({cid}): label {text!r} is not an integer")
            continue
        if label < 0 or (num_classes and label >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes else ">= 0"
            problems.append(f"line {line} ({cid}): label {label} out of range {bound}")
            continue
        if cid in labels:
            problems.append(f"line {line}: duplicate case_id {cid}")
            continue
        labels[cid] = label
        name = row.get("name", "")
        if name:
            if names.setdefault(label, name) != name:
                problems.append(f"line {line} ({cid}): class {label} named {name!r} here "
                                f"and {names[label]!r} before")
    _raise_if(problems, path, "bad label row(s)")
    if not labels:
        raise LabelsError(f"{path}: no labelled cases")
    n = num_classes or max(labels.values()) + 1
    return LabelTable(labels, tuple(names.get(k, "") for k in range(n)))


def write_labels_csv(path: str, labels: Dict[str, int], names: Sequence[str] = ()) -> None:
    """Writes a labels CSV atomically (with a `name` column when names are given)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["case_id", "label"] + (["name"] if names else []))
    for cid in sorted(labels):
        writer.writerow([cid, labels[cid]] + ([names[labels[cid]]] if names else []))
    fileio.atomic_write(path, out.getvalue())


def read_luna_annotations(path: str) -> Dict[str, List[float]]:
    """LUNA16 `annotations.csv` -> {seriesuid: [nodule diameters in mm]}.

    Raises:
      LabelsError: a missing column or a diameter that is not a positive number (named).
    """
    nodules: Dict[str, List[float]] = {}
    problems = []
    for line, row in enumerate(_rows(path, ANNOTATION_COLUMNS), start=2):
        try:
            diameter = float(row["diameter_mm"])
            if not diameter > 0:
                raise ValueError
        except ValueError:
            problems.append(f"line {line} ({row['seriesuid']}): diameter_mm "
                            f"{row['diameter_mm']!r} is not a positive number")
            continue
        nodules.setdefault(row["seriesuid"], []).append(diameter)
    _raise_if(problems, path, "bad annotation row(s)")
    return nodules


def luna16_labels(nodules: Dict[str, List[float]], case_ids: Iterable[str],
                  min_diameter_mm: float = 3.0) -> Dict[str, int]:
    """Label 1 for a scan with at least one nodule of diameter >= min_diameter_mm, else 0
    (every scan of the archive gets a label; scans absent from the annotations have no
    nodule)."""
    return {c: int(any(d >= min_diameter_mm for d in nodules.get(c, ()))) for c in case_ids}
