"""D's small-data options: the minibatch standard deviation feature and its own width."""

import numpy as np
import pytest
import tensorflow as tf

from crfgan_tf.networks.discriminator import MinibatchStd, build_discriminator
from crfgan_tf.run import config as config_lib
from crfgan_tf.run import factory


def test_minibatch_std_hand_computed():
    x = tf.constant([[1.0, 2.0], [3.0, 6.0]])
    out = MinibatchStd()(x).numpy()
    # per feature sd over the batch: 1 and 2; their mean 1.5 appended to every example
    np.testing.assert_allclose(out, [[1, 2, 1.5], [3, 6, 1.5]], atol=1e-6)
    # one body repeated: no spread, whatever the features
    same = MinibatchStd()(tf.constant([[4.0, -1.0], [4.0, -1.0]])).numpy()
    np.testing.assert_allclose(same[:, 2], [1e-4, 1e-4], rtol=1e-3)


def test_d_with_minibatch_std_tells_a_repeated_batch_by_the_batch_alone():
    d = build_discriminator(64, 0.125, minibatch_std=True)
    assert d.get_layer("fc1").kernel.shape[0] == build_discriminator(64, 0.125).get_layer(
        "fc1").kernel.shape[0] + 1
    a = tf.random.stateless_uniform((1, 8, 64, 64, 1), seed=[1, 2], minval=-1, maxval=1)
    b = tf.random.stateless_uniform((1, 8, 64, 64, 1), seed=[3, 4], minval=-1, maxval=1)
    pos = tf.zeros((2, 1))
    mixed = d([tf.concat([a, b], 0), pos]).numpy()
    repeated = d([tf.concat([a, a], 0), pos]).numpy()
    # the same sub-volume a gets another logit in another batch
    assert abs(mixed[0, 0] - repeated[0, 0]) > 1e-6


@pytest.mark.parametrize("model,size", [("crfgan", 64), ("hagan", 128)])
def test_d_width_changes_d_alone(model, size):
    def count(net):
        return sum(int(np.prod(v.shape)) for v in net.trainable_weights)

    base = dict(model_dir="(test)", model=model, img_size=size, width=0.125, latent_dim=16)
    narrow = factory.build_model(config_lib.TrainConfig(**base))
    wide = factory.build_model(config_lib.TrainConfig(**base, d_width=0.5))
    assert count(wide.discriminator) > 10 * count(narrow.discriminator)
    if model == "crfgan":
        assert count(narrow.discriminator) == 70433
    for key in ("generator_trunk", "generator_head", "encoder"):
        assert count(wide.modules()[key]) == count(narrow.modules()[key])
    if model == "hagan":
        assert count(wide.low_discriminator) > count(narrow.low_discriminator)
    # CRF-GAN 64^3: D at width 1/2 pinned (70,433 parameters at the demo's 1/8)
    if model == "crfgan":
        assert count(wide.discriminator) == 1118849
