import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from crfgan_tf.models import params
from crfgan_tf.networks import (SNConv3D, SNDense, build_discriminator, build_encoder, build_head,
                                build_trunk)
from crfgan_tf.networks.generator import embedding_channels
from conftest import REPO

W = 0.0625


@pytest.mark.parametrize("size", [64, 128, 256, 512])
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


def test_parameter_counts_at_512_follow_the_growth_rule():
    """512^3 with embedding factor 4 is 256^3 plus geometry's growth rule, counted by hand: G1's sixth block
    (3^3 conv 64 -> 64 with bias, GroupNorm's gamma and beta), D's new first layer (4^3 SN conv
    1 -> 8 with bias) and its second layer's input growing from 1 to 8 channels, and the CRF's
    128 x 128 matrix. G2 and hE are unchanged."""
    at256, at512 = (params.count_parameters("crfgan", s, embedding_factor=4)["modules"]
                    for s in (256, 512))
    assert at512["generator_trunk"] - at256["generator_trunk"] == 27 * 64 * 64 + 64 + 2 * 64
    assert at512["discriminator"] - at256["discriminator"] == (64 * 8 + 8) + 64 * (8 - 1) * 16
    assert at512["crf"] == 128 * 128
    for same in ("generator_head", "encoder"):
        assert at512[same] == at256[same]
    result = params.count_parameters("crfgan", 512, embedding_factor=4)
    assert result["total"] == 57_375_354 and result["reference"] is None


def test_the_second_512_rule_embedding_factor_8_shapes_and_counts():
    """--embedding_factor=8 at 512 (CRF-GAN's default there): G1 is 256's (a 64^3 embedding), G2 gains an up-sampling
    block of 32 channels (3^3 conv 32 -> 32 with bias, GroupNorm), hE a stride-2 block of 32
    channels before its last (4^3 conv 32 -> 32 with bias, GroupNorm), the CRF has 64 nodes;
    D is 512's. Counted by hand against the 256^3 networks."""
    c = embedding_channels(W)
    emb = build_trunk(512, latent_dim=8, width=W, factor=8)(tf.zeros((1, 8)))
    assert emb.shape == (1, 64, 64, 64, c)
    crop = build_head(512, width=W, factor=8)(emb[:, :8])
    assert crop.shape == (1, 64, 512, 512, 1) and crop.dtype == tf.float32
    assert build_encoder(512, width=W, factor=8)(crop).shape == (1, 8, 64, 64, c)

    at256 = params.count_parameters("crfgan", 256)["modules"]
    a, b = (params.count_parameters("crfgan", 512, embedding_factor=f) for f in (4, 8))
    got = b["modules"]
    assert got["generator_trunk"] == at256["generator_trunk"]
    assert got["generator_head"] - at256["generator_head"] == 27 * 32 * 32 + 32 + 2 * 32
    assert got["encoder"] - at256["encoder"] == 64 * 32 * 32 + 32 + 2 * 32
    assert got["crf"] == 64 * 64
    assert got["discriminator"] == a["modules"]["discriminator"]
    assert b["total"] == 57_345_658 and b["embedding_factor"] == 8 and b["reference"] is None
    # the default at 512: factor 8 for CRF-GAN, 4 for HA-GAN (geometry.default_factor)
    assert params.count_parameters("crfgan", 512)["total"] == 57_345_658
    assert params.count_parameters("hagan", 512)["embedding_factor"] == 4


