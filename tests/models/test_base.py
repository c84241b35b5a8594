"""SubVolumeGAN's contract shared by both models (crfgan_tf/models/base.py): get_config
holds every constructor argument, so from_config(get_config()) rebuilds an equal model,
at every size, with the non-default embedding factor, remat, augmentation and seed."""

import numpy as np
import pytest
import tensorflow as tf

from crfgan_tf.models.crfgan import CRFGAN
from crfgan_tf.models.hagan import HAGAN

CASES = [  # (class, arguments past the defaults)
    (CRFGAN, dict(img_size=64, seed=7, weight_init="keras")),
    (CRFGAN, dict(img_size=128, remat=True, augment=("translation", "cutout"), augment_p=0.2,
                  r1_gamma=1.0, ema_decay=0.99, rec_trains_head=True, head_width=0.25)),
    (CRFGAN, dict(img_size=512, embedding_factor=4, remat=True)),
    (HAGAN, dict(img_size=128, seed=3, augment=("intensity",), d_width=0.125,
                 d_minibatch_std=True)),
]


def _count(model):
    return sum(int(np.prod(w.shape)) for w in model.weights)


@pytest.mark.parametrize("cls,kw", CASES, ids=lambda c: getattr(c, "MODEL", None))
def test_from_config_of_get_config_rebuilds_an_equal_model(cls, kw):
    model = cls(latent_dim=16, width=0.0625, **kw)
    config = model.get_config()
    rebuilt = cls.from_config(config)
    assert rebuilt.get_config() == config
    for name, value in kw.items():
        got = config[name]
        assert (tuple(got) if isinstance(value, tuple) else got) == value, name
    assert (rebuilt.embedding_factor, rebuilt.remat, rebuilt.augment, rebuilt.seed) == \
        (model.embedding_factor, model.remat, model.augment, model.seed)
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in model.weights]
    assert _count(rebuilt) == _count(model)
    if model.img_size <= 128:  # a forward pass on the same weights gives the same volume
        rebuilt.set_weights(model.get_weights())
        z = tf.random.stateless_normal([1, 16], seed=[1, 2])
        args = (z,) if not model.num_classes else (z, tf.zeros([1], tf.int32))
        a = model.head(model.trunk(*args, training=False), training=False)
        b = rebuilt.head(rebuilt.trunk(*args, training=False), training=False)
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_head_width_widens_g2s_hidden_blocks_alone():
    """--head_width: G2's hidden blocks get its channels; the embedding G2 reads, G1 and
    the encoder keep `width`'s."""
    narrow = CRFGAN(img_size=64, latent_dim=16, width=0.0625)
    wide = CRFGAN(img_size=64, latent_dim=16, width=0.0625, head_width=0.5)
    kernel = lambda m: m.head.get_layer("block1_conv").weights[0].shape
    assert kernel(narrow) == (3, 3, 3, 8, 8) and kernel(wide) == (3, 3, 3, 8, 16)
    assert wide.head.get_layer("out_conv").weights[0].shape == (3, 3, 3, 16, 1)
    for name in ("trunk", "encoder", "discriminator"):
        assert _count(getattr(wide, name)) == _count(getattr(narrow, name)), name
    # hand count of G2's extra weights: block1 3^3 x 8 x (16 - 8) kernel + 8 bias + 2 x 8
    # GroupNorm, out_conv 3^3 x (16 - 8)
    assert _count(wide.head) - _count(narrow.head) == 27 * 8 * 8 + 8 + 16 + 27 * 8
