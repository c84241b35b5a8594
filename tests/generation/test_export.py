import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import tensorflow as tf

from crfgan_tf.core import intensity
from crfgan_tf.generation import export as export_lib
from crfgan_tf.generation import sample as sample_lib
from crfgan_tf.networks import build_head
from conftest import REPO



@pytest.mark.parametrize("slab", [1, 3, 16])
def test_slab_inference_equals_one_shot(slab):
    head = build_head(64, width=0.125)
    for v in head.weights:  # GroupNorm gamma/beta away from 1/0 so that statistics matter
        v.assign(tf.random.stateless_normal(v.shape, seed=[1, v.shape.num_elements()]) * 0.3
                 + (1.0 if "gamma" in v.path else 0.0))
    emb = tf.random.stateless_uniform((2, 16, 16, 16, 8), seed=[2, 3])
    one_shot = head(emb)[..., 0].numpy()
    np.testing.assert_allclose(head.by_slabs(emb, slab).numpy(), one_shot,
                               atol=5e-5)


def test_export_load_generate_equals_in_memory_model(trained_run, tmp_path):
    run, model = trained_run
    meta = export_lib.export(run, str(tmp_path / "sm"), slab=4, log=lambda m: None)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))  # no custom objects needed
    z = tf.random.stateless_normal((2, 16), seed=[4, 5])
    got = loaded.signatures["generate"](z=z)["volume"].numpy()
    want = model.generate(z)[..., 0].numpy()
    assert got.shape == (2, 64, 64, 64)
    np.testing.assert_allclose(got, want, atol=5e-5)
    assert int(loaded.latent_dim.numpy()) == 16 and int(loaded.img_size.numpy()) == 64
    np.testing.assert_allclose(loaded.window.numpy(), [-1024, 600])
    assert meta["modality"] == "ct" and len(meta["output_spacing"]) == 3
    np.testing.assert_allclose(loaded.output_spacing.numpy(), meta["output_spacing"], rtol=1e-6)


def test_export_errors(tmp_path, trained_run):
    with pytest.raises(FileNotFoundError, match="config.json"):
        export_lib.export(str(tmp_path), str(tmp_path / "x"), log=lambda m: None)
    with pytest.raises(FileNotFoundError, match="step 99"):
        export_lib.export(trained_run[0], str(tmp_path / "x"), step=99, log=lambda m: None)


@pytest.mark.parametrize("fmt", ["nii.gz", "mha", "nrrd"])
def test_sample_writes_geometry_and_hu(exported, tmp_path, fmt):
    sm, meta = exported
    paths = sample_lib.sample(sm, 3, seed=7, output_dir=str(tmp_path / "out"), fmt=fmt,
                              batch_size=2, log=lambda m: None)
    assert len(paths) == 3
    image = sitk.ReadImage(paths[0])
    array = sitk.GetArrayFromImage(image)
    assert array.shape == (64, 64, 64) and array.dtype == np.int16
    assert array.min() >= -1024 and array.max() <= 600
    np.testing.assert_allclose(image.GetSpacing(), list(reversed(meta["output_spacing"])), rtol=1e-5)
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    png = paths[0].replace(sample_lib.FORMATS[fmt], ".png")
    assert tf.io.decode_png(tf.io.read_file(png)).shape == (64, 192, 1)
    # deterministic for a seed; another batch size changes only float rounding (<= 1 HU)
    again = sample_lib.sample(sm, 3, seed=7, output_dir=str(tmp_path / "again"), fmt=fmt,
                              batch_size=2, log=lambda m: None)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(again[0])), array)
    single = sample_lib.sample(sm, 1, seed=7, output_dir=str(tmp_path / "single"), fmt=fmt,
                               batch_size=1, log=lambda m: None)
    diff = sitk.GetArrayFromImage(sitk.ReadImage(single[0])).astype(int) - array
    assert np.abs(diff).max() <= 1


def test_sample_npy_and_hu_mapping(exported, tmp_path):
    sm, _ = exported
    path = sample_lib.sample(sm, 1, 0, str(tmp_path / "o"), fmt="npy", log=lambda m: None)[0]
    assert np.load(path).dtype == np.int16 and os.path.exists(path[:-4] + ".json")
    np.testing.assert_array_equal(intensity.from_unit(np.array([-1.0, 0.0, 1.0]), (-1024, 600)),
                                  [-1024, -212, 600])


