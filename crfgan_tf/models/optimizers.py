"""Adam as PyTorch computes it (the reference's `torch.optim.Adam`), and as Keras does,
each as one fused in-place update."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from crfgan_tf.models.options import ADAM_VARIANTS


class _FusedAdam(keras.optimizers.Adam):
    """Plain Adam (amsgrad and weight decay refused: the reference uses neither) whose
    subclasses update through `_apply_in_place`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad or self.weight_decay:
            raise ValueError(f"{type(self).__name__} implements plain Adam: no amsgrad, "
                             "no weight_decay")

    def _apply_in_place(self, variable, gradient, alpha, epsilon):
        """ResourceApplyAdam: m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
        w -= alpha * m / (sqrt(v) + epsilon), written where m, v and w are (its own bias
        correction switched off: alpha and epsilon come corrected)."""
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        zero = tf.zeros((), dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]), beta1_power=zero, beta2_power=zero, lr=alpha,
            beta1=tf.cast(self.beta_1, dtype), beta2=tf.cast(self.beta_2, dtype),
            epsilon=epsilon, grad=tf.cast(gradient, dtype))


class PyTorchAdam(_FusedAdam):
    """keras.optimizers.Adam with PyTorch's epsilon placement.

    Keras updates w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps): eps is added
    before the bias correction of v, so it acts as eps / sqrt(1 - b2^t) (31.6 x eps at
    step 1 with b2 = 0.999). PyTorch, and the reference, update
        w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    Same slots (m, v), same variables in checkpoints, so a run can switch between the two.
    The update is one fused kernel that writes m, v and the weight in place (update_step).
    """

    def update_step(self, gradient, variable, learning_rate):
        """One fused, in-place update (TensorFlow's ResourceApplyAdam kernel): m, v and the
        weight are written where they are, with no temporary of the weight's size. The
        kernel computes Keras's form, w -= a * m / (sqrt(v) + e); with
        a = lr * sqrt(1 - b2^t) / (1 - b1^t) and e = eps * sqrt(1 - b2^t) (and the kernel's
        own bias correction switched off) that is PyTorch's update, multiplied through by
        sqrt(1 - b2^t)."""
        dtype = variable.dtype
        # The bias corrections in float64, as PyTorch computes them (in Python floats):
        # 1 - 0.999^t in float32 loses ~5 significant bits to cancellation.
        step = ops.cast(self.iterations + 1, "float64")
        correction_1 = 1 - ops.power(ops.cast(self.beta_1, "float64"), step)
        root_2 = ops.sqrt(1 - ops.power(ops.cast(self.beta_2, "float64"), step))
        alpha = ops.cast(ops.cast(learning_rate, "float64") * root_2 / correction_1, dtype)
        epsilon = ops.cast(self.epsilon * root_2, dtype)
        self._apply_in_place(variable, gradient, alpha, epsilon)


class KerasAdam(_FusedAdam):
    """keras.optimizers.Adam's update (`--adam=keras`: eps added before the bias
    correction of v) as one fused in-place kernel, like PyTorchAdam's: TensorFlow's
    ResourceApplyAdam computes exactly Keras's formula. Same slots and checkpoints as
    keras.optimizers.Adam."""

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        step = ops.cast(self.iterations + 1, dtype)
        power_1 = ops.power(ops.cast(self.beta_1, dtype), step)
        power_2 = ops.power(ops.cast(self.beta_2, dtype), step)
        alpha = ops.cast(learning_rate, dtype) * ops.sqrt(1 - power_2) / (1 - power_1)
        self._apply_in_place(variable, gradient, alpha, tf.cast(self.epsilon, dtype))


def _handle(variable):
    """The resource handle of a Keras or TensorFlow variable (inside a distribution
    strategy's update, the handle of this replica's copy)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


def make_adam(variant: str, learning_rate: float, beta_1: float, beta_2: float,
              epsilon: float, name: str) -> keras.optimizers.Optimizer:
    """Adam of `variant` ("pytorch": the reference's; "keras": keras.optimizers.Adam's
    formula), each as one fused in-place update."""
    if variant not in ADAM_VARIANTS:
        raise ValueError(f"adam variant must be one of {ADAM_VARIANTS}, got {variant!r}")
    cls = PyTorchAdam if variant == "pytorch" else KerasAdam
    return cls(learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, name=name)
