import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from crfgan_tf.core import intensity
from crfgan_tf.data import pipeline
from crfgan_tf.models import CRFGAN
from crfgan_tf.run import rundir
from crfgan_tf.training import loop as train_lib
from crfgan_tf.training import checkpointing

from conftest import REPO, tiny_config



def _train_glob(records):
    return os.path.join(records, "train-*.tfrecord")


def _copy_run(run, into):
    """A copy of a session's run directory, to be resumed under another --model_dir (which
    may change on a resume): the start these tests share, trained once per session."""
    shutil.copytree(run, into, dirs_exist_ok=True)
    return into


@pytest.fixture(scope="session")
def two_step_run(records_64, tmp_path_factory):
    """conftest.tiny_config trained 2 steps, a checkpoint at each."""
    run = tmp_path_factory.mktemp("two_steps")
    train_lib.train(tiny_config(run, _train_glob(records_64), train_steps=2, checkpoint_every=1))
    return str(run)


def test_pipeline_shapes_alignment_and_resume_determinism(records_64):
    pattern = _train_glob(records_64)
    tf.random.set_seed(0)  # the stream must not depend on the global seed
    ds = pipeline.make_train_dataset(pattern, 64, batch_size=2, latent_dim=16, seed=5)
    batches = list(ds.take(5))  # 10 elements over 4 records: crosses epochs
    b = batches[0]
    assert b["volume"].shape == (2, 64, 64, 64, 1) and b["crop"].shape == (2, 8, 64, 64, 1)
    # the whole volume stays int16 as stored (a 512^3 one is 256 MiB, not 512); only the
    # crop is float32, the dequantised slice
    assert b["volume"].dtype == tf.int16 and b["crop"].dtype == tf.float32
    assert b["z_d"].shape == (2, 16) and b["position"].dtype == tf.int32
    for batch in batches:
        for i in range(2):
            r = int(batch["position"][i])
            assert r % 4 == 0 and 0 <= r <= 56
            np.testing.assert_array_equal(
                batch["crop"][i], intensity.dequantize(batch["volume"][i, r:r + 8].numpy()
                                                       .astype(np.float32)))
    # every epoch visits each of the 4 records once
    sums = [float(tf.reduce_sum(v)) for bb in batches[:2] for v in bb["volume"]]
    assert len(set(np.round(sums, 3))) == 4
    resumed = list(pipeline.make_train_dataset(pattern, 64, 2, 16, seed=5, start_step=3).take(2))
    for a, c in zip(batches[3:], resumed):
        for k in a:
            np.testing.assert_array_equal(a[k], c[k])
    other = next(iter(pipeline.make_train_dataset(pattern, 64, 2, 16, seed=6)))
    assert not np.array_equal(other["z_g"], b["z_g"])


def _weights(model):
    return [v.numpy() for v in model.weights]


def test_resume_continues_identically(records_64, trained_run, tmp_path):
    pattern = _train_glob(records_64)
    straight = train_lib.train(tiny_config(tmp_path / "a", pattern, train_steps=3,
                                           checkpoint_every=1))
    state = json.load(open(tmp_path / "a" / "trainer_state.json"))
    assert state["step"] == 3 and os.path.exists(tmp_path / "a" / "config.json")
    _copy_run(trained_run[0], tmp_path / "b")  # this config, 1 step
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


