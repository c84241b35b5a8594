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
                  r1_gamma=1.0, ema_decay=0.99, rec_trains_head=True)),
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
