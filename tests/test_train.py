import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from crfgan_tf import data, train_lib
from crfgan_tf.model import CRFGAN

from conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_glob(records):
    return os.path.join(records, "train-*.tfrecord")


def test_pipeline_shapes_alignment_and_resume_determinism(records_64):
    pattern = _train_glob(records_64)
    tf.random.set_seed(0)  # the stream must not depend on the global seed
    ds = data.make_train_dataset(pattern, 64, batch_size=2, latent_dim=16, seed=5)
    batches = list(ds.take(5))  # 10 elements over 4 records: crosses epochs
    b = batches[0]
    assert b["volume"].shape == (2, 64, 64, 64, 1) and b["crop"].shape == (2, 8, 64, 64, 1)
    assert b["z_d"].shape == (2, 16) and b["position"].dtype == tf.int32
    for batch in batches:
        for i in range(2):
            r = int(batch["position"][i])
            assert r % 4 == 0 and 0 <= r <= 56
            np.testing.assert_array_equal(batch["crop"][i], batch["volume"][i, r:r + 8])
    # every epoch visits each of the 4 records once
    sums = [float(tf.reduce_sum(v)) for bb in batches[:2] for v in bb["volume"]]
    assert len(set(np.round(sums, 3))) == 4
    resumed = list(data.make_train_dataset(pattern, 64, 2, 16, seed=5, start_step=3).take(2))
    for a, c in zip(batches[3:], resumed):
        for k in a:
            np.testing.assert_array_equal(a[k], c[k])
    other = next(iter(data.make_train_dataset(pattern, 64, 2, 16, seed=6)))
    assert not np.array_equal(other["z_g"], b["z_g"])


def _weights(model):
    return [v.numpy() for v in model.weights]


def test_resume_continues_identically(records_64, tmp_path):
    pattern = _train_glob(records_64)
    straight = train_lib.train(tiny_config(tmp_path / "a", pattern, train_steps=3,
                                           checkpoint_every=1))
    state = json.load(open(tmp_path / "a" / "trainer_state.json"))
    assert state["step"] == 3 and os.path.exists(tmp_path / "a" / "config.json")
    train_lib.train(tiny_config(tmp_path / "b", pattern, train_steps=1, checkpoint_every=1))
    resumed = train_lib.train(tiny_config(tmp_path / "b", pattern, train_steps=3,
                                          checkpoint_every=1))
    assert resumed["step"] == 3
    for x, y in zip(_weights(straight["model"]), _weights(resumed["model"])):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert straight["metrics"]["d_loss"] == pytest.approx(resumed["metrics"]["d_loss"], rel=1e-5)
    # a finished run does nothing and leaves the weights as they are
    files = {f: os.path.getmtime(f) for f in glob.glob(str(tmp_path / "b" / "checkpoints" / "*"))}
    again = train_lib.train(tiny_config(tmp_path / "b", pattern, train_steps=3))
    assert again["step"] == 3 and again["metrics"] == {}
    for x, y in zip(_weights(resumed["model"]), _weights(again["model"])):
        np.testing.assert_array_equal(x, y)
    assert files == {f: os.path.getmtime(f)
                     for f in glob.glob(str(tmp_path / "b" / "checkpoints" / "*"))}
    # TensorBoard scalars and images were written
    events = glob.glob(str(tmp_path / "a" / "train" / "events.out.tfevents.*"))
    tags = set()
    for ev in tf.compat.v1.train.summary_iterator(events[0]):
        tags |= {v.tag for v in ev.summary.value}
    assert {"d_loss", "g_loss", "crf_loss", "rec_loss", "crf_weight", "iterations_per_sec",
            "peak_memory_bytes", "generated_volume/axial", "real_crop/coronal"} <= tags


def test_unreadable_latest_checkpoint_falls_back(records_64, tmp_path):
    pattern = _train_glob(records_64)
    train_lib.train(tiny_config(tmp_path, pattern, train_steps=2, checkpoint_every=1))
    for f in glob.glob(str(tmp_path / "checkpoints" / "ckpt-2.data-*")):
        open(f, "wb").write(b"garbage")
    logs = []
    out = train_lib.train(tiny_config(tmp_path, pattern, train_steps=3, checkpoint_every=1),
                          log=logs.append)
    assert any("ckpt-2" in m and "unreadable" in m for m in logs)
    assert any("resumed from" in m and "ckpt-1" in m for m in logs)
    assert out["step"] == 3


def test_non_finite_loss_stops_and_keeps_last_checkpoint(records_64, tmp_path, monkeypatch):
    pattern = _train_glob(records_64)
    train_lib.train(tiny_config(tmp_path, pattern, train_steps=1, checkpoint_every=1))
    real_rec_step = CRFGAN.rec_step

    def nan_rec_step(self, crop):
        out = real_rec_step(self, crop)
        return {"rec_loss": out["rec_loss"] * float("nan")}

    monkeypatch.setattr(CRFGAN, "rec_step", nan_rec_step)
    with pytest.raises(train_lib.NonFiniteLossError, match="step 2 .*reconstruction"):
        train_lib.train(tiny_config(tmp_path, pattern, train_steps=3, checkpoint_every=1))
    ckpts = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "checkpoints" / "*.index")))
    assert ckpts == ["ckpt-1.index"]
    assert json.load(open(tmp_path / "trainer_state.json"))["step"] == 1


