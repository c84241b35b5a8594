"""Training records: the per-epoch permutation, and damaged or mismatched records named
before (or when) they cost a run anything."""

import glob
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from crfgan_tf.core import intensity
from crfgan_tf.data import pipeline, records
from crfgan_tf.training import loop as train_lib

from conftest import REPO, tiny_config


def _train_glob(records):
    return os.path.join(records, "train-*.tfrecord")


def _identity(volume):
    return round(float(tf.reduce_sum(volume)), 2)


def test_every_epoch_is_a_full_permutation_across_shards(records_64):
    """4 records in 2 shards of 2; with shuffle_buffer=2 the old stream kept each shard's
    two records together in every epoch. Every epoch must be a permutation of all 4, and
    over 30 epochs records of different shards must meet at the start of an epoch."""
    pattern = _train_glob(records_64)
    by_shard = {}
    for f in records.list_record_files(pattern):
        for r in records.read_volumes(f):
            by_shard[_identity(r.volume)] = f
    assert len(by_shard) == 4 and len(set(by_shard.values())) == 2
    ds = pipeline.make_train_dataset(pattern, 64, batch_size=1, latent_dim=4, seed=3,
                                 shuffle_buffer=2)
    seq = [_identity(intensity.dequantize(tf.cast(b["volume"][0, ..., 0], tf.float32)))
           for b in ds.take(4 * 30)]
    epochs = [seq[i:i + 4] for i in range(0, len(seq), 4)]
    for e in epochs:
        assert sorted(e) == sorted(by_shard), e
    mixed = [e for e in epochs if by_shard[e[0]] != by_shard[e[1]]]
    assert mixed, "the first two records of every epoch came from the same shard"
    assert len({tuple(e) for e in epochs}) > 6  # not a handful of fixed orders
    # the order is the stateless permutation of (seed, epoch), record indices in file order
    flat = [k for f in records.list_record_files(pattern) for k in
            [_identity(r.volume) for r in records.read_volumes(f)]]
    for e, got in enumerate(epochs[:3]):
        want = [flat[i] for i in pipeline.epoch_order(4, 3, e).numpy()]
        assert got == want


def test_record_counts_from_headers_and_truncation_named(records_64, tmp_path):
    files = records.list_record_files(_train_glob(records_64))
    counts = [len(records.scan_record_lengths(f)) for f in files]
    assert counts == [2, 2]
    cut = tmp_path / "train-00000-of-00001.tfrecord"
    blob = open(files[0], "rb").read()
    cut.write_bytes(blob[: len(blob) - 1000])
    with pytest.raises(records.RecordsError, match=f"{cut} is truncated"):
        records.records_per_file([str(cut)])


def _corrupt_copy(records_64, tmp_path):
    out = tmp_path / "records"
    shutil.copytree(records_64, out)
    victim = sorted(glob.glob(str(out / "train-*.tfrecord")))[1]
    blob = bytearray(open(victim, "rb").read())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte inside a volume: same size, bad CRC
    open(victim, "wb").write(bytes(blob))
    return out, victim


def test_corrupt_shard_is_named_in_training(records_64, tmp_path):
    out, victim = _corrupt_copy(records_64, tmp_path)
    cfg = tiny_config(tmp_path / "run", _train_glob(str(out)), train_steps=6,
                      checkpoint_every=1)
    with pytest.raises(records.RecordsError, match=f"damaged record file {victim}"):
        train_lib.train(cfg, log=lambda m: None)
    with pytest.raises(records.RecordsError, match=f"damaged record file {victim}"):
        list(records.read_volumes(_train_glob(str(out))))


def test_records_of_another_size_are_refused_before_building(records_64, tmp_path):
    cfg = tiny_config(tmp_path / "run", _train_glob(records_64), img_size=128)
    with pytest.raises(records.RecordsError, match=r"64\^3 volumes .*`img_size=128`.*"
                                                r"`img_size=64`.*`size=128`"):
        train_lib.train(cfg, log=lambda m: None)
    assert not os.path.exists(tmp_path / "run")
    # without a manifest the first record tells
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in glob.glob(_train_glob(records_64)):
        shutil.copy(f, bare)
    cfg = tiny_config(tmp_path / "run2", _train_glob(str(bare)), img_size=128)
    with pytest.raises(records.RecordsError, match="from its first record"):
        train_lib.train(cfg, log=lambda m: None)


def test_missing_records_say_which_command_makes_them(tmp_path):
    cfg = tiny_config(tmp_path / "run", str(tmp_path / "data/luna16_64/train-*.tfrecord"))
    with pytest.raises(records.RecordsError, match=r"crfgan-convert .*"
                       rf"--output_dir={tmp_path}/data/luna16_64 --size=64"):
        train_lib.train(cfg, log=lambda m: None)
    assert not os.path.exists(tmp_path / "run")


def test_resume_skips_without_reading(records_64):
    """Starting at step k reads nothing before it: the first batch equals batch k."""
    pattern = _train_glob(records_64)
    straight = list(pipeline.make_train_dataset(pattern, 64, 2, 4, seed=9).take(7))
    resumed = next(iter(pipeline.make_train_dataset(pattern, 64, 2, 4, seed=9, start_step=6)))
    for k in straight[6]:
        np.testing.assert_array_equal(straight[6][k], resumed[k])


def test_record_schema_table_is_the_data_guide_table():
    with open(os.path.join(REPO, "docs", "data.md"), encoding="utf-8") as f:
        assert records.schema_table() in f.read()
