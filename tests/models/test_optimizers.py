"""Adam with PyTorch's epsilon placement against the closed-form update."""

import numpy as np
import pytest
import tensorflow as tf

from crfgan_tf.models.optimizers import KerasAdam, PyTorchAdam
from crfgan_tf.run import factory

from conftest import tiny_config


def _torch_adam_closed_form(w, grads, lr, b1, b2, eps):
    """torch.optim.Adam (no weight decay, no amsgrad) written out, in float64."""
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps
        w = w - lr / (1 - b1 ** t) * m / denom
    return w, m, v


@pytest.mark.parametrize("b1", [0.0, 0.9])
def test_pytorch_adam_matches_closed_form(b1):
    rng = np.random.default_rng(0)
    w0 = np.zeros(1000)  # the steps themselves, not rounded against O(1) weights
    # gradients spanning 1e-10..1: where eps matters (|g| ~ 1e-8) and where it does not
    grads = [(rng.standard_normal(1000) * 10.0 ** rng.uniform(-10, 0, 1000)).astype("float32")
             .astype("float64") for _ in range(3)]
    var = tf.Variable(w0.astype("float32"))
    opt = PyTorchAdam(1e-3, beta_1=b1, beta_2=0.999, epsilon=1e-8)
    for g in grads:
        opt.apply([tf.constant(g, tf.float32)], [var])
    expected, m, v = _torch_adam_closed_form(w0, grads, 1e-3, b1, 0.999, 1e-8)
    step = var.numpy() - w0
    np.testing.assert_allclose(step, expected - w0, rtol=1e-4, atol=1e-5 * 1e-3)  # 1e-5 lr
    # the slots to float32 rounding of the largest gradient each element saw
    scale = np.max(np.abs(grads), axis=0)
    assert np.all(np.abs(opt._momentums[0].numpy() - m) <= 1e-5 * np.abs(m) + 1e-6 * scale)
    assert np.all(np.abs(opt._velocities[0].numpy() - v) <= 1e-5 * v + 1e-6 * scale ** 2)


def test_keras_adam_places_epsilon_elsewhere():
    # Keras adds eps before the bias correction: at step 1 it acts as eps / sqrt(1 - b2),
    # 31.6 times larger. On |g| = eps the PyTorch step is lr/2, Keras's about lr/32.6.
    g = np.full(4, 1e-8)
    for cls, expected in ((PyTorchAdam, 0.5e-3), (tf.keras.optimizers.Adam, 1e-3 / 32.62)):
        var = tf.Variable(np.zeros(4, "float32"))
        cls(1e-3, beta_1=0.0, beta_2=0.999, epsilon=1e-8).apply(
            [tf.constant(g, tf.float32)], [var])
        np.testing.assert_allclose(-var.numpy(), expected, rtol=1e-3)


def test_keras_adam_equals_keras_optimizers_adam():
    """--adam=keras's fused update takes keras.optimizers.Adam's steps: the weights (to
    float32 rounding, 1e-5 lr) and both slots after 3 steps on gradients spanning
    1e-10..1."""
    rng = np.random.default_rng(1)
    grads = [(rng.standard_normal(1000) * 10.0 ** rng.uniform(-10, 0, 1000)).astype("float32")
             for _ in range(3)]
    results = []
    for cls in (tf.keras.optimizers.Adam, KerasAdam):
        var = tf.Variable(np.zeros(1000, "float32"))  # the steps, not rounded against O(1)
        opt = cls(1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
        for g in grads:
            opt.apply([tf.constant(g)], [var])
        results.append([var.numpy(), opt._momentums[0].numpy(), opt._velocities[0].numpy()])
    (w_keras, *slots_keras), (w_ours, *slots_ours) = results
    # float32 rounding of the fused kernel's order of operations: 1e-5 lr at most
    np.testing.assert_allclose(w_ours, w_keras, rtol=1e-4, atol=1e-5 * 1e-3)
    for keras_value, ours in zip(slots_keras, slots_ours):
        np.testing.assert_allclose(ours, keras_value, rtol=1e-4)


def test_training_uses_pytorch_adam_by_default_and_keras_on_request(tmp_path):
    model = factory.build_model(tiny_config(tmp_path / "a"))
    assert all(type(o) is PyTorchAdam for o in model.phase_optimizers().values())
    model = factory.build_model(tiny_config(tmp_path / "b", adam="keras"))
    assert all(type(o) is KerasAdam for o in model.phase_optimizers().values())
    model = factory.build_model(tiny_config(tmp_path / "c", mixed_precision="mixed_float16"))
    assert all(type(o.inner_optimizer) is PyTorchAdam
               for o in model.phase_optimizers().values())


@pytest.mark.parametrize("variant", ["pytorch", "keras"])
def test_adam_updates_in_place(variant):
    """The update writes m, v and the weight in place: no temporary of the weight's size
    (the generator's fc weight is 128 MiB at 128^3; its Adam temporaries were the step's
    peak). Replayed by the memory planner on the traced update of a 4 MB weight."""
    from crfgan_tf.models.optimizers import make_adam
    from crfgan_tf.training import memory_plan

    n = 1 << 20
    var = tf.Variable(tf.zeros(n))
    opt = make_adam(variant, 1e-3, beta_1=0.5, beta_2=0.999, epsilon=1e-8, name="adam")
    opt.build([var])
    graph = tf.function(lambda g: opt.apply([g], [var])).get_concrete_function(
        tf.TensorSpec((n,), tf.float32)).graph
    peak = memory_plan.StepGraph(graph).peak(1)
    assert peak["transient_bytes"] < 4 * n // 16, peak["largest"]