def test_sample_cli_errors(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    run = lambda *a: subprocess.run([sys.executable, "-m", "crfgan_tf.sample", *a], cwd=REPO,
                                    env=env, capture_output=True, text=True, timeout=300)
    res = run(f"--saved_model={tmp_path}/none", f"--output_dir={tmp_path}/o")
    assert res.returncode == 2 and "no export at" in res.stderr and "saved_model.pb" in res.stderr
    res = run(f"--saved_model={tmp_path}", f"--output_dir={tmp_path}/o", "--format=jpeg")
    assert res.returncode != 0 and "--format" in res.stderr
    other = tf.Module()
    other.v = tf.Variable(1.0)
    tf.saved_model.save(other, str(tmp_path / "other"))
    res = run(f"--saved_model={tmp_path}/other", f"--output_dir={tmp_path}/o")
    assert res.returncode == 2 and "not a crfgan-tf generator" in res.stderr


@pytest.mark.slow
def test_export_reads_the_data_metadata_training_wrote_not_the_records(records_64, tmp_path):
    """train writes data.json (window, modality, spacing) into the run directory; export
    takes them from there, so a run whose records moved keeps its window; a run without
    data.json and without records gets the CT defaults with a warning."""
    import json
    import shutil

    from conftest import tiny_config

    from crfgan_tf.generation import export as export_lib
    from crfgan_tf.run import rundir
    from crfgan_tf.training import loop as train_lib

    records = str(tmp_path / "records")
    shutil.copytree(records_64, records)
    run = tmp_path / "run"
    train_lib.train(tiny_config(run, os.path.join(records, "train-*.tfrecord"), train_steps=1,
                                checkpoint_every=1), log=lambda m: None)
    data = rundir.read_data_metadata(str(run))
    assert data["window"] == [-1024.0, 600.0] and data["modality"] == "ct"
    data.update(window=[0.0, 812.5], modality="mri")  # as an MRI run's records would give
    rundir.write_data_metadata(str(run), data)
    shutil.rmtree(records)  # the records moved away
    meta = export_lib.export(str(run), str(tmp_path / "sm"), log=lambda m: None)
    assert meta["window"] == [0.0, 812.5] and meta["modality"] == "mri"
    assert meta["metadata_source"] == rundir.DATA_FILE  # in the run, named as the run does
    os.remove(run / rundir.DATA_FILE)
    lines = []
    meta = export_lib.export(str(run), str(tmp_path / "sm2"), log=lines.append)
    assert meta["window"] == [-1024.0, 600.0] and meta["metadata_source"] == "defaults"
    assert any("WARNING" in m and rundir.DATA_FILE in m for m in lines)
    assert json.loads(open(run / rundir.CONFIG_FILE).read())["img_size"] == 64


def test_export_takes_the_best_step_and_gs_moving_average_by_default(records_64, tmp_path):
    """A run with `ema_decay` and in-training evaluation: crfgan-export with no --step
    exports the best step's moving average (says so, and the card names the step);
    --step=latest --noema the last step's trained weights."""
    import json

    from conftest import tiny_config

    from crfgan_tf.training import loop as train_lib

    run = tmp_path / "run"
    result = train_lib.train(tiny_config(
        run, os.path.join(records_64, "train-*.tfrecord"), train_steps=2, checkpoint_every=1,
        ema_decay=0.9, eval_every=1, eval_samples=2, eval_feature_side=32,
        eval_records=os.path.join(records_64, "*.tfrecord"), best_metric="coverage"),
        log=lambda m: None)
    model = result["model"]
    best = json.load(open(run / "best.json"))
    assert best["metric"] == "coverage" and best["step"] in (1, 2) and "fd" in best

    def export(*flags):
        res = subprocess.run([sys.executable, "-m", "crfgan_tf.export", f"--model_dir={run}",
                              *flags], cwd=REPO, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return res.stderr

    log = export(f"--export_dir={tmp_path / 'ex'}", "--noquality_ranges", "--format=weights")
    assert f"the run's best step by its evaluation, {best['step']}" in log
    card = json.load(open(tmp_path / "ex" / "model_card.json"))
    meta = json.load(open(tmp_path / "ex" / "package.json"))
    assert meta["metadata"]["generator_weights"] == "moving average"
    assert meta["metadata"]["checkpoint"].endswith(f"best/ckpt-{best['step']}")
    assert "Best coverage" in open(tmp_path / "ex" / "MODEL_CARD.md").read()
    assert card

    # --step=latest --noema, as the command passes them (the library's rule is the command's)
    assert export_lib.default_step(str(run), None, log=lambda m: None) == "best"
    assert export_lib.default_step(str(run), "latest") is None
    export_lib.export(str(run), str(tmp_path / "last"), "latest", fmt="weights", ema=False,
                      log=lambda m: None)
    loaded, _ = sample_lib.load(str(tmp_path / "last"))
    z = tf.random.stateless_normal((1, 16), seed=[4, 5])
    got = loaded.generate(z=z)["volume"].numpy()
    np.testing.assert_allclose(got, model.generate(z)[..., 0].numpy(), atol=5e-5)
    # the moving average is another generator (decay 2/11 and 3/12 after steps 1 and 2)
    trunk, head = model.generation_networks()
    assert np.abs(head(trunk(z)).numpy()[..., 0] - got).max() > 1e-4