def test_factor_8_slab_by_slab_paths_equal_the_one_shot_networks():
    """G2 by slabs (three passes: two GroupNorms) and hE by slabs (four passes, a 16-slice
    halo) at factor 8 equal the one-shot networks. The tolerance is float32's: the one-shot
    GroupNorms reduce millions of voxels in float32 (slab 1 and the whole differ by
    ~2e-4 of outputs up to 5 from it, uniformly over the slices, not at slab edges)."""
    from crfgan_tf.networks.encoder import encode_by_slabs

    head = build_head(512, width=0.125, factor=8)
    for i, v in enumerate(head.weights):  # every weight its own values (the two GroupNorms
        # differ), gamma/beta away from 1/0 so that statistics matter
        v.assign(tf.random.stateless_normal(v.shape, seed=[1, i]) * 0.3
                 + (1.0 if "gamma" in v.path else 0.0))
    emb = tf.random.stateless_uniform((1, 5, 64, 64, 8), seed=[2, 3])
    one_shot = head(emb)[..., 0].numpy()
    assert one_shot.shape == (1, 40, 512, 512)
    for slab in (1, 2):
        np.testing.assert_allclose(head.by_slabs(emb, slab).numpy(), one_shot, atol=5e-4)

    enc = _encoder_with_affine(512, 0.125, factor=8)
    volume = tf.random.stateless_uniform((1, 32, 512, 512, 1), seed=[4, 5], minval=-1)
    one_shot = enc(volume).numpy()
    assert one_shot.shape == (1, 4, 64, 64, embedding_channels(0.125))
    for got in (encode_by_slabs(enc, volume, 1),
                tf.function(lambda v: encode_by_slabs(enc, v, 3))(volume)):
        np.testing.assert_allclose(got.numpy(), one_shot, atol=5e-4, rtol=1e-4)


def test_count_params_cli_json():
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-m", "tools.count_params", "--model=crfgan",
                          "--img_size=64", "--json"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["total"] == 57_079_938 and out["modules"]["crf"] == 256


@pytest.mark.slow
def test_count_params_cli_prints_the_512_table():
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-m", "tools.count_params", "--img_size=512"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [" ".join(line.split()) for line in res.stdout.splitlines()]
    assert lines[0] == "crfgan at 512^3, embedding factor 8"  # the default at 512
    for want in ("generator_trunk 52,392,256", "generator_head 84,001",
                 "discriminator 4,638,521", "encoder 226,784", "crf 4,096",
                 "total 57,345,658"):
        assert want in lines, want
    assert "the references stop at 256^3" in res.stdout


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


@pytest.mark.parametrize("kernel,stride,pad,shape", [
    (3, 1, 1, (2, 6, 8, 8, 3)),                      # G1, G2, G^L, hE block2
    (4, 2, 1, (2, 8, 16, 16, 3)),                    # hE, D, D^L, sub-encoder
    ((2, 4, 4), 2, (0, 1, 1), (2, 4, 8, 8, 3)),      # D conv4/conv5 at 256
    ((1, 4, 4), (1, 2, 2), (0, 1, 1), (2, 1, 8, 8, 3)),  # D conv6
])
def test_native_padding_equals_explicit_symmetric_padding(kernel, stride, pad, shape):
    from crfgan_tf.networks.layers import _triple, native_padding
    mode = native_padding(kernel, stride, pad, shape[1:4])
    assert mode == "same"
    x = tf.random.stateless_normal(shape, seed=[1, 2])
    k = tf.random.stateless_normal((*_triple(kernel), 3, 5), seed=[3, 4])
    s = (1, *_triple(stride), 1)
    p = _triple(pad)
    explicit = tf.nn.conv3d(tf.pad(x, [(0, 0), *[(q, q) for q in p], (0, 0)]), k, s, "VALID")
    np.testing.assert_allclose(tf.nn.conv3d(x, k, s, "SAME").numpy(), explicit.numpy(),
                               atol=1e-5)


def test_native_padding_falls_back_where_same_differs():
    from crfgan_tf.networks.layers import native_padding
    assert native_padding(4, 2, 1, (7, 8, 8)) is None      # odd side: SAME pads 1 left, 2 right
    assert native_padding(3, 1, 2, (8, 8, 8)) is None      # more padding than SAME
    assert native_padding((1, 4, 4), 1, 0) == "valid"
    assert native_padding(4, 2, 1) == "same"               # unknown sides: documented even


