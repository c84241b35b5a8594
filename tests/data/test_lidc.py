"""LIDC-IDRI labels (crfgan_tf/data/lidc.py, `python -m data_prep.lidc_labels`): readers'
XML from phantoms whose painted nodules the contours outline (tests/support/dicom_series.py)."""

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from support import dicom_series as ds
from conftest import REPO
from crfgan_tf.data import convert, dicom, lidc, phantom, records


@pytest.fixture(scope="session")
def lidc_archive(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("LIDC-IDRI"))
    return root, ds.make_lidc(root)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "data_prep.lidc_labels", *args], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                          timeout=300)


def _csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _cid(scan):
    return dicom.hashed_id(ds.lidc_uid(scan))


def test_contours_outline_the_painted_nodules(lidc_archive):
    _, drawn = lidc_archive
    seed, diameter, nodules, _ = ds.LIDC_SCANS["A"]
    volume, found = phantom.make_phantom_with_nodules(seed, ds.LIDC_SPEC, len(nodules),
                                                      (diameter, diameter))
    assert found == drawn["A"]
    (centre, d), = found
    contours = ds.lidc_contours(centre, d, ds.LIDC_SPEC)
    assert len(contours) >= 4  # a 10 mm nodule over 2 mm slices
    for z, points in contours.items():
        x, y = np.mean(points, axis=0)
        inside = volume[z, int(round(y)), int(round(x))]
        outside = [volume[z, py, px] for px, py in points]
        assert abs(inside - phantom.NODULE_HU) < 50  # the centre is painted,
        near = np.abs(np.subtract(outside, phantom.NODULE_HU)) < 50
        assert np.mean(near) < 0.5  # the border mostly not


def test_presence_labels_and_nodule_table_through_the_command(lidc_archive, tmp_path):
    root, drawn = lidc_archive
    res = _cli(f"--input_dir={root}", f"--output={tmp_path}/labels.csv")
    assert res.returncode == 0, res.stderr[-3000:]
    labels = {r["case_id"]: (int(r["label"]), r["name"]) for r in _csv(tmp_path / "labels.csv")}
    assert labels == {_cid("A"): (1, "nodule"), _cid("B"): (0, "no_nodule"),
                      _cid("C"): (1, "nodule"), _cid("D"): (0, "no_nodule")}
    rows = _csv(tmp_path / "labels_nodules.csv")
    by_scan = {s: [r for r in rows if r["case_id"] == _cid(s)] for s in ds.LIDC_SCANS}
    assert [len(by_scan[s]) for s in "ABCD"] == [1, 1, 2, 0]  # point marks are no nodules
    assert [r["readers"] for r in by_scan["A"] + by_scan["B"]] == ["4", "2"]
    assert sorted(r["readers"] for r in by_scan["C"]) == ["3", "4"]
    assert [r["qualifies"] for r in by_scan["A"] + by_scan["B"]] == ["1", "0"]
    assert by_scan["A"][0]["malignancy"] == "4" and by_scan["B"][0]["malignancy"] == "5"
    sz, sy, sx = ds.LIDC_SPEC.spacing_zyx
    for scan in "ABC":
        for row in by_scan[scan]:
            world = np.array([float(row["x_mm"]), float(row["y_mm"]), float(row["z_mm"])])
            # the drawn nodule nearest to this row: diameter and position agree
            best = min(drawn[scan], key=lambda n: np.linalg.norm(
                world - (np.array(ds.LIDC_ORIGIN) + np.array(n[0][::-1]) * [sx, sy, sz])))
            centre = np.array(ds.LIDC_ORIGIN) + np.array(best[0][::-1]) * [sx, sy, sz]
            assert np.linalg.norm(world - centre) < 2.0, (scan, row)
            # contours on the outer border: up to a pixel wider on each side
            assert 0 < float(row["diameter_mm"]) - best[1] <= 2 * sx + 1e-6, (scan, row)
    assert "4 scans labelled {'no_nodule': 2, 'nodule': 2}" in res.stderr
    text = open(tmp_path / "labels.csv").read() + open(tmp_path / "labels_nodules.csv").read()
    assert not any(v in text + res.stderr for v in ds.PHI_VALUES + [ds.lidc_uid("A")])


