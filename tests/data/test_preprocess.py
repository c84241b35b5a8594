import numpy as np
import pytest
import SimpleITK as sitk

from crfgan_tf.core import intensity
from crfgan_tf.data import preprocess as pp
from crfgan_tf.data import phantom, scan_files


@pytest.fixture(scope="module")
def scan():
    spec = phantom.PhantomSpec(in_plane=48, num_slices=30, blank_slices=2, noise_hu=10.0)
    return phantom.make_phantom(5, spec), spec


@pytest.mark.parametrize("flips", [(0,), (1,), (2,), (0, 1, 2)])
@pytest.mark.parametrize("suffix", [".mhd", ".nii.gz"])
def test_flipped_storage_reads_back_identical(tmp_path, scan, flips, suffix):
    vol, spec = scan
    ref = phantom.write_scan(vol, str(tmp_path / f"ref{suffix}"), spec.spacing_zyx)
    flipped = phantom.write_scan(vol, str(tmp_path / f"flip{suffix}"), spec.spacing_zyx,
                                 flip_axes=flips)
    a, sa, oa, code_a = pp.read_canonical(ref)
    b, sb, ob, code_b = pp.read_canonical(flipped)
    assert code_a == "LPS" and code_b != "LPS"
    np.testing.assert_array_equal(a, vol)
    np.testing.assert_array_equal(b, vol)
    np.testing.assert_allclose(sb, spec.spacing_zyx, rtol=1e-5)
    np.testing.assert_allclose(ob, oa, atol=1e-3)
    opts = pp.PreprocessOptions(size=16)
    np.testing.assert_array_equal(pp.process_scan(ref, opts).volume,
                                  pp.process_scan(flipped, opts).volume)


@pytest.mark.parametrize("pad", [-2000, -2048, -3024])
def test_padding_becomes_floor(pad):
    arr = np.array([[[pad, -1000, 40, 1200]]], dtype=np.int16)
    hu, mask, shift = pp.calibrate_hu(arr)
    assert shift == 0.0
    np.testing.assert_array_equal(hu, [[[-1024, -1000, 40, 1200]]])
    np.testing.assert_array_equal(mask, [[[True, False, False, False]]])


def test_missing_intercept_is_detected_and_shifted():
    stored = np.array([[[0, 24, 1064, 2224]]], dtype=np.uint16)  # HU + 1024
    hu, mask, shift = pp.calibrate_hu(stored)
    assert shift == -1024.0
    np.testing.assert_array_equal(hu, [[[-1024, -1000, 40, 1200]]])
    np.testing.assert_array_equal(mask, [[[True, False, False, False]]])  # 0: padding


def test_air_estimate_and_correction(scan):
    vol, spec = scan
    drifted = phantom.make_phantom(5, phantom.PhantomSpec(
        in_plane=48, num_slices=30, blank_slices=2, noise_hu=10.0, air_offset=25.0))
    hu, pad, _ = pp.calibrate_hu(drifted)
    est = pp.estimate_outside_air(hu, pad)
    assert est == pytest.approx(-975.0, abs=3.0)
    body_before = hu[15, 24, 24]
    hu, shift = pp.correct_air(hu, pad, est)
    assert shift == pytest.approx(-25.0, abs=3.0)
    assert hu[15, 24, 24] == pytest.approx(body_before + shift)
    assert np.all(hu[pad] == -1024.0)  # padding stays at the floor
    assert pp.estimate_outside_air(hu, pad) == pytest.approx(-1000.0, abs=1.0)


def test_air_correction_skips_implausible_shift():
    hu = np.full((2, 4, 4), 50.0, np.float32)
    out, shift = pp.correct_air(hu, np.zeros_like(hu, bool), -700.0, max_shift=100.0)
    assert shift == 0.0 and np.all(out == 50.0)
    assert pp.estimate_outside_air(hu, np.zeros_like(hu, bool)) is None


def test_window_maps_hu_to_unit():
    out = intensity.to_unit(np.array([-3000, -1024, -212, 600, 2000], np.float32))
    np.testing.assert_allclose(out, [-1, -1, 0, 1, 1], atol=1e-6)


def test_mri_window_is_robust_to_bright_outliers():
    rng = np.random.default_rng(0)
    arr = np.zeros((4, 10, 10), np.float32)
    arr[:, 2:8, 2:8] = rng.uniform(100, 200, (4, 6, 6))
    arr[0, 2, 2] = 1e6  # one artefact voxel
    unit, (lo, hi) = pp.mri_window(arr, 99.0)
    assert lo == 0.0 and 190 < hi < 201
    assert unit[1, 0, 0] == -1.0 and unit[0, 2, 2] == 1.0
    with pytest.raises(pp.ScanError):
        pp.mri_window(np.zeros((2, 2, 2)))


