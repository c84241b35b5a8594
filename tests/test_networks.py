import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from crfgan_tf import params
from crfgan_tf.networks import (SNConv3D, build_discriminator, build_encoder, build_head,
                                build_trunk)
from crfgan_tf.networks.generator import embedding_channels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W = 0.0625


@pytest.mark.parametrize("size", [64, 128, 256])
def test_shapes_at_every_resolution(size):
    n, c = size // 4, embedding_channels(W)
    trunk = build_trunk(size, latent_dim=8, width=W)
    emb = trunk(tf.zeros((1, 8)))
    assert emb.shape == (1, n, n, n, c)
    head = build_head(size, width=W)
    slab = head(emb[:, : size // 32])
    assert slab.shape == (1, size // 8, size, size, 1) and slab.dtype == tf.float32
    assert np.all(np.abs(slab.numpy()) <= 1.0)
    disc = build_discriminator(size, width=W)
    assert disc([slab, tf.zeros((1, 1))]).shape == (1, 1)
    enc = build_encoder(size, width=W)
    assert enc(slab).shape == (1, size // 32, n, n, c)


def test_whole_volume_paths_at_64():
    head, enc = build_head(64, width=W), build_encoder(64, width=W)
    emb = tf.random.uniform((2, 16, 16, 16, embedding_channels(W)))
    assert head(emb).shape == (2, 64, 64, 64, 1)
    assert enc(tf.zeros((2, 64, 64, 64, 1))).shape == (2, 16, 16, 16, embedding_channels(W))


def test_discriminator_batch_size_one():
    disc = build_discriminator(64, width=W)
    out = disc([tf.random.normal((1, 8, 64, 64, 1)), tf.ones((1, 1))], training=True)
    assert out.shape == (1, 1) and np.isfinite(out.numpy()).all()


REFERENCE_MODULES = {
    64: dict(generator=52_448_513, discriminator=4_470_017, encoder=161_152, crf=256),
    128: dict(generator=52_448_513, discriminator=4_599_073, encoder=161_152, crf=1_024),
    256: dict(generator=52_448_513, discriminator=4_630_833, encoder=161_152, crf=4_096),
}


@pytest.mark.parametrize("size,total", [(64, 57_079_938), (128, 57_209_762), (256, 57_244_594)])
def test_parameter_counts_equal_reference(size, total):
    result = params.count_parameters("crfgan", size)
    assert result["total"] == total == result["reference"]
    for name, count in REFERENCE_MODULES[size].items():
        assert result["modules"][name] == count, name


def test_count_params_cli_json():
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-m", "tools.count_params", "--model=crfgan",
                          "--img_size=64", "--json"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["total"] == 57_079_938 and out["modules"]["crf"] == 256


def test_spectral_norm_matches_svd():
    # A kernel with known singular values (3, 1.5, 1, ...): power iteration converges at
    # rate (1.5/3)^2 per step, so 60 steps pin sigma to float32 precision regardless of
    # the random start vector u (a random kernel can have a tiny spectral gap: flaky).
    layer = SNConv3D(6, 3, 1, 1, power_iterations=1)
    x = tf.random.normal((1, 4, 4, 4, 5), seed=0)
    layer(x)
    rng = np.random.default_rng(0)
    left, _ = np.linalg.qr(rng.standard_normal((135, 6)))
    right, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    singular = np.array([3.0, 1.5, 1.0, 0.8, 0.5, 0.2])
    layer.kernel.assign((left * singular @ right.T).reshape(3, 3, 3, 5, 6).astype("float32"))
    for _ in range(60):
        layer(x, training=True)
    kernel = layer._normalized_kernel(training=False).numpy().reshape(-1, 6)
    np.testing.assert_allclose(np.linalg.svd(kernel, compute_uv=False),
                               singular / 3.0, rtol=1e-4)
    raw = layer.kernel.numpy().reshape(-1, 6)
    assert np.linalg.svd(raw, compute_uv=False)[0] == pytest.approx(3.0, rel=1e-5)


def test_spectral_norm_updates_u_only_in_training():
    layer = SNConv3D(4, 3, 1, 1)
    x = tf.random.normal((1, 4, 4, 4, 2))
    layer(x)
    u0 = layer.u.numpy().copy()
    layer(x, training=False)
    np.testing.assert_array_equal(layer.u.numpy(), u0)
    layer(x, training=True)
    assert not np.allclose(layer.u.numpy(), u0)
    assert len(layer.trainable_weights) == 2  # kernel and bias; u is state


def test_spectral_norm_gradient_flows_through_sigma():
    # d/dW of sum(W/sigma(W) x) differs from the naive 1/sigma * x when sigma depends on W
    layer = SNConv3D(1, 1, 1, 0)
    x = tf.ones((1, 1, 1, 1, 2))
    layer(x)
    layer.kernel.assign(tf.reshape(tf.constant([3.0, 4.0]), (1, 1, 1, 2, 1)))
    for _ in range(5):
        layer(x, training=True)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(layer(x) - layer.bias)
    grad = tape.gradient(y, layer.kernel).numpy().ravel()
    # y = (3 + 4) / 5; dy/dw = 1/5 - (w . 1) w / 5^3
    expected = 1 / 5 - 7 * np.array([3.0, 4.0]) / 125
    np.testing.assert_allclose(grad, expected, rtol=1e-4)
