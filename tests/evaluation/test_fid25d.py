"""The 2.5D FID's protocol (evaluation.fid25d, docs/evaluation.md), pinned on volumes whose
slices are known: which slices, in which order, scaled how."""

import numpy as np
import pytest

from crfgan_tf.core import intensity
from crfgan_tf.evaluation import fid25d, metrics
from crfgan_tf.evaluation.sources import EvaluationError

WINDOW = intensity.CT_WINDOW


def _unit(hu):
    return intensity.to_unit(np.asarray(hu, np.float32), WINDOW).astype(np.float32)


def test_centre_slices_are_maisis():
    # int((1 - 0.4) / 2 * n), int((1 + 0.4) / 2 * n)
    assert fid25d.centre_range(64) == (19, 44)
    assert fid25d.centre_range(128) == (38, 89)
    assert fid25d.centre_range(256) == (76, 179)
    assert fid25d.centre_range(10, ratio=1.0) == (0, 10)


def test_plane_slices_on_a_ramp_along_z():
    z = np.arange(64, dtype=np.float32)
    hu = np.broadcast_to((20.0 * z - 1000.0)[:, None, None], (64, 64, 64))  # -1000..260 HU
    out = fid25d.plane_slices(_unit(hu), WINDOW)
    assert set(out) == {"axial", "coronal", "sagittal"}
    for plane in out:
        assert out[plane].shape == (25, 64, 64, 3) and out[plane].dtype == np.float32
    # axial: slices 19..43, each constant; scaled together: slice j -> (j - 19) / 24
    axial = out["axial"]
    expected = (np.arange(19, 44) - 19) / 24.0
    np.testing.assert_allclose(axial[:, 5, 7, 0], expected - 0.406, atol=1e-4)
    np.testing.assert_allclose(axial[:, 5, 7, 1], expected - 0.456, atol=1e-4)
    np.testing.assert_allclose(axial[:, 5, 7, 2], expected - 0.485, atol=1e-4)
    # coronal (along y) and sagittal (along x): every slice holds the whole ramp, rows = z
    for plane in ("coronal", "sagittal"):
        np.testing.assert_allclose(out[plane][3, :, 9, 0], z / 63.0 - 0.406, atol=1e-4)


def test_plane_slices_clip_at_minus_1000_hu_and_are_blind_to_a_shift():
    rng = np.random.default_rng(0)
    hu = rng.uniform(-900, 500, (32, 32, 32)).astype(np.float32)
    hu[16, 16, 16] = -1024.0  # below MAISI's range, inside the central axial slices:
    out = fid25d.plane_slices(_unit(hu), WINDOW)  # clipped to -1000, then the minimum
    assert out["axial"][..., 0].min() == pytest.approx(-0.406, abs=1e-6)
    assert out["axial"][..., 0].max() == pytest.approx(1 - 0.406, abs=1e-6)
    # the min-max scaling of each plane's slices: a uniform shift of the HU values
    # (inside the clip range) changes nothing (up to the float32 round trip through
    # [-1, 1]), a property of the protocol to know
    hu[hu < -950] = -950.0
    a = fid25d.plane_slices(_unit(hu), WINDOW)
    b = fid25d.plane_slices(_unit(hu + 50.0), WINDOW)
    for plane in a:
        np.testing.assert_allclose(a[plane], b[plane], atol=1e-3)


class _MeanFeatures:
    """A stand-in network: the per-channel mean and mean square of each slice."""

    def __call__(self, x, training=False):
        x = np.asarray(x)
        return np.concatenate([x.mean(axis=(1, 2)), (x ** 2).mean(axis=(1, 2))], axis=1)


def test_fid25d_is_the_mean_of_three_plane_distances():
    rng = np.random.default_rng(1)
    extractor = fid25d.SliceExtractor(_MeanFeatures(), "stub", "", False, WINDOW)
    real_vols = [_unit(rng.uniform(-1000, 600, (16, 16, 16))) for _ in range(3)]
    fake_vols = [_unit(rng.uniform(-1000, 0, (16, 16, 16))) for _ in range(3)]
    real = fid25d.stack([extractor(v) for v in real_vols])
    fake = fid25d.stack([extractor(v) for v in fake_vols])
    assert real["axial"].shape == (3, 7, 6)  # 3 volumes, slices 4..10 of 16, 6 features
    out = fid25d.fid25d(real, fake)
    for plane in fid25d.PLANES:
        r, f = real[plane].reshape(-1, 6), fake[plane].reshape(-1, 6)
        assert out[plane] == pytest.approx(metrics.fid_from_features(r, f))
    assert out["mean"] == pytest.approx(np.mean([out[p] for p in fid25d.PLANES]))
    assert fid25d.mean_statistic(fid25d.as_array(real), fid25d.as_array(fake)) == \
        pytest.approx(out["mean"])
    assert fid25d.fid25d(real, real)["mean"] == pytest.approx(0.0, abs=1e-9)


def test_without_weights_refused_or_labelled_random(tmp_path):
    with pytest.raises(EvaluationError, match="RadImageNet"):
        fid25d.load_extractor(None)
    with pytest.raises(EvaluationError, match="no file"):
        fid25d.load_extractor(str(tmp_path / "missing.h5"))


@pytest.mark.slow
def test_a_keras_h5_weights_file_loads_and_random_is_labelled(tmp_path):
    """RadImageNet ships Keras .h5 files of keras.applications.ResNet50(include_top=False):
    one written the same way (Keras' legacy HDF5 layout) loads, and its features equal
    the network's that wrote it; the random fallback is labelled."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    source = fid25d.load_extractor(None, allow_random=True, seed=5)
    assert not source.pretrained and source.name.endswith("random-seed5")
    path = str(tmp_path / "RadImageNet-ResNet50_notop.h5")
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source.model)
    loaded = fid25d.load_extractor(path)
    assert loaded.pretrained and loaded.name == fid25d.NAME and len(loaded.weights_sha256) == 64
    volume = _unit(np.random.default_rng(2).uniform(-1000, 600, (32, 32, 32)))
    a, b = source(volume), loaded(volume)
    for plane in fid25d.PLANES:
        assert a[plane].shape == (13, 2048)  # slices 9..21 of 32
        np.testing.assert_allclose(a[plane], b[plane], rtol=1e-5, atol=1e-5)
