"""The package layout's contracts: nothing happens at import, the facts have one owner,
the commands and the console scripts agree, G2's checkpoint layout is unchanged."""

import ast
import os
import subprocess
import sys

import numpy as np
import pytest

from crfgan_tf import geometry
from conftest import REPO



def _python(code, env=None):
    full = dict(os.environ, **(env or {}))
    for key in ("TF_ENABLE_ONEDNN_OPTS", "TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "CRFGAN_LEAN_CPU_MEMORY"):
        if key not in (env or {}):
            full.pop(key, None)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=full, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def test_importing_the_package_changes_nothing_configure_does():
    code = ("import os, crfgan_tf, crfgan_tf.train_lib; before = dict(os.environ); "
            "from crfgan_tf import runtime; runtime.configure(load_tensorflow=False); "
            "print(before.get('TF_ENABLE_ONEDNN_OPTS'), os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    assert _python(code) == "None 1"
    # an explicit choice wins
    assert _python(code, {"TF_ENABLE_ONEDNN_OPTS": "0"}) == "0 0"


def test_the_tests_run_tensorflow_as_the_commands_do():
    """Every command calls runtime.configure() before TensorFlow loads (oneDNN kernels);
    the in-process tests must run the same kernels, not TensorFlow's default Eigen ones
    (which no user runs, 1.5-3x slower here): conftest configures the test process."""
    import tensorflow  # noqa: F401  (loaded as the tests load it)
    from tensorflow.python.util import _pywrap_util_port

    assert os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1"
    assert _pywrap_util_port.IsMklEnabled()


def test_geometry_pins_the_training_layout():
    assert geometry.SIZES == (64, 128, 256, 512) and geometry.HAGAN_SIZES == (128, 256, 512)
    assert [geometry.crop_depth(s) for s in geometry.SIZES] == [8, 16, 32, 64]
    assert [geometry.slab_depth(s) for s in geometry.SIZES] == [2, 4, 8, 16]
    assert [geometry.embedding_side(s) for s in geometry.SIZES] == [16, 32, 64, 128]
    assert [geometry.num_positions(s) for s in geometry.SIZES] == [15, 29, 57, 113]
    assert [geometry.extra_stages(s) for s in geometry.SIZES] == [-2, -1, 0, 1]
    assert geometry.position(geometry.num_positions(256) - 1) == geometry.max_position(256) == 224
    assert geometry.position(geometry.num_positions(512) - 1) == geometry.max_position(512) == 448
    assert geometry.normalized_position(224, 256) == 1.0
    assert list(geometry.crop_starts(64)) == [0, 8, 16, 24, 32, 40, 48, 56]
    assert list(geometry.crop_starts(512)) == list(range(0, 512, 64))
    with pytest.raises(ValueError, match="--img_size must be one of 64, 128, 256, 512"):
        geometry.check_size(96)
    with pytest.raises(ValueError, match="--model=hagan needs --img_size 128, 256, 512"):
        geometry.check_size(64, "hagan")


def test_geometry_of_the_second_512_rule_embedding_factor_8():
    """--embedding_factor=8: a 64^3 embedding at 512, 8-slice slabs of the same 64-slice
    crops, crops at multiples of 8; refused by name at other sizes and for HA-GAN."""
    assert geometry.embedding_side(512, 8) == 64 and geometry.slab_depth(512, 8) == 8
    assert geometry.crop_depth(512) == 64 and geometry.num_positions(512, 8) == 57
    assert geometry.position(56, 8) == geometry.max_position(512) == 448
    assert [geometry.factor_stages(f) for f in (4, 8)] == [2, 3]
    for size in geometry.SIZES:
        geometry.check_factor(size, 4)
        geometry.check_factor(size, 4, "hagan")
    geometry.check_factor(512, 8)
    with pytest.raises(ValueError, match="--embedding_factor=8 needs --img_size 512, got 256"):
        geometry.check_factor(256, 8)
    with pytest.raises(ValueError, match="--embedding_factor=8 is defined for --model=crfgan"):
        geometry.check_factor(512, 8, "hagan")
    with pytest.raises(ValueError, match="--embedding_factor must be one of 4, 8, got 2"):
        geometry.check_factor(512, 2)


def test_console_scripts_are_the_cli_modules():
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    commands = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                    and getattr(n.targets[0], "id", "") == "COMMANDS")
    modules = {f[:-3] for f in os.listdir(os.path.join(REPO, "crfgan_tf", "cli"))
               if f.endswith(".py") and f != "__init__.py"}
    assert sorted(commands) == sorted(modules)
    shims = {f"{d}.{f[:-3]}" for d in ("tools", "data_prep")
             for f in os.listdir(os.path.join(REPO, d)) if f.endswith(".py") and f != "__init__.py"}
    shims |= {f"crfgan_tf.{n}" for n in ("train", "export", "sample")}
    assert sorted(s.split(".")[-1] for s in shims) == sorted(modules)


def test_record_schema_table_is_the_data_guide_table():
    from crfgan_tf.data import records

    with open(os.path.join(REPO, "docs", "data.md"), encoding="utf-8") as f:
        assert records.schema_table() in f.read()


def test_head_checkpoint_layout_is_the_functional_one(tmp_path):
    """G2 is a Head (with by_slabs) but its checkpoint keys are those of the plain
    functional model every earlier run wrote, both ways."""
    import keras
    import tensorflow as tf

    from crfgan_tf.networks import build_head
    from crfgan_tf.networks.generator import Head

    head = build_head(64, 0.25)
    assert isinstance(head, Head)
    # the plain functional G2 with the same layers, as crfgan-tf built it before
    plain = keras.Model(head.inputs, head.outputs)
    path = tf.train.Checkpoint(generator_head=plain).write(str(tmp_path / "old"))
    keys = sorted(k for k, _ in tf.train.list_variables(path) if "generator_head" in k)
    new_path = tf.train.Checkpoint(generator_head=head).write(str(tmp_path / "new"))
    assert sorted(k for k, _ in tf.train.list_variables(new_path) if "generator_head" in k) == keys
    fresh = build_head(64, 0.25)
    tf.train.Checkpoint(generator_head=fresh).read(path).assert_existing_objects_matched()
    emb = tf.random.stateless_uniform((1, 4, 16, 16, 16), seed=[1, 2])
    np.testing.assert_array_equal(fresh(emb).numpy(), head(emb).numpy())


def test_export_reads_the_data_metadata_training_wrote_not_the_records(records_64, tmp_path):
    """train writes data.json (window, modality, spacing) into the run directory; export
    takes them from there, so a run whose records moved keeps its window; a run without
    data.json and without records gets the CT defaults with a warning."""
    import json
    import shutil

    from conftest import tiny_config

    from crfgan_tf import export_lib, rundir, train_lib

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
    assert meta["metadata_source"].endswith(rundir.DATA_FILE)
    os.remove(run / rundir.DATA_FILE)
    lines = []
    meta = export_lib.export(str(run), str(tmp_path / "sm2"), log=lines.append)
    assert meta["window"] == [-1024.0, 600.0] and meta["metadata_source"] == "defaults"
    assert any("WARNING" in m and rundir.DATA_FILE in m for m in lines)
    assert json.loads(open(run / rundir.CONFIG_FILE).read())["img_size"] == 64
