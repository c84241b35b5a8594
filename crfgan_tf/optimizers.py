"""Adam as PyTorch computes it (the reference's `torch.optim.Adam`)."""

from __future__ import annotations

import keras
from keras import ops

from crfgan_tf.config import ADAM_VARIANTS


class PyTorchAdam(keras.optimizers.Adam):
    """keras.optimizers.Adam with PyTorch's epsilon placement.

    Keras updates w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps): eps is added
    before the bias correction of v, so it acts as eps / sqrt(1 - b2^t) (31.6 x eps at
    step 1 with b2 = 0.999). PyTorch, and the reference, update
        w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    Same slots (m, v), same variables in checkpoints, so a run can switch between the two.
    No weight decay or amsgrad (the reference uses neither); they are refused.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad or self.weight_decay:
            raise ValueError("PyTorchAdam implements plain Adam: no amsgrad, no weight_decay")

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        # The bias corrections in float64, as PyTorch computes them (in Python floats):
        # 1 - 0.999^t in float32 loses ~5 significant bits to cancellation.
        step = ops.cast(self.iterations + 1, "float64")
        correction_1 = ops.cast(1 - ops.power(ops.cast(self.beta_1, "float64"), step), dtype)
        correction_2 = ops.cast(1 - ops.power(ops.cast(self.beta_2, "float64"), step), dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        denom = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(correction_2)), self.epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(m, lr / correction_1), denom))


def make_adam(variant: str, learning_rate: float, beta_1: float, beta_2: float,
              epsilon: float, name: str) -> keras.optimizers.Optimizer:
    """Adam of `variant` ("pytorch": the reference's; "keras": keras.optimizers.Adam)."""
    if variant not in ADAM_VARIANTS:
        raise ValueError(f"adam variant must be one of {ADAM_VARIANTS}, got {variant!r}")
    cls = PyTorchAdam if variant == "pytorch" else keras.optimizers.Adam
    return cls(learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, name=name)