@pytest.mark.slow
def test_unreadable_latest_checkpoint_falls_back(records_64, two_step_run, tmp_path):
    pattern = _train_glob(records_64)
    _copy_run(two_step_run, tmp_path)
    for f in glob.glob(str(tmp_path / "checkpoints" / "ckpt-2.data-*")):
        open(f, "wb").write(b"garbage")
    logs = []
    out = train_lib.train(tiny_config(tmp_path, pattern, train_steps=3, checkpoint_every=1),
                          log=logs.append)
    assert any("ckpt-2" in m and "unreadable" in m for m in logs)
    assert any("resumed from" in m and "ckpt-1" in m for m in logs)
    assert out["step"] == 3
    # moved aside in one line, not left for the next start to trip on
    assert [m for m in logs if "moved the unreadable checkpoint ckpt-2 to" in m]
    damaged = tmp_path / "checkpoints" / "damaged"
    assert sorted(os.listdir(damaged)) == ["ckpt-2.data-00000-of-00001", "ckpt-2.index"]
    assert open(damaged / "ckpt-2.data-00000-of-00001", "rb").read() == b"garbage"
    logs = []
    out = train_lib.train(tiny_config(tmp_path, pattern, train_steps=4, checkpoint_every=1),
                          log=logs.append)
    assert out["step"] == 4 and not any(m.startswith("WARNING") for m in logs), logs
    assert any("resumed from" in m and "ckpt-3" in m for m in logs)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(records_64, trained_run, tmp_path,
                                                         monkeypatch):
    pattern = _train_glob(records_64)
    _copy_run(trained_run[0], tmp_path)  # this test's config at step 1
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


