import numpy as np
import pytest
import keras
import tensorflow as tf

from crfgan_tf.run import factory
from crfgan_tf.training import distribute

from conftest import tiny_batch, tiny_config


def _build(tmp_path, **kw):
    return factory.build_model(tiny_config(tmp_path, **kw))


def _snapshot(model):
    return {id(v): v.numpy().copy() for v in model.trainable_weights}


def _changed(model, before):
    return {id(v) for v in model.trainable_weights if not np.array_equal(v.numpy(), before[id(v)])}


def test_each_phase_changes_exactly_its_variables(tmp_path):
    model = _build(tmp_path)
    batch = tiny_batch()
    crop, pos = batch["crop"], batch["position"]
    ids = lambda vs: {id(v) for v in vs}
    weights = model.phase_weights()
    # the CRF starts at W = 0, which makes G's loss independent of it; give W a value so
    # that the G phase could (wrongly) move it if it differentiated the CRF too
    model.crf.w.assign(tf.fill(model.crf.w.shape, 0.1))

    before = _snapshot(model)
    model.d_step(crop, pos, batch["z_d"])
    assert _changed(model, before) == ids(weights["d"])

    before = _snapshot(model)
    g = model.g_step(pos, batch["z_g"])
    assert _changed(model, before) == ids(weights["g"])

    before = _snapshot(model)
    model.crf_step(batch["volume"], crop, pos, g["fake_embedding"], g["fake_logits"])
    assert _changed(model, before) == ids(weights["crf"])

    before = _snapshot(model)
    model.rec_step(crop)
    assert _changed(model, before) == ids(weights["rec"])

    all_ids = set().union(*(ids(v) for v in weights.values()))
    assert all_ids == ids(model.trainable_weights)  # every weight belongs to one phase


def test_train_step_outputs_and_step_counter(tmp_path):
    model = _build(tmp_path)
    out = model.train_step(tiny_batch())
    assert set(out) == {"d_loss", "g_loss", "crf_loss", "rec_loss", "d_real", "d_fake",
                        "crf_weight", "r_t"}
    assert all(np.isfinite(float(v)) for v in out.values())
    assert float(out["crf_weight"]) == 0.5 and int(model.step_counter.numpy()) == 1
    # W starts at 0: CRF(., D) = D, so the first CRF loss is the BCE of D's logits
    assert float(out["crf_loss"]) > 0


def test_batch_size_one(tmp_path):
    model = _build(tmp_path, batch_size=1)
    out = model.train_step(tiny_batch(batch=1))
    assert np.isfinite(float(out["d_loss"])) and np.isfinite(float(out["g_loss"]))


def test_slab_selects_per_example_positions(tmp_path):
    model = _build(tmp_path)
    emb = tf.reshape(tf.range(2 * 16 * 16 * 16 * 4, dtype=tf.float32), (2, 16, 16, 16, 4))
    slab = model.slab(emb, tf.constant([0, 12]))
    assert slab.shape == (2, 2, 16, 16, 4)
    np.testing.assert_array_equal(slab[0], emb[0, 0:2])
    np.testing.assert_array_equal(slab[1], emb[1, 3:5])


@pytest.mark.parametrize("policy", ["float32", pytest.param("mixed_bfloat16", marks=pytest.mark.slow),
                                    pytest.param("mixed_float16", marks=pytest.mark.slow)])
def test_one_step_under_each_precision_policy(tmp_path, policy):
    factory.set_precision(policy)
    try:
        model = _build(tmp_path, mixed_precision=policy)
        out = distribute.trace_step(model.train_step)(tiny_batch())
        assert all(np.isfinite(float(v)) for v in out.values())
        compute = {"float32": "float32", "mixed_bfloat16": "bfloat16",
                   "mixed_float16": "float16"}[policy]
        z = tf.zeros((1, 16))
        emb = model.trunk(z)
        assert emb.dtype == compute
        assert model.head(emb).dtype == tf.float32  # the image is pinned to float32
        logit = model.discriminator([tf.zeros((1, 8, 64, 64, 1)), tf.zeros((1, 1))])
        assert logit.dtype == tf.float32
        assert model.crf(emb, logit).dtype == tf.float32
        assert all(v.dtype == "float32" for v in model.trainable_weights)
        for opt in model.phase_optimizers().values():
            wrapped = isinstance(opt, keras.optimizers.LossScaleOptimizer)
            assert wrapped == (policy == "mixed_float16")
    finally:
        factory.set_precision("float32")


