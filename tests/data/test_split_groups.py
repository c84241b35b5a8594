"""No patient on both sides of the split: a patient's DICOM series share a split whatever
their study (PatientID, read in memory only and never written), series without one go
with their study, and `--groups_csv` groups the cases of any dataset."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from crfgan_tf.data import convert, dicom_write

PATIENT = "ZZPHIPATIENT0042"  # a string that must never be written or printed


def _archive(root):
    """Patient A: a baseline and a follow-up study (one series each); patients B-F: one
    study each; one series without a PatientID (its study groups it)."""
    rng = np.random.default_rng(0)
    volume = lambda: rng.integers(-1000, 400, size=(16, 16, 16)).astype(np.int16)  # noqa: E731
    for k, (patient, study) in enumerate([(PATIENT, "a/base"), (PATIENT, "a/follow"),
                                          ("PB", "b"), ("PC", "c"), ("PD", "d"), ("PE", "e"),
                                          ("PF", "f"), ("", "g")]):
        tags = {"PatientID": patient} if patient else {}
        dicom_write.write_series(volume(), os.path.join(root, f"case{k}"), (2.0, 1.0, 1.0),
                                 seed=f"split/{k}", study_uid=dicom_write.uid(study), tags=tags)
    return root


def _config(root, out, **kw):
    return convert.ConvertConfig(dataset="dicom", input_dir=str(root), output_dir=str(out),
                                 size=64, num_shards=1, val_fraction=0.5, workers=1, **kw)


def test_a_patients_two_studies_share_a_split_whatever_the_seed(tmp_path):
    config = _config(_archive(str(tmp_path / "in")), tmp_path / "out")
    cases, _, _ = convert._discover_cases(config, log=lambda m: None)
    ids = sorted(cases)
    a = [c for c in ids if cases[c].patient == PATIENT]
    assert len(a) == 2 and cases[a[0]].study != cases[a[1]].study
    groups, grouping = convert.split_groups(config, cases, log=lambda m: None)
    assert grouping == "DICOM patient (PatientID) for 7 scans; DICOM study (no PatientID) for 1 scans"
    by_study = {c: s.study for c, s in cases.items()}  # the grouping before patients
    apart = 0
    for seed in range(100):
        split = convert.split_cases(ids, 0.5, seed, groups)
        assert split[a[0]] == split[a[1]], seed
        old = convert.split_cases(ids, 0.5, seed, by_study)
        apart += old[a[0]] != old[a[1]]
    assert apart > 20  # by study alone the patient lands on both sides often
    assert PATIENT not in repr(cases[a[0]])


def test_groups_csv_groups_any_dataset_and_is_checked(tmp_path, tiny_archive):
    config = convert.ConvertConfig(dataset="luna16", input_dir=tiny_archive[0],
                                   output_dir=str(tmp_path / "o"), size=64, val_fraction=0.4)
    cases, _, _ = convert._discover_cases(config, log=lambda m: None)
    ids = sorted(cases)
    csv_path = tmp_path / "groups.csv"
    csv_path.write_text("case_id,group\n" + "".join(f"{c},p{k // 2}\n" for k, c in enumerate(ids))
                        + "not.in.archive,p9\n")
    config = convert.ConvertConfig(**{**config.__dict__, "groups_csv": str(csv_path)})
    logs = []
    groups, grouping = convert.split_groups(config, cases, log=logs.append)
    assert grouping == "`groups_csv` for 5 scans" and "1 case(s) of `groups_csv`" in logs[0]
    for seed in range(50):
        split = convert.split_cases(ids, 0.4, seed, groups)
        assert split[ids[0]] == split[ids[1]] and split[ids[2]] == split[ids[3]], seed
    summary = convert.split_summary(convert.split_cases(ids, 0.4, 0, groups), groups, grouping)
    assert summary["groups"]["train"] + summary["groups"]["val"] == 3
    assert summary["cases"]["train"] + summary["cases"]["val"] == 5
    for text, problem in (("case,group\na,1\n", "the first line must be the header"),
                          ("case_id,group\na,1\na,2\n", "line 3: case 'a' is given twice"),
                          ("case_id,group\na,\n", "line 2: needs a case id and a group")):
        csv_path.write_text(text)
        with pytest.raises(ValueError, match=problem):
            convert.read_groups_csv(str(csv_path))


def test_the_command_splits_by_patient_and_writes_no_patient_id(tmp_path):
    root = _archive(str(tmp_path / "in"))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "data_prep.convert", "--dataset=dicom",
                          f"--input_dir={root}", f"--output_dir={out}", "--size=64",
                          "--num_shards=1", "--val_fraction=0.5", "--workers=1"], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["split"] == {
        "grouping": "DICOM patient (PatientID) for 7 scans; DICOM study (no PatientID) for 1 scans",
        "groups": {"train": manifest["split"]["groups"]["train"],
                   "val": 7 - manifest["split"]["groups"]["train"]},
        "cases": {"train": manifest["counts"]["train"], "val": manifest["counts"]["val"]}}
    assert "split by DICOM patient (PatientID) for 7 scans" in res.stderr
    written = b"".join(open(os.path.join(d, f), "rb").read()
                       for d, _, files in os.walk(out) for f in files)
    assert PATIENT.encode() not in written and PATIENT not in res.stdout + res.stderr


# --- series whose identifiers an anonymiser blanked -----------------------------------------

BLANK = {"SeriesInstanceUID": "", "StudyInstanceUID": "", "SOPClassUID": ""}


def _blanked_archive(root):
    """An anonymised export: JPEG 2000 lossless, 20 slices, SeriesInstanceUID,
    StudyInstanceUID and SOPClassUID empty (`single/`); two such series in one folder
    told apart by their SeriesNumber (`numbered/`); two that nothing tells apart
    (`twins/`: same number, geometry and positions)."""
    rng = np.random.default_rng(1)
    volume = lambda: rng.integers(-1000, 400, size=(20, 32, 32)).astype(np.int16)  # noqa: E731
    write = lambda folder, seed, number, **kw: dicom_write.write_series(  # noqa: E731
        volume(), os.path.join(root, folder), (2.5, 0.8, 0.8), seed=seed, series_number=number,
        tags=dict(BLANK, PatientID=f"P-{folder}"), **kw)
    write("single", "blank/single", 1, compression="jpeg2000")
    write("numbered", "blank/n1", 1, shuffled_names=True)
    write("numbered", "blank/n2", 2, shuffled_names=True)
    write("twins", "blank/a1", 3, shuffled_names=True)
    write("twins", "blank/a2", 3, shuffled_names=True)
    return root


def test_series_with_blanked_identifiers_convert_and_an_ambiguous_folder_is_refused(tmp_path):
    root = _blanked_archive(str(tmp_path / "in"))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "data_prep.convert", "--dataset=dicom",
                          f"--input_dir={root}", f"--output_dir={out}", "--size=64",
                          "--num_shards=1", "--val_fraction=0", "--workers=1",
                          "--min_slices=16"], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-3000:]  # the ambiguous folder is a failure
    assert "convert: 4 DICOM series: 3 kept_regrouped, 1 refused_ambiguous_series" in res.stderr
    manifest = json.load(open(out / "manifest.json"))
    series = manifest["dicom"]["series"]
    kept = [e for e in series.values() if e["decision"] == "kept_regrouped"]
    assert len(kept) == 3 and manifest["counts"] == {"train": 3, "val": 0, "failed": 1}
    assert sorted(e["slices"] for e in kept) == [20, 20, 20]
    # the empty SOPClassUID is read from the file meta's MediaStorageSOPClassUID
    assert all(e["detail"].startswith("SeriesInstanceUID, StudyInstanceUID empty: grouped by "
                                      "folder, series number, geometry and image type; 20 "
                                      "slices of 32x32") for e in kept)
    assert sum(e["transfer_syntax"] == "1.2.840.10008.1.2.4.90" for e in kept) == 1  # JPEG 2000
    (failure,) = manifest["failures"]
    assert failure["reason"].startswith("refused_ambiguous_series: SeriesInstanceUID empty in "
                                        "40 files of one folder with the same series number (3)")
    assert "Export each series into a folder of its own" in failure["reason"]
    assert "kept_regrouped" in manifest["dicom"]["reasons"]
    assert "twins" not in res.stderr  # the folder's name is not printed, its hash is