def test_networks_make_no_padded_copies():
    """Every reference layer pads inside its convolution: no Pad op runs in G1, G2, D, hE."""
    for net, x in ((build_trunk(128, 1024, 0.125), tf.zeros((1, 1024))),
                   (build_head(128, 0.125), tf.zeros((1, 2, 32, 32, 8))),
                   (build_encoder(128, 0.125), tf.zeros((1, 16, 128, 128, 1))),
                   (build_discriminator(128, 0.125), [tf.zeros((1, 16, 128, 128, 1)),
                                                      tf.zeros((1, 1))])):
        graph = tf.function(lambda v: net(v, training=True)).get_concrete_function(
            tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), x)).graph
        pads = [op.name for op in graph.get_operations() if op.type in ("Pad", "PadV2")]
        assert not pads, (net.name, pads)


@pytest.mark.parametrize("shape,cout", [((2, 3, 4, 5, 6), 7), ((1, 1, 1, 1, 2), 3),
                                        ((1, 4, 8, 8, 16), 8)])
def test_upsample_conv_equals_conv_of_upsampled_input(shape, cout):
    """The fused layer is F.interpolate(x2, nearest) + Conv3d(k=3, p=1): values and both
    gradients agree with the two-step computation to float32 rounding."""
    from crfgan_tf.networks.layers import upsample_conv3d

    x = tf.random.stateless_normal(shape, seed=[1, 2])
    k = tf.random.stateless_normal((3, 3, 3, shape[-1], cout), seed=[3, 4])
    w = tf.random.stateless_normal([2 * n for n in shape[1:4]] + [cout], seed=[5, 6])

    def two_step(x, k):
        up = tf.repeat(tf.repeat(tf.repeat(x, 2, axis=1), 2, axis=2), 2, axis=3)
        return tf.nn.conv3d(up, k, (1, 1, 1, 1, 1), "SAME")

    results = []
    for f in (two_step, upsample_conv3d):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = f(x, k)
            loss = tf.reduce_sum(y * w)
        results.append([y.numpy()] + [g.numpy() for g in tape.gradient(loss, [x, k])])
    for ref, got in zip(*results):
        assert ref.shape == got.shape
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_upsample_conv_keeps_no_four_tap_kernel_for_its_backward_pass():
    """The 4^3 taps (64/27 the kernel's size: 64 MiB for G1's 512 -> 512 block) are made
    again in the backward pass instead of being kept alive from the forward pass through
    everything that runs in between. Here what runs in between is a 4-taps-sized tensor:
    the memory planner's replay of the graph peaks at it, not at it plus the taps."""
    from crfgan_tf.networks.layers import upsample_conv3d
    from crfgan_tf.training import memory_plan

    taps = 64 * 64 * 64 * 4  # bytes of the 4^3 x 64 x 64 float32 taps

    def fn(x, k):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = upsample_conv3d(x, k)  # (1, 4, 4, 4, 64): 16 KiB
            loss = tf.reduce_sum(tf.tile(y, (256, 1, 1, 1, 1)))  # 4 MiB in between
        return tape.gradient(loss, [x, k])

    graph = tf.function(fn).get_concrete_function(
        tf.TensorSpec((1, 2, 2, 2, 64)), tf.TensorSpec((3, 3, 3, 64, 64))).graph
    peak = memory_plan.StepGraph(graph).peak(1)
    assert 4 * taps <= peak["transient_bytes"] < 4.5 * taps, peak["largest"]


def _ancestors(op, seen=None):
    seen = set() if seen is None else seen
    for parent in [t.op for t in op.inputs] + list(op.control_inputs):
        if parent.name not in seen:
            seen.add(parent.name)
            _ancestors(parent, seen)
    return seen


