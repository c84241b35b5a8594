"""Knowing whether training works: 3D MS-SSIM, the differentiable augmentation, in-training
evaluation (eval.jsonl, alarms, resume) and the best checkpoint."""

import itertools
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from crfgan_tf.data import records
from crfgan_tf.run import factory
from crfgan_tf.evaluation import metrics
from crfgan_tf.generation import export as export_lib
from crfgan_tf.models import augment
from crfgan_tf.run import rundir
from crfgan_tf.run.config import TrainConfig
from crfgan_tf.training import loop as train_lib
from crfgan_tf.training import monitor

from conftest import tiny_batch, tiny_config


# ---- MS-SSIM -------------------------------------------------------------------------

def test_ms_ssim_hand_computable_cases():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (32, 32, 32))
    assert metrics.ms_ssim_3d(a, a) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ms_ssim_3d(a, -a) == 0.0  # negative structure counts as 0
    # constant volumes: every cs is 1 and only the coarsest luminance term is left:
    # l = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 2)^2, to the renormalised last
    # weight (32^3 has 3 scales: 32, 16, 8)
    c1 = 0.02 ** 2
    lum = (2 * 0.5 * 0.25 + c1) / (0.5 ** 2 + 0.25 ** 2 + c1)
    w = metrics.MS_SSIM_WEIGHTS
    want = lum ** (w[2] / sum(w[:3]))
    got = metrics.ms_ssim_3d(np.full((32, 32, 32), 0.5), np.full((32, 32, 32), 0.25))
    assert got == pytest.approx(want, rel=1e-9)
    # independent noise: near 0 (the coarse scales' variance shrinks by 8 per pooling, so
    # not exactly 0; 2D MS-SSIM behaves the same)
    b = rng.uniform(-1, 1, (32, 32, 32))
    assert metrics.ms_ssim_3d(a, b) < 0.2
    assert metrics.mean_pairwise_ms_ssim([a, a, a, b]) == pytest.approx(
        (1.0 + metrics.ms_ssim_3d(a, b)) / 2)


# ---- augmentation --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["translation", "cutout", "intensity"])
def test_augmentation_is_differentiable_and_seeded(name):
    x = tf.random.uniform((3, 8, 32, 32, 1), -1, 1, seed=1)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = augment.augment(x, (name,), 1.0, tf.constant([5, 6]))
        loss = tf.reduce_sum(y * y)
    grad = tape.gradient(loss, x)
    assert grad is not None and float(tf.reduce_sum(tf.abs(grad))) > 0
    assert float(tf.reduce_max(tf.abs(y - x))) > 0  # p = 1: every example changed
    np.testing.assert_array_equal(y, augment.augment(x, (name,), 1.0, tf.constant([5, 6])))
    assert not np.array_equal(y, augment.augment(x, (name,), 1.0, tf.constant([5, 7])))
    np.testing.assert_array_equal(x, augment.augment(x, (name,), 0.0, tf.constant([5, 6])))


def test_intensity_works_in_hu_and_there_are_no_flips():
    window = (-1024.0, 600.0)
    unit = 2.0 / 1624.0
    centre = (-500 + 1024) * unit - 1.0  # -500 HU: the contrast's fixed point
    x = tf.fill((64, 4, 4, 4, 1), centre)
    y = augment.augment(x, ("intensity",), 1.0, tf.constant([1, 2]), window)
    shift_hu = (y[:, 0, 0, 0, 0] - centre).numpy() / unit
    assert np.abs(shift_hu).max() <= augment.BRIGHTNESS_HU + 1e-3
    assert np.abs(shift_hu).max() > 25  # the range is used
    with pytest.raises(ValueError, match="no flips"):
        TrainConfig(model_dir="/x", augment="translation,flip").validate()