def test_trim_removes_only_blank_end_slices():
    arr = -np.ones((7, 3, 3), np.float32)
    arr[2, 1, 1] = 0.2
    arr[5, 0, 0] = 0.1  # slices 3, 4 are blank but interior: kept
    out, trimmed = pp.trim_blank_slices(arr)
    assert trimmed == (2, 1) and out.shape == (4, 3, 3)
    with pytest.raises(pp.ScanError, match="blank"):
        pp.trim_blank_slices(-np.ones((3, 2, 2), np.float32))


def test_resize_keeps_extent_and_linear_values():
    # a linear ramp along z is reproduced exactly by linear interpolation
    z = np.linspace(-1, 1, 40, dtype=np.float32)[:, None, None]
    arr = np.broadcast_to(z, (40, 20, 20)).copy()
    out, spacing, origin = pp.resize_volume(arr, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), 16,
                                            antialias=False)
    assert out.shape == (16, 16, 16)
    np.testing.assert_allclose(spacing, (5.0, 1.25, 1.25))
    np.testing.assert_allclose(origin, (0.125, 0.125, 1.5))  # x, y, z
    centers = origin[2] + 5.0 * np.arange(16)  # physical z of output slices
    expected = np.interp(centers, 2.0 * np.arange(40), z.ravel())
    np.testing.assert_allclose(out[:, 8, 8], expected, atol=1e-5)


def test_process_scan_end_to_end(tmp_path, scan):
    vol, spec = scan
    path = phantom.write_scan(vol, str(tmp_path / "x.mhd"), spec.spacing_zyx)
    res = pp.process_scan(path, pp.PreprocessOptions(size=32))
    assert res.volume.shape == (32, 32, 32) and res.volume.dtype == np.float32
    assert res.volume.min() >= -1.0 and res.volume.max() <= 1.0
    assert res.trimmed_slices == (2, 2)
    assert res.case_id == "x" and res.original_size == (30, 48, 48)
    # extent kept: 26 slices * 2.5 mm over 32 output slices
    assert res.output_spacing[0] == pytest.approx(26 * 2.5 / 32)


def test_corrupt_scans_raise_scan_error(tmp_path, scan):
    vol, spec = scan
    path = phantom.write_scan(vol, str(tmp_path / "t.mhd"), spec.spacing_zyx)
    raw = tmp_path / "t.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    expected = vol.size * 2
    with pytest.raises(pp.ScanError, match=rf"data file .*t.raw is truncated: 1000 bytes, "
                                           rf"expected {expected} \(DimSize 48 x 48 x 30 "
                                           "of MET_SHORT\)"):
        pp.read_canonical(path)
    raw.unlink()
    with pytest.raises(pp.ScanError, match=r"data file .*t.raw is missing"):
        pp.read_canonical(path)
    bad = tmp_path / "h.mhd"
    bad.write_text("ObjectType = Image\nNDims = banana\n")
    with pytest.raises(pp.ScanError):
        pp.read_canonical(str(bad))
    nan = np.full((4, 8, 8), np.nan, np.float32)
    img = sitk.GetImageFromArray(nan)
    sitk.WriteImage(img, str(tmp_path / "n.mha"))
    with pytest.raises(pp.ScanError, match="non-finite"):
        pp.read_canonical(str(tmp_path / "n.mha"))


def test_case_id():
    assert pp.case_id_from_path("/a/subset0/1.3.6.1.mhd") == "1.3.6.1"
    assert pp.case_id_from_path("/g/sub-01_T1w.nii.gz") == "sub-01_T1w"