def test_upsample_conv_makes_its_taps_again_only_once_its_gradient_arrives():
    """The backward pass's taps depend on the kernel alone. Unless they wait for the
    block's output gradient, TensorFlow's executor makes them as soon as the backward
    pass begins and holds every block's taps through the backward passes before theirs
    (G1's three blocks at 128^3: 104 MiB alive at the step's allocator peak, measured
    with TensorFlow's profiler). Two blocks here: each backward taps matmul must come after
    its own block's gradient, so the first block's after the second block's."""
    from crfgan_tf.networks.layers import upsample_conv3d

    def fn(x, k1, k2):
        with tf.GradientTape() as tape:
            tape.watch([x, k1, k2])
            loss = tf.reduce_sum(upsample_conv3d(upsample_conv3d(x, k1), k2))
        return tape.gradient(loss, [k1, k2])

    spec = tf.TensorSpec((3, 3, 3, 4, 4))
    graph = tf.function(fn).get_concrete_function(
        tf.TensorSpec((1, 2, 2, 2, 4)), spec, spec).graph
    ops = graph.get_operations()
    backward_starts = next(i for i, op in enumerate(ops) if op.name.startswith("gradient_tape"))
    taps = [op for op in ops[backward_starts:] if op.type == "MatMul"
            and not op.name.startswith("gradient_tape") and tuple(op.inputs[0].shape) == (64, 27)]
    assert len(taps) == 2, [op.name for op in taps]  # one per block, made in the backward pass

    second, first = taps  # the second block's backward pass runs first
    assert any(a.startswith("gradient_tape") for a in _ancestors(second))
    assert second.name in _ancestors(first)


def test_filter_grad_pieces_bound_the_patch_matrix_per_example():
    """The fewest pieces (a divisor of the channels) whose patch matrix per example fits
    the budget (32 MiB): the up-sampling blocks of G1 and G2 at 128^3 and 256^3, pinned."""
    from crfgan_tf.networks.layers import FILTER_GRAD_PIECE_BYTES, filter_grad_pieces

    assert FILTER_GRAD_PIECE_BYTES == 32 * 2**20
    # G1's 256 -> 128 block at 128^3: 128 dy channels x 64 taps x 16^3 x-voxels = 128 MiB
    assert filter_grad_pieces(128, 64, 16**3, 4) == 4
    assert filter_grad_pieces(256, 64, 8**3, 4) == 1  # 512 -> 256: 32 MiB fits
    assert filter_grad_pieces(32, 64, 8 * 64 * 64, 4) == 8  # G2's block at 256^3: 256 MiB
    assert filter_grad_pieces(64, 64, 32**3, 4) == 16  # 128 -> 64 block at 256^3: 512 MiB
    assert filter_grad_pieces(64, 64, 32**3, 2) == 8  # bfloat16 halves it
    assert filter_grad_pieces(1, 64, 64**3, 4) == 1  # G2's out conv: one channel, no cut
    assert filter_grad_pieces(6, 27, 2**20, 1, budget=2 * 27 * 2**20) == 3  # a divisor
    assert filter_grad_pieces(6, 27, 2**20, 4, budget=2**20) == 6  # none fits: 1 each
    assert filter_grad_pieces(128, 64, None, 4) == 1  # unknown voxels: one piece


def _filter_grads(fn, *specs):
    graph = tf.function(fn).get_concrete_function(*specs).graph
    return [op for op in graph.get_operations() if op.type == "Conv3DBackpropFilterV2"]


def _gradients(f, x, k, seed):
    w = tf.random.stateless_normal(f(x, k).shape, seed=seed)
    with tf.GradientTape() as tape:
        tape.watch([x, k])
        loss = tf.reduce_sum(f(x, k) * w)
    return [g.numpy() for g in tape.gradient(loss, [x, k])]


