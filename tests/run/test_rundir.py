"""The run directory's contract (crfgan_tf/run/rundir.py): a stored config binds a start
only once a checkpoint was written from it."""

import os

import pytest

from crfgan_tf.run import config as config_lib
from crfgan_tf.run import rundir


def _stored(tmp_path, **kw):
    config = config_lib.TrainConfig(model_dir=str(tmp_path), img_size=64, **kw)
    rundir.record_config(config, None, {}, lambda m: None)
    return config


def test_settings_without_a_checkpoint_give_way_and_say_so(tmp_path):
    _stored(tmp_path, width=0.5, train_records="a/*.tfrecord", init_from="old_run")
    new = config_lib.TrainConfig(model_dir=str(tmp_path), img_size=64, width=0.25,
                                 train_records="b/*.tfrecord")
    said = []
    assert rundir.check_config(new, log=said.append) == {}
    (line,) = said
    assert "wrote no checkpoint" in line and "`width` 0.5 -> 0.25" in line, line
    # once a checkpoint exists the stored settings bind
    os.makedirs(tmp_path / rundir.CHECKPOINT_DIR)
    (tmp_path / rundir.CHECKPOINT_DIR / "ckpt-3.index").write_bytes(b"")
    with pytest.raises(rundir.RunDirError, match="holds a run whose checkpoints"):
        rundir.check_config(new)


def test_a_best_checkpoint_alone_also_binds(tmp_path):
    _stored(tmp_path, width=0.5)
    os.makedirs(tmp_path / rundir.BEST_DIR)
    (tmp_path / rundir.BEST_DIR / "ckpt-2.index").write_bytes(b"")
    new = config_lib.TrainConfig(model_dir=str(tmp_path), img_size=64, width=0.25)
    with pytest.raises(rundir.RunDirError):
        rundir.check_config(new)


def test_a_fresh_start_does_not_inherit_a_checkpointless_starts_init_source(tmp_path):
    config = config_lib.TrainConfig(model_dir=str(tmp_path), img_size=64)
    rundir.record_config(config, None, {}, lambda m: None, step=0,
                         init_source={"kind": "run", "path": "/x", "step": 1})
    assert rundir.read_init_source(str(tmp_path))["path"] == "/x"
    rundir.record_config(config, None, {}, lambda m: None, step=0)  # a new start, no source
    assert rundir.read_init_source(str(tmp_path)) is None
    rundir.record_config(config, None, {}, lambda m: None, step=0,
                         init_source={"kind": "run", "path": "/y", "step": 1})
    rundir.record_config(config, None, {}, lambda m: None, step=5)  # a resume keeps it
    assert rundir.read_init_source(str(tmp_path))["path"] == "/y"
