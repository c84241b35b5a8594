"""The initial weights (crfgan_tf.networks.layers.initialize_like_pytorch): every network
starts from the ranges the reference's PyTorch layers start from."""

import math

import keras
import numpy as np
import pytest

from crfgan_tf.networks import layers
from crfgan_tf.run import config as config_lib
from crfgan_tf.run import factory


def _model(model="crfgan", size=64, **kw):
    keras.utils.set_random_seed(0)
    return factory.build_model(config_lib.TrainConfig(
        model_dir="(test)", model=model, img_size=size, width=0.125, latent_dim=128, **kw))


def _ranged_layers(model):
    for name, net in model.modules().items():
        if name == "crf":
            continue
        for layer in net._flatten_layers(include_self=False):
            if isinstance(layer, (keras.layers.Conv3D, keras.layers.Dense)):
                yield f"{name}/{layer.name}", layer


@pytest.mark.parametrize("model,size", [("crfgan", 64), ("hagan", 128)])
def test_every_layer_starts_in_pytorchs_range(model, size):
    m = _model(model, size)
    seen = 0
    for name, layer in _ranged_layers(m):
        bound = 1.0 / math.sqrt(math.prod(layer.kernel.shape[:-1]))
        for var in (layer.kernel, layer.bias):
            w = var.numpy()
            assert np.abs(w).max() <= bound * (1 + 1e-6), name
            if w.size >= 64:  # a uniform draw fills its range: max near the bound, sd b/sqrt(3)
                assert np.abs(w).max() > 0.9 * bound, name
                assert abs(w.std() / (bound / math.sqrt(3)) - 1) < 0.25, name
        assert np.any(layer.bias.numpy() != 0), f"{name}: zero biases are Keras', not PyTorch's"
        seen += 1
    # CRF-GAN 64^3: G1 fc + 5 convs, G2 2 convs, hE 3 convs; HA-GAN 128^3 adds G^L's 3
    # convs and the sub-encoder's 4 (3 blocks and the conv to the latent)
    assert seen == {"crfgan": 11, "hagan": 18}[model]


def test_hand_computed_bounds_of_g1():
    m = _model()
    fc = m.trunk.get_layer("fc")
    assert layers.pytorch_bound(fc) == pytest.approx(1 / math.sqrt(128))  # latent 128
    # G1's first block: 3^3 taps x 64 channels (512 at width 1/8)
    assert layers.pytorch_bound(m.trunk.get_layer("block0_conv")) == \
        pytest.approx(1 / math.sqrt(27 * 64))
    # G2's up-sampling conv: the reference's Conv3d(k=3) on the up-sampled embedding
    assert layers.pytorch_bound(m.head.get_layer("block1_conv")) == \
        pytest.approx(1 / math.sqrt(27 * 8))
    assert layers.pytorch_bound(m.trunk.get_layer("block0_gn")) is None


def test_keras_init_is_the_option_and_differs():
    keras_init = _model(weight_init="keras")
    fc = keras_init.trunk.get_layer("fc")
    assert np.all(fc.bias.numpy() == 0)  # Keras' zero biases
    glorot = math.sqrt(6 / (fc.kernel.shape[0] + fc.kernel.shape[1]))
    assert np.abs(fc.kernel.numpy()).max() <= glorot
    # the discriminator is PyTorch-ranged either way (its own layers draw it)
    d = keras_init.discriminator.get_layer("fc1")
    assert np.any(d.bias.numpy() != 0)


def test_same_seed_same_weights():
    a, b = _model(), _model()
    for (name, la), (_, lb) in zip(_ranged_layers(a), _ranged_layers(b)):
        np.testing.assert_array_equal(la.kernel.numpy(), lb.kernel.numpy(), err_msg=name)


@pytest.mark.slow
def test_ranges_equal_the_reference_transcriptions():
    """Per reference tensor (the importer's layout, width 1, 64^3): our initial range and
    the PyTorch transcription's agree within sampling error."""
    pytest.importorskip("torch")
    from support import torch_reference as R
    from crfgan_tf import reference

    keras.utils.set_random_seed(0)
    ours = factory.build_model(config_lib.TrainConfig(model_dir="(test)", img_size=64))
    nets = R.build("crfgan", 64)
    checked = 0
    for prefix, tensors in reference.layout(ours).items():
        state = nets[prefix].state_dict()
        for t in tensors:
            if not t.param or t.kind == "crf" or not t.key.endswith(("weight", "bias")) \
                    or t.kind == "vector":  # GroupNorm's scale and offset: 1 and 0 in both
                continue
            theirs = float(state[t.key].abs().max())
            mine = float(np.abs(np.asarray(t.variable.numpy())).max())
            assert mine == pytest.approx(theirs, rel=0.1), f"{prefix}.{t.key}"
            checked += 1
    assert checked >= 20