def test_upsample_conv_computes_its_kernel_gradient_in_pieces_one_after_another(monkeypatch):
    """oneDNN's weight gradient maps a scratchpad of the whole patch matrix outside
    TensorFlow's allocator (518 MiB at 128^3 for G1's 256 -> 128 block, at the step's RSS
    peak). With the budget at 2 output channels' patch matrix here, the 8 channels of dy
    are cut into 4 pieces, each after the previous and the first after dx; the gradients
    equal the unsplit ones."""
    from crfgan_tf.networks import layers

    x, k = (tf.random.stateless_normal((2, 3, 4, 5, 6), seed=[1, 2]),
            tf.random.stateless_normal((3, 3, 3, 6, 8), seed=[3, 4]))
    whole = _gradients(layers.upsample_conv3d, x, k, [5, 6])
    monkeypatch.setattr(layers, "FILTER_GRAD_PIECE_BYTES", 2 * 64 * 3 * 4 * 5 * 4)

    def fn(x, k):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            loss = tf.reduce_sum(layers.upsample_conv3d(x, k))
        return tape.gradient(loss, [x, k])

    pieces = _filter_grads(fn, tf.TensorSpec(x.shape), tf.TensorSpec(k.shape))
    assert [tuple(op.inputs[0].shape) for op in pieces] == [(2, 6, 8, 10, 2)] * 4
    # the forward pass is a Conv3DBackpropInputV2 (conv3d_transpose): the one Conv3D is dx
    [dx] = [op for op in pieces[0].graph.get_operations() if op.type == "Conv3D"]
    assert dx.name in _ancestors(pieces[0])
    for before, after in zip(pieces, pieces[1:]):
        assert before.name in _ancestors(after)
    for ref, got in zip(whole, _gradients(layers.upsample_conv3d, x, k, [5, 6])):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("shape,groups", [((2, 3, 4, 5, 16), 8), ((1, 2, 2, 2, 8), 8),
                                          ((3, 4, 6, 6, 32), 4)])
def test_group_norm_equals_keras_group_normalization(shape, groups):
    """Values and gradients (input, gamma, beta) of GroupNorm equal Keras's layer."""
    import keras
    from crfgan_tf.networks.layers import GroupNorm

    x = tf.random.stateless_normal(shape, seed=[7, 8]) * 3.0 + 1.5
    w = tf.random.stateless_normal(shape, seed=[9, 10])
    results = []
    for cls in (keras.layers.GroupNormalization, GroupNorm):
        layer = cls(groups=groups, epsilon=1e-5)
        layer.build(shape)
        layer.gamma.assign(tf.linspace(0.5, 2.0, shape[-1]))
        layer.beta.assign(tf.linspace(-1.0, 1.0, shape[-1]))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * w)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y.numpy()] + [g.numpy() for g in grads])
    for ref, got in zip(*results):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def _torch_style_sigma(w, u):
    """PyTorch / BigGAN spectral norm by hand: w (fan_in, out), u (out,) the stored vector.
    One power iteration v = normalise(w u), u' = normalise(w^T v); sigma = u'^T w^T v."""
    v = w @ u
    v = v / np.linalg.norm(v)
    u_new = w.T @ v
    u_new = u_new / np.linalg.norm(u_new)
    return float(u_new @ (w.T @ v)), u_new, v


@pytest.mark.parametrize("training", [True, False])
def test_spectral_norm_is_pytorch_one_power_iteration(training):
    # The reference's SN: sigma from one power iteration of the stored u (v from u, u' from
    # v, sigma = u'^T W v); training stores u', inference leaves u alone but computes sigma
    # the same way. A conv whose u is far from converged makes other formulas differ.
    layer = SNConv3D(3, 2, 1, 0)
    x = tf.random.stateless_normal((2, 3, 3, 3, 4), seed=[5, 6])
    layer(x)
    rng = np.random.default_rng(3)
    kernel = rng.standard_normal((2, 2, 2, 4, 3)).astype("float32")
    u0 = rng.standard_normal(3).astype("float32") * 5  # the reference's u is not unit length
    layer.kernel.assign(kernel)
    layer.u.assign(u0)
    w = kernel.reshape(-1, 3).astype("float64")
    sigma, u_new, _ = _torch_style_sigma(w, u0.astype("float64"))
    out = layer(x, training=training).numpy()
    expected = tf.nn.conv3d(x, kernel / sigma, (1, 1, 1, 1, 1), "VALID").numpy() \
        + layer.bias.numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.u.numpy(), u_new if training else u0, rtol=1e-5, atol=1e-6)