def _cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "crfgan_tf.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("flag,match", [
    ("--img_size=100", "--img_size"), ("--batch_size=0", "--batch_size"),
    ("--mixed_precision=float8", "--mixed_precision"), ("--profile_steps=5", "--profile_steps"),
    ("--crf_nodes=voxels", "--crf_nodes"),
])
def test_cli_rejects_invalid_flags_before_work(tmp_path, flag, match):
    res = _cli(f"--model_dir={tmp_path}/run", flag)
    assert res.returncode != 0 and match in res.stderr
    assert not os.path.exists(tmp_path / "run")


def test_cli_dry_run_prints_config(tmp_path):
    res = _cli(f"--model_dir={tmp_path}/run", "--flagfile=configs/luna.flags", "--dry_run")
    assert res.returncode == 0, res.stderr
    cfg = json.loads(res.stdout)
    assert cfg["img_size"] == 256 and cfg["lr_d"] == 4e-4 and cfg["beta_1"] == 0.0
    assert not os.path.exists(tmp_path / "run")
    res = _cli(f"--model_dir={tmp_path}/run", "--model=hagan", "--img_size=64", "--dry_run")
    assert res.returncode == 2 and "--model=hagan" in res.stderr


def test_demo_flagfile_end_to_end(tmp_path):
    work = tmp_path / "demo"
    res = _cli("--flagfile=configs/demo.flags", f"--demo_data_dir={work}",
               f"--train_records={work}/records_64/train-*.tfrecord", f"--model_dir={work}/model",
               "--train_steps=2", "--log_every=1", "--checkpoint_every=2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "12 scans found" in res.stderr and "step 2/2" in res.stderr
    state = json.load(open(work / "model" / "trainer_state.json"))
    assert state["step"] == 2
    assert os.path.exists(work / "model" / "flags.txt")
    assert json.load(open(work / "model" / "config.json"))["width"] == 0.125


MIRRORED_SCRIPT = r"""
import json, sys
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, "tests")
from conftest import tiny_batch, tiny_config
from crfgan_tf import train_lib
import keras

model_name, size = sys.argv[1], int(sys.argv[2])
batch = tiny_batch(img_size=size, batch=2)
results = {}
for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                       ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = train_lib.build_model(tiny_config("/tmp/unused", model=model_name,
                                                  img_size=size))
    if name == "one":
        init = [v.numpy() for v in model.weights]
    else:
        for v, w in zip(model.weights, init):
            v.assign(w)
    dataset = tf.data.Dataset.from_tensors(batch)
    dist = iter(strategy.experimental_distribute_dataset(dataset))
    @tf.function
    def step(b):
        out = strategy.run(model.train_step, args=(b,))
        return {k: strategy.reduce("MEAN" if k == "crf_weight" else "SUM", v, axis=None)
                for k, v in out.items()}
    out = step(next(dist))
    results[name] = {"losses": {k: float(v) for k, v in out.items()},
                     "replicas": strategy.num_replicas_in_sync,
                     "weights": [float(np.abs(v.numpy()).sum()) for v in model.trainable_weights]}
print(json.dumps(results))
"""


@pytest.mark.parametrize("model,size", [
    ("crfgan", 64), pytest.param("hagan", 128, marks=pytest.mark.slow)])
def test_two_replica_mirrored_equals_one_device(model, size):
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, model, str(size)], cwd=REPO,
                         env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["one"]["replicas"] == 1 and out["two"]["replicas"] == 2
    for k, v in out["one"]["losses"].items():
        assert out["two"]["losses"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    one, two = np.array(out["one"]["weights"]), np.array(out["two"]["weights"])
    # atol: conv biases ahead of GroupNorm get gradients of pure rounding noise, which
    # Adam turns into steps of up to lr (1e-4) in either direction.
    bad = np.flatnonzero(~np.isclose(two, one, rtol=1e-4, atol=1e-4))
    assert bad.size == 0, (bad, one[bad], two[bad])


@pytest.mark.parametrize("flagfile,model", [("configs/luna.flags", "crfgan"),
                                            ("configs/gsp.flags", "crfgan"),
                                            ("configs/luna_hagan.flags", "hagan")])
def test_shipped_flagfiles_resolve(tmp_path, flagfile, model):
    res = _cli(f"--flagfile={flagfile}", f"--model_dir={tmp_path}/run", "--dry_run")
    assert res.returncode == 0, res.stderr
    cfg = json.loads(res.stdout)
    assert cfg["model"] == model and cfg["img_size"] == 256 and cfg["train_steps"] == 80000
    # the reference code's training semantics (README, "Reference semantics and deviations")
    assert (cfg["adam"], cfg["crf_sample"], cfg["hagan_low_res"], cfg["lr_crf"]) == \
        ("pytorch", "fresh", "nearest", 4e-4)


def test_no_readable_checkpoint_stops_and_leaves_the_files(tmp_path):
    """Every checkpoint unreadable (e.g. another layout): stop with a message, never start
    over silently, and leave the files as they were."""
    old = tf.train.Checkpoint(w=tf.Variable(tf.zeros(3)))  # written with shape (3,)
    manager = tf.train.CheckpointManager(old, str(tmp_path), max_to_keep=2)
    path = manager.save()
    new = tf.train.Checkpoint(w=tf.Variable(tf.zeros(4)))  # the current "network": (4,)
    before = sorted(os.listdir(tmp_path))
    logs = []
    with pytest.raises(RuntimeError, match="no readable checkpoint .*another layout"):
        train_lib.restore_latest(new, tf.train.CheckpointManager(new, str(tmp_path), 2),
                                 log=logs.append)
    assert any(path in m and "unreadable" in m for m in logs)
    assert sorted(os.listdir(tmp_path)) == before
