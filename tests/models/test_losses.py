import math

import numpy as np
import pytest
import tensorflow as tf

from crfgan_tf.models import losses
from crfgan_tf.networks import SliceCRF


def _bce(logit, label):
    p = 1 / (1 + math.exp(-logit))
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


def test_discriminator_loss_hand_computed():
    real, fake = tf.constant([[2.0], [0.0]]), tf.constant([[-1.0], [3.0]])
    expected = (_bce(2, 1) + _bce(0, 1)) / 2 + (_bce(-1, 0) + _bce(3, 0)) / 2
    assert float(losses.discriminator_loss(real, fake, 2)) == pytest.approx(expected, rel=1e-6)
    # 0.6931... = log 2 for zero logits on both sides
    assert float(losses.discriminator_loss(tf.zeros((4, 1)), tf.zeros((4, 1)), 4)) == \
        pytest.approx(2 * math.log(2), rel=1e-6)


def test_per_replica_share_sums_to_global_mean():
    per_example = tf.constant([1.0, 2.0, 3.0, 6.0])
    shares = [losses.per_replica_mean(per_example[:2], 4), losses.per_replica_mean(per_example[2:], 4)]
    assert float(sum(shares)) == pytest.approx(3.0)


def test_generator_loss_mixes_crf_and_d():
    fake, crf = tf.constant([[1.0]]), tf.constant([[-1.0]])
    w = 0.25
    expected = _bce(0.25 * -1 + 0.75 * 1, 1)
    assert float(losses.generator_loss(fake, crf, w, 1)) == pytest.approx(expected, rel=1e-6)


def test_crf_weight_schedule():
    assert float(losses.crf_weight(0)) == 0.5
    assert float(losses.crf_weight(30000)) == pytest.approx(0.25)
    assert float(losses.crf_weight(60000)) == 0.0
    assert float(losses.crf_weight(90000)) == 0.0
    assert float(losses.crf_weight(50, start=0.4, decay_steps=100)) == pytest.approx(0.2)


def test_crf_and_reconstruction_losses():
    assert float(losses.crf_loss(tf.constant([[0.0]]), tf.constant([[2.0]]), 1)) == \
        pytest.approx(_bce(0, 0) + _bce(2, 1), rel=1e-6)
    rec = tf.constant([[0.0, 1.0], [1.0, 1.0]])
    tgt = tf.constant([[0.5, 0.0], [1.0, 0.0]])
    # per example: mean(|.5|, |1|) = .75 and mean(0, 1) = .5; over the batch .625
    assert float(losses.reconstruction_loss(rec, tgt, 2)) == pytest.approx(0.625)


def _emb(batch=2, n=4, c=3, seed=0):
    return tf.random.stateless_uniform((batch, n, n, n, c), seed=[seed, 1])


def test_crf_zero_weights_return_unary():
    crf = SliceCRF(4)
    unary = tf.constant([[1.5], [-0.3]])
    np.testing.assert_allclose(crf(_emb(), unary).numpy(), unary.numpy(), rtol=1e-6)


def test_crf_hand_computed_one_iteration():
    crf = SliceCRF(2, iterations=1)
    crf.build()
    crf.w.assign([[0.0, 2.0], [0.0, 0.0]])  # symmetrised: off-diagonal 1.0
    emb = tf.reshape(tf.constant([1.0, 0.0, 1.0, 1.0] + [0.0] * 12), (1, 2, 2, 2, 2))
    # node 0 features (1,0,1,1,0,0,0,0), node 1 zeros -> cos = 0 (epsilon, no NaN)
    np.testing.assert_allclose(crf(emb, tf.constant([[0.7]])).numpy(), [[0.7]], rtol=1e-6)
    emb2 = tf.ones((1, 2, 2, 2, 2))  # identical nodes: cos = 1
    u = 0.7
    s = 2 / (1 + math.exp(-u)) - 1
    # q_i = u + psi_ii * s + psi_ij * s with psi_ii = 0, psi_ij = 1
    np.testing.assert_allclose(crf(emb2, tf.constant([[u]])).numpy(), [[u + s]], rtol=1e-5)


def test_crf_symmetry_and_gradient_reaches_w():
    crf = SliceCRF(4)
    crf.build()
    crf.w.assign(tf.random.stateless_normal((4, 4), seed=[1, 2]))
    sym = crf.symmetric_weights().numpy()
    np.testing.assert_allclose(sym, sym.T)
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(crf(_emb(), tf.constant([[0.2], [0.1]])))
    grad = tape.gradient(out, crf.w).numpy()
    assert np.abs(grad).sum() > 0
    np.testing.assert_allclose(grad, grad.T, rtol=1e-5, atol=1e-7)  # W enters as (W + W^T)/2


def test_crf_node_modes_differ():
    unary = tf.constant([[0.5], [0.5]])
    out = {}
    for mode in ("slices", "channels"):
        crf = SliceCRF(4, nodes=mode)
        crf.build()
        crf.w.assign(tf.ones((4, 4)))
        out[mode] = crf(_emb(c=4), unary).numpy()
    assert not np.allclose(out["slices"], out["channels"])
    with pytest.raises(ValueError, match="nodes"):
        SliceCRF(4, nodes="voxels")


def test_crf_slices_are_axial_slices():
    crf = SliceCRF(4)
    feats = crf.node_features(_emb()).numpy()
    np.testing.assert_array_equal(feats[:, 2], _emb().numpy()[:, 2].reshape(2, -1))


def test_r1_penalty_hand_computed():
    # two examples; gradients over two inputs (HA-GAN's crop and low-resolution volume)
    g1 = tf.constant([[1.0, 2.0], [0.0, 1.0]])
    g2 = tf.constant([[[3.0]], [[2.0]]])
    # ||grad||^2 per example: 1 + 4 + 9 = 14 and 0 + 1 + 4 = 5; mean 9.5; x gamma / 2
    assert float(losses.r1_penalty([g1, g2], 2.0, 2)) == pytest.approx(9.5)
    assert float(losses.r1_penalty([g1], 0.5, 4)) == pytest.approx(0.25 * (5 + 1) / 4)
