"""tools.fid_mmd and crfgan_tf.evaluation: sources, feature cache, refusal without weights."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from crfgan_tf.core import intensity
from crfgan_tf.data import records
from crfgan_tf.evaluation import features, fid_mmd, metrics, sources
from crfgan_tf.generation import sample as sample_lib
from conftest import REPO



def _write(path, array):
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


@pytest.fixture(scope="module")
def extractor():
    return features.load_extractor(None, allow_random=True)


@pytest.fixture(scope="module")
def volume_dirs(tmp_path_factory):
    """Two folders of 4 int16 HU volumes (16^3), the second brighter."""
    rng = np.random.default_rng(0)
    dirs = []
    for k, offset in enumerate((0, 300)):
        d = tmp_path_factory.mktemp(f"vols{k}")
        for i in range(4):
            hu = rng.integers(-1024, 200, (16, 16, 16)).astype(np.int16) + offset
            _write(d / f"v{i}.nii.gz", hu)
        dirs.append(str(d))
    return dirs


def test_volume_folder_source_windows_integer_hu(volume_dirs):
    src = sources.open_source(volume_dirs[0])
    assert (src.kind, src.count) == ("volumes", 4)
    first = next(src.volumes())
    hu = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(volume_dirs[0], "v0.nii.gz")))
    np.testing.assert_array_equal(first, intensity.to_unit(hu, (-1024, 600)))
    assert first.dtype == np.float32 and first.min() >= -1 and first.max() <= 1


def test_source_errors_name_the_problem(tmp_path, volume_dirs, records_64):
    _write(tmp_path / "f.mha", np.full((8, 8, 8), 3.5, np.float32))
    with pytest.raises(sources.EvaluationError, match=r"f.mha: floating-point .*\[-1, 1\]"):
        next(sources.open_source(str(tmp_path / "f.mha")).volumes())
    with pytest.raises(sources.EvaluationError, match="matches no TFRecord"):
        sources.open_source(str(tmp_path / "nothing-*"))
    np.save(tmp_path / "hu.npy", np.full((4, 4, 4), -1024, np.int16))
    only = sources.open_source(str(tmp_path / "hu.npy"))
    np.testing.assert_array_equal(next(only.volumes()), -np.ones((4, 4, 4), np.float32))
    with pytest.raises(sources.EvaluationError, match="at least 2 volumes"):
        fid_mmd.fid_mmd(only, only, None, log=lambda m: None)
    mixed = f"{volume_dirs[0]}/*.nii.gz,{records_64}/*.tfrecord"
    with pytest.raises(sources.EvaluationError, match="both TFRecords"):
        sources.open_source(mixed)


def test_load_extractor_refuses_without_weights(tmp_path):
    with pytest.raises(sources.EvaluationError, match="import_medicalnet"):
        features.load_extractor(None)
    with pytest.raises(sources.EvaluationError, match="no file"):
        features.load_extractor(str(tmp_path / "missing.npz"))


@pytest.mark.slow
def test_fid_mmd_records_vs_savedmodel_equals_direct_computation(records_64, exported, extractor,
                                                                 tmp_path):
    pattern = os.path.join(records_64, "*.tfrecord")
    real = sources.open_source(pattern)
    fake = sources.open_source(exported[0], num_samples=3, seed=7, batch_size=2)
    assert (real.kind, real.count, fake.kind, fake.count) == ("tfrecord", 5, "savedmodel", 3)
    cache = str(tmp_path / "cache")
    result = fid_mmd.fid_mmd(real, fake, extractor, batch_size=2, cache_dir=cache,
                                log=lambda m: None)

    # The same numbers computed by hand from the same volumes.
    real_vols = np.stack([r.volume for r in records.read_volumes(pattern)])
    module, _ = sample_lib.load(exported[0])
    fake_vols = module.generate(z=sample_lib.latents(7, 0, 3, 16))["volume"].numpy()
    fr, ff = extractor(real_vols), extractor(fake_vols)
    assert result["n_real"] == 5 and result["n_fake"] == 3 and result["feature_dim"] == 2048
    assert result["fid"] == pytest.approx(metrics.fid_from_features(fr, ff), rel=1e-4)
    assert result["mmd"] == pytest.approx(metrics.mmd(fr, ff), rel=1e-4, abs=1e-7)
    assert result["real_cache"] == "miss" and not result["pretrained"]
    assert result["extractor"] == "medicalnet-resnet50-random-seed0"

    again = fid_mmd.fid_mmd(real, fake, extractor, batch_size=1, cache_dir=cache,
                               log=lambda m: None)
    assert again["real_cache"] == "hit" and again["fid"] == pytest.approx(result["fid"], rel=1e-5)
    other = features.load_extractor(None, allow_random=True, random_seed=1)
    assert features.cache_key(real, other) != features.cache_key(real, extractor)


@pytest.mark.slow
def test_volumes_above_the_feature_side_are_averaged_down_first(volume_dirs, extractor,
                                                                tmp_path):
    """512^3 volumes would need MedicalNet at 512^3 (a 256^3 x 64-channel first map per
    volume): above --feature_side they are averaged over f^3 blocks (f = side / feature
    side) first, and the results say at which side the features were taken."""
    small = features.load_extractor(None, allow_random=True, max_side=8)
    vols = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 16)).astype(np.float32)
    blocks = vols.reshape(2, 8, 2, 8, 2, 8, 2).mean(axis=(2, 4, 6))
    np.testing.assert_allclose(small(vols), extractor(blocks), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(small(blocks), extractor(blocks))  # at or below: as is
    assert (small.input_side(16), small.input_side(8), extractor.input_side(512)) == (8, 8, 256)
    src = sources.open_source(volume_dirs[0])  # 16^3 volumes
    assert features.cache_key(src, small) != features.cache_key(src, extractor)
    result = fid_mmd.fid_mmd(src, sources.open_source(volume_dirs[1]), small,
                             log=lambda m: None)
    assert result["real_feature_side"] == result["fake_feature_side"] == 8
    assert fid_mmd.fid_mmd(src, src, extractor, log=lambda m: None)["real_feature_side"] == 16
    with pytest.raises(sources.EvaluationError, match="`feature_side"):
        small(np.zeros((1, 12, 12, 12), np.float32))  # not a multiple of 8


def test_fid_of_a_set_with_itself_is_zero(volume_dirs, extractor):
    src = sources.open_source(volume_dirs[0])
    result = fid_mmd.fid_mmd(src, src, extractor, log=lambda m: None)
    assert result["fid"] == pytest.approx(0.0, abs=1e-6 * max(1.0, result["mmd_sigma"] ** 2))


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "tools.fid_mmd", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_refuses_fid_without_weights_and_reports_labelled_fallback(volume_dirs, tmp_path):
    res = _cli(f"--real={volume_dirs[0]}", f"--fake={volume_dirs[1]}", "--cache_dir=")
    assert res.returncode == 2 and "import_medicalnet" in res.stderr
    res = _cli(f"--real={volume_dirs[0]}", f"--fake={volume_dirs[1]}/*.nii.gz",
               "--allow_random_features", f"--cache_dir={tmp_path}", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"fid", "mmd", "n_real", "n_fake", "extractor", "weights_sha256"} <= set(out)
    assert out["n_real"] == out["n_fake"] == 4 and out["fid"] > 0 and not out["pretrained"]
    assert "random" in out["extractor"] and len(out["weights_sha256"]) == 64
    assert "features real: 4/4 [" in res.stderr and "volumes/s" in res.stderr
    text = _cli(f"--real={volume_dirs[0]}", f"--fake={volume_dirs[1]}",
                "--allow_random_features", f"--cache_dir={tmp_path}")
    assert text.returncode == 0 and "RANDOM features (not FID)" in text.stdout
    bad = _cli(f"--real={volume_dirs[0]}", f"--fake={volume_dirs[1]}", "--window=600,-1024",
               "--allow_random_features")
    assert bad.returncode == 2 and "--window" in bad.stderr


def test_average_down_keeps_every_axis_of_a_volume_that_is_not_a_cube():
    """A volume file need not be a cube: each axis is averaged by the same factor."""
    from crfgan_tf.evaluation import features

    batch = np.arange(2 * 8 * 16 * 4, dtype=np.float32).reshape(2, 8, 16, 4)
    out = features.average_down(batch, 4)
    assert out.shape == (2, 2, 4, 1)
    assert out[1, 1, 3, 0] == batch[1, 4:8, 12:16, 0:4].mean()
