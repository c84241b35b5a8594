"""The weights package (crfgan_tf/generation/package.py) keeps the whole architecture: a
run with `--head_width` exported as a package samples what its SavedModel samples, and a
package written before the field existed reads as the default."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from crfgan_tf.generation import package


def _ok(module, *args):
    res = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.mark.slow
def test_a_wider_head_survives_export_and_the_package(records_64, tmp_path):
    run, export = tmp_path / "run", tmp_path / "export"
    _ok("crfgan_tf.train", f"--model_dir={run}", f"--train_records={records_64}/train-*.tfrecord",
        "--img_size=64", "--batch_size=2", "--train_steps=1", "--latent_dim=16",
        "--width=0.0625", "--head_width=0.5", "--checkpoint_every=1", "--image_every=100")
    _ok("crfgan_tf.export", f"--model_dir={run}", f"--export_dir={export}", "--step=latest")
    manifest = json.load(open(export / package.PACKAGE_FILE))
    assert manifest["architecture"]["head_width"] == 0.5
    assert json.load(open(export / "model_card.json"))["model"]["head_width"] == 0.5
    out = {}
    for name, flags in (("package", [f"--saved_model={export}"]),
                        ("savedmodel", [f"--saved_model={export}"])):
        if name == "savedmodel":  # the same export read as a SavedModel alone
            sm = tmp_path / "sm"
            _ok("crfgan_tf.export", f"--model_dir={run}", f"--export_dir={sm}",
                "--step=latest", "--format=savedmodel")
            flags = [f"--saved_model={sm}"]
        else:
            pkg = tmp_path / "pkg"
            _ok("crfgan_tf.export", f"--model_dir={run}", f"--export_dir={pkg}",
                "--step=latest", "--format=weights")
            flags = [f"--saved_model={pkg}"]
        _ok("crfgan_tf.sample", *flags, "--num_samples=1", f"--output_dir={tmp_path / name}",
            "--format=npy", "--seed=4")
        out[name] = np.load(tmp_path / name / "sample_seed4_00000.npy")
    assert out["package"].shape == (64, 64, 64)
    assert np.abs(out["package"].astype(int) - out["savedmodel"].astype(int)).max() <= 1


def test_a_package_from_before_head_width_reads_as_the_default():
    manifest = {"architecture": {"model": "crfgan", "img_size": 64, "embedding_factor": 4,
                                 "latent_dim": 16, "width": 0.0625, "num_classes": 0}}
    assert package.config_of(manifest).head_width == 0.0
