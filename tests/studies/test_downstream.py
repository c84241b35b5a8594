"""crfgan-downstream (issue #21): the classification study's arms, seeds and splits through
the command, its refusals, and its metrics on hand-computed inputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from crfgan_tf.evaluation.sources import EvaluationError, record_case_ids
from crfgan_tf.studies import downstream

ENV = dict(os.environ, PYTHONPATH=REPO)


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "tools.downstream", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_metrics_on_hand_computed_inputs():
    assert downstream.auc([0, 0, 1, 1], np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert downstream.auc([0, 1, 1], np.array([0.5, 0.5, 0.9])) == 0.75  # a tie counts 1/2
    assert downstream.balanced_accuracy([0, 0, 1, 1], np.array([0.2, 0.6, 0.7, 0.4])) == 0.5
    assert downstream.balanced_accuracy([0, 0, 0, 1], np.array([0.2, 0.1, 0.3, 0.9])) == 1.0
    lo, hi = downstream.auc_ci(np.array([0, 0, 1, 1] * 5), np.arange(20.0), 200, 0)
    assert 0 < lo < hi <= 1
    curve = [(2, 0.6), (5, 0.7), (10, 0.8)]
    assert downstream.real_data_equivalent(curve, 0.75) == {"real_scans": 7.5}
    assert downstream.real_data_equivalent(curve, 0.9)["note"].startswith("above the curve")
    assert downstream.real_data_equivalent(curve, 0.5)["note"] == \
        "below the curve: less than 2 real scans"
    volume = np.arange(8.0 ** 3, dtype=np.float32).reshape(8, 8, 8)
    np.testing.assert_array_equal(downstream.downsample(volume, 4)[0, 0, :2], [36.5, 38.5])  # (0 + 64) / 2 + (0 + 8) / 2 + 0.5


def test_subsets_nest_and_keep_both_classes():
    y = np.array([0.0] * 6 + [1.0] * 4)
    quarter, half = (downstream.stratified_subset(y, f, 1) for f in (0.25, 0.5))
    assert len(quarter) == 2 + 1 and len(half) == 3 + 2 and set(quarter) <= set(half)
    assert set(y[quarter]) == {0.0, 1.0}


def test_logistic_probe_separates_and_shrinks_to_the_base_rate():
    rng = np.random.default_rng(0)
    y = np.array([0.0] * 10 + [1.0] * 10)
    x = rng.normal(size=(20, 3)) + y[:, None] * np.array([3.0, 0, 0])
    prob = downstream.logistic_probe(x, y, x, 1.0)
    assert downstream.auc(y, prob) == 1.0
    flat = downstream.logistic_probe(x, y, x, 1e9)  # all weight penalised: the bias is left
    np.testing.assert_allclose(flat, 0.5, atol=1e-4)


@pytest.mark.slow
def _positives(records, split, table):
    """Positive cases of a split, counted from the labels table (the LUNA16 rule)."""
    return sum(int(table[c]) for c in record_case_ids(os.path.join(records, f"{split}-*.tfrecord")))


def test_the_study_through_the_command(study_records, conditional_export, tmp_path):
    records, table = study_records
    train_pos, test_pos = _positives(records, "train", table), _positives(records, "val", table)
    assert 0 < train_pos < 10 and 0 < test_pos < 6  # both classes in both splits
    half = -(-train_pos // 2) + -(-(10 - train_pos) // 2)  # 50 %, stratified, rounded up
    out = str(tmp_path / "study")
    res = _run(f"--saved_model={conditional_export[0]}",
               f"--train_records={os.path.join(records, 'train-*.tfrecord')}",
               f"--test_records={os.path.join(records, 'val-*.tfrecord')}",
               "--synthetic_ratios=0.5,1", "--real_fractions=0.5", "--seeds=2", "--steps=15",
               "--input_size=16", "--bootstrap=200", f"--output_dir={out}")
    assert res.returncode == 0, res.stderr
    result = json.load(open(os.path.join(out, "downstream.json")))
    assert result["task"]["train"] == {"records": os.path.join(records, "train-*.tfrecord"),
                                       "cases": 10, "positives": train_pos}
    assert result["task"]["test"]["cases"] == 6 and result["task"]["test"]["positives"] == test_pos
    assert result["test_unseen_by_generator"] == {"generator_training_cases": 10, "overlap": 0}
    arms = {a["name"]: a for a in result["arms"]}
    assert list(arms) == ["real", "real+0.5x", "real+1x", "synthetic", "real@50%"]
    assert [(a["real"], a["synthetic"]) for a in arms.values()] == \
        [(10, 0), (10, 5), (10, 10), (0, 10), (half, 0)]
    for arm in arms.values():
        assert [r["seed"] for r in arm["runs"]] == [0, 1]
        for r in arm["runs"]:
            assert 0 <= r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1] <= 1
    # the conditional pool alternates the classes: 5 of 10 positive, 3 of the first 5
    assert result["generator"]["pool"] == 10 and result["generator"]["pool_positives"] == 5
    assert arms["real+0.5x"]["runs"][0]["train_positives"] == train_pos + 3
    assert [c["real"] for c in result["real_data_curve"]] == [half, 10]
    assert set(result["real_data_equivalent"]) == {"real+0.5x", "real+1x", "synthetic"}
    assert result["classifier"]["parameters"] == 17_585
    with open(os.path.join(out, "downstream.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "real+1x" in res.stdout and "real-data equivalent" in res.stdout


def test_a_feature_side_below_medicalnets_is_refused_by_name():
    config = downstream.StudyConfig("train", "test", "out", features="f.npz", feature_side=8)
    with pytest.raises(EvaluationError, match="`feature_side` must be >= 16, got 8"):
        config.validate()


def test_the_classifier_depends_on_its_seed_and_data_alone():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 8, 8, 8)).astype(np.float32), np.array([0, 1] * 3, np.float32)
    config = downstream.StudyConfig("", "", "", input_size=8, steps=3, batch_size=2)
    a, b = (downstream.train_and_predict(x, y, x, config, seed=4) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, downstream.train_and_predict(x, y, x, config, seed=5))


@pytest.mark.slow
def test_the_study_refuses_test_scans_the_generator_saw(study_records, conditional_export,
                                                         tmp_path):
    records, _ = study_records
    res = _run(f"--saved_model={conditional_export[0]}",
               f"--train_records={os.path.join(records, 'val-*.tfrecord')}",
               f"--test_records={os.path.join(records, 'train-*.tfrecord')}",
               f"--output_dir={tmp_path}")
    assert res.returncode == 2
    assert "10 of the 10 --test_records case(s) were in the generator's training data" in res.stderr
    res = _run(f"--train_records={os.path.join(records, 'train-*.tfrecord')}",
               f"--test_records={os.path.join(records, 'val-*.tfrecord')}",
               f"--output_dir={tmp_path}")
    assert res.returncode == 2 and "give --saved_model" in res.stderr


@pytest.mark.slow
def test_the_probe_on_encoder_features_beside_medicalnet(study_records, conditional_export,
                                                         tmp_path):
    records, _ = study_records
    features = str(tmp_path / "features.npz")
    res = subprocess.run([sys.executable, "-m", "tools.encode",
                          f"--saved_model={conditional_export[0]}",
                          f"--records={os.path.join(records, '*.tfrecord')}",
                          f"--output={features}"], cwd=REPO, env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    res = _run(f"--features={features}", "--allow_random_features", "--feature_side=32",
               "--bootstrap=200",
               f"--train_records={os.path.join(records, 'train-*.tfrecord')}",
               f"--test_records={os.path.join(records, 'val-*.tfrecord')}",
               f"--output_dir={tmp_path / 'probe'}")
    assert res.returncode == 0, res.stderr
    result = json.load(open(tmp_path / "probe" / "downstream.json"))
    probes = result["probe"]["probes"]
    assert [p["features"] for p in probes] == ["encoder (crfgan hE, pooled)",
                                               "medicalnet-resnet50-random-seed0"]
    assert [p["dimensions"] for p in probes] == [16, 2048]
    assert result["probe"]["pretrained_medicalnet"] is False and "arms" not in result
    assert result["probe"]["medicalnet_feature_side"] == 32
    assert "probe encoder (crfgan hE, pooled): AUC" in res.stdout
    assert not os.path.exists(tmp_path / "probe" / "downstream.png")


@pytest.mark.slow
def test_an_unconditional_generator_needs_a_label_rule(study_records, exported, tmp_path):
    records, table = study_records
    common = [f"--saved_model={exported[0]}",
              f"--train_records={os.path.join(records, 'train-*.tfrecord')}",
              f"--test_records={os.path.join(records, 'val-*.tfrecord')}",
              "--synthetic_ratios=1", "--real_fractions=0.5", "--seeds=1", "--steps=5",
              "--input_size=16", "--bootstrap=100", f"--output_dir={tmp_path}"]
    res = _run(*common)
    assert res.returncode == 2 and "pass --synthetic_labels=real_classifier" in res.stderr
    res = _run(*common, "--synthetic_labels=real_classifier")
    assert res.returncode == 0, res.stderr
    result = json.load(open(tmp_path / "downstream.json"))
    labelled = result["generator"]["pool_labels_by_real_classifier"]
    assert [r["seed"] for r in labelled] == [0] and 0 <= labelled[0]["positives"] <= 10
    assert result["generator"]["conditional"] is False
    arms = {a["name"]: a for a in result["arms"]}
    assert list(arms) == ["real", "real+1x", "synthetic", "real@50%"]
    assert arms["real+1x"]["runs"][0]["train_positives"] == \
        _positives(records, "train", table) + labelled[0]["positives"]
