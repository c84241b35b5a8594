"""crfgan-study (crfgan_tf/studies/study.py, report.py): flags refused before any work; the
report from known measurements (its numbers, its tables, the page in Chromium); and, in
the slow tier, a micro study through the command: reports written, a rerun that does
nothing, a second writer refused, changed settings refused, a killed study resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from crfgan_tf.evaluation import metrics
from crfgan_tf.studies import report as report_lib
from crfgan_tf.studies import study as study_lib
from crfgan_tf.utils import dirlock
from support import chromium


def _study(tmp_path, **kw):
    base = dict(study_dir=str(tmp_path / "study"), train_records="unused-*.tfrecord",
                real_records="unused-*.tfrecord",
                arms=study_lib.parse_arms(["crfgan", "hagan"]), seeds=[0, 1], train_steps=4,
                num_samples=8, eval_every=2, img_size=64, width=0.125,
                allow_random_features=True, resamples=200, permutations=200)
    base.update(kw)
    return study_lib.Study(study_lib.StudyConfig(**base), log=lambda m: None)


def _measure(path, features, anatomy, rng, with25d):
    n = features.shape[0]
    out = {"features3d": features.astype(np.float32), "anatomy": np.array(json.dumps(anatomy)),
           "ms_ssim_pairs": rng.uniform(0.8, 0.9, n // 2), "count": np.array(n),
           "mid_slices": rng.uniform(-1, 1, (4, 3, 16, 16)).astype(np.float16),
           "window": np.array([-1024.0, 600.0]), "extractor": np.array("stub-random"),
           "pretrained": np.array(False)}
    if with25d:
        out["features25d"] = (features[:, None, None, :4]
                              + rng.normal(0, 0.1, (n, 3, 5, 4))).astype(np.float32)
        out["extractor25d"] = np.array("stub2d")
        out["pretrained25d"] = np.array(False)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **out)


def _anatomy(rng, n, sd):
    return [{"body_fraction": float(0.3 + rng.normal(0, sd)),
             "lung_fraction": float(0.15 + rng.normal(0, sd)), "lung_median_hu": -850.0,
             "soft_tissue_median_hu": 20.0, "air_median_hu": -1000.0} for _ in range(n)]


def _fake_study(tmp_path):
    """Measurements as the stages would leave them: 'crfgan' drawn like the real set,
    'hagan' shifted and collapsed (one anatomy)."""
    study = _study(tmp_path)
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(6, 16))
    real = rng.normal(size=(16, 6)) @ basis
    _measure(study.measure_path("real"), real, _anatomy(rng, 16, 0.03), rng, True)
    for seed in (0, 1):
        for step in (2, 4):
            good = rng.normal(size=(8, 6)) @ basis
            bad = rng.normal(size=(8, 6)) @ basis * 0.2 + 3.0
            _measure(study.measure_path(f"crfgan-seed{seed}-step-{step}"), good,
                     _anatomy(rng, 8, 0.03), rng, step == 4)
            _measure(study.measure_path(f"hagan-seed{seed}-step-{step}"), bad,
                     _anatomy(rng, 8, 0.001), rng, step == 4)
        for arm, rss, speed in (("crfgan", 900, 0.25), ("hagan", 1100, 0.4)):
            run = study.run_dir(arm, seed)
            os.makedirs(run, exist_ok=True)
            with open(os.path.join(run, "study_train.json"), "w") as f:
                json.dump({"peak_rss_bytes": (rss + seed) * 2 ** 20,
                           "seconds_per_iteration": speed + 0.01 * seed,
                           "parameters": {"total": 1000 if arm == "crfgan" else 1400}}, f)
    return study, real


def test_report_from_known_measurements(tmp_path):
    study, real = _fake_study(tmp_path)
    report = report_lib.write(study)
    crf, ha = report["arms"]["crfgan"], report["arms"]["hagan"]
    # the pooled value is the FD of the real set against both seeds' volumes
    pooled = np.concatenate([report_lib.load_measure(study.measure_path(
        f"crfgan-seed{s}-step-4"))["features3d"] for s in (0, 1)])
    assert crf["final"]["fd"]["value"] == pytest.approx(metrics.fid_from_features(
        real.astype(np.float32), pooled), rel=1e-5)
    for arm in (crf, ha):
        lo, hi = arm["final"]["fd"]["ci95"]
        assert lo < arm["final"]["fd"]["value"] < hi
        assert arm["final"]["fd"]["bootstrap_bias"] > 0  # repeated volumes: FD rises
        assert [s["step"] for s in arm["steps"]] == [2, 4]
        assert arm["final"]["seeds"]["fd"]["n"] == 2 and "fid25d" in arm["final"]
    pair = report["pairs"][0]
    assert (pair["a"], pair["b"]) == ("crfgan", "hagan")
    assert pair["fd"]["value"] < 0 and pair["fd"]["p_value"] < 0.01
    assert pair["fd"]["ci95"][1] < 0 and pair["fid25d"]["p_value"] is None
    # the collapsed arm raises the alarms, the other not
    assert crf["final"]["alarms"] == []
    assert any("coverage" in a for a in ha["final"]["alarms"])
    assert any("one anatomy repeated" in a for a in ha["final"]["alarms"])
    assert ha["final"]["coverage"]["coverage"] < 0.5 <= crf["final"]["coverage"]["coverage"]
    assert crf["training"]["seconds_per_iteration"]["mean"] == pytest.approx(0.255)
    assert ha["training"]["peak_rss_mib"]["mean"] == pytest.approx(1100.5)
    assert report["paper"] == {}  # 64^3 at 1/8 width: nothing of the paper's compares
    assert report_lib.is_current(study)
    md = open(os.path.join(study.dir, report_lib.MD)).read()
    assert "| crfgan − hagan |" in md and "RANDOM features" in md
    page = os.path.join(study.dir, report_lib.HTML)
    text = open(page).read()
    assert text.count("data:image/png;base64,") == 5 and "http" not in text.replace(
        "http-equiv", "")
    assert sorted(os.listdir(os.path.join(study.dir, report_lib.FIGURES))) == [
        "anatomy.png", "curves.png", "grid_lung.png", "grid_soft_tissue.png", "training.png"]
    shot, console = chromium.render(page, str(tmp_path))
    assert console == [] and os.path.getsize(shot) > 50_000


class _StubFeatures:
    """Stand-ins for the two ResNet-50s (their own tests are in tests/evaluation): the
    mean and mean square of each input, with the attributes Meter records."""
    name, weights_sha256, pretrained = "stub", "", False

    def __call__(self, x, training=False):
        x = np.asarray(x)
        axes = tuple(range(1, x.ndim))
        return np.stack([x.mean(axis=axes), (x ** 2).mean(axis=axes)], axis=1)


def test_the_meter_measures_each_volume_once_for_everything(tmp_path, monkeypatch):
    """What a stage stores per set, with stand-in networks: the fast tier's check of
    Meter's wiring (the slow micro study runs it with the real ones, through the
    command)."""
    from crfgan_tf.evaluation import features, fid25d

    monkeypatch.setattr(features, "load_extractor", lambda *a, **k: _StubFeatures())
    study = _study(tmp_path, img_size=64, feature_side=16)
    meter = study_lib.Meter(study.c, (-1024.0, 600.0))
    meter._extractor25d = fid25d.SliceExtractor(_StubFeatures(), "stub2d", "", False,
                                                meter.window)
    rng = np.random.default_rng(0)
    volumes = [rng.uniform(-1, 1, (32, 32, 32)).astype(np.float32) for _ in range(5)]
    out = meter.measure(iter(volumes))
    assert int(out["count"]) == 5 and out["features3d"].shape == (5, 2)
    np.testing.assert_allclose(out["features3d"][:, 0], [v.mean() for v in volumes],
                               rtol=1e-5)
    anatomy = json.loads(str(out["anatomy"]))
    assert len(anatomy) == 5 and set(anatomy[0]) >= {"body_fraction", "lung_fraction"}
    assert out["ms_ssim_pairs"].shape == (2,)  # disjoint pairs (0, 1), (2, 3)
    assert out["mid_slices"].shape == (4, 3, 32, 32)  # GRID_VOLUMES, three planes
    assert out["features25d"].shape == (5, 3, 13, 2)  # slices 9..21 of 32 per plane
    assert tuple(out["window"]) == (-1024.0, 600.0) and str(out["extractor25d"]) == "stub2d"
    meter.slices25d = False  # an intermediate step: no 2.5D features
    assert "features25d" not in meter.measure(iter(volumes[:2]))


def test_paper_columns_only_where_they_compare(tmp_path):
    full = _study(tmp_path, width=1.0, img_size=128, batch_size=2)
    cols = report_lib.paper_columns(full)
    assert cols["table3_parameters_millions"] == {"crfgan": 57.20, "hagan": 79.58}
    assert cols["table4_memory_mb_batch2"] == {"crfgan": 2622, "hagan": 2812}
    assert "table1" not in cols  # not LUNA16 at 256^3
    assert report_lib.paper_columns(_study(tmp_path, width=0.5, img_size=128)) == {}


def test_an_arms_flagfile_overrides_the_common_flags_and_gives_way_to_the_studys(tmp_path):
    arm = tmp_path / "luna.flags"
    arm.write_text("--model=hagan\n--width=0.5\n--img_size=256\n--model_dir=runs/x\n")
    study = _study(tmp_path, arms=study_lib.parse_arms(["crfgan", f"big={arm}"]))
    assert study.c.arms[1].model == "hagan"
    cmd = study.train_command(study.c.arms[1], 1)
    value = lambda name: [c for c in cmd if c.startswith(f"--{name}=")][-1]  # noqa: E731
    flagfile = cmd.index(f"--flagfile={arm}")
    assert cmd.index("--width=0.125") < flagfile  # the common width, then the arm's 0.5
    assert value("img_size") == "--img_size=64" and cmd.index(value("img_size")) > flagfile
    assert value("model_dir") == f"--model_dir={study.run_dir('big', 1)}"
    assert value("seed") == "--seed=1" and value("eval_every") == "--eval_every=0"
    assert value("keep_checkpoints") == "--keep_checkpoints=3"  # steps 2 and 4, and one more
    lines = []
    study.log = lines.append
    study.c.arms = study.c.arms[1:]
    with pytest.raises(study_lib.StudyError):  # the dry run: no records here
        study.check_arms()
    assert any("sets --img_size, --model_dir for every arm" in l for l in lines)


def _cli(*flags, tf_logs="2", **popen):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL=tf_logs)
    if tf_logs is None:  # as a user runs it
        env.pop("TF_CPP_MIN_LOG_LEVEL")
    return subprocess.run([sys.executable, "-m", "tools.study", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900, **popen)


def test_bad_flags_are_refused_before_any_work(tmp_path):
    base = [f"--study_dir={tmp_path / 's'}", "--train_records=x-*.tfrecord",
            "--real_records=x-*.tfrecord", "--train_steps=2", "--allow_random_features"]
    out = _cli(*base, "--arms=crfgan,bogus")
    assert out.returncode == 2 and "--arms: 'bogus' is neither a model" in out.stderr
    out = _cli(*base, "--seeds=0,0")
    assert out.returncode == 2 and "--seeds repeats a seed" in out.stderr
    out = _cli(*base, "--train_flags=--model_dir=elsewhere")
    assert out.returncode == 2 and "--model_dir is set by the study itself" in out.stderr

    assert not os.path.exists(tmp_path / "s")


def _micro(records, study_dir, arm_flags, *extra):
    return [f"--study_dir={study_dir}", f"--train_records={records}/train-*.tfrecord",
            f"--real_records={records}/*.tfrecord", f"--arms=crfgan,alt={arm_flags}",
            "--seeds=0", "--train_steps=2", "--eval_every=1", "--num_samples=4",
            "--img_size=64", "--width=0.0625", "--train_flags=--latent_dim=16 --log_every=1",
            "--allow_random_features", "--feature_side=16", "--resamples=20",
            "--permutations=20", *extra]


@pytest.mark.slow
def test_micro_study_through_the_command(records_64, tmp_path):
    arm_flags = tmp_path / "alt.flags"
    arm_flags.write_text("--model=crfgan\n--lr_g=0.0002\n")
    study_dir = tmp_path / "study"
    args = _micro(records_64, study_dir, arm_flags)
    # killed during its first training run (the whole process group, as a scheduler does)
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", "tools.study", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    log = study_dir / "logs" / "crfgan-seed0.log"
    deadline = time.time() + 300
    while not (log.exists() and "step 1/2" in log.read_text()) and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (study_dir / "measure" / "real.npz").exists()
    real_mtime = os.path.getmtime(study_dir / "measure" / "real.npz")
    # the rerun takes over the dead holder's locks and finishes, without TensorFlow's
    # C++ log lines on the console
    out = _cli(*args, tf_logs=None)
    assert out.returncode == 0, out.stderr[-3000:]
    noise = [l for l in out.stderr.splitlines() if l[:5] in ("I0000", "W0000", "E0000")]
    assert not noise, noise[:3]
    assert "crfgan - alt: FD difference" in out.stdout
    assert os.path.getmtime(study_dir / "measure" / "real.npz") == real_mtime
    for name in (report_lib.JSON, report_lib.MD, report_lib.HTML):
        assert (study_dir / name).exists()
    report = json.loads((study_dir / report_lib.JSON).read_text())
    assert set(report["arms"]) == {"crfgan", "alt"}
    assert report["arms"]["alt"]["flagfile"] == str(arm_flags)
    for arm in report["arms"].values():
        assert [s["step"] for s in arm["steps"]] == [1, 2]
        assert arm["training"]["parameters"] == 135818
        assert arm["training"]["seconds_per_iteration"]["mean"] > 0
    # finished: a rerun does nothing
    mtimes = {p: os.path.getmtime(p) for p in (study_dir / "measure").iterdir()}
    out = _cli(*args)
    assert out.returncode == 0 and "nothing to do" in out.stderr
    assert {p: os.path.getmtime(p) for p in (study_dir / "measure").iterdir()} == mtimes
    # other settings: refused by name
    out = _cli(*_micro(records_64, study_dir, arm_flags, "--num_samples=6"))  # the last wins
    assert out.returncode == 2 and "--num_samples was 4, now 6" in out.stderr
    # a second writer: refused while the lock is held
    with dirlock.DirLock(str(study_dir), "`study_dir`"):
        out = _cli(*args)
    assert out.returncode == 2 and "is being written" in out.stderr
    shot, console = chromium.render(str(study_dir / report_lib.HTML), str(tmp_path))
    assert console == []


def test_settings_of_a_start_that_finished_nothing_give_way(tmp_path):
    said = []
    first = _study(tmp_path)
    os.makedirs(first.dir)
    assert first.check_settings() is True
    first.write_settings()
    assert first.check_settings() is False  # the same settings: nothing to write
    second = _study(tmp_path, arms=study_lib.parse_arms(["crfgan"]))
    second.log = said.append
    assert second.check_settings() is True
    assert "finished nothing" in said[0] and "`arms` was" in said[0], said
    second.write_settings()
    _measure(second.measure_path("real"), np.zeros((4, 3)), [], np.random.default_rng(0), False)
    with pytest.raises(study_lib.StudyError, match="other settings .* and finished work"):
        _study(tmp_path, seeds=[0]).check_settings()


@pytest.mark.slow
def test_a_refused_first_try_leaves_nothing_that_blocks_the_corrected_one(records_64, tmp_path):
    study_dir = tmp_path / "s"
    base = [f"--study_dir={study_dir}", f"--train_records={records_64}/train-*.tfrecord",
            "--seeds=0", "--train_steps=2", "--img_size=64", "--width=0.0625",
            "--num_samples=4", "--allow_random_features", "--train_flags=--latent_dim=16"]
    out = _cli(*base, f"--real_records={records_64}/*.tfrecord", "--arms=crfgan,hagan")
    assert out.returncode == 2 and "arm 'hagan': crfgan-train refuses its flags" in out.stderr, \
        out.stderr[-2000:]
    assert not os.path.exists(study_dir / study_lib.STUDY_FILE)
    # the corrected arms pass the settings; this try stops at the next check (no real volumes)
    out = _cli(*base, f"--real_records={tmp_path}/none-*.tfrecord", "--arms=crfgan")
    assert out.returncode == 2 and "other settings" not in out.stderr, out.stderr[-2000:]
    assert "none-*.tfrecord" in out.stderr, out.stderr[-2000:]