def test_generate_whole_volume(tmp_path):
    model = _build(tmp_path)
    vol = model.generate(tf.zeros((1, 16)))
    assert vol.shape == (1, 64, 64, 64, 1)


def _power_step(kernel, u):
    """One reference power-iteration step of the stored u for a (..., out) kernel."""
    w = kernel.reshape(-1, kernel.shape[-1]).astype("float64")
    v = w @ u
    v /= np.linalg.norm(v)
    u = w.T @ v
    return u / np.linalg.norm(u)


def _first_sn(model):
    return model.discriminator.get_layer("conv1")


@pytest.mark.parametrize("crf_sample,calls_after_update", [("fresh", 3), ("reuse", 2)])
def test_discriminator_called_per_phase_as_in_the_reference(tmp_path, crf_sample,
                                                            calls_after_update):
    # The reference calls D on real and fake crops separately in phase 1 (two u steps with
    # the old W), once in phase 2 and, drawing a fresh sample, twice in phase 3 (with W as
    # phase 1 left it). Reusing phase 2's sample leaves one call in phase 3.
    model = _build(tmp_path, crf_sample=crf_sample)
    layer = _first_sn(model)
    kernel0, u = layer.kernel.numpy().copy(), layer.u.numpy().astype("float64")
    model.train_step(tiny_batch())
    kernel1 = layer.kernel.numpy()
    assert not np.array_equal(kernel0, kernel1)
    u = _power_step(kernel0, _power_step(kernel0, u))
    for _ in range(calls_after_update):
        u = _power_step(kernel1, u)
    np.testing.assert_allclose(layer.u.numpy(), u, rtol=1e-4, atol=1e-6)


def test_fresh_crf_sample_uses_z_c(tmp_path):
    # fresh: the CRF loss depends on z_c; reuse: it does not
    losses = {}
    for mode in ("fresh", "reuse"):
        for shift in (0.0, 1.0):
            keras.utils.set_random_seed(0)
            model = _build(tmp_path, crf_sample=mode)
            model.crf.w.assign(tf.fill(model.crf.w.shape, 0.5))
            batch = dict(tiny_batch(), z_c=tiny_batch()["z_c"] + shift)
            losses[mode, shift] = float(model.train_step(batch)["crf_loss"])
    assert losses["fresh", 0.0] != losses["fresh", 1.0]
    assert losses["reuse", 0.0] == losses["reuse", 1.0]


