"""The quality gate on samples (crfgan_tf/evaluation/quality.py): ranges from training
volumes; a volume like them passes; an intensity shift of +200 HU, filled lungs and noise
fail, each on the statistics that show it; through crfgan-sample --quality_check a
failing sample is regenerated from its next latents and every try is in quality.json."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from crfgan_tf.data import phantom
from crfgan_tf.evaluation import physical, quality

SPEC = phantom.PhantomSpec(in_plane=64, num_slices=40, spacing_zyx=(5.0, 5.6, 5.6),
                           blank_slices=1)


def _hu(seed):
    """A phantom in the window the records keep (-1024..600 HU)."""
    return np.clip(phantom.make_phantom(seed, SPEC), -1024, 600).astype(np.float32)


@pytest.fixture(scope="module")
def ranges():
    return {"ranges": quality.ranges_from([quality.statistics(_hu(s)) for s in range(8)])}


def test_a_volume_like_the_training_data_passes_and_the_controls_fail(ranges):
    accept = quality.gate(ranges)
    passed, record = accept(_hu(8), None)
    assert passed and record["failed"] == [], record
    shifted = np.clip(_hu(8) + 200, -1024, 600)
    passed, record = accept(shifted, None)
    assert not passed and {"lung_median_hu", "air_median_hu"} <= set(record["failed"]), record
    filled = _hu(8)
    _, lungs = physical.body_and_lungs(filled)
    filled[lungs] = 40.0  # the lungs filled with soft tissue
    passed, record = accept(filled, None)
    assert not passed and "lung_fraction" in record["failed"], record
    noise = np.random.default_rng(0).uniform(-1024, 600, size=(40, 64, 64)).astype(np.float32)
    assert not accept(noise, None)[0]


def test_the_ranges_widen_the_training_spread_by_a_margin():
    rows = [{k: v for k, v in zip(quality.STATISTICS, (0.30, 0.10, -860.0, 20.0, -1010.0))},
            {k: v for k, v in zip(quality.STATISTICS, (0.40, 0.20, -850.0, 30.0, -1000.0))}]
    r = quality.ranges_from(rows)
    assert r["body_fraction"] == pytest.approx({"min": 0.30, "max": 0.40, "low": 0.275,
                                                "high": 0.425})  # a quarter of the spread
    assert r["lung_median_hu"] == {"min": -860.0, "max": -850.0, "low": -890.0,
                                   "high": -820.0}  # at least 30 HU


def _sample(*args):
    return subprocess.run([sys.executable, "-m", "crfgan_tf.sample", *args], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_quality_check_through_the_command(exported, records_64, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(exported[0], export)
    res = _sample(f"--saved_model={export}", "--num_samples=2", f"--output_dir={tmp_path / 'a'}",
                  "--quality_check")
    assert res.returncode == 2 and "has no quality_ranges.json: export the run again" in res.stderr
    quality.write_ranges(str(export), os.path.join(records_64, "train-*.tfrecord"),
                         exported[1]["window"], log=lambda m: None)
    card = json.load(open(export / "model_card.json"))
    assert set(card["quality_gate"]["ranges"]) == set(quality.STATISTICS)
    assert "## Quality gate" in open(export / "MODEL_CARD.md").read()
    # a model trained for one step makes noise: every try fails, each is recorded
    res = _sample(f"--saved_model={export}", "--num_samples=2", f"--output_dir={tmp_path / 'b'}",
                  "--quality_check", "--quality_tries=3", "--seed=4")
    assert res.returncode == 1 and "2 of 2 samples failed the quality gate" in res.stderr
    report = json.load(open(tmp_path / "b" / "quality.json"))
    assert (report["passed"], report["failed"], report["max_tries"]) == (0, 2, 3)
    for k, s in enumerate(report["samples"]):
        assert [t["latent_index"] for t in s["tries"]] == [k, k + 2, k + 4]
        assert s["passed"] is False and s["latent_index"] == k + 4 and s["seed"] == 4
        assert set(s["tries"][0]["statistics"]) == set(quality.STATISTICS)
        assert (tmp_path / "b" / (s["file"])).exists()
    # crfgan-fid-mmd reports the pass rate of the volumes it generates
    res = subprocess.run([sys.executable, "-m", "tools.fid_mmd", f"--real={records_64}/*.tfrecord",
                          f"--fake={export}", "--num_samples=2", "--allow_random_features",
                          "--quality_check", "--json", f"--cache_dir={tmp_path / 'cache'}"],
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    gate = json.loads(res.stdout.strip().splitlines()[-1])["quality"]
    assert (gate["volumes"], gate["passed"], gate["pass_rate"]) == (2, 0, 0.0)
    assert sum(gate["failed"].values()) >= 2
