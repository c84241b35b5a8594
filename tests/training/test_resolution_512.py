"""512^3 end to end through the commands a user runs: convert --size=512, train at
--img_size=512, export, sample a whole 512^3 NIfTI with the records' spacing. Tiny widths;
slow tier (a few minutes and up to about 8 GiB per model on 2 cores)."""

import json
import os
import subprocess
import sys

import pytest
import SimpleITK as sitk

from crfgan_tf.data import phantom
from conftest import REPO, TINY


def _run(*args):
    res = subprocess.run([sys.executable, "-m", *args], cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
                         timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def records_512(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive512")
    phantom.make_luna_archive(str(root / "scans"), 2, TINY, seed=10)
    out = str(root / "records")
    _run("data_prep.convert", "--dataset=luna16", f"--input_dir={root / 'scans'}",
         f"--output_dir={out}", "--size=512", "--num_shards=1", "--val_fraction=0",
         "--workers=1")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model,factor", [("crfgan", 4), ("hagan", 4), ("crfgan", 8)])
def test_train_export_sample_at_512(records_512, tmp_path, model, factor):
    with open(os.path.join(records_512, "manifest.json")) as f:
        spacings = {tuple(c["output_spacing"]) for c in json.load(f)["cases"].values()}
    assert len(spacings) == 1  # the phantoms share one field of view
    spacing_zyx = spacings.pop()
    assert spacing_zyx[1] == spacing_zyx[2] == TINY.in_plane * TINY.spacing_zyx[1] / 512

    run, export, samples = (str(tmp_path / d) for d in ("run", "export", "samples"))
    res = _run("crfgan_tf.train", f"--model={model}", f"--model_dir={run}",
               f"--train_records={records_512}/train-*.tfrecord", "--img_size=512",
               "--batch_size=1", "--latent_dim=16", "--width=0.0625", "--train_steps=1",
               "--log_every=1", "--checkpoint_every=1", "--image_every=100",
               f"--embedding_factor={factor}")
    assert f"train: {model} 512^3, batch 1" in res.stderr
    assert "train: finished at step 1" in res.stderr
    with open(os.path.join(run, "config.json")) as f:
        assert json.load(f)["embedding_factor"] == factor
    _run("crfgan_tf.export", f"--model_dir={run}", f"--export_dir={export}")
    _run("crfgan_tf.sample", f"--saved_model={export}", f"--output_dir={samples}",
         "--num_samples=1")
    image = sitk.ReadImage(os.path.join(samples, "sample_seed0_00000.nii.gz"))
    assert image.GetSize() == (512, 512, 512)
    assert image.GetSpacing() == pytest.approx(tuple(reversed(spacing_zyx)), rel=1e-6)
    array = sitk.GetArrayViewFromImage(image)
    assert array.dtype.name == "int16" and array.min() < array.max()  # not a blank volume
