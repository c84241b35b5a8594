import numpy as np

from crfgan_tf.data import phantom


def test_phantom_has_chest_ct_structure():
    spec = phantom.PhantomSpec(in_plane=64, num_slices=48, blank_slices=3, padding_value=-2000)
    vol = phantom.make_phantom(3, spec)
    assert vol.shape == (48, 64, 64) and vol.dtype == np.int16
    # blank slices at both ends, padding outside the field of view (the corners)
    assert np.all(vol[:3] == -2000) and np.all(vol[-3:] == -2000)
    assert np.all(vol[:, 0, 0] == -2000)
    mid = vol[24].astype(float)
    assert (mid < -700).sum() > 200  # lungs
    assert mid.max() > 700  # cortical bone of the spine
    # right lung (low x index) larger than left lung in the mid slice
    lung = (mid > -950) & (mid < -700)
    assert lung[:, :32].sum() > lung[:, 32:].sum()
    # lungs narrow toward the apex
    assert ((vol[40] > -950) & (vol[40] < -700)).sum() < lung.sum()


def test_phantoms_vary_with_seed_and_are_deterministic():
    spec = phantom.PhantomSpec(in_plane=32, num_slices=20)
    a, b = phantom.make_phantom(1, spec), phantom.make_phantom(2, spec)
    assert not np.array_equal(a, b)
    assert np.array_equal(a, phantom.make_phantom(1, spec))


def test_archive_layout(tmp_path):
    spec = phantom.PhantomSpec(in_plane=16, num_slices=16, blank_slices=1)
    paths = phantom.make_luna_archive(str(tmp_path), 3, spec, num_subsets=2)
    assert [p.split("/")[-2] for p in paths] == ["subset0", "subset1", "subset0"]
    for p in paths:
        assert p.endswith(".mhd") and (tmp_path / p.split("/")[-2] / (p.split("/")[-1][:-4] + ".raw")).exists()
