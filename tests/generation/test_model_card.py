"""What a shared model says of its training data (generation/model_card.py, through
crfgan-export): a run trained on NIfTI files named after patients and fine-tuned from
another run exports a card, package and SavedModel in which no file stem and no path of
the exporter's machine appears; the cases are counted and digested; without `--license`
the card does not cite LUNA16's terms for data that is not LUNA16."""

import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY
from crfgan_tf.data import manifest, phantom
from crfgan_tf.generation import model_card

NAMES = ("doe_john_chest", "roe_jane_ct", "smith_anna_thorax", "mueller_karl_ct")


def _command(module, *args):
    res = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stderr


def _train(model_dir, records, *extra):
    return _command("crfgan_tf.train", f"--model_dir={model_dir}",
                    f"--train_records={records}/train-*.tfrecord", "--img_size=64",
                    "--batch_size=2", "--train_steps=1", "--latent_dim=16", "--width=0.0625",
                    "--checkpoint_every=1", "--image_every=100", "--seed=1", *extra)


def _bytes_of(folder):
    return b"".join(open(f, "rb").read() for f in glob.glob(os.path.join(folder, "**", "*"),
                                                             recursive=True)
                    if os.path.isfile(f))


@pytest.mark.slow
def test_a_shared_model_names_no_file_no_path_and_no_terms_it_does_not_know(tmp_path):
    scans = tmp_path / "scans"
    for i, name in enumerate(NAMES):
        phantom.write_scan(phantom.make_phantom(20 + i, TINY), str(scans / f"{name}.nii.gz"),
                           TINY.spacing_zyx)
    records = tmp_path / "records"
    _command("data_prep.convert", "--dataset=generic", "--modality=ct",
             f"--input_dir={scans}", f"--output_dir={records}", "--size=64",
             "--val_fraction=0", "--num_shards=1")
    first, tuned = tmp_path / "first", tmp_path / "tuned"
    _train(first, records)
    _train(tuned, records, f"--init_from={first}")
    export = tmp_path / "export"
    _command("crfgan_tf.export", f"--model_dir={tuned}", f"--export_dir={export}",
             "--step=latest")
    shared = _bytes_of(export)
    leaks = [n for n in NAMES if n.encode() in shared]
    assert not leaks, leaks
    assert str(tmp_path).encode() not in shared  # no path of this machine
    card = json.load(open(export / "model_card.json"))
    train = card["training"]
    assert train["cases"] == 4
    assert sorted(train["case_digests"]) == sorted(manifest.case_digest(n) for n in NAMES)
    assert train["initialised_from"]["name"] == "first"
    assert train["initialised_from"]["kind"] == "run" and train["initialised_from"]["step"] == 1
    md = open(export / "MODEL_CARD.md").read()
    assert "LUNA16" not in md and "data-sharing rules" in md, md
    # the run directory, which is not shared, keeps what the owner needs
    assert str(first) in open(tuned / "config.json").read()


def test_the_case_digest_is_pinned_one_way_and_reads_older_exports():
    assert manifest.case_digest("doe_john_chest") == "sha256:fde084e540d4a75d"
    assert manifest.case_digest(b"doe_john_chest") == manifest.case_digest("doe_john_chest")
    assert manifest.case_digest("doe_john_chest ") != manifest.case_digest("doe_john_chest")
    older = {"train_case_ids": ["a", "b"]}
    assert manifest.training_case_digests(older) == {manifest.case_digest("a"),
                                                     manifest.case_digest("b")}
    assert manifest.training_case_digests({"train_case_digests": ["sha256:1"]}) == {"sha256:1"}
    assert manifest.training_case_digests({}) is None
    seen = {manifest.case_digest("a"), manifest.case_digest("c")}
    assert manifest.cases_among(["c", "b", "a", "a"], seen) == ["a", "c"]


def test_the_licence_line_cites_only_terms_it_knows():
    assert "CC BY 3.0" in model_card._data_terms("luna16")
    for dataset in ("generic", "dicom", "gsp"):
        text = model_card._data_terms(dataset)
        assert "LUNA16" not in text and dataset in text, text
