"""On-disk formats do not change: a run directory and a SavedModel written by the code of
an earlier release (tests/fixtures/v0/, made by tests/support/format_fixtures.py at
967e0fe, before the package was regrouped by concern) resume and sample with today's
commands."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np

from conftest import REPO
from crfgan_tf.run.config import TrainConfig

from support import format_fixtures

FIXTURES = os.path.join(REPO, "tests", "fixtures", "v0")


def _command(cwd, module, *args):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_run_directory_of_v0_resumes_with_its_own_flagfile(tmp_path):
    shutil.copytree(os.path.join(FIXTURES, "run"), tmp_path / "run")
    format_fixtures.make_records(str(tmp_path))
    before = json.load(open(tmp_path / "run" / "config.json"))
    res = _command(tmp_path, "crfgan_tf.train", "--flagfile=run/flags.txt", "--train_steps=3",
                   "--checkpoint_every=1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming" in res.stderr and "--train_steps 2 -> 3" in res.stderr
    after = json.load(open(tmp_path / "run" / "config.json"))
    assert {k for k in before if after[k] != before[k]} == {"train_steps", "checkpoint_every"}
    # fields added since v0 are written with their defaults, which is what the run used
    defaults = json.loads(TrainConfig(model_dir="x").to_json())
    assert {k: after[k] for k in after if k not in before} == \
        {k: defaults[k] for k in after if k not in before}
    state = json.load(open(tmp_path / "run" / "trainer_state.json"))
    assert state["step"] == 3

    import tensorflow as tf

    old = tf.train.load_checkpoint(os.path.join(FIXTURES, "run", "checkpoints", "ckpt-2"))
    new = tf.train.load_checkpoint(str(tmp_path / "run" / "checkpoints" / "ckpt-3"))
    old_keys, new_keys = old.get_variable_to_shape_map(), new.get_variable_to_shape_map()
    assert old_keys == new_keys and len(old_keys) > 100


def test_a_savedmodel_of_v0_samples_the_same_volume(tmp_path):
    res = _command(REPO, "crfgan_tf.sample", f"--saved_model={FIXTURES}/export",
                   "--num_samples=1", "--seed=0", f"--output_dir={tmp_path}", "--format=npy")
    assert res.returncode == 0, res.stderr[-3000:]
    [name] = [f for f in os.listdir(tmp_path) if f.endswith(".npy")]
    volume = np.load(tmp_path / name)
    assert volume.shape == (64, 64, 64)
    np.testing.assert_allclose(volume[::8, ::8, ::8],
                               np.load(os.path.join(FIXTURES, "expected_sample.npy")), atol=1e-5)