def _cli(*args, timeout=600, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "crfgan_tf.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _converted_view(tmp_path, pattern, size):
    """tmp_path with the checkout's configs/ and the records `pattern` names (empty shards,
    the manifest's size): where a documented --dry_run finds what it checks."""
    from support.converted import checkout_view, converted

    checkout_view(tmp_path, REPO)
    converted(tmp_path, pattern, size)
    return tmp_path


@pytest.mark.parametrize("flag,match", [
    ("--img_size=100", "--img_size"), ("--batch_size=0", "--batch_size"),
    ("--mixed_precision=float8", "--mixed_precision"), ("--profile_steps=5", "--profile_steps"),
    ("--crf_nodes=voxels", "--crf_nodes"),
    ("--embedding_factor=8", "--embedding_factor=8 needs --img_size 512, got 256"),
])
def test_cli_rejects_invalid_flags_before_work(tmp_path, flag, match):
    res = _cli(f"--model_dir={tmp_path}/run", flag)
    assert res.returncode != 0 and match in res.stderr
    assert not os.path.exists(tmp_path / "run")


def test_cli_dry_run_prints_config(tmp_path):
    here = _converted_view(tmp_path, "data/luna16_256/*", 256)
    res = _cli(f"--model_dir={tmp_path}/run", "--flagfile=configs/luna.flags", "--dry_run",
               cwd=here)
    assert res.returncode == 0, res.stderr
    cfg = json.loads(res.stdout)
    assert cfg["img_size"] == 256 and cfg["lr_d"] == 4e-4 and cfg["beta_1"] == 0.0
    assert not os.path.exists(tmp_path / "run")
    res = _cli(f"--model_dir={tmp_path}/run", "--model=hagan", "--img_size=64", "--dry_run")
    assert res.returncode == 2 and "--model=hagan" in res.stderr


def test_embedding_factor_default_is_the_sizes_and_a_resumed_run_keeps_its_own(tmp_path):
    """0 (the flag's default) is 8 for CRF-GAN at 512 and 4 elsewhere; a run directory
    whose config.json predates the field (a 512^3 run trained with 4) resumes with 4."""
    from crfgan_tf.run import rundir
    from crfgan_tf.run.config import TrainConfig

    assert TrainConfig(model_dir="x", img_size=512).embedding_factor == 8
    assert TrainConfig(model_dir="x", img_size=512, model="hagan").embedding_factor == 4
    assert TrainConfig(model_dir="x", img_size=256).embedding_factor == 4
    old = tmp_path / "old512"
    old.mkdir()
    stored = json.loads(TrainConfig(model_dir=str(old), img_size=512).to_json())
    del stored["embedding_factor"]  # written before the field existed
    (old / "config.json").write_text(json.dumps(stored))
    assert rundir.read_config(str(old)).embedding_factor == 4
    here = _converted_view(tmp_path, "data/luna16_512/*", 512)
    for run, want in ((old, 4), (tmp_path / "new512", 8)):
        res = _cli(f"--model_dir={run}", "--img_size=512", "--dry_run",
                   "--train_records=data/luna16_512/train-*.tfrecord", cwd=here)
        assert res.returncode == 0, res.stderr[-2000:]
        assert json.loads(res.stdout)["embedding_factor"] == want


def test_the_library_applies_the_resume_rule_itself(tmp_path, monkeypatch):
    """run_training (not only the command) resumes a 512^3 run started with factor 4 with
    4 when the factor is left at the size's default; an explicit factor is kept."""
    from crfgan_tf.run import rundir
    from crfgan_tf.run.config import TrainConfig

    old = tmp_path / "old512"
    old.mkdir()
    (old / "config.json").write_text(TrainConfig(model_dir=str(old), img_size=512,
                                                 embedding_factor=4).to_json())
    assert rundir.resume_config(TrainConfig(model_dir=str(old), img_size=512)).embedding_factor == 4
    assert rundir.resume_config(TrainConfig(model_dir=str(old), img_size=512,
                                            embedding_factor=8)).embedding_factor == 8
    assert rundir.resume_config(TrainConfig(model_dir=str(tmp_path / "new"),
                                            img_size=512)).embedding_factor == 8
    seen = []

    def stop(config, replicas, log):  # the first step after the rules and validation
        seen.append(config.embedding_factor)
        raise RuntimeError("stop here")

    monkeypatch.setattr(train_lib, "_resolve_batch", stop)
    with pytest.raises(RuntimeError, match="stop here"):
        train_lib.train(TrainConfig(model_dir=str(old), img_size=512), log=lambda m: None)
    assert seen == [4]


@pytest.mark.slow
def test_demo_flagfile_end_to_end(tmp_path):
    work = tmp_path / "demo"
    res = _cli("--flagfile=configs/demo.flags", f"--demo_data_dir={work}",
               f"--train_records={work}/records_64/train-*.tfrecord",
               f"--eval_records={work}/records_64/*.tfrecord", f"--model_dir={work}/model",
               "--train_steps=2", "--log_every=1", "--checkpoint_every=2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "36 scans found" in res.stderr and "step 2/2" in res.stderr
    state = json.load(open(work / "model" / "trainer_state.json"))
    assert state["step"] == 2
    assert os.path.exists(work / "model" / "flags.txt")
    config = json.load(open(work / "model" / "config.json"))
    assert config["width"] == 0.125
    # configs/small_data.flags, nested in the demo's
    assert (config["r1_gamma"], config["ema_decay"], config["crf_decay_fraction"],
            config["rec_trains_head"], config["best_metric"]) == (10.0, 0.999, 0.75, True,
                                                                  "coverage")
    # the demo evaluates itself against all 36 phantoms: a baseline at step 0 and the last
    rows = [json.loads(line) for line in open(work / "model" / "eval.jsonl")]
    assert [r["step"] for r in rows] == [0, 2] and rows[0]["n_real"] == 36


@pytest.mark.parametrize("flagfile,model,run", [
    ("configs/luna.flags", "crfgan", "runs/luna256"), ("configs/gsp.flags", "crfgan", "runs/gsp256"),
    ("configs/luna_hagan.flags", "hagan", "runs/luna256_hagan")])
def test_shipped_flagfiles_resolve(tmp_path, flagfile, model, run):
    """The documented command works as written, where the documented conversion wrote its
    records: the flagfile names its run directory."""
    records = "data/gsp_256/*" if "gsp" in flagfile else "data/luna16_256/*"
    here = _converted_view(tmp_path, records, 256)
    res = _cli(f"--flagfile={flagfile}", "--dry_run", cwd=here)
    assert res.returncode == 0, res.stderr
    cfg = json.loads(res.stdout)
    assert cfg["model_dir"] == run
    res = _cli(f"--flagfile={flagfile}", f"--model_dir={tmp_path}/run", "--dry_run", cwd=here)
    assert res.returncode == 0, res.stderr
    cfg = json.loads(res.stdout)
    assert cfg["model_dir"] == f"{tmp_path}/run"
    assert cfg["model"] == model and cfg["img_size"] == 256 and cfg["train_steps"] == 80000
    # the reference code's training semantics (README, "Reference semantics and deviations")
    assert (cfg["adam"], cfg["crf_sample"], cfg["hagan_low_res"], cfg["lr_crf"]) == \
        ("pytorch", "fresh", "nearest", 4e-4)


def test_no_readable_checkpoint_stops_and_leaves_the_files(records_64, two_step_run, tmp_path):
    """Every checkpoint unreadable: stop with a message, never start over silently, and
    leave the files as they were."""
    pattern = _train_glob(records_64)
    _copy_run(two_step_run, tmp_path)
    for f in glob.glob(str(tmp_path / "checkpoints" / "ckpt-*.data-*")):
        open(f, "wb").write(b"garbage")
    before = {f: open(f, "rb").read() for f in glob.glob(str(tmp_path / "checkpoints" / "*"))}
    logs = []
    with pytest.raises(checkpointing.NoReadableCheckpointError, match="no readable checkpoint"):
        train_lib.train(tiny_config(tmp_path, pattern, train_steps=3), log=logs.append)
    assert sum("unreadable" in m for m in logs) == 2
    assert before == {f: open(f, "rb").read()
                      for f in glob.glob(str(tmp_path / "checkpoints" / "*"))}


def _run_files(run):
    return {n: open(run / n).read() for n in ("config.json", "flags.txt")}


@pytest.mark.slow
def test_rerun_with_another_architecture_flag_is_refused_and_changes_nothing(records_64,
                                                                              tmp_path):
    run = tmp_path / "run"
    base = (f"--model_dir={run}", f"--train_records={_train_glob(records_64)}",
            "--img_size=64", "--latent_dim=16", "--width=0.0625", "--batch_size=2",
            "--train_steps=1", "--checkpoint_every=1", "--log_every=1")
    res = _cli(*base)
    assert res.returncode == 0, res.stderr[-3000:]
    before = _run_files(run)
    ckpts = sorted(os.listdir(run / "checkpoints"))
    res = _cli(*base[:4], "--width=0.125", "--seed=7", *base[5:])
    assert res.returncode == 2
    assert "--width: 0.0625 -> 0.125" in res.stderr and "--seed: 0 -> 7" in res.stderr
    assert "another --model_dir" in res.stderr and "Traceback" not in res.stderr
    assert _run_files(run) == before and sorted(os.listdir(run / "checkpoints")) == ckpts
    # resumable fields may change, and the change is recorded
    res = _cli(*base[:-3], "--train_steps=2", "--checkpoint_every=2", "--log_every=2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--train_steps 1 -> 2" in res.stderr and "resumed from" in res.stderr
    cfg = json.load(open(run / "config.json"))
    assert (cfg["train_steps"], cfg["width"]) == (2, 0.0625)
    (change,) = [json.loads(line) for line in open(run / "config_changes.jsonl")]
    assert change["changed"]["train_steps"] == [1, 2]
    flagfile = open(run / "flags.txt").read()
    assert "--train_steps=2" in flagfile
    # the command's own flags only: a fresh process knows no flag of TensorFlow's or
    # absl.testing's, and flags.txt must resume the run
    assert "--test_random_seed" not in flagfile and "--hbm_oom_exit" not in flagfile
    res = _cli(f"--flagfile={run}/flags.txt", "--train_steps=3")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--train_steps 2 -> 3" in res.stderr and "ignoring" not in res.stderr


def test_checkpoint_of_other_shapes_names_the_variable_and_flag(records_64, trained_run,
                                                                tmp_path):
    """A config.json that does not describe the checkpoints (edited by hand, or lost and
    rewritten) gives the variable and the flag, not 'unreadable'."""
    pattern = _train_glob(records_64)
    _copy_run(trained_run[0], tmp_path)  # tiny_config, 1 step
    os.remove(tmp_path / "config.json")
    with pytest.raises(rundir.RunDirError, match=r"ckpt-1 does not fit .*variable \S+ is "
                       r"\([\d, ]+\) in the checkpoint and \([\d, ]+\) here; check `width` "
                       r"or `d_width` \(D's channels x2 "):  # D's conv1 is the first to differ
        train_lib.train(tiny_config(tmp_path, pattern, train_steps=2, width=0.125))
    assert not os.path.exists(tmp_path / "config.json")  # not written for a mismatch
    with pytest.raises(rundir.RunDirError, match="check `latent_dim`"):
        train_lib.train(tiny_config(tmp_path, pattern, train_steps=2, latent_dim=32))


@pytest.mark.slow
def test_partial_checkpoint_of_a_killed_save_is_removed(records_64, trained_run, tmp_path):
    pattern = _train_glob(records_64)
    _copy_run(trained_run[0], tmp_path)  # tiny_config, 1 step
    partial = tmp_path / "checkpoints" / "ckpt-2_temp"
    partial.mkdir()
    (partial / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half")
    logs = []
    train_lib.train(tiny_config(tmp_path, pattern, train_steps=2, checkpoint_every=1),
                    log=logs.append)
    assert not partial.exists()
    assert any("ckpt-2_temp" in m and "interrupted save" in m for m in logs)


def test_cpu_advice_warns_about_xla_and_suggests_bf16(tmp_path):
    cfg = tiny_config(tmp_path, jit_compile=True)
    advice = train_lib.cpu_advice(cfg, has_gpu=False, cpu_flags={"avx512_bf16"})
    assert "27x slower" in advice[0] and "mixed_bfloat16" in advice[1]
    assert train_lib.cpu_advice(cfg, has_gpu=True, cpu_flags={"avx512_bf16"}) == []
    assert train_lib.cpu_advice(tiny_config(tmp_path), has_gpu=False, cpu_flags=set()) == []


@pytest.mark.slow
def test_cli_jit_compile_on_cpu_warns(tmp_path):
    res = _cli(f"--model_dir={tmp_path}/run", "--img_size=64", "--latent_dim=16",
               "--width=0.0625", "--train_steps=0", "--jit_compile")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--jit_compile on a CPU" in res.stderr


def test_documented_command_without_records_says_how_to_make_them(tmp_path):
    """`python -m crfgan_tf.train --flagfile=configs/luna.flags` before conversion: one
    line naming the records and the conversion command; nothing written."""
    res = _cli("--flagfile=configs/luna.flags", f"--model_dir={tmp_path}/run",
               f"--train_records={tmp_path}/data/luna16_256/train-*.tfrecord")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "no TFRecord files match" in res.stderr
    assert (f"crfgan-convert --dataset=luna16|gsp|generic|dicom --input_dir=<archive> "
            f"--output_dir={tmp_path}/data/luna16_256 --size=256") in res.stderr
    assert not os.path.exists(tmp_path / "run")


def test_global_batch_rule():
    """--batch_size is the global batch; --per_replica_batch_size multiplies by the
    replicas and overrides it; a batch that does not divide names the nearest ones."""
    config = tiny_config("/tmp/unused", batch_size=2)
    assert [config.global_batch(r) for r in (1, 2)] == [2, 2]
    per_replica = tiny_config("/tmp/unused", batch_size=2, per_replica_batch_size=3)
    assert [per_replica.global_batch(r) for r in (1, 2, 4, 8)] == [3, 6, 12, 24]
    with pytest.raises(ValueError, match=r"Use `batch_size=4`, or `per_replica_batch_size=N`"):
        config.global_batch(4)
    with pytest.raises(ValueError, match=r"Use `batch_size=8` or `batch_size=16`, or"):
        tiny_config("/tmp/unused", batch_size=10).global_batch(8)
    with pytest.raises(ValueError, match="`per_replica_batch_size` must be >= 0"):
        tiny_config("/tmp/unused", per_replica_batch_size=-1).validate()
