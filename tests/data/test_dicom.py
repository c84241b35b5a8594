"""DICOM series through the conversion (crfgan_tf/data/dicom.py, data/convert.py): every
rule of the module's docstring on the hospital export of tests/support/dicom_series.py, through
`python -m data_prep.convert` and `convert.run_conversion`."""

import json
import os

import numpy as np
import pytest

from support import dicom_series as ds
from crfgan_tf.data import convert, dicom, records


@pytest.fixture(scope="session")
def twin_record(tmp_path_factory):
    """The kept series' anatomy as a MetaImage file, converted the same way."""
    root = tmp_path_factory.mktemp("twin")
    ds.mhd_twin(str(root / "in" / "twin.mhd"))
    _run(str(root / "in"), str(root / "out"), dataset="generic", modality="ct")
    return next(records.read_volumes(str(root / "out" / "*.tfrecord")))


def _run(input_dir, output_dir, **kw):
    base = dict(dataset="dicom", input_dir=input_dir, output_dir=output_dir, size=64,
                num_shards=1, val_fraction=0.0, workers=1)
    base.update(kw)
    logs = []
    summary = convert.run_conversion(convert.ConvertConfig(**base), log=logs.append)
    return summary, logs


def _records(out):
    return {r.case_id: r for r in records.read_volumes(os.path.join(out, "*.tfrecord"))}


def test_every_series_gets_its_decision_in_the_manifest_and_the_report(dicom_converted):
    out, res = dicom_converted
    assert res.returncode == 1, res.stderr[-3000:]  # some series were refused
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    decided = {seed: manifest["dicom"]["series"][ds.case_id(seed)]["decision"]
               for seed in ds.EXPECTED}
    assert decided == ds.EXPECTED
    assert len(manifest["dicom"]["series"]) == len(ds.EXPECTED)  # DICOMDIR, .txt: no series
    assert "convert: 1 DICOM file(s) belong to no series" in res.stderr  # the broken one
    assert set(manifest["dicom"]["reasons"]) >= set(ds.EXPECTED.values())
    failed = {f["case_id"]: f["reason"] for f in manifest["failures"]}
    assert set(failed) == {ds.case_id(s) for s in ds.FAILED}
    assert manifest["counts"] == {"train": 6, "val": 0, "failed": 6}
    for seed, decision in ds.EXPECTED.items():
        if decision != "kept":  # one line each, with its code
            assert f"{ds.case_id(seed)}: {decision}" in res.stderr \
                or f"FAILED {ds.case_id(seed)}" in res.stderr, seed
    reason = {s: failed[ds.case_id(s)] for s in ds.FAILED}
    assert "a gap of 7.50 mm between" in reason["gap"] and "2 slice(s) missing" in reason["gap"]
    assert "gantry tilt of 20.0 degrees" in reason["tilt"] and "`allow_tilt`" in reason["tilt"]
    assert "deviates 40% from the median 2.500 mm" in reason["uneven"]
    assert "2 sizes: 32x32 (39 slices), 24x24 (1 slices)" in reason["mixed"]
    assert "1.2.840.10008.1.2.4.100 (MPEG2" in reason["mpeg2"]
    assert "different pixels" in reason["dup_diff"]
    kept = manifest["dicom"]["series"][ds.case_id("jitter")]["detail"]
    assert "uneven spacing (up to 8% off) resampled to 2.500 mm" in kept
    series = manifest["dicom"]["series"]
    assert "1 duplicate position(s)" in series[ds.case_id("dup_same")]["detail"]


def test_series_records_equal_the_same_anatomy_as_metaimage(dicom_converted, twin_record):
    """Shuffled file names with InstanceNumber reversed, per-slice slopes and intercepts,
    JPEG lossless, JPEG 2000 and an identical duplicate give the .mhd twin's record."""
    out, _ = dicom_converted
    got = _records(out)
    for seed in ("thin", "rescale", "jpeg", "jpeg2000", "dup_same"):
        rec = got[ds.case_id(seed)]
        files = 41 if seed == "dup_same" else 40
        assert rec.source == f"dicom series {ds.case_id(seed)} ({files} files)"
        np.testing.assert_allclose(rec.output_spacing, twin_record.output_spacing, rtol=1e-6)
        np.testing.assert_allclose(rec.output_origin, twin_record.output_origin, atol=1e-4)
        assert rec.original_size == twin_record.original_size == (40, 32, 32)
        mae = float(np.abs(rec.volume - twin_record.volume).mean())
        assert mae < (1e-3 if seed == "rescale" else 1e-6), (seed, mae)
    # resampled to uniform spacing: close, not equal (two slices moved by 0.2 mm)
    mae = float(np.abs(got[ds.case_id("jitter")].volume - twin_record.volume).mean())
    assert 1e-5 < mae < 5e-3, mae