def test_d_sees_real_and_fake_augmented_alike_and_g_learns_through_it(tmp_path):
    """The augmentation depends on (step, call site) only, not on which volume it gets,
    and G's update sees D through it (its weights change with p = 1)."""
    model = factory.build_model(tiny_config(tmp_path, augment="translation,cutout,intensity",
                                              augment_p=1.0))
    x = tf.random.uniform((2, 8, 64, 64, 1), -1, 1, seed=3)
    np.testing.assert_array_equal(model.d_view(x, 1), model.d_view(x, 1))
    assert not np.array_equal(model.d_view(x, 1), model.d_view(x, 2))
    assert float(tf.reduce_mean(tf.abs(model.d_view(x, 1) - x))) > 0.01
    before = [w.numpy().copy() for w in model.generator_weights()]
    out = model.train_step(tiny_batch(latent_dim=16))
    assert np.isfinite(float(out["g_loss"])) and 0 <= float(out["r_t"]) <= 1
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, model.generator_weights()))
    assert "augment_p" in model.checkpoint_items()


# ---- in-training evaluation ----------------------------------------------------------

def _eval_config(run, records, **kw):
    """Evaluation every step, features at 32^3 (MedicalNet at 64^3 is 8x the time)."""
    base = dict(eval_every=1, eval_samples=2, eval_records=os.path.join(records, "*.tfrecord"),
                eval_feature_side=32)
    base.update(kw)
    return tiny_config(run, os.path.join(records, "train-*.tfrecord"), **base)


def _log_rows(run):
    with open(os.path.join(run, rundir.EVAL_FILE)) as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.slow
