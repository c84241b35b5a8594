"""Shared building blocks: spectral-normalised conv / dense and width scaling."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

def scaled_channels(channels: int, width: float, multiple: int = 8) -> int:
    """Channels of a layer at a width multiplier: round(channels * width) to a multiple of
    `multiple` (GroupNorm uses 8 groups), at least `multiple`. width=1 keeps `channels`."""
    if width == 1.0:
        return channels
    return max(multiple, int(round(channels * width / multiple)) * multiple)


def native_padding(kernel_size, strides, padding, spatial=(None, None, None)):
    """The convolution `padding` argument that equals PyTorch-style symmetric zero padding,
    or None where none does (then pad explicitly).

    "valid" when no padding; "same" when, on every axis, TensorFlow's SAME padding (total
    max(k - s, 0) on an input divisible by the stride, the odd voxel on the right) equals
    `padding` on both sides. Where it does, the convolution pads inside the kernel: no
    padded copy of the input is made in the forward pass or kept for the backward pass.
    Every layer of the reference qualifies on the even sizes used here; `spatial` (static
    input sides, None = unknown and taken to be a multiple of the stride, as documented
    for the free depth of G2 and hE) guards the rest.
    """
    k, s, p = _triple(kernel_size), _triple(strides), _triple(padding)
    if not any(p):
        return "valid"
    if all(ki - si == 2 * pi and (n is None or n % si == 0)
           for ki, si, pi, n in zip(k, s, p, spatial)):
        return "same"
    return None


def _l2_normalize(x, eps=1e-12):
    return x / ops.maximum(ops.sqrt(ops.sum(ops.square(x))), eps)


class _SpectralNormMixin:
    """Spectral normalisation with the semantics of PyTorch's `spectral_norm`.

    Keras 3's `SpectralNormalization` wrapper overwrites the kernel variable with W / sigma
    and so differentiates with respect to the normalised kernel, not through sigma. The
    reference (and Miyato et al.) keep the raw kernel W as the parameter, use W / sigma(W)
    in the forward pass and differentiate through sigma, with u and v held constant. We
    implement the latter so that training dynamics match the reference.

    sigma is the reference's (BigGAN's `SN`; in training also PyTorch's `spectral_norm`): from
    the stored u, one power iteration v = normalise(W^T u), u' = normalise(W v) (W as (out, fan_in)),
    and sigma = u'^T W v, with u' and v constants for the gradient. A training call stores
    u' (so u advances once per call, as in the reference); an inference call computes the
    same sigma from the stored u and leaves u alone. The power iteration runs in float32
    under every precision policy.
    """

    def _build_weights(self, kernel_shape):
        """Kernel and bias with PyTorch's default initialisation range (+-1/sqrt(fan_in)),
        and the power-iteration vector u."""
        bound = 1.0 / math.sqrt(math.prod(kernel_shape[:-1]))
        init = keras.initializers.RandomUniform(-bound, bound)
        self.kernel = self.add_weight(name="kernel", shape=tuple(kernel_shape), initializer=init)
        self.bias = self.add_weight(name="bias", shape=(kernel_shape[-1],), initializer=init)
        self._build_u(kernel_shape[-1])

    def _build_u(self, out_features: int):
        self.u = self.add_weight(
            name="sn_u", shape=(out_features,), trainable=False,
            initializer=keras.initializers.RandomNormal(stddev=1.0, seed=0),
            dtype="float32", aggregation="only_first_replica")

    def _normalized_kernel(self, training):
        kernel = ops.cast(self.kernel.value, "float32")
        w = ops.reshape(kernel, (-1, kernel.shape[-1]))  # (fan_in, out): W^T
        u = ops.convert_to_tensor(self.u.value)
        # inference repeats the same step from the stored u, so one step is enough there
        for _ in range(self.power_iterations if training else 1):
            v = ops.stop_gradient(_l2_normalize(ops.matmul(w, u)))
            u = ops.stop_gradient(_l2_normalize(ops.matmul(ops.transpose(w), v)))
        if training:
            self.u.assign(u)
        sigma = ops.sum(u * ops.matmul(ops.transpose(w), v))
        return ops.cast(kernel / sigma, self.compute_dtype)


class SNConv3D(_SpectralNormMixin, keras.layers.Layer):
    """Spectral-normalised 3D convolution, channels-last, with explicit symmetric padding.

    Args:
      filters: output channels.
      kernel_size: int or 3-tuple.
      strides: int or 3-tuple.
      padding: int or 3-tuple of zero padding per side (PyTorch's `padding`).
      power_iterations: power-iteration steps per training call.

    Output side per axis: (n + 2 * padding - kernel) // stride + 1.
    """

    def __init__(self, filters, kernel_size, strides=1, padding=0, power_iterations=1,
                 **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.filters = filters
        self.kernel_size = _triple(kernel_size)
        self.strides = _triple(strides)
        self.padding = _triple(padding)
        self.power_iterations = power_iterations

    def build(self, input_shape):
        self._build_weights((*self.kernel_size, input_shape[-1], self.filters))

    def call(self, inputs, training=False):
        kernel = self._normalized_kernel(training)
        inputs = ops.cast(inputs, self.compute_dtype)  # autocast=False skips this too
        mode = native_padding(self.kernel_size, self.strides, self.padding, inputs.shape[1:4])
        if mode is None:
            p = self.padding
            inputs = ops.pad(inputs, [(0, 0), (p[0], p[0]), (p[1], p[1]), (p[2], p[2]), (0, 0)])
            mode = "valid"
        out = ops.conv(inputs, kernel, strides=self.strides, padding=mode)
        return out + ops.cast(self.bias.value, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        dims = [None if n is None else (n + 2 * p - k) // s + 1
                for n, k, s, p in zip(input_shape[1:4], self.kernel_size, self.strides,
                                      self.padding)]
        return (input_shape[0], *dims, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      strides=self.strides, padding=self.padding,
                      power_iterations=self.power_iterations)
        return config


class SNDense(_SpectralNormMixin, keras.layers.Layer):
    """Spectral-normalised dense layer (see SNConv3D for the normalisation)."""

    def __init__(self, units, power_iterations=1, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.units = units
        self.power_iterations = power_iterations

    def build(self, input_shape):
        self._build_weights((input_shape[-1], self.units))

    def call(self, inputs, training=False):
        kernel = self._normalized_kernel(training)
        inputs = ops.cast(inputs, self.compute_dtype)
        return ops.matmul(inputs, kernel) + ops.cast(self.bias.value, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, power_iterations=self.power_iterations)
        return config


def _triple(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


def conv_gn_relu(x, filters, kernel_size, strides, padding, name, upsample=False):
    """Conv3D (PyTorch-style symmetric padding, bias) -> GroupNorm(8) -> ReLU; with
    `upsample`, nearest x2 up-sampling first (a 3^3, padding-1 conv only), fused into the
    convolution (UpsampleConv3D)."""
    if upsample:
        if (kernel_size, strides, padding) != (3, 1, 1):
            raise ValueError("up-sampling is fused only into 3^3, stride-1, padding-1 convs")
        x = UpsampleConv3D(filters, name=f"{name}_conv")(x)
    else:
        x = conv3d(x, filters, kernel_size, strides, padding, name)
    x = GroupNorm(groups=8, epsilon=1e-5, name=f"{name}_gn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def conv3d(x, filters, kernel_size, strides, padding, name, **kwargs):
    """Keras Conv3D `{name}_conv` with PyTorch-style symmetric zero padding: padded inside
    the convolution where SAME padding is the same thing (see native_padding), else by an
    explicit ZeroPadding3D `{name}_pad`."""
    mode = native_padding(kernel_size, strides, padding, x.shape[1:4])
    if mode is None:
        x = keras.layers.ZeroPadding3D(padding, name=f"{name}_pad")(x)
        mode = "valid"
    return keras.layers.Conv3D(filters, kernel_size, strides=strides, padding=mode,
                               name=f"{name}_conv", **kwargs)(x)


# oneDNN computes a 3D convolution's weight gradient on x86 CPUs by im2col + GEMM
# ("gemm:jit" in ONEDNN_VERBOSE): its scratchpad holds the patch matrix of the op's input
# (channels x kernel taps x output voxels, per example) for each thread, mapped outside
# TensorFlow's allocator afresh every step (TensorFlow does not cache these primitives).
# The largest is the up-sampling taps' gradient of G1's 256 -> 128 block, at the step's
# RSS peak. Computed in pieces over the input's channels, one piece after another, each
# piece's patch matrix is at most this many bytes per example (the bound chosen by
# measurement: docs/benchmarks/2026-12-03-upsample-taps-gradient-pieces.md).
FILTER_GRAD_PIECE_BYTES = 32 * 2**20


def filter_grad_pieces(channels: int, taps: int, out_voxels, itemsize: int,
                       budget: int | None = None) -> int:
    """How many pieces a weight gradient's input channels are cut into: the fewest, as a
    divisor of `channels`, whose patch matrix per example (channels / pieces x `taps` x
    `out_voxels` x `itemsize` bytes) fits `budget` (FILTER_GRAD_PIECE_BYTES); one channel
    per piece where none fits; 1 where `out_voxels` is unknown (None)."""
    budget = FILTER_GRAD_PIECE_BYTES if budget is None else budget
    if out_voxels is None:
        return 1
    per_channel = taps * out_voxels * itemsize
    return next((n for n in range(1, channels + 1)
                 if channels % n == 0 and channels // n * per_channel <= budget), channels)


def conv3d_backprop_filter(inputs, filter_shape, out_backprop, strides, padding, after=()):
    """Conv3DBackpropFilterV2 (NDHWC) with its patch matrix bounded: in pieces over the
    channels of `inputs` (filter_grad_pieces), each piece started once the previous one
    (the first: once the tensors in `after`) exists, concatenated on the filter's input
    axis. Each element is the same sum over the same voxels as in one
    Conv3DBackpropFilterV2 (bit-identical in the cases measured)."""
    kd, kh, kw, cin, cout = filter_shape
    voxels = out_backprop.shape[1:4]
    pieces = filter_grad_pieces(cin, kd * kh * kw,
                                None if None in voxels else math.prod(voxels),
                                inputs.dtype.size)
    step, parts, previous = cin // pieces, [], list(after)
    for i in range(pieces):
        with tf.control_dependencies(previous):
            channels = inputs if pieces == 1 else inputs[..., i * step:(i + 1) * step]
            part = tf.raw_ops.Conv3DBackpropFilterV2(
                input=channels, filter_sizes=[kd, kh, kw, step, cout],
                out_backprop=out_backprop, strides=strides, padding=padding)
        parts.append(part)
        previous = [part]
    return parts[0] if pieces == 1 else tf.concat(parts, axis=3)


# Nearest-neighbour x2 up-sampling followed by a 3-tap SAME convolution is, per axis, a
# stride-2 transposed convolution with 4 taps: output voxel 2m + a of conv(up(x)) sees
# x[m-1], x[m], x[m] (a = 0) or x[m], x[m], x[m+1] (a = 1) through taps k = 0, 1, 2, and the
# transposed convolution (TF SAME: output 2m + a = 2i + t - 1) puts tap t of input i there.
# So tap t of the 4-tap kernel is the sum of the 3-tap kernel's taps _TRANSPOSED_TAPS[t].
_TRANSPOSED_TAPS = ((0, 0, 1),   # t = 0: x[m+1] for a = 1 <- k = 2
                    (0, 1, 1),   # t = 1: x[m]   for a = 0 <- k = 1, 2
                    (1, 1, 0),   # t = 2: x[m]   for a = 1 <- k = 0, 1
                    (1, 0, 0))   # t = 3: x[m-1] for a = 0 <- k = 0


def _transposed_tap_matrix(dtype):
    """(64, 27): 4^3 transposed-kernel taps (t1, t2, t3) from 3^3 kernel taps (k1, k2, k3)."""
    m = np.asarray(_TRANSPOSED_TAPS, np.float32)
    return tf.constant(np.einsum("ai,bj,ck->abcijk", m, m, m).reshape(64, 27), dtype)


def _transposed_taps(kernel):
    """The (4, 4, 4, cout, cin) kernel of conv3d_transpose from a (3, 3, 3, cin, cout) one:
    the 3^3 kernel's channels are swapped first (27 taps moved rather than 64)."""
    cin, cout = kernel.shape[3], kernel.shape[4]
    swapped = tf.reshape(tf.transpose(kernel, (0, 1, 2, 4, 3)), (27, cout * cin))
    taps = tf.matmul(_transposed_tap_matrix(kernel.dtype), swapped)
    return tf.reshape(taps, (4, 4, 4, cout, cin))


_UP_STRIDES = (1, 2, 2, 2, 1)


@tf.custom_gradient
def upsample_conv3d(x, kernel):
    """conv3d(nearest_upsample_x2(x), kernel, SAME) without making the up-sampled tensor.

    Computed as one stride-2 transposed convolution of x with a 4^3 kernel whose taps are
    sums of the 3^3 kernel's taps (_TRANSPOSED_TAPS). The same function up to float
    rounding (taps are summed before the products); 64/216 of the multiply-adds; no
    up-sampled input is made in the forward pass or kept for the backward pass (x is);
    oneDNN runs it as a native deconvolution. The backward pass makes the taps again
    (one small matmul), once this block's output gradient exists, rather than keeping
    them alive from the forward pass: they are 64/27 the kernel's size (64 MiB for G1's
    512 -> 512 block), larger than x at the batch sizes 3D GANs train with. Its two
    convolutions are the ones TensorFlow's own gradient of conv3d_transpose runs; the
    taps' gradient runs after the input's, in pieces (conv3d_backprop_filter).

    Args:
      x: (batch, d, h, w, cin).
      kernel: (3, 3, 3, cin, cout), same dtype as x.

    Returns:
      (batch, 2d, 2h, 2w, cout).
    """
    cout = kernel.shape[4]
    shape = tf.shape(x)
    out_shape = tf.stack([shape[0], 2 * shape[1], 2 * shape[2], 2 * shape[3], cout])
    y = tf.nn.conv3d_transpose(x, _transposed_taps(kernel), out_shape, _UP_STRIDES, "SAME")

    def grad(dy):
        # The taps depend on the kernel alone, so without this wait TensorFlow's executor
        # made every block's taps as soon as the backward pass began and held them all
        # through the backward passes before theirs (G1's three: 104 MiB at 128^3).
        with tf.GradientTape() as tape, tf.control_dependencies([dy]):
            tape.watch(kernel)
            taps = _transposed_taps(kernel)
        dx = tf.nn.conv3d(dy, taps, _UP_STRIDES, "SAME")
        # dy is this gradient's input: its patch matrix is 64 taps x x's voxels per output
        # channel (128 MiB per example for G1's 256 -> 128 block at 128^3), so in pieces
        dtaps = conv3d_backprop_filter(dy, taps.shape, x, _UP_STRIDES, "SAME", after=[dx])
        return dx, tape.gradient(taps, kernel, output_gradients=dtaps)

    return y, grad


class UpsampleConv3D(keras.layers.Conv3D):
    """Nearest-neighbour x2 up-sampling then a 3^3 SAME convolution with bias, as one layer
    (upsample_conv3d, a transposed convolution): the reference's
    `F.interpolate(scale_factor=2)` + `Conv3d(k=3, p=1)`, with the same kernel and bias
    variables as a Conv3D on the up-sampled input."""

    def __init__(self, filters, **kwargs):
        kwargs.setdefault("kernel_size", 3)
        kwargs.setdefault("padding", "same")
        super().__init__(filters, **kwargs)
        if self.kernel_size != (3, 3, 3) or self.strides != (1, 1, 1) or self.padding != "same":
            raise ValueError("UpsampleConv3D is a 3^3, stride-1, SAME convolution")

    def call(self, inputs):
        out = upsample_conv3d(inputs, ops.cast(self.kernel, inputs.dtype))
        if self.use_bias:
            out = out + ops.cast(self.bias, out.dtype)
        return self.activation(out) if self.activation is not None else out

    def compute_output_shape(self, input_shape):
        up = [None if n is None else 2 * n for n in input_shape[1:4]]
        return (input_shape[0], *up, self.filters)


class GroupNorm(keras.layers.GroupNormalization):
    """keras GroupNormalization (channels last; same variables, same statistics: group
    mean, then the mean squared difference from it, in float32) computed channel-wise.

    Keras reshapes to (..., groups, channels / groups) and reduces over non-adjacent axes,
    which on CPU copies the whole tensor into a transposed temporary for the variance and
    keeps a second normalised copy. Here every reduction is over the leading (spatial)
    axes to per-channel values, which are then averaged within groups (equal counts per
    channel make that the group statistic), and the output is one multiply-add with
    per-(example, channel) scale and shift.
    """

    def call(self, inputs):
        if self.axis not in (-1, len(inputs.shape) - 1):
            return super().call(inputs)
        x = ops.cast(inputs, "float32")
        channels, groups = x.shape[-1], self.groups
        axes = list(range(1, len(x.shape) - 1))
        per_channel_shape = [-1] + [1] * len(axes) + [channels]

        def group_average(per_channel):  # (batch, C) -> (batch, C), each its group's mean
            grouped = tf.reshape(per_channel, (-1, groups, channels // groups))
            mean = tf.reduce_mean(grouped, axis=-1, keepdims=True)
            return tf.reshape(tf.broadcast_to(mean, tf.shape(grouped)), (-1, channels))

        mean = group_average(tf.reduce_mean(x, axis=axes))
        variance = group_average(tf.reduce_mean(
            tf.math.squared_difference(x, tf.reshape(mean, per_channel_shape)), axis=axes))
        scale, shift = self.scale_shift(mean, variance)
        out = x * tf.reshape(scale, per_channel_shape) + tf.reshape(shift, per_channel_shape)
        return ops.cast(out, self.compute_dtype)

    def scale_shift(self, mean, variance):
        """The normalisation as one multiply-add: float32 (scale, shift) of the same shape
        as `mean` and `variance` (per example and channel, each its group's statistic)."""
        scale = tf.math.rsqrt(variance + self.epsilon)
        if self.scale:
            scale = scale * tf.cast(self.gamma, "float32")
        shift = -mean * scale
        if self.center:
            shift = shift + tf.cast(self.beta, "float32")
        return scale, shift


def pytorch_bound(layer) -> float | None:
    """1/sqrt(fan_in) of a built Keras Conv3D (UpsampleConv3D too: its kernel is the 3^3
    one of the reference's conv after up-sampling) or Dense, PyTorch's default range for
    both the kernel (kaiming_uniform_ with a = sqrt(5)) and the bias of nn.Conv3d and
    nn.Linear; None for any other layer."""
    if not isinstance(layer, (keras.layers.Conv3D, keras.layers.Dense)):
        return None
    return 1.0 / math.sqrt(math.prod(layer.kernel.shape[:-1]))


def initialize_like_pytorch(network: keras.Model) -> int:
    """Redraws every Conv3D and Dense kernel and bias of a built `network` from
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)): the initial ranges the reference's G1, G2, hE (and
    HA-GAN's other networks) get from PyTorch's defaults, where Keras would start from
    glorot-uniform kernels and zero biases. GroupNorm keeps scale 1, offset 0 (PyTorch's
    too); the spectral-normalised layers of D already draw PyTorch's ranges. The draws come
    from Keras' global seed (keras.utils.set_random_seed). Returns the layers redrawn."""
    count = 0
    for layer in network._flatten_layers(include_self=False):
        bound = pytorch_bound(layer)
        if bound is None:
            continue
        for variable in (layer.kernel, layer.bias):
            if variable is not None:
                variable.assign(keras.random.uniform(variable.shape, -bound, bound,
                                                     dtype=variable.dtype))
        count += 1
    return count
