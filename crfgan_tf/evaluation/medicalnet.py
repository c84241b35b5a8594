"""The 3D ResNet-50 of MedicalNet (Chen et al. 2019) as a feature extractor for 3D FID/MMD.

Architecture as in MedicalNet's `resnet50(shortcut_type='B')` and HA-GAN's evaluation code:
conv 7^3/2 - BN - ReLU - maxpool 3^3/2, then bottleneck stages of 3, 4, 6, 3 blocks with 64,
128, 256, 512 planes (x4 out), stage 2 strided, stages 3 and 4 dilated by 2 and 4 instead of
strided, projection (1^3 conv + BN) shortcuts where the shape changes; the segmentation head
is replaced by global average pooling -> 2048 features. Input: (N, D, H, W, 1) channels-last,
the same voxel order as PyTorch's (N, 1, D, H, W), intensities in [-1, 1] as HA-GAN feeds it.

Weights are held as a dict of numpy arrays keyed and laid out as MedicalNet's PyTorch
state_dict (without the DataParallel `module.` prefix): `conv1.weight` (O, I, kD, kH, kW),
`bn1.weight|bias|running_mean|running_var`, `layer3.0.downsample.0.weight`, ... PyTorch's
explicit symmetric padding is reproduced with ZeroPadding3D + 'valid' convolutions.
"""

from __future__ import annotations

import hashlib

import keras
import numpy as np

STAGES = ((64, 3, 1, 1), (128, 4, 2, 1), (256, 6, 1, 2), (512, 3, 1, 4))  # planes, blocks, stride, dilation
EXPANSION = 4
FEATURES = 2048
BN_EPSILON = 1e-5  # PyTorch's BatchNorm3d default
NAME = "medicalnet-resnet50"


def _conv(x, filters, kernel, name, strides=1, dilation=1, padding=0):
    if padding:
        x = keras.layers.ZeroPadding3D(padding, name=f"{name}_pad")(x)
    return keras.layers.Conv3D(filters, kernel, strides=strides, dilation_rate=dilation,
                               padding="valid", use_bias=False, name=name)(x)


def _bn(x, name):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=name)(x)


def build_resnet50(name: str = "medicalnet_resnet50") -> keras.Model:
    """MedicalNet ResNet-50 trunk + global average pooling: (N, D, H, W, 1) -> (N, 2048).
    Layer names are the state_dict module paths with '.' replaced by '_'."""
    inputs = keras.Input((None, None, None, 1), name="volume")
    x = _conv(inputs, 64, 7, "conv1", strides=2, padding=3)
    x = keras.layers.ReLU()(_bn(x, "bn1"))
    # Zero padding equals PyTorch's -inf padding here: the input is a ReLU output (>= 0).
    x = keras.layers.ZeroPadding3D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling3D(3, strides=2, padding="valid", name="maxpool")(x)
    inplanes = 64
    for stage, (planes, blocks, stride, dilation) in enumerate(STAGES, start=1):
        for b in range(blocks):
            p = f"layer{stage}_{b}"
            s = stride if b == 0 else 1
            out = keras.layers.ReLU()(_bn(_conv(x, planes, 1, f"{p}_conv1"), f"{p}_bn1"))
            out = _conv(out, planes, 3, f"{p}_conv2", strides=s, dilation=dilation,
                        padding=dilation)
            out = keras.layers.ReLU()(_bn(out, f"{p}_bn2"))
            out = _bn(_conv(out, planes * EXPANSION, 1, f"{p}_conv3"), f"{p}_bn3")
            residual = x
            if b == 0 and (stride != 1 or inplanes != planes * EXPANSION):
                residual = _bn(_conv(x, planes * EXPANSION, 1, f"{p}_downsample_0", strides=s),
                               f"{p}_downsample_1")
            x = keras.layers.ReLU()(keras.layers.Add()([out, residual]))
        inplanes = planes * EXPANSION
    features = keras.layers.GlobalAveragePooling3D(name="avgpool")(x)
    return keras.Model(inputs, features, name=name)


BN_KEYS = ("weight", "bias", "running_mean", "running_var")  # gamma, beta, moving stats
TORCH_TO_KERAS_CONV = (2, 3, 4, 1, 0)  # (O, I, kD, kH, kW) -> (kD, kH, kW, I, O)


def _state_variables(model: keras.Model):
    """(state_dict key, Keras variable, is a conv kernel) for every weight, in layer order:
    the one mapping between MedicalNet's names and this model."""
    for layer in model.layers:
        path = layer.name.replace("_", ".")
        if isinstance(layer, keras.layers.Conv3D):
            yield f"{path}.weight", layer.kernel, True
        elif isinstance(layer, keras.layers.BatchNormalization):
            variables = (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance)
            for key, variable in zip(BN_KEYS, variables):
                yield f"{path}.{key}", variable, False


def expected_state_keys(model: keras.Model) -> list:
    """The state_dict keys `model` takes, in a fixed order."""
    return [key for key, _, _ in _state_variables(model)]


def clean_state_dict(state: dict) -> dict:
    """A MedicalNet checkpoint's state_dict -> the arrays this model takes: strips the
    DataParallel `module.` prefix, drops BN `num_batches_tracked` counters and the
    segmentation head `conv_seg.*` (replaced by pooling), converts to float32 numpy."""
    out = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.endswith("num_batches_tracked") or key.startswith("conv_seg."):
            continue
        out[key] = np.asarray(value, dtype=np.float32)
    return out


def set_weights(model: keras.Model, state: dict) -> None:
    """Loads PyTorch-layout arrays into `model`; any missing, unexpected or mis-shaped key
    raises ValueError naming it (a partial load would silently change the features)."""
    expected = expected_state_keys(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"MedicalNet ResNet-50 weights do not match the architecture: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} "
                         f"({len(missing)}), unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})")
    for key, variable, conv in _state_variables(model):
        array = state[key].transpose(TORCH_TO_KERAS_CONV) if conv else state[key]
        if tuple(variable.shape) != array.shape:
            raise ValueError(f"{key.rsplit('.', 1)[0]}: weight shape {array.shape} does not fit "
                             f"{tuple(variable.shape)}")
        variable.assign(array)


def random_state(model: keras.Model, seed: int = 0) -> dict:
    """Fixed-seed random weights in state_dict layout, drawn with numpy's PCG64 (not TF's
    initialisers, so the checksum does not depend on the TensorFlow version): convolutions
    as MedicalNet initialises them (Kaiming normal, fan_out), BN the identity."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, variable, conv in _state_variables(model):
        if conv:
            kd, kh, kw, cin, cout = variable.shape
            std = np.sqrt(2.0 / (cout * kd * kh * kw))
            state[key] = (rng.standard_normal((cout, cin, kd, kh, kw)) * std).astype(np.float32)
        else:  # gamma and running_var 1, beta and running_mean 0
            one = key.endswith((".weight", ".running_var"))
            state[key] = np.full(variable.shape, 1.0 if one else 0.0, np.float32)
    return state


def state_sha256(state: dict) -> str:
    """Checksum of the weights themselves (sorted keys, shapes, little-endian float32
    bytes): identical for the same numbers whatever file they came from."""
    digest = hashlib.sha256()
    for key in sorted(state):
        array = np.ascontiguousarray(state[key], dtype="<f4")
        digest.update(f"{key}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save_state(state: dict, path: str) -> None:
    """Writes the arrays as an uncompressed .npz (numpy only: no torch needed to read)."""
    with open(path, "wb") as f:
        np.savez(f, **state)


def load_state(path: str) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