def test_eval_log_best_checkpoint_and_resume_without_duplicates(records_64, tmp_path):
    """eval.jsonl gets a baseline and a row per evaluation; the best checkpoint survives the
    rolling deletion and exports; a restart drops evaluations past its checkpoint."""
    run = tmp_path / "run"
    lines = []
    train_lib.train(_eval_config(run, records_64, train_steps=2, keep_checkpoints=1,
                                 checkpoint_every=1), log=lines.append)
    rows = _log_rows(run)
    assert [r["step"] for r in rows] == [0, 1, 2]  # a baseline at step 0, then every step
    row = rows[-1]
    for key in ("fd", "mmd", "hist_w1_hu", "profile_l1_hu", "lung_fraction",
                "lung_fraction_real", "ms_ssim", "ms_ssim_real", "diversity_ratio", "r_t",
                "seconds"):
        assert row[key] is not None and np.isfinite(row[key]), key
    assert row["extractor"].startswith("medicalnet-resnet50-random") and not row["pretrained"]
    assert row["feature_side"] == 32  # 64^3 volumes averaged down to --eval_feature_side
    assert row["n_real"] == 5 and row["n_fake"] == 2 and rows[0]["r_t"] is None
    assert any(l.startswith("eval: step 2: fd ") for l in lines)
    assert os.path.exists(run / rundir.EVAL_CACHE_DIR)  # the real features, once
    # the best checkpoint: the lowest fd after the baseline (step 0 never counts), kept
    # beside the rolling checkpoints (--keep_checkpoints=1 keeps only the last)
    best_row = min(rows[1:], key=lambda r: r["fd"])
    with open(run / rundir.BEST_FILE) as fh:
        best = json.load(fh)
    assert best["step"] == best_row["step"] and best["value"] == pytest.approx(best_row["fd"])
    assert sorted(os.listdir(run / rundir.CHECKPOINT_DIR)) == \
        ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
    assert os.path.exists(run / rundir.BEST_DIR / f"ckpt-{best['step']}.index")
    _, _, _, path = export_lib.load_generator(str(run), "best")
    assert path.endswith(os.path.join(rundir.BEST_DIR, f"ckpt-{best['step']}"))
    meta = export_lib.export(str(run), str(tmp_path / "export"), "best", log=lambda m: None)
    assert meta["checkpoint"] == os.path.join(rundir.BEST_DIR, f"ckpt-{best['step']}")
    # a crash after an evaluation of step 3 whose checkpoint was never written: the
    # restart from step 2 drops that line and evaluates step 3 again
    with open(run / rundir.EVAL_FILE, "a") as fh:
        fh.write(json.dumps(dict(row, step=3, fd=-1.0)) + "\n")
    train_lib.train(_eval_config(run, records_64, train_steps=3, keep_checkpoints=1,
                                 checkpoint_every=1))
    rows = _log_rows(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and rows[-1]["fd"] != -1.0


class _OneAtATime:
    """An extractor that features a batch one volume at a time, as the real side's were
    (batch 1): a copy of a real volume then gets that volume's feature row bit for bit on
    every CPU, where a batch of 4 gives a row that differs from it by rounding on some CPUs
    and not on others."""

    def __init__(self, extractor):
        self.extractor = extractor

    def __call__(self, batch):
        return np.concatenate([self.extractor(v[None]) for v in batch])

    def __getattr__(self, name):
        return getattr(self.extractor, name)


def test_collapse_and_overfitting_raise_the_alarms(records_64, tmp_path):
    """Healthy: the generated volumes are real ones (the diversity reference's own
    variety), no alarm. Collapsed like the demo: one real volume again and again with fresh
    noise; MS-SSIM calls it diverse, coverage and the anatomy spread do not. Identical
    volumes, and r_t near 1, raise theirs."""
    config = _eval_config(tmp_path / "run", records_64, eval_samples=4,
                          eval_records=os.path.join(records_64, "train-00000-*.tfrecord"))
    evaluator = monitor.Evaluator(config, log=lambda m: None)
    # the 2 records of the evaluation shard, topped up from the other training shard's 2
    assert evaluator.real["count"] == 2
    assert evaluator.real["diversity_features"].shape[0] == 4
    assert len(evaluator.real["anatomy"]) == 4
    real = [r.volume for r in records.read_volumes(os.path.join(records_64, "train-*.tfrecord"))]
    evaluator.extractor = _OneAtATime(evaluator.extractor)
    model = None  # evaluator.generate is replaced below: no network runs
    evaluator.generate = lambda m: iter(real[:4])
    healthy = evaluator.evaluate(model, 1, r_t=0.6)
    assert healthy["alarms"] == [], healthy["alarms"]
    assert healthy["coverage"] >= 0.75 and healthy["n_real_diversity"] == 4
    rng = np.random.default_rng(0)
    assert healthy["structure_coverage"] == 1.0 and healthy["quality_pass_rate"] == 1.0
    assert healthy["lung_profile_corr"] > 0.95  # real volumes (the eval shard: 2 of these 4)
    noisy = [np.clip(real[0] + rng.normal(0, 0.5, real[0].shape), -1, 1).astype(np.float32)
             for _ in range(4)]
    evaluator.generate = lambda m: iter(noisy)
    collapsed = evaluator.evaluate(model, 2, r_t=0.6)
    assert collapsed["diversity_ratio"] > 0.5  # the old alarm's measure is fooled
    # the structure measures are not: the noise averages out in the pooled volumes
    assert collapsed["structure_recall"] <= 0.25
    assert collapsed["body_fraction_sd_ratio"] < 0.5
    assert any("one anatomy repeated" in a for a in collapsed["alarms"])
    evaluator.generate = lambda m: iter([real[0]] * 4)
    result = evaluator.evaluate(model, 3, r_t=0.999)
    assert result["ms_ssim"] == pytest.approx(1.0)
    assert result["body_fraction_sd_ratio"] == pytest.approx(0.0, abs=1e-9)
    assert any("one anatomy repeated" in a for a in result["alarms"])
    assert any("r_t = 0.999" in a for a in result["alarms"])
    # the step-0 baseline (an untrained network) raises no collapse alarm
    assert not any("anatomy" in a for a in evaluator.evaluate(model, 0, r_t=None)["alarms"])


def test_a_model_that_repeats_one_real_volume_gets_figures_and_an_alarm(records_64, tmp_path):
    """Issue #52 item 8: every generated volume a copy of a real one, so its feature row is
    that real row exactly; with 3 copies per real volume, most pooled pairs of MMD's median
    heuristic are copies, and the median distance is 0 on every CPU. The evaluation gives
    finite figures, MMD with the median of the nonzero distances as its width, and the
    collapse alarm, not an exception in the training loop."""
    pattern = os.path.join(records_64, "train-*.tfrecord")
    evaluator = monitor.Evaluator(_eval_config(tmp_path / "run", records_64,
                                               eval_records=pattern), log=lambda m: None)
    evaluator.extractor = _OneAtATime(evaluator.extractor)
    real_features = evaluator.real["features"].astype(np.float64)
    n = real_features.shape[0]
    assert n >= 3 and evaluator.real["diversity_features"].shape[0] == n
    real = [r.volume for r in records.read_volumes(pattern)]
    copy_row = evaluator.extractor(np.stack([real[0]]))[0]
    np.testing.assert_array_equal(copy_row, real_features[0])  # bit for bit
    evaluator.generate = lambda m: iter([real[0]] * (3 * n))
    result = evaluator.evaluate(None, 3, r_t=0.6)  # generate is replaced: no network runs
    for key in ("fd", "mmd", "hist_w1_hu", "profile_l1_hu", "precision", "recall", "density",
                "coverage", "body_fraction_sd_ratio", "lung_fraction_sd_ratio"):
        assert result[key] is None or np.isfinite(result[key]), (key, result[key])
    assert result["fd"] > 0 and result["n_fake"] == 3 * n
    # the width: the median of the nonzero pooled distances (copies are exactly 0 apart)
    fake_features = np.repeat(real_features[:1], 3 * n, axis=0)
    pooled = np.concatenate([real_features, fake_features])
    dists = np.array([np.linalg.norm(a - b) for a, b in itertools.combinations(pooled, 2)])
    assert np.median(dists) == 0
    sigma = float(np.median(dists[dists > 0]))
    assert result["mmd"] == pytest.approx(
        metrics.mmd(real_features, fake_features, sigma=sigma), rel=1e-6)
    assert result["mmd"] > 0.1
    # k-NN: every copy lies in its original's ball; the copies' balls have radius 0 and
    # hold exactly the real volume they copy
    assert result["precision"] == 1.0 and result["recall"] == 1 / n
    assert result["body_fraction_sd_ratio"] == 0.0
    assert any("one anatomy repeated" in a for a in result["alarms"]), result["alarms"]


@pytest.mark.parametrize("side", [8, 48])
def test_an_eval_feature_side_that_cannot_be_used_is_refused_by_name(side):
    with pytest.raises(ValueError, match=f"`eval_feature_side` must be >= 16 and divide "
                                         f"`img_size` \\(64\\) when below it, got {side}"):
        tiny_config("/tmp/unused", eval_feature_side=side).validate()
    tiny_config("/tmp/unused", eval_feature_side=128).validate()  # above the side: full size


def test_missing_eval_records_are_refused_before_anything_is_written(records_64, tmp_path):
    config = tiny_config(tmp_path / "run", os.path.join(records_64, "train-*.tfrecord"),
                         eval_every=1, eval_records=str(tmp_path / "none-*.tfrecord"))
    with pytest.raises(Exception, match="`eval_every` needs evaluation records.*`eval_records`"):
        train_lib.train(config)
    assert not os.path.exists(tmp_path / "run")


def test_best_by_coverage_is_higher_with_ties_to_the_lower_fd(tmp_path):
    from crfgan_tf.training import monitor as m

    first = {"step": 1500, "coverage": 0.5, "fd": 9.0, "extractor": "x"}
    assert m.is_better(first, None, "coverage")
    best = m.record_best(str(tmp_path), first, "coverage", "ckpt-1500")
    assert best["fd"] == 9.0 and best["coverage"] == 0.5
    assert m.read_best(str(tmp_path)) == best
    assert m.is_better({"coverage": 0.75, "fd": 20.0}, best, "coverage")  # higher wins
    assert not m.is_better({"coverage": 0.25, "fd": 1.0}, best, "coverage")
    assert m.is_better({"coverage": 0.5, "fd": 8.0}, best, "coverage")  # tie: lower FD
    assert not m.is_better({"coverage": 0.5, "fd": 10.0}, best, "coverage")
    assert not m.is_better({"coverage": None, "fd": 1.0}, best, "coverage")
    # the distances stay lower-is-better
    assert m.is_better({"fd": 8.0}, {"value": 9.0}, "fd")
    assert not m.is_better({"fd": 10.0}, {"value": 9.0}, "fd")
