"""The sub-volume discriminator D (spectral norm on every layer)."""

from __future__ import annotations

import keras
from keras import ops

from crfgan_tf.core.geometry import check_size, crop_depth, extra_stages
from crfgan_tf.networks.layers import scaled_channels, SNConv3D, SNDense

# (filters, kernel, stride, padding) at 256^3; at 128^3 the first layer is dropped and at
# 64^3 the first two, so the feature map always reaches 1^3 before the dense layers. At
# 512^3 FIRST_LAYER_512 comes first (geometry's growth rule).
LAYERS_256 = (
    (16, 4, 2, 1),
    (32, 4, 2, 1),
    (64, 4, 2, 1),
    (128, (2, 4, 4), 2, (0, 1, 1)),
    (256, (2, 4, 4), 2, (0, 1, 1)),
    (512, (1, 4, 4), (1, 2, 2), (0, 1, 1)),
    (128, (1, 4, 4), 1, 0),
)
FIRST_LAYER_512 = (8, 4, 2, 1)


def discriminator_layers(img_size: int) -> tuple:
    """D's convolutions at `img_size` (LAYERS_256 less or more its first stages)."""
    extra = extra_stages(img_size)
    if extra > 1:
        raise ValueError(f"D is defined up to 512^3, not {img_size}^3")
    return (FIRST_LAYER_512,) + LAYERS_256 if extra == 1 else LAYERS_256[-extra:]


class MinibatchStd(keras.layers.Layer):
    """(batch, F) -> (batch, F + 1): each example's features and one more, the mean over
    features of their standard deviation over the batch (StyleGAN's minibatch standard
    deviation, Karras et al. 2018, with the whole batch as the group). Real batches hold
    different bodies; a collapsed generator's batch holds one, so D can tell them apart
    by the batch, which it cannot by any one sub-volume. Per replica: at one example per
    replica the value is constant (sqrt(1e-8))."""

    def call(self, x):
        x32 = ops.cast(x, "float32")
        centred = x32 - ops.mean(x32, axis=0, keepdims=True)
        std = ops.mean(ops.sqrt(ops.mean(ops.square(centred), axis=0) + 1e-8))
        column = ops.ones_like(x32[:, :1]) * std
        return ops.concatenate([x, ops.cast(column, x.dtype)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], None if input_shape[-1] is None else input_shape[-1] + 1)


def build_discriminator(img_size: int = 256, width: float = 1.0,
                        name: str = "discriminator", num_classes: int = 0,
                        minibatch_std: bool = False) -> keras.Model:
    """D: (sub-volume, crop position) -> real/fake logit.

    Seven SN convolutions (eight at 512^3) with LeakyReLU(0.2) bring the (S/8, S, S)
    sub-volume to 128 features; the crop position r / (7S/8) in [0, 1] is appended (129),
    then SN dense 64
    + LeakyReLU and SN dense 1. Works at batch size 1 (the reference squeezes and breaks).

    With minibatch_std the features gain MinibatchStd's batch statistic before the
    position (130 inputs to the dense layer at width 1).

    With num_classes > 0 a second SN dense head on the 64 features gives the auxiliary
    classifier's class logits (the references' `fc2_class`).

    Returns:
      Model mapping [(batch, S/8, S, S, 1), (batch, 1)] -> (batch, 1) float32 logits, or
      with num_classes > 0 -> [(batch, 1) logits, (batch, num_classes) class logits].
    """
    check_size(img_size)
    x_in = keras.Input((crop_depth(img_size), img_size, img_size, 1), name="subvolume")
    pos = keras.Input((1,), name="position")
    x = x_in
    for i, (filters, kernel, stride, pad) in enumerate(discriminator_layers(img_size)):
        multiple = 1 if width == 1.0 else 4
        x = SNConv3D(scaled_channels(filters, width, multiple), kernel, stride, pad,
                     name=f"conv{i + 1}")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"lrelu{i + 1}")(x)
    x = keras.layers.Flatten(name="features")(x)  # (batch, 128): the map is 1^3 here
    if minibatch_std:  # not the reference's: `d_minibatch_std`
        x = MinibatchStd(name="minibatch_std")(x)
    x = keras.layers.Concatenate(name="with_position")([x, keras.ops.cast(pos, x.dtype)])
    x = SNDense(scaled_channels(64, width, 4 if width != 1.0 else 1), name="fc1")(x)
    x = keras.layers.LeakyReLU(0.2, name="lrelu_fc1")(x)
    logit = SNDense(1, dtype="float32", name="logit")(x)
    if num_classes:
        class_logits = SNDense(num_classes, dtype="float32", name="class_logits")(x)
        return keras.Model([x_in, pos], [logit, class_logits], name=name)
    return keras.Model([x_in, pos], logit, name=name)