def test_malignancy_of_the_worst_nodule(lidc_archive, tmp_path):
    root, _ = lidc_archive
    res = _cli(f"--input_dir={root}", f"--output={tmp_path}/m.csv", "--classes=malignancy")
    assert res.returncode == 0, res.stderr[-3000:]
    labels = {r["case_id"]: (int(r["label"]), r["name"]) for r in _csv(tmp_path / "m.csv")}
    assert labels == {_cid("A"): (2, "malignant"), _cid("C"): (1, "indeterminate")}
    assert "2 scans without a qualifying rated nodule get no malignancy label" in res.stderr


def test_rules_pinned():
    def mark(reader, x, d=6.0, rating=None):
        return lidc.Mark(reader, (x, 0.0, 0.0), d, rating)

    # different readers within half the larger diameter + tolerance join; one reader never
    nodules = lidc.cluster([mark(0, 0.0), mark(1, 4.9), mark(2, 9.8), mark(0, 1.0)], 2.0)
    assert [n.readers for n in nodules] == [3]  # chained: 0 - 4.9 - 9.8, and reader 0's second
    assert len(lidc.cluster([mark(0, 0.0), mark(1, 5.1)], 2.0)) == 2
    assert len(lidc.cluster([mark(0, 0.0), mark(0, 0.5)], 2.0)) == 2
    three = [mark(r, 0.0, 4.0, rating) for r, rating in enumerate((2, 3, 3))]
    node = lidc.cluster(three)
    assert lidc.scan_label(node, "presence", 3.0, 3) == 1
    assert lidc.scan_label(node, "presence", 4.5, 3) == 0  # too small
    assert lidc.scan_label(node, "presence", 3.0, 4) == 0  # too few readers
    for ratings, label in (((2, 3), 0), ((3, 3, 3), 1), ((3, 4), 2), ((1, 2, 5), 0)):
        marks = [mark(r, 0.0, 4.0, v) for r, v in enumerate(ratings)]
        assert lidc.scan_label(lidc.cluster(marks), "malignancy", 3.0, 1) == label, ratings
    assert lidc.scan_label([], "malignancy", 3.0, 3) is None


def test_labels_drive_a_labelled_conversion_and_bad_files_are_named(lidc_archive, tmp_path):
    root, _ = lidc_archive
    work = tmp_path / "lidc"
    shutil.copytree(root, work)
    open(work / "LIDC-IDRI-0001" / "broken.xml", "w").write("<LidcReadMessage><unclosed>")
    other = (work / "LIDC-IDRI-0002" / "series" / "101.xml").read_text()
    (work / "LIDC-IDRI-0002" / "orphan.xml").write_text(
        other.replace(ds.lidc_uid("B"), "1.2.3.4.5"))
    (work / "LIDC-IDRI-0003" / "bad_roi.xml").write_text(
        (work / "LIDC-IDRI-0003" / "series" / "102.xml").read_text().replace(
            "<imageZposition>", "<imageZposition>z", 1))
    res = _cli(f"--input_dir={work}", f"--output={tmp_path}/l.csv", "--min_readers=2")
    assert res.returncode == 1
    assert "SKIPPED broken.xml: not readable XML" in res.stderr
    assert "SKIPPED bad_roi.xml: a roi without a numeric imageZposition" in res.stderr
    assert "SKIPPED orphan.xml: its series" in res.stderr and "1.2.3.4.5" not in res.stderr
    labels = {r["case_id"]: int(r["label"]) for r in _csv(tmp_path / "l.csv")}
    assert labels[_cid("B")] == 1  # two readers suffice now
    summary = convert.run_conversion(convert.ConvertConfig(
        dataset="dicom", input_dir=str(work), output_dir=str(tmp_path / "rec"), size=16,
        num_shards=1, val_fraction=0.0, workers=1, labels_csv=str(tmp_path / "l.csv")),
        log=lambda m: None)
    assert summary["train"] == 4
    got = {r.case_id: r.label for r in records.read_volumes(str(tmp_path / "rec" / "*.tfrecord"))}
    assert got == labels


def test_bad_settings_are_named(tmp_path, lidc_archive):
    res = _cli(f"--input_dir={tmp_path}", f"--output={tmp_path}/l.csv")
    assert res.returncode == 2 and "no LIDC XML file of a CT series" in res.stderr
    res = _cli(f"--input_dir={lidc_archive[0]}", f"--output={tmp_path}/l.csv", "--min_readers=5")
    assert res.returncode == 2 and "--min_readers must be 1-4" in res.stderr