def test_resize_antialias_removes_aliasing_and_keeps_geometry():
    # a +-1 checkerboard at the in-plane Nyquist frequency averages out to 0 when
    # downsampled by 2 with anti-aliasing; without it linear interpolation aliases it
    yy, xx = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    board = np.where((yy + xx) % 2 == 0, 1.0, -1.0).astype(np.float32)
    arr = np.broadcast_to(board, (16, 32, 32)).copy()
    smooth, _, _ = pp.resize_volume(arr, (1.0, 1.0, 1.0), (0, 0, 0), 16, antialias=True)
    assert np.abs(smooth[:, 2:-2, 2:-2]).max() < 1e-6
    # geometry unchanged by the prefilter: a linear ramp in x stays exact inside
    ramp = np.broadcast_to(np.linspace(-1, 1, 32, dtype=np.float32), (16, 32, 32)).copy()
    a, sa, oa = pp.resize_volume(ramp, (1.0, 1.0, 1.0), (0, 0, 0), 16, antialias=True)
    b, sb, ob = pp.resize_volume(ramp, (1.0, 1.0, 1.0), (0, 0, 0), 16, antialias=False)
    assert sa == sb and oa == ob
    np.testing.assert_allclose(a[:, :, 1:-1], b[:, :, 1:-1], atol=1e-5)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nifti_non_finite_voxels_are_caught(tmp_path, suffix, value):
    """ITK's NIfTI reader turns NaN and inf into 0; the file itself must be checked."""
    vol = np.full((4, 8, 8), -1000.0, np.float32)
    vol[1, 2, 3] = value
    vol[2, 5, 5] = value
    path = str(tmp_path / f"n{suffix}")
    sitk.WriteImage(sitk.GetImageFromArray(vol), path)
    assert scan_files.nifti_nonfinite_count(path) == 2
    with pytest.raises(pp.ScanError, match="2 non-finite voxels"):
        pp.read_canonical(path)
    for dtype in (np.float64, np.int16):
        clean = str(tmp_path / f"c{suffix}")
        sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 8, 8), -1000, dtype)), clean)
        assert scan_files.nifti_nonfinite_count(clean) == 0
        pp.read_canonical(clean)


def test_padding_and_floor_air_stored_any_way_give_the_same_record(tmp_path):
    """The same anatomy with its padding stored at -3024, at exactly -1024, and unsigned
    without the intercept (padding and air at or below -1024 all become 0): one record.
    The air is miscalibrated (+20 HU) so that the air shift is not zero."""
    spec = phantom.PhantomSpec(in_plane=48, num_slices=30, blank_slices=3, noise_hu=20.0,
                               air_offset=20.0, padding_value=-3024)
    vol = phantom.make_phantom(2, spec)
    at_floor = np.where(vol == -3024, -1024, vol).astype(np.int16)
    paths = [phantom.write_scan(vol, str(tmp_path / "a.mhd"), spec.spacing_zyx),
             phantom.write_scan(at_floor, str(tmp_path / "b.mhd"), spec.spacing_zyx),
             phantom.write_scan(vol, str(tmp_path / "c.mhd"), spec.spacing_zyx,
                                intercept_missing=True),
             phantom.write_scan(at_floor, str(tmp_path / "d.nii.gz"), spec.spacing_zyx)]
    opts = pp.PreprocessOptions(size=32)
    results = [pp.process_scan(p, opts) for p in paths]
    ref = results[0]
    assert ref.trimmed_slices == (3, 3) and ref.air_shift == pytest.approx(-20.0, abs=3.0)
    for r in results[1:]:  # the record stores the quantised volume
        # NIfTI's float32 geometry moves the resampling by ~1e-7: a voxel that lies that
        # close to a rounding boundary of the int16 storage may differ by one step
        steps = np.abs(intensity.quantize(r.volume).astype(int) - intensity.quantize(ref.volume))
        assert steps.max() <= (1 if r.source.endswith(".nii.gz") else 0)
        np.testing.assert_allclose(r.volume, ref.volume, atol=1e-6)
        assert (r.trimmed_slices, r.air_estimate, r.air_shift) == \
            (ref.trimmed_slices, ref.air_estimate, ref.air_shift)
        # NIfTI stores the geometry in float32, as the records do
        np.testing.assert_allclose(r.output_origin + r.output_spacing,
                                   ref.output_origin + ref.output_spacing, rtol=1e-6)
    assert results[2].intercept_shift == -1024.0


def test_floor_voxels_inside_the_lungs_do_not_make_them_outside_air():
    """Air at the floor inside a lung is not connected to the border: the lung (-860 HU)
    must not enter the outside-air estimate."""
    spec = phantom.PhantomSpec(in_plane=48, num_slices=30, blank_slices=0, noise_hu=5.0)
    vol = phantom.make_phantom(4, spec).astype(np.float32)
    lung = np.argwhere(np.abs(vol + 860) < 15)
    z, y, x = lung[len(lung) // 2]
    vol[z, y, x] = -1024  # one voxel of airway air at the floor, inside the lung
    hu, floor, _ = pp.calibrate_hu(vol)
    assert floor[z, y, x]
    assert pp.estimate_outside_air(hu, floor) == pytest.approx(-1000.0, abs=2.0)
