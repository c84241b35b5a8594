"""No patient data out: the DICOM export of tests/support/dicom_series.py, whose every patient-data
tag and patient folder holds a known string, through convert -> train -> export -> sample
-> fid_mmd as a user runs them; every byte written and printed is searched for those
strings and for the series' and studies' UIDs. None may appear."""

import os
import subprocess
import sys

from support import dicom_series as ds
from conftest import REPO, train_args
from crfgan_tf.data import dicom_write

PYDICOM_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # every UID the fixtures generate


def _needles():
    uids = [ds.series_uid(s) for s in ds.EXPECTED]
    uids += [dicom_write.uid(f"{s}/study") for s in ds.EXPECTED if s not in ds.SMITH_STUDY]
    uids.append(dicom_write.uid("smith/study"))
    # the folder names, and their first word alone (a path cut at a space or caret);
    # short words ("DOE") would match binary data by chance
    return sorted(set(ds.PHI_VALUES + uids + ["ZZPHIFOLDER", PYDICOM_UID_ROOT, "ZZPHI"]))


def _found(needles, name, data: bytes):
    return [(name, n) for n in needles if n.encode() in data]


def _command(module, *args):
    res = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, (module, res.stderr[-3000:])
    return res.stdout + res.stderr


def test_no_patient_data_in_anything_written_or_printed(dicom_export, dicom_converted, tmp_path):
    records, conversion = dicom_converted
    assert conversion.returncode == 1  # some series refused: their messages are searched too
    run, export, samples = tmp_path / "run", tmp_path / "export", tmp_path / "samples"
    printed = [conversion.stdout + conversion.stderr]
    printed.append(_command("crfgan_tf.train", *train_args(records, run), "--train_steps=2",
                            "--image_every=1"))
    printed.append(_command("crfgan_tf.export", f"--model_dir={run}", f"--export_dir={export}"))
    # .mha: uncompressed, so its header is searched too
    printed.append(_command("crfgan_tf.sample", f"--saved_model={export}", "--num_samples=1",
                            f"--output_dir={samples}", "--format=mha"))
    printed.append(_command("tools.fid_mmd", f"--real={records}/*.tfrecord", f"--fake={export}",
                            "--num_samples=2", "--allow_random_features", "--json",
                            f"--cache_dir={tmp_path / 'cache'}"))
    # the export's model card (MODEL_CARD.md, model_card.json) and weights package are
    # searched with the rest: the card names the training cases by their record ids
    card = __import__("json").load(open(export / "model_card.json"))
    assert card["training"]["dataset"] == "dicom" and card["training"]["cases"] >= 1
    assert (export / "MODEL_CARD.md").exists() and (export / "package.json").exists()
    needles = _needles()
    leaks, files = [], 0
    for root in (records, run, export, samples, tmp_path / "cache"):
        for folder, _, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                files += 1
                leaks += _found(needles, path, open(path, "rb").read())
    for k, text in enumerate(printed):
        leaks += _found(needles, f"output of command {k}", text.encode())
    assert files > 15 and not leaks, leaks
    # the search finds what it looks for: the input holds every needle (paths included)
    seen = set()
    for folder, _, names in os.walk(dicom_export):
        for name in names:
            path = os.path.join(folder, name)
            seen |= {n for _, n in _found(needles, path, path.encode() + open(path, "rb").read())}
    assert seen == set(needles)


def test_paths_appear_only_when_asked_for(dicom_export, tmp_path):
    """--case_ids=path writes the series' folders (that is what it is for): the same
    search then finds the patient folder's name in the manifest and the records."""
    from crfgan_tf.data import convert

    convert.run_conversion(convert.ConvertConfig(
        dataset="dicom", input_dir=dicom_export, output_dir=str(tmp_path / "o"), size=16,
        num_shards=1, val_fraction=0.0, workers=1, case_ids="path"), log=lambda m: None)
    found = set()
    for name in os.listdir(tmp_path / "o"):
        found |= {n for _, n in _found(_needles(), name, open(tmp_path / "o" / name, "rb").read())}
    assert {"ZZPHIFOLDER_SMITH^JOHN", "ZZPHIFOLDER", "ZZPHI"} <= found
    assert not found & set(ds.PHI_TAGS.values())  # tag values still never