def test_spectral_norm_gradient_is_pytorch_one():
    # d sigma / dW = v u'^T with u', v held constant (they come from a no-grad power step)
    layer = SNDense(3)
    x = tf.random.stateless_normal((1, 5), seed=[1, 1])
    layer(x)
    rng = np.random.default_rng(4)
    kernel = rng.standard_normal((5, 3)).astype("float32")
    u0 = rng.standard_normal(3).astype("float32")
    layer.kernel.assign(kernel)
    layer.u.assign(u0)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(layer(x, training=True) - layer.bias)
    grad = tape.gradient(y, layer.kernel).numpy()
    w = kernel.astype("float64")
    sigma, u_new, v = _torch_style_sigma(w, u0.astype("float64"))
    xs = x.numpy().astype("float64")[0]
    # y = sum_j (x^T W)_j / sigma -> dy/dW = x 1^T / sigma - (x^T W 1) v u'^T / sigma^2
    expected = np.outer(xs, np.ones(3)) / sigma - (xs @ w).sum() * np.outer(v, u_new) / sigma**2
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def _encoder_with_affine(size, width, factor=4):
    """hE with GroupNorm scales and shifts away from 1 and 0 (as after training)."""
    enc = build_encoder(size, width=width, factor=factor)
    rng = np.random.RandomState(1)
    for layer in enc.layers:
        if layer.name.endswith("_gn"):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.uniform(-0.5, 0.5, layer.beta.shape))
    return enc


@pytest.mark.parametrize("slab", [1, 3, 16, 40])  # one slice; uneven; the whole; past it
def test_encode_by_slabs_equals_the_one_shot_encoder(slab):
    """The whole-volume embedding slab by slab (three passes for hE's three GroupNorms, a
    halo of SLAB_HALO slices) equals hE on the whole volume, from an int16 volume
    dequantised slab by slab, eagerly and traced."""
    from crfgan_tf.core import intensity
    from crfgan_tf.networks.encoder import encode_by_slabs

    enc = _encoder_with_affine(64, W)
    hu = np.random.RandomState(0).uniform(-1024, 600, (2, 64, 64, 64, 1))
    q = tf.constant(intensity.quantize(intensity.to_unit(hu)))
    prepare = lambda x: intensity.dequantize(tf.cast(x, tf.float32))
    one_shot = enc(prepare(q)).numpy()
    assert one_shot.shape == (2, 16, 16, 16, embedding_channels(W))
    eager = encode_by_slabs(enc, q, slab, prepare).numpy()
    traced = tf.function(lambda v: encode_by_slabs(enc, v, slab, prepare))(q).numpy()
    for got in (eager, traced):
        np.testing.assert_allclose(got, one_shot, atol=2e-5, rtol=1e-5)


def test_encode_by_slabs_halo_is_the_smallest_exact_one(monkeypatch):
    """With one input slice less on each side the blocks' exact output no longer covers
    a slab, and encode_by_slabs says so instead of returning a wrong embedding."""
    from crfgan_tf.networks import encoder

    enc = build_encoder(64, width=W)
    volume = tf.zeros((1, 64, 64, 64, 1))
    monkeypatch.setattr(encoder, "SLAB_HALO", encoder.SLAB_HALO - 1)
    with pytest.raises(AssertionError, match="halo 7 too small"):
        encoder.encode_by_slabs(enc, volume, 4)


