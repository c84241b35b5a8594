"""crfgan-memorization (issue #21): a planted copy of the training scans is flagged, a
generator that returns held-out scans is not."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from crfgan_tf.data import records
from crfgan_tf.studies import memorization

ENV = dict(os.environ, PYTHONPATH=REPO)


def _run(*args):
    return subprocess.run([sys.executable, "-m", "tools.memorization", *args], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=600)


def _write_generated(folder, volumes):
    os.makedirs(folder)
    for i, v in enumerate(volumes):
        np.save(os.path.join(folder, f"g{i:02d}.npy"), v)
    return str(folder)


@pytest.fixture(scope="module")
def planted(study_records, tmp_path_factory):
    """Two "generators" as volume folders: training scans plus noise, and held-out scans."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    train = [r.volume for r in records.read_volumes(os.path.join(study_records[0],
                                                                 "train-*.tfrecord"))]
    hold = [r.volume for r in records.read_volumes(os.path.join(study_records[0],
                                                                "val-*.tfrecord"))]
    copies = [np.clip(v + rng.normal(0, 0.005, v.shape), -1, 1).astype(np.float32) for v in train]
    return (_write_generated(root / "copies", copies),
            _write_generated(root / "holdout", [v.astype(np.float32) for v in hold]))


def _audit(study_records, generated, out):
    records_dir = study_records[0]
    return _run(f"--saved_model={generated}",
                f"--train_records={os.path.join(records_dir, 'train-*.tfrecord')}",
                f"--holdout_records={os.path.join(records_dir, 'val-*.tfrecord')}",
                "--allow_random_features", "--feature_side=32", "--voxel_size=16", "--pairs=3",
                f"--output_dir={out}", "--fail_on_memorisation")


@pytest.mark.slow
def test_training_scans_plus_noise_are_flagged(study_records, planted, tmp_path):
    res = _audit(study_records, planted[0], tmp_path)
    assert res.returncode == 1, res.stderr
    assert res.stdout.startswith("MEMORISATION SUSPECTED")
    result = json.load(open(tmp_path / "memorization.json"))
    assert result["feature_side"] == 32  # 64^3 scans averaged down to --feature_side
    for space in ("features", "voxels"):
        stats = result["spaces"][space]
        assert stats["copies"] == 10 and stats["copy_share"] == 1.0 and stats["flagged"]
        assert stats["closer_to_train_share"] == 1.0
        assert stats["closer_to_train_expected"] == pytest.approx(10 / 16)
    # each copy's nearest training scan is the one it was made from (g00 from the first, ...)
    train_ids = records.record_case_ids(records.list_record_files(
        os.path.join(study_records[0], "train-*.tfrecord")))
    nearest = {r["generated"]: r["nearest_train"] for r in result["closest"]["voxels"]}
    assert [nearest[f"generated {i}"] for i in range(10)] == train_ids
    # the voxel distance of a copy is about the noise: 0.005 x 812 HU (half the CT window)
    assert result["spaces"]["voxels"]["d_train_median"] < 0.005 * 812
    for rank in (1, 2, 3):
        with open(tmp_path / f"closest_voxels_{rank:02d}.png", "rb") as fh:
            assert fh.read(4) == b"\x89PNG"
    assert not os.path.exists(tmp_path / "closest_voxels_04.png")


@pytest.mark.slow
def test_held_out_scans_are_not_flagged(study_records, planted, tmp_path):
    res = _audit(study_records, planted[1], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("no memorisation detected")
    result = json.load(open(tmp_path / "memorization.json"))
    for stats in result["spaces"].values():
        assert stats["copies"] == 0 and stats["closer_to_train_share"] == 0.0
        assert not stats["flagged"] and stats["ratio_quantiles"]["p0"] is None  # d_hold = 0


def test_space_statistics_on_hand_made_points():
    config = memorization.AuditConfig("", "", "", "")
    train = np.array([[0.0], [10.0]])
    hold = np.array([[4.0], [20.0]])  # nearest training scans 4 and 10 away: threshold 4
    gen = np.array([[1.0], [7.0], [19.0]])
    stats = memorization.audit_space(gen, train, hold, 2.0, config)
    d_train, _, d_hold, _, ratio = stats.pop("_rows")
    np.testing.assert_allclose(d_train, [2.0, 6.0, 18.0])  # scaled by 2
    np.testing.assert_allclose(ratio, [1 / 3, 1.0, 9.0])
    # copies: 1 and 7 lie closer to a training point (1, 3) than any held-out one does (4)
    assert stats["copy_threshold"] == 8.0 and stats["copies"] == 2
    assert stats["closer_to_train_share"] == pytest.approx(1 / 3)  # 7 is as near to both
    assert stats["closer_to_train_expected"] == 0.5
    assert stats["closer_to_train_p_value"] == pytest.approx(7 / 8)  # P(X >= 1), n=3, p=1/2
    # P(X >= 2), n=3, p = 1/3 (1 / (2 held-out + 1)): 2 copies in 3 is what chance gives
    assert stats["copy_p_value"] == pytest.approx(7 / 27)
    assert not stats["flagged"]


def test_a_feature_side_below_medicalnets_is_refused_by_name(tmp_path):
    config = memorization.AuditConfig("gen", "train", "hold", str(tmp_path / "out"),
                                      feature_side=8)
    with pytest.raises(memorization.EvaluationError, match="`feature_side` must be >= 16, got 8"):
        memorization.run_audit(config, log=lambda m: None)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow
def test_a_saved_model_is_audited_only_on_scans_it_never_saw(study_records, conditional_export,
                                                             tmp_path):
    records_dir = study_records[0]
    res = _run(f"--saved_model={conditional_export[0]}",
               f"--train_records={os.path.join(records_dir, 'val-*.tfrecord')}",
               f"--holdout_records={os.path.join(records_dir, 'train-*.tfrecord')}",
               "--allow_random_features", f"--output_dir={tmp_path}")
    assert res.returncode == 2
    assert "10 --holdout_records case(s) were in the generator's training data" in res.stderr
    res = _run(f"--saved_model={conditional_export[0]}",
               f"--train_records={os.path.join(records_dir, 'train-*.tfrecord')}",
               f"--holdout_records={os.path.join(records_dir, 'val-*.tfrecord')}",
               "--allow_random_features", "--feature_side=32", "--num_samples=4",
               "--voxel_size=16", "--pairs=1",
               f"--output_dir={tmp_path}", "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["generated"] == {"source": conditional_export[0], "kind": "savedmodel",
                                   "count": 4, "seed": 0}
    assert result["holdout_unseen_by_generator"] == {"generator_training_cases": 10,
                                                     "train_records_not_in_them": 0}
    assert result["train"] == 10 and result["holdout"] == 6 and not result["pretrained"]


@pytest.mark.slow
def test_without_weights_the_error_names_the_installed_command_and_the_random_option(
        study_records, tmp_path):
    """The docs' audit line without --weights: the error names crfgan-import-medicalnet
    (what an installed user has) and --allow_random_features, and does not speak of FID."""
    records, _ = study_records
    folder = tmp_path / "gen"
    _write_generated(folder, [np.zeros((64, 64, 64), np.float32) - 1] * 2)
    res = _run(f"--saved_model={folder}", f"--train_records={records}/train-*.tfrecord",
               f"--holdout_records={records}/val-*.tfrecord", f"--output_dir={tmp_path / 'a'}")
    assert res.returncode == 2, res.stderr[-2000:]
    (line,) = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert "crfgan-import-medicalnet" in line and "--allow_random_features" in line, line
    assert "3D FID needs" not in line, line