def test_allow_tilt_shifts_slices_back(dicom_export, twin_record, tmp_path):
    summary, _ = _run(os.path.join(dicom_export, ds.PATIENT_FOLDERS[1], "tilt"),
                      str(tmp_path / "o"), allow_tilt=True)
    assert (summary["train"], summary["failed"]) == (1, 0)
    manifest = json.load(open(tmp_path / "o" / "manifest.json"))
    detail = manifest["dicom"]["series"][ds.case_id("tilt")]["detail"]
    assert "tilt of 20.0 degrees resampled" in detail
    rec = _records(str(tmp_path / "o"))[ds.case_id("tilt")]
    inner = np.s_[8:56, 8:56, 8:56]  # the edge rows shifted in from outside are air
    mae = float(np.abs(rec.volume[inner] - twin_record.volume[inner]).mean())
    # uncorrected slices give 0.50 here, shifts of the wrong sign 0.64; what is left is
    # the blur of interpolating 4 mm pixels twice (writing the tilt, correcting it)
    assert mae < 0.06, mae
    assert manifest["settings"]["allow_tilt"] is True


@pytest.mark.parametrize("policy,kept", [("thinnest", {"thin"}), ("largest", {"thick"}),
                                         ("all", {"thin", "thick"})])
def test_series_policy_chooses_among_reconstructions_of_one_study(dicom_export, policy, kept):
    found = dicom.find_series(os.path.join(dicom_export, ds.PATIENT_FOLDERS[0]),
                              dicom.SeriesOptions(series_policy=policy))
    by_id = {s.case_id: s for s in found}
    assert {seed for seed in ("thin", "thick") if by_id[ds.case_id(seed)].kept} == kept
    if policy != "all":
        other = ({"thin", "thick"} - kept).pop()
        assert by_id[ds.case_id(other)].decision == "skipped_series_policy"
        assert f"{policy}: {ds.case_id(kept.pop())} chosen" in by_id[ds.case_id(other)].detail


def test_all_reconstructions_of_a_study_share_a_split(dicom_export, tmp_path):
    summary, _ = _run(dicom_export, str(tmp_path / "o"), size=16, series_policy="all",
                      val_fraction=0.5, seed=4)
    manifest = json.load(open(tmp_path / "o" / "manifest.json"))
    cases = manifest["cases"]
    assert cases[ds.case_id("thin")]["split"] == cases[ds.case_id("thick")]["split"]
    # every series of this export carries PHI_TAGS' one PatientID: one patient, one split
    # (tests/data/test_split_groups.py splits several patients, and a series without one)
    assert len({c["split"] for c in cases.values() if c["status"] == "ok"}) == 1
    assert manifest["split"]["grouping"].startswith("DICOM patient (PatientID) for ")
    assert summary["train"] + summary["val"] == len([c for c in cases.values()
                                                     if c["status"] == "ok"])
    for seed in range(8):  # and for any seed
        split = convert.split_cases(["a", "b", "c", "d"], 0.5, seed, {"a": "s", "b": "s"})
        assert split["a"] == split["b"]


def test_case_id_modes_and_rerun_resumes(dicom_export, dicom_converted):
    folder = os.path.join(dicom_export, ds.PATIENT_FOLDERS[0])
    by_uid = {s.case_id for s in dicom.find_series(
        folder, dicom.SeriesOptions(case_ids="series_uid"))}
    assert ds.series_uid("thin") in by_uid
    by_path = {s.case_id: s.source for s in dicom.find_series(
        folder, dicom.SeriesOptions(case_ids="path"))}
    assert by_path["CT_CHEST#2"] == "CT_CHEST#2" and "CT_CHEST#1" in by_path  # two in one folder
    assert "CT_5MM" in by_path
    out, _ = dicom_converted  # the same command again: only shards holding a failure are redone
    shards = json.load(open(os.path.join(out, "manifest.json")))["shards"].values()
    redo = sum(len(s["cases"]) for s in shards if s["status"] != "complete")
    before = set(_records(out))
    summary, _ = _run(dicom_export, out, num_shards=2)
    assert 0 < summary["processed"] == redo < 8 and summary["train"] == 6
    assert set(_records(out)) == before  # the same case ids (hashes of the series UIDs)


def test_generic_takes_dicom_series_beside_scan_files(dicom_export, tmp_path):
    root = tmp_path / "mixed"
    ds.mhd_twin(str(root / "a" / "scan.mhd"))
    import shutil
    shutil.copytree(os.path.join(dicom_export, ds.PATIENT_FOLDERS[1], "jpeg"), root / "b")
    summary, _ = _run(str(root), str(tmp_path / "o"), dataset="generic", modality="ct", size=16)
    assert summary["train"] == 2
    assert set(_records(str(tmp_path / "o"))) == {"scan", ds.case_id("jpeg")}