@pytest.mark.parametrize("model_name,img_size", [("crfgan", 64), ("hagan", 128)])
def test_int16_volume_trains_as_its_float32_dequantisation(tmp_path, model_name, img_size):
    """The input stream hands the whole volume over int16, as stored; a step on it is
    the step on the float32 volume it stands for: the same losses, the same weights."""
    from crfgan_tf.core import intensity

    batch = tiny_batch(img_size, batch=1)
    q = tf.constant(intensity.quantize(batch["volume"].numpy()))
    as_float = dict(batch, volume=intensity.dequantize(tf.cast(q, tf.float32)))
    as_int16 = dict(batch, volume=q)
    runs, models = [], [_build(tmp_path / str(i), model=model_name, img_size=img_size,
                               batch_size=1) for i in range(2)]
    for a, b in zip(models[0].weights, models[1].weights):
        b.assign(a)
    for model, data in zip(models, (as_float, as_int16)):
        out = model.train_step(data)
        runs.append(({k: float(v) for k, v in out.items()}, [v.numpy() for v in model.weights]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_encoder_slabs_train_as_the_one_pass_encoder(tmp_path):
    """--crf_encoder_slab: a traced step whose phase 3 encodes the int16 volume 3
    embedding slices at a time gives the one-pass step's losses and weights, up to float
    rounding (hE's GroupNorm statistics are summed slab by slab)."""
    from crfgan_tf.core import intensity

    batch = tiny_batch(64, batch=2)
    batch["volume"] = tf.constant(intensity.quantize(batch["volume"].numpy()))
    models = [_build(tmp_path / str(s), crf_encoder_slab=s) for s in (0, 3)]
    assert [m.encoder_slab for m in models] == [0, 3]
    for a, b in zip(models[0].weights, models[1].weights):
        b.assign(a)
    models[0].crf.w.assign(tf.fill(models[0].crf.w.shape, 0.1))  # W = 0 ignores hE(x)
    models[1].crf.w.assign(models[0].crf.w)
    runs = []
    for model in models:
        out = distribute.trace_step(model.train_step)(batch)
        runs.append(({k: float(v) for k, v in out.items()}, [v.numpy() for v in model.weights]))
    for key in runs[0][0]:
        np.testing.assert_allclose(runs[1][0][key], runs[0][0][key], rtol=1e-5, err_msg=key)
    crf_w = [i for i, v in enumerate(models[0].weights) if v is models[0].crf.w][0]
    assert not np.array_equal(runs[0][1][crf_w], 0.1)  # phase 3 moved W, through hE(x)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("model_name,size", [("crfgan", 64), ("hagan", 128)])
def test_remat_trains_as_without_it(tmp_path, model_name, size):
    """--remat: a traced step that recomputes G1's, G2's and hE's activations in the
    backward passes (and HA-GAN's sub-encoder's) gives the same losses and weights; its
    graph really recomputes: G2 ends in the step's only tanh, and each phase that
    differentiates through G2 (CRF-GAN: generator, reconstruction; HA-GAN: and the
    sub-encoder's) runs it once more in its backward pass."""
    batch = tiny_batch(size, batch=2)
    models = [_build(tmp_path / str(r), model=model_name, img_size=size, remat=r)
              for r in (False, True)]
    assert [m.remat for m in models] == [False, True]
    for a, b in zip(models[0].weights, models[1].weights):
        b.assign(a)
    runs, graphs = [], []
    for model in models:
        step = distribute.trace_step(model.train_step)
        graphs.append(step.get_concrete_function(batch).graph)
        out = step(batch)
        runs.append(({k: float(v) for k, v in out.items()}, [v.numpy() for v in model.weights]))
    tanh = [sum(op.type == "Tanh" for op in g.get_operations()) for g in graphs]
    assert tanh[1] - tanh[0] == {"crfgan": 2, "hagan": 3}[model_name], tanh
    for key in runs[0][0]:
        np.testing.assert_allclose(runs[1][0][key], runs[0][0][key], rtol=1e-5, err_msg=key)
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_crf_encoder_slab_is_checked_by_name():
    from crfgan_tf.run.config import TrainConfig

    assert TrainConfig(model_dir="x").crf_encoder_slab == 0  # the reference's one pass
    with pytest.raises(ValueError, match="`crf_encoder_slab`"):
        TrainConfig(model_dir="x", crf_encoder_slab=-1).validate()


# ops that compute nothing and allocate nothing (constants, captured handles, views)
VIEWS = ("Const", "NoOp", "Placeholder", "Identity", "StopGradient")


def _phase_ranges(graph, phases):
    """(start, end] op indices of each phase in the traced step: a phase ends with the last
    op of its optimizer (adam_<phase>/...)."""
    ops = graph.get_operations()
    end = {p: max(i for i, op in enumerate(ops) if op.name.startswith(f"adam_{p}/"))
           for p in phases}
    bounds = [-1] + [end[p] for p in phases]
    return ops, {p: (bounds[k], bounds[k + 1]) for k, p in enumerate(phases)}


@pytest.mark.parametrize("model_name,img_size,slab", [("crfgan", 64, 0), ("crfgan", 64, 4),
                                                     ("hagan", 128, 0)])
def test_each_phase_runs_after_the_previous_phase_backward(tmp_path, model_name, img_size,
                                                          slab):
    """In the traced step every op of a phase's networks (their weights' reads included)
    and every volume-shaped op depends on the previous phase's gradients, so TensorFlow cannot run it while that phase's
    backward pass still holds its activations. Without the ordering CRF-GAN's hE pass
    over the whole volume (phase 3) and both models' next generator pass were free to
    start with the first phase."""
    model = _build(tmp_path, model=model_name, img_size=img_size, batch_size=1,
                   crf_encoder_slab=slab)
    spec = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in tiny_batch(img_size, 1).items()}
    spec["volume"] = tf.TensorSpec(spec["volume"].shape, tf.int16)
    graph = distribute.trace_step(model.train_step).get_concrete_function(spec).graph
    ops, ranges = _phase_ranges(graph, model.PHASES)
    networks = {m.name for m in model.modules().values()}  # their ops' name scopes
    index = {op.name: i for i, op in enumerate(ops)}
    for prev, phase in zip(model.PHASES, model.PHASES[1:]):
        lo, hi = ranges[prev]
        after = set()  # ops that (transitively) depend on prev's gradients
        for i in range(lo + 1, len(ops)):
            op = ops[i]
            if (op.name.startswith("gradient_tape/") and i <= hi) or any(
                    index[d.name] > lo and d.name in after
                    for d in [t.op for t in op.inputs] + list(op.control_inputs)):
                after.add(op.name)
        start, end = ranges[phase]
        free = [op.name for op in ops[start + 1:end + 1]
                if op.type not in VIEWS and op.name not in after
                and (op.name.split("/")[0].rstrip("_0123456789") in networks
                     or any(t.shape.rank == 5 for t in op.outputs))]
        assert not free, f"{model_name} phase {phase!r}: {len(free)} ops may run before " \
                         f"phase {prev!r}'s backward pass, e.g. {free[:5]}"


@pytest.mark.parametrize("model_name,img_size", [("crfgan", 64), ("hagan", 128)])
def test_r1_penalty_is_the_squared_input_gradient_of_the_real_logits(tmp_path, model_name,
                                                                       img_size):
    """D's loss with r1_gamma = the paper's D loss + (gamma / 2) E||grad_x D(x)||^2, the
    gradient taken by hand here on the same D state (spectral-norm u included)."""
    from crfgan_tf.models import losses

    model = _build(tmp_path, model=model_name, img_size=img_size, r1_gamma=10.0)
    batch = tiny_batch(img_size)
    crop = tf.cast(batch["crop"], tf.float32)
    pos = model.normalized_position(batch["position"])
    sn_u = [v for name in ("discriminator", "low_discriminator") if hasattr(model, name)
            for v in getattr(model, name).weights if "sn_u" in v.path]
    u_before = [v.numpy().copy() for v in sn_u]
    inputs = [crop] if model_name == "crfgan" else [crop, model.low_resolution(batch["volume"])]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        if model_name == "crfgan":
            logits = model.discriminator([inputs[0], pos], training=True)
        else:
            logits, _ = model.joint_logits(inputs[0], inputs[1], pos, 1)
        summed = tf.reduce_sum(logits)
    expected = float(losses.r1_penalty(tape.gradient(summed, inputs), 10.0, 2))
    for v, u in zip(sn_u, u_before):
        v.assign(u)  # the model's own D call starts from the same u
    if model_name == "crfgan":
        out = model.d_step(crop, batch["position"], batch["z_d"])
    else:
        out = model.d_step(crop, inputs[1], batch["position"], batch["z_d"])
    assert expected > 0
    assert float(out["r1_penalty"]) == pytest.approx(expected, rel=1e-4)


def test_ema_tracks_g_and_is_what_generation_uses(tmp_path):
    model = _build(tmp_path, ema_decay=0.9)
    trunk, head = model.generation_networks()
    assert trunk is model.trunk_ema and head is model.head_ema
    for e, w in zip(model.trunk_ema.weights, model.trunk.weights):
        np.testing.assert_array_equal(e.numpy(), w.numpy())  # starts equal
    before = [e.numpy().copy() for e in model.trunk_ema.weights]
    model.train_step(tiny_batch())  # step counter 1: decay min(0.9, 2/11)
    decay = float(model.update_ema())
    assert decay == pytest.approx(2 / 11)
    for e, b, w in zip(model.trunk_ema.weights, before, model.trunk.weights):
        np.testing.assert_allclose(e.numpy(), decay * b + (1 - decay) * w.numpy(), atol=1e-7)
    assert not model.trunk_ema.trainable_weights  # never a phase's weight
    keys = set(model.checkpoint_items())
    assert {"generator_trunk_ema", "generator_head_ema"} <= keys
    assert "generator_trunk_ema" not in _build(tmp_path).checkpoint_items()


@pytest.mark.parametrize("model_name,img_size", [("crfgan", 64), ("hagan", 128)])
def test_rec_trains_head_moves_g2_in_the_reconstruction_phase(tmp_path, model_name, img_size):
    model = _build(tmp_path, model=model_name, img_size=img_size, rec_trains_head=True)
    crop = tf.cast(tiny_batch(img_size)["crop"], tf.float32)
    head = [w.numpy().copy() for w in model.head.trainable_weights]
    encoder = [w.numpy().copy() for w in model.encoder.trainable_weights]
    model.rec_step(crop)
    assert all(not np.array_equal(a, w.numpy()) for a, w in zip(head, model.head.trainable_weights))
    assert all(not np.array_equal(a, w.numpy())
               for a, w in zip(encoder, model.encoder.trainable_weights))
    # the reference's phase: hE alone
    plain = _build(tmp_path, model=model_name, img_size=img_size)
    head = [w.numpy().copy() for w in plain.head.trainable_weights]
    plain.rec_step(crop)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(head, plain.head.trainable_weights))