def test_encode_by_slabs_runs_one_slab_at_a_time():
    """Traced, every slab's first op (its input slices) waits for the previous slab, so
    TensorFlow cannot run the slabs side by side (which would hold them all at once)."""
    from crfgan_tf.networks.encoder import encode_by_slabs

    enc = build_encoder(64, width=W)
    graph = tf.function(lambda v: encode_by_slabs(enc, v, 4)).get_concrete_function(
        tf.TensorSpec((1, 64, 64, 64, 1), tf.float32)).graph
    slices = [op for op in graph.get_operations() if op.type == "StridedSlice"
              and op.inputs[0].op.type == "Placeholder"]
    assert len(slices) == 3 * 4  # three passes over four slabs
    # the control edge sits on the slice or on the slice's bounds made in the same block
    waits = [any(o.control_inputs for o in [op] + [t.op for t in op.inputs]) for op in slices]
    assert waits == [False] + [True] * 11


@pytest.mark.parametrize("factor", [4, 8])
def test_head_by_slabs_runs_one_slab_at_a_time(factor):
    """G2 slab by slab (the exported `generate`) traced: every slab's first op (its
    embedding slices) waits for the previous slab, in every pass, so TensorFlow cannot run
    the slabs side by side and hold them all at once (the memory `--slab` promises)."""
    size = 64 if factor == 4 else 512
    head = build_head(size, width=W, factor=factor)
    n, c = size // factor, embedding_channels(W)
    graph = tf.function(lambda e: head.by_slabs(e, 4)).get_concrete_function(
        tf.TensorSpec((1, 16, n, n, c), tf.float32)).graph
    slices = [op for op in graph.get_operations() if op.type == "StridedSlice"
              and op.inputs[0].op.type == "Placeholder"]
    passes = {4: 2, 8: 3}[factor]  # one per GroupNorm, then the output pass
    assert len(slices) == passes * 4
    waits = [any(o.control_inputs for o in [op] + [t.op for t in op.inputs]) for op in slices]
    assert waits == [False] + [True] * (len(slices) - 1)


def test_encode_by_slabs_refuses_bad_arguments():
    from crfgan_tf.networks.encoder import encode_by_slabs

    enc = build_encoder(64, width=W)
    with pytest.raises(ValueError, match="slab must be >= 1"):
        encode_by_slabs(enc, tf.zeros((1, 64, 64, 64, 1)), 0)
    with pytest.raises(ValueError, match="static depth divisible by 4"):
        encode_by_slabs(enc, tf.zeros((1, 62, 64, 64, 1)), 2)


def test_head_checkpoint_layout_is_the_functional_one(tmp_path):
    """G2 is a Head (with by_slabs) but its checkpoint keys are those of the plain
    functional model every earlier run wrote, both ways."""
    import keras
    import tensorflow as tf

    from crfgan_tf.networks import build_head
    from crfgan_tf.networks.generator import Head

    head = build_head(64, 0.25)
    assert isinstance(head, Head)
    # the plain functional G2 with the same layers, as crfgan-tf built it before
    plain = keras.Model(head.inputs, head.outputs)
    path = tf.train.Checkpoint(generator_head=plain).write(str(tmp_path / "old"))
    keys = sorted(k for k, _ in tf.train.list_variables(path) if "generator_head" in k)
    new_path = tf.train.Checkpoint(generator_head=head).write(str(tmp_path / "new"))
    assert sorted(k for k, _ in tf.train.list_variables(new_path) if "generator_head" in k) == keys
    fresh = build_head(64, 0.25)
    tf.train.Checkpoint(generator_head=fresh).read(path).assert_existing_objects_matched()
    emb = tf.random.stateless_uniform((1, 4, 16, 16, 16), seed=[1, 2])
    np.testing.assert_array_equal(fresh(emb).numpy(), head(emb).numpy())