def test_no_series_and_bad_flags_are_named(tmp_path, dicom_export):
    ds.mhd_twin(str(tmp_path / "in" / "scan.mhd"))
    with pytest.raises(ValueError, match="no DICOM series under `input_dir`"):
        _run(str(tmp_path / "in"), str(tmp_path / "o"))
    short = os.path.join(dicom_export, ds.PATIENT_FOLDERS[1], "short")
    with pytest.raises(ValueError, match=r"1 series found, none convertible"):
        _run(short, str(tmp_path / "o"))
    for kw, flag in ((dict(min_slices=1), "`min_slices`"),
                     (dict(slice_spacing_tolerance=0.6), "`slice_spacing_tolerance`"),
                     (dict(series_policy="newest"), "`series_policy`"),
                     (dict(case_ids="name"), "`case_ids`")):
        with pytest.raises(ValueError, match=flag):
            _run(str(tmp_path), str(tmp_path / "o"), **kw)


def test_make_phantoms_writes_dicom_series_that_convert(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    res = subprocess.run([sys.executable, "-m", "data_prep.make_phantoms", "--format=dicom",
                          f"--output_dir={tmp_path}", "--num_scans=2", "--in_plane=32",
                          "--num_slices=20"], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    found = dicom.find_series(str(tmp_path), dicom.SeriesOptions())
    assert [s.decision for s in found] == ["kept", "kept"]
    assert all(not f.endswith(".dcm") for s in found for f in s.files)  # names without suffix


@pytest.mark.parametrize("tag,value,named", [
    ("ImageOrientationPatient", [1.0, 0.0, 0.0, 0.0, 0.0, -1.0], "2 orientations"),
    ("PixelSpacing", [3.0, 3.0], "2 pixel spacings"),
])
def test_mixed_orientation_or_pixel_spacing_is_refused(tmp_path, tag, value, named):
    import pydicom

    paths = ds.dicom_write.write_series(ds.volume()[:20], str(tmp_path), ds.SPEC.spacing_zyx,
                                        seed="mixed")
    odd = pydicom.dcmread(paths[7])
    setattr(odd, tag, value)
    odd.save_as(paths[7], enforce_file_format=True)
    (series,) = dicom.find_series(str(tmp_path), dicom.SeriesOptions())
    assert series.decision == "refused_mixed_geometry" and named in series.detail
    assert "(19 slices)" in series.detail and "(1 slices)" in series.detail


def test_mr_series_are_kept_with_modality_mri(dicom_export):
    folder = os.path.join(dicom_export, ds.PATIENT_FOLDERS[1], "mr")
    (series,) = dicom.find_series(folder, dicom.SeriesOptions(modality="mri"))
    assert series.kept
    (series,) = dicom.find_series(folder, dicom.SeriesOptions())
    assert series.decision == "skipped_modality" and series.detail == "Modality MR"


def test_prone_orientation_reads_to_the_canonical_array(tmp_path):
    """A patient scanned prone (rows toward patient right, columns anterior): the series
    goes through ITK's reorientation and gives back the canonical array and origin."""
    import pydicom

    vol = ds.volume()[:20]
    paths = ds.dicom_write.write_series(vol[:, ::-1, ::-1], str(tmp_path), ds.SPEC.spacing_zyx,
                                        ds.ORIGIN, seed="prone")
    n, (dz, dy, dx) = vol.shape[1], ds.SPEC.spacing_zyx
    for k, path in enumerate(paths):
        f = pydicom.dcmread(path)
        f.ImageOrientationPatient = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
        f.ImagePositionPatient = [ds.ORIGIN[0] + (n - 1) * dx, ds.ORIGIN[1] + (n - 1) * dy,
                                  ds.ORIGIN[2] + k * dz]
        f.save_as(path, enforce_file_format=True)
    (series,) = dicom.find_series(str(tmp_path), dicom.SeriesOptions())
    array, spacing, origin, stored = dicom.read_series(series)
    np.testing.assert_array_equal(array, vol)
    assert spacing == ds.SPEC.spacing_zyx and origin == ds.ORIGIN and stored == "RAS"


def test_headers_read_by_the_worker_pool_give_the_same_decisions(dicom_export, monkeypatch):
    import functools

    monkeypatch.setattr(convert, "POOLED_HEADERS", 1)  # pool from the first file on
    options = dicom.SeriesOptions()
    unread = []
    pooled = dicom.find_series(dicom_export, options, unread=unread,
                               read_headers=functools.partial(convert._read_headers, 2))
    assert pooled == dicom.find_series(dicom_export, options)
    assert len(pooled) == len(ds.EXPECTED) and len(unread) == 1
