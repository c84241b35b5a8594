"""Samples as DICOM (`crfgan-sample --format=dicom`): a CT series per sample that says it
is synthetic, passes an independent validator (dciodvfy of Debian's dicom3tools, which
.ci/run installs; the check skips without it), reads back through SimpleITK equal to the
NIfTI output in HU and geometry, has UIDs of its own, holds nothing of the training data,
and converts with crfgan-convert --dataset=dicom --include_derived."""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import REPO
from crfgan_tf.generation import dicom_output
from crfgan_tf.run import rundir

CARD = "crfgan-0123456789ab"


def _volume(seed):
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 600, size=(16, 12, 14)).astype(np.int16)


def _series(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _validator_errors(path):
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_a_series_is_marked_synthetic_and_reads_back_as_the_nifti(tmp_path):
    from crfgan_tf.generation import sample as sample_lib

    spacing = (2.5, 0.8, 0.7)
    uids = []
    for index in (0, 1):
        volume = _volume(index)
        files = dicom_output.write_sample(volume, str(tmp_path / f"s{index}"), spacing, CARD,
                                          seed=3, index=index, version="0.3.0",
                                          model_name="CRF-GAN", label=1, class_name="nodule")
        assert len(files) == 16 and not glob.glob(str(tmp_path / "*.tmp-*"))
        ds = pydicom.dcmread(files[0])
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert str(ds.PatientName) == f"SYNTHETIC^{CARD}"
        assert ds.PatientID == f"SYN-0123456789ab-S3-{index:05d}"
        assert ds.SeriesDescription == f"SYNTHETIC {CARD} seed 3 #{index} crfgan-tf 0.3.0"
        assert ds.StudyDescription == "SYNTHETIC CT - NOT A PATIENT"
        assert "class 1 (nodule)" in ds.ImageComments and "not for diagnosis" in ds.ImageComments
        assert (ds.RescaleSlope, ds.RescaleIntercept, ds.PixelRepresentation) == (1, -1024, 1)
        uids += [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID]
        uids += [pydicom.dcmread(f).SOPInstanceUID for f in files]
        # the same image as the NIfTI output: HU, spacing, origin, direction
        nifti = str(tmp_path / f"s{index}.nii.gz")
        sample_lib.write_volume(volume, nifti, spacing, "nii.gz")
        a, b = _series(tmp_path / f"s{index}"), sitk.ReadImage(nifti)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(a), volume)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(b), volume)
        for attr in ("GetSpacing", "GetOrigin", "GetDirection"):
            np.testing.assert_allclose(getattr(a, attr)(), getattr(b, attr)(), atol=1e-4)
    assert len(set(uids)) == len(uids) == 2 * (3 + 16)
    assert all(u.startswith("2.25.") for u in uids)


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy (Debian's dicom3tools) is not installed; .ci/run installs it")
def test_the_series_passes_dciodvfy_with_no_error(tmp_path):
    files = dicom_output.write_sample(_volume(0), str(tmp_path / "s"), (2.5, 0.8, 0.7), CARD,
                                      seed=0, index=0, version="0.3.0", model_name="CRF-GAN")
    assert _validator_errors(files[0]) == [] and _validator_errors(files[-1]) == []
    # the validator finds what it should: a file without its patient module fails
    ds = pydicom.dcmread(files[0])
    del ds.PatientName, ds.PatientID
    ds.save_as(str(tmp_path / "broken.dcm"))
    assert _validator_errors(tmp_path / "broken.dcm")


def _command(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_sample_as_dicom_through_the_commands(exported, trained_run, tmp_path):
    """crfgan-sample --format=dicom against --format=nii.gz of the same export and seed;
    no byte of the series holds a training case id; crfgan-convert skips the synthetic
    series unless --include_derived, then converts them."""
    export, meta = exported
    for fmt in ("dicom", "nii.gz"):
        res = _command("crfgan_tf.sample", f"--saved_model={export}", "--num_samples=2",
                       f"--output_dir={tmp_path / fmt}", f"--format={fmt}", "--seed=5")
        assert res.returncode == 0, res.stderr[-2000:]
    listing = json.load(open(tmp_path / "dicom" / "samples.json"))["samples"]
    assert [s["file"] for s in listing] == ["sample_seed5_00000", "sample_seed5_00001"]
    card = json.load(open(os.path.join(export, "model_card.json")))["id"]
    for s in listing:
        folder = tmp_path / "dicom" / s["file"]
        a = _series(folder)
        b = sitk.ReadImage(str(tmp_path / "nii.gz" / (s["file"] + ".nii.gz")))
        assert np.abs(sitk.GetArrayFromImage(a).astype(int) - sitk.GetArrayFromImage(b)).max() == 0
        np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
        np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
        ds = pydicom.dcmread(sorted(glob.glob(str(folder / "*.dcm")))[0])
        assert f"SYNTHETIC {card} seed 5 #{s['index']}" in ds.SeriesDescription
        # a viewer opens it in the lung window, the mediastinal one a click away
        assert [float(v) for v in ds.WindowCenter] == [-600.0, 40.0]
        assert [float(v) for v in ds.WindowWidth] == [1500.0, 400.0]
        assert list(ds.WindowCenterWidthExplanation) == ["LUNG", "MEDIASTINUM"]
        data = b"".join(open(f, "rb").read() for f in glob.glob(str(folder / "*.dcm")))
        case_ids = json.load(open(os.path.join(trained_run[0], rundir.DATA_FILE)))["train_case_ids"]
        leaks = [c for c in case_ids if c.encode() in data]
        assert len(case_ids) == 4 and len(meta["train_case_digests"]) == 4 and not leaks, leaks
    args = ("--dataset=dicom", f"--input_dir={tmp_path / 'dicom'}", "--size=64",
            "--val_fraction=0", "--num_shards=1")
    res = _command("data_prep.convert", *args, f"--output_dir={tmp_path / 'skipped'}")
    assert res.returncode == 2 and "skipped_derived" in res.stderr, res.stderr[-2000:]
    assert "--include_derived converts it" in res.stderr
    res = _command("data_prep.convert", *args, "--include_derived",
                   f"--output_dir={tmp_path / 'converted'}")
    assert res.returncode == 0 and "2 train, 0 val, 0 failed" in res.stderr, res.stderr[-2000:]
