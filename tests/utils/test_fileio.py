"""A full disk is an error, not a corruption: a write that finds no space (here a
file-size limit, RLIMIT_FSIZE, which fails writes with EFBIG as a full disk fails them
with ENOSPC) names the file and the space it needed, keeps every earlier checkpoint,
shard, line or sample valid, and a rerun resumes."""

import contextlib
import glob
import json
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from crfgan_tf.data import records
from crfgan_tf.generation import sample as sample_lib
from crfgan_tf.training import monitor
from crfgan_tf.utils import fileio

from conftest import REPO, assert_bit_identical, run_train, train_args


def file_size_limit(limit):
    """preexec_fn for a command run under a file-size limit of `limit` bytes."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@contextlib.contextmanager
def limited(limit):
    """This process under a file-size limit (soft; lifted again on exit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_disk_full_reasons():
    assert fileio.disk_full_reason(OSError(28, "No space left on device")) == \
        "no space left on the device"
    assert "file-size limit" in fileio.disk_full_reason(
        tf.errors.OutOfRangeError(None, None, "/x/ckpt-3_temp/part; File too large"))
    assert fileio.disk_full_reason(OSError(13, "Permission denied")) is None
    err = fileio.disk_full_error("/nowhere/ckpt-3", "no space left on the device", 3 << 20,
                                 "The previous checkpoint is intact", "free space")
    assert str(err) == ("cannot write /nowhere/ckpt-3: no space left on the device (it needs "
                        "about 3.0 MiB). The previous checkpoint is intact; free space")


@pytest.mark.slow  # a training run on a tiny file system, then its rerun: about 2 minutes
def test_checkpoint_that_does_not_fit_is_named_the_previous_kept_and_the_rerun_resumes(
        records_64, tmp_path, straight_run):
    args = train_args(records_64, tmp_path)
    rc, err = run_train(args + ["--train_steps=2", "--checkpoint_every=1"])
    assert rc == 0, err
    data = glob.glob(str(tmp_path / "checkpoints" / "ckpt-2.data-*"))[0]
    size = os.path.getsize(data)  # 1.6 MB; every other file of the run is far smaller
    rc, err = run_train(args + ["--checkpoint_every=1"],
                        preexec_fn=file_size_limit(size // 2))
    assert rc == 2, err
    ckpt2 = str(tmp_path / "checkpoints" / "ckpt-2")
    assert (f"error: cannot write {tmp_path / 'checkpoints' / 'ckpt-3'}: file too large for "
            f"the file-size limit (ulimit -f) (it needs about 1.6 MiB") in err, err
    assert f"the previous checkpoint ({ckpt2}) is intact; free space and run the same " \
           "command again" in err
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index",
        "ckpt-2.data-00000-of-00001", "ckpt-2.index"]  # no ckpt-3_temp left
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) == ckpt2
    assert json.load(open(tmp_path / "trainer_state.json"))["step"] == 2

    rc, err = run_train(args)
    assert rc == 0 and f"resumed from {ckpt2} at step 2" in err, err
    assert_bit_identical(tmp_path, straight_run)


def _convert_cli(archive, out, **popen):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-m", "data_prep.convert", "--dataset=luna16", f"--input_dir={archive}",
         f"--output_dir={out}", "--size=64", "--num_shards=4", "--num_val_shards=1",
         "--val_fraction=0.4", "--seed=3", "--workers=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, **popen)


@pytest.mark.slow
def test_shard_that_does_not_fit_is_named_the_complete_ones_kept_and_the_rerun_resumes(
        tiny_archive, tmp_path):
    # 3 training shards of one scan (0.5 MB each) fit under 0.8 MB; the validation shard
    # of two scans does not
    res = _convert_cli(tiny_archive[0], tmp_path / "out", preexec_fn=file_size_limit(800_000))
    assert res.returncode == 2, res.stderr
    val = tmp_path / "out" / "val-00000-of-00001.tfrecord"
    assert (f"error: cannot write {val}: file too large for the file-size limit (ulimit -f) "
            "(it needs about 1.0 MiB") in res.stderr
    assert "The 3 shard(s) already complete and manifest.json are intact" in res.stderr
    assert "Traceback" not in res.stderr
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == ["manifest.json"] + [f"train-0000{k}-of-00003.tfrecord" for k in range(3)]
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    assert sorted(manifest["shards"]) == names[1:]

    res = _convert_cli(tiny_archive[0], tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert "3 already converted, 2 to do" in res.stderr
    fresh = _convert_cli(tiny_archive[0], tmp_path / "fresh")
    assert fresh.returncode == 0, fresh.stderr
    for name in names[1:] + [val.name]:  # the same records as a conversion never stopped
        resumed = list(records.read_volumes(str(tmp_path / "out" / name)))
        whole = list(records.read_volumes(str(tmp_path / "fresh" / name)))
        assert [r.case_id for r in resumed] == [r.case_id for r in whole] and resumed
        for a, b in zip(resumed, whole):
            np.testing.assert_array_equal(a.volume, b.volume)


def test_eval_line_that_does_not_fit_leaves_no_half_line(tmp_path):
    monitor.append_log(str(tmp_path), {"step": 10, "fd": 1.5})
    before = open(tmp_path / "eval.jsonl").read()
    with limited(len(before) + 20), pytest.raises(fileio.DiskFullError,
                                                  match=r"cannot write .*eval\.jsonl: file too "
                                                        r"large .* earlier part and the "
                                                        r"checkpoints are intact"):
        monitor.append_log(str(tmp_path), {"step": 20, "fd": 1.25, "note": "x" * 100})
    assert open(tmp_path / "eval.jsonl").read() == before


@pytest.mark.parametrize("fmt", sorted(sample_lib.FORMATS))
def test_sample_that_does_not_fit_is_an_error_and_leaves_no_file(tmp_path, fmt):
    # ITK's NIfTI writer only prints its write error and leaves a truncated file
    volume = np.random.default_rng(0).integers(-1000, 1000, (32, 64, 64)).astype(np.int16)
    path = str(tmp_path / ("sample" + sample_lib.FORMATS[fmt]))
    with limited(60_000), pytest.raises(fileio.DiskFullError, match="cannot write .*sample"):
        sample_lib.write_volume(volume, path, (1.0, 1.0, 1.0), fmt)
    assert os.listdir(tmp_path) == []
    sample_lib.write_volume(volume, path, (1.0, 1.0, 1.0), fmt)  # with space: written whole
    assert os.path.exists(path)
