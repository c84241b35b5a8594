"""crfgan_tf.core.geometry: the sizes and the training layout they decide."""

import numpy as np
import pytest

from crfgan_tf.core import geometry


def test_geometry_pins_the_training_layout():
    assert geometry.SIZES == (64, 128, 256, 512) and geometry.HAGAN_SIZES == (128, 256, 512)
    assert [geometry.crop_depth(s) for s in geometry.SIZES] == [8, 16, 32, 64]
    assert [geometry.slab_depth(s) for s in geometry.SIZES] == [2, 4, 8, 16]
    assert [geometry.embedding_side(s) for s in geometry.SIZES] == [16, 32, 64, 128]
    assert [geometry.num_positions(s) for s in geometry.SIZES] == [15, 29, 57, 113]
    assert [geometry.extra_stages(s) for s in geometry.SIZES] == [-2, -1, 0, 1]
    assert geometry.position(geometry.num_positions(256) - 1) == geometry.max_position(256) == 224
    assert geometry.position(geometry.num_positions(512) - 1) == geometry.max_position(512) == 448
    assert geometry.normalized_position(224, 256) == 1.0
    assert list(geometry.crop_starts(64)) == [0, 8, 16, 24, 32, 40, 48, 56]
    assert list(geometry.crop_starts(512)) == list(range(0, 512, 64))
    with pytest.raises(ValueError, match="`img_size` must be one of 64, 128, 256, 512"):
        geometry.check_size(96)
    with pytest.raises(ValueError, match="`model=hagan` needs `img_size` 128, 256, 512"):
        geometry.check_size(64, "hagan")


def test_geometry_of_the_second_512_rule_embedding_factor_8():
    """--embedding_factor=8: a 64^3 embedding at 512, 8-slice slabs of the same 64-slice
    crops, crops at multiples of 8; refused by name at other sizes and for HA-GAN."""
    assert geometry.embedding_side(512, 8) == 64 and geometry.slab_depth(512, 8) == 8
    assert geometry.crop_depth(512) == 64 and geometry.num_positions(512, 8) == 57
    assert geometry.position(56, 8) == geometry.max_position(512) == 448
    assert [geometry.factor_stages(f) for f in (4, 8)] == [2, 3]
    for size in geometry.SIZES:
        geometry.check_factor(size, 4)
        geometry.check_factor(size, 4, "hagan")
    geometry.check_factor(512, 8)
    with pytest.raises(ValueError, match="`embedding_factor=8` needs `img_size` 512, got 256"):
        geometry.check_factor(256, 8)
    with pytest.raises(ValueError, match="`embedding_factor=8` is defined for `model=crfgan`"):
        geometry.check_factor(512, 8, "hagan")
    with pytest.raises(ValueError, match="`embedding_factor` must be one of 4, 8, got 2"):
        geometry.check_factor(512, 2)


def test_block_mean_is_the_mean_of_each_block_in_float32():
    volume = np.arange(4 ** 3, dtype=np.float32).reshape(4, 4, 4)
    out = geometry.block_mean(volume, 2)
    assert out.shape == (2, 2, 2) and out.dtype == np.float32
    assert out[0, 0, 0] == np.mean([0, 1, 4, 5, 16, 17, 20, 21])  # 10.5
    assert out[1, 1, 1] == np.mean([42, 43, 46, 47, 58, 59, 62, 63])  # 52.5
    np.testing.assert_array_equal(geometry.block_mean(volume, 1), volume)
    assert geometry.block_mean(volume, 4).item() == 31.5
    # each axis by the same factor, whatever the sides (volume files need not be cubes)
    box = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6)
    out = geometry.block_mean(box, 2)
    assert out.shape == (1, 2, 3)
    assert out[0, 1, 2] == np.mean([16, 17, 22, 23, 40, 41, 46, 47])  # 31.5
    with pytest.raises(ValueError, match=r"factor 3 must divide every side of the volume "
                                         r"\(4, 4, 4\)"):
        geometry.block_mean(volume, 3)
