"""The correspondence between the reference's tensors and this project's Keras variables
(`layout`), the conversions both ways (`to_keras`, `to_reference`) and the checks and
application of one network's state (`check_state`, `apply_state`). Conventions: the
package's docstring (crfgan_tf/reference/__init__.py)."""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List

import numpy as np

from crfgan_tf.core import geometry

# file prefix -> the phase (optimizer) of ours that holds its parameters
FILES = {"crfgan": {"G": "g", "D": "d", "E": "rec", "crf": "crf"},
         "hagan": {"G": "g", "D": "d", "E": "rec", "Sub_E": "sub_rec"}}
# phase -> learning-rate field of TrainConfig (the reference's lr per optimizer)
LR_FIELDS = {"g": "lr_g", "d": "lr_d", "rec": "lr_e", "crf": "lr_crf", "sub_rec": "lr_e"}


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor of a reference state_dict and the Keras variable it becomes."""

    key: str          # state_dict key without any `module.` prefix
    variable: object  # the Keras variable
    kind: str         # conversion: conv, dense, dense_g1, vector, vector_g1, u, crf
    param: bool       # a parameter (has Adam state) or a buffer (u0)


def _permutation_g1(channels: int) -> np.ndarray:
    """Keras unit k = ((d*4 + h)*4 + w)*C + c of G1's dense layer <- torch unit c*64 + d*16
    + h*4 + w."""
    return np.arange(channels * 64).reshape(channels, 4, 4, 4).transpose(1, 2, 3, 0).ravel()


def to_keras(kind: str, value: np.ndarray) -> np.ndarray:
    """A reference tensor (or its Adam moment) in our variable's layout."""
    value = np.asarray(value, np.float32)
    if kind == "conv":
        return value.transpose(2, 3, 4, 1, 0)
    if kind == "dense":
        return value.T
    if kind == "dense_g1":
        return value.T[:, _permutation_g1(value.shape[0] // 64)]
    if kind == "vector_g1":
        return value[_permutation_g1(value.shape[0] // 64)]
    if kind in ("u", "crf"):  # u0 (1, out), W (1, N, N): a leading axis of 1 here dropped
        return value.reshape(value.shape[1:])
    return value  # vector: biases, GroupNorm gamma / beta


def to_reference(kind: str, value: np.ndarray) -> np.ndarray:
    """The inverse of to_keras: our variable in the reference's layout."""
    value = np.asarray(value, np.float32)
    if kind == "conv":
        return value.transpose(4, 3, 0, 1, 2)
    if kind == "dense":
        return value.T
    if kind in ("dense_g1", "vector_g1"):
        inverse = np.argsort(_permutation_g1(value.shape[-1] // 64))
        return value[..., inverse].T if kind == "dense_g1" else value[inverse]
    if kind in ("u", "crf"):
        return value[None]
    return value


def reference_shape(kind: str, shape) -> tuple:
    """The reference tensor's shape for our variable of `shape` (to_reference's)."""
    shape = tuple(shape)
    if kind == "conv":
        return (shape[4], shape[3], *shape[:3])
    if kind in ("dense", "dense_g1"):
        return shape[::-1]
    if kind in ("u", "crf"):
        return (1, *shape)
    return shape


def _layer_tensors(prefix: str, layer, kind: str) -> List[Tensor]:
    """The state_dict entries of one reference module `prefix` stored in Keras `layer`."""
    if kind == "gn":
        return [Tensor(f"{prefix}.weight", layer.gamma, "vector", True),
                Tensor(f"{prefix}.bias", layer.beta, "vector", True)]
    if kind == "crf":
        return [Tensor(f"{prefix}W", layer.w, "crf", True)]
    weight = {"conv": "conv", "snconv": "conv", "dense": "dense", "sndense": "dense",
              "dense_g1": "dense_g1"}[kind]
    out = [Tensor(f"{prefix}.weight", layer.kernel, weight, True),
           Tensor(f"{prefix}.bias", layer.bias, "vector_g1" if kind == "dense_g1" else "vector",
                  True)]
    if kind.startswith("sn"):
        out.append(Tensor(f"{prefix}.u0", layer.u, "u", False))
    return out


def layout(model) -> Dict[str, List[Tensor]]:
    """File prefix ("G", "D", ...) -> its tensors, in the reference modules' registration
    order (the order of `parameters()`, which numbers the Adam state).

    Args:
      model: a CRFGAN or HAGAN at width 1 (the reference has no width multiplier).
    """
    size, hagan = model.img_size, hasattr(model, "sub_encoder")
    if size not in geometry.REFERENCE_SIZES:
        raise ValueError(f"the references define {geometry.REFERENCE_SIZES}, not {size}^3 "
                         "(crfgan_tf.core.geometry's 512^3 networks are this implementation's own)")
    get = lambda net, name: net.get_layer(name)
    g = [("fc1", get(model.trunk, "fc"), "dense_g1")]
    for i in range(5):
        g += [(f"tp_conv{i + 1}", get(model.trunk, f"block{i}_conv"), "conv"),
              (f"bn{i + 1}", get(model.trunk, f"block{i}_gn"), "gn")]
    g += [("tp_conv6", get(model.head, "block1_conv"), "conv"),
          ("bn6", get(model.head, "block1_gn"), "gn"),
          ("tp_conv7", get(model.head, "out_conv"), "conv")]
    first_d = {256: 1, 128: 2, 64: 3}[size]
    d = [(f"conv{first_d + i}", get(model.discriminator, f"conv{i + 1}"), "snconv")
         for i in range(8 - first_d)]
    d += [("fc1", get(model.discriminator, "fc1"), "sndense"),
          ("fc2", get(model.discriminator, "logit"), "sndense")]
    if model.num_classes:  # the auxiliary classifier, registered after fc2
        d += [("fc2_class", get(model.discriminator, "class_logits"), "sndense")]
    e = []
    for i in range(3):
        e += [(f"conv{i + 1}", get(model.encoder, f"block{i + 1}_conv"), "conv"),
              (f"bn{i + 1}", get(model.encoder, f"block{i + 1}_gn"), "gn")]
    files = {"G": g, "D": d, "E": e}
    if hagan:
        lg = model.low_generator
        files["G"] += [("sub_G.tp_conv1", get(lg, "block1_conv"), "conv"),
                       ("sub_G.bn1", get(lg, "block1_gn"), "gn"),
                       ("sub_G.tp_conv2", get(lg, "block2_conv"), "conv"),
                       ("sub_G.bn2", get(lg, "block2_gn"), "gn"),
                       ("sub_G.tp_conv3", get(lg, "out_conv"), "conv")]
        first = {256: 1, 128: 2}[size]
        ld = model.low_discriminator
        files["D"] += [(f"sub_D.conv{first + i}", get(ld, f"conv{i + 1}"), "snconv")
                       for i in range(5 - first)]
        files["D"] += [("sub_D.conv5", get(ld, "conv_out"), "snconv")]
        se = model.sub_encoder
        sub = []
        for i in range(5 - first):
            sub += [(f"conv{first + i}", get(se, f"block{i + 1}_conv"), "conv"),
                    (f"bn{first + i}", get(se, f"block{i + 1}_gn"), "gn")]
        files["Sub_E"] = sub + [("conv5", get(se, "to_latent"), "conv")]
    else:
        files["crf"] = [("", model.crf, "crf")]
    return {f: [t for p, layer, kind in entries for t in _layer_tensors(p, layer, kind)]
            for f, entries in files.items()}


def strip_prefix(state: dict) -> dict:
    """Drops nn.DataParallel's `module.` prefix."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


class ReferenceMismatch(ValueError):
    """A reference checkpoint does not fit the networks asked for (names what and why)."""


def classes_of(d_state: Dict[str, np.ndarray]) -> int:
    """The number of classes of a reference D state (its fc2_class head), 0 without."""
    w = d_state.get("fc2_class.weight")
    return 0 if w is None else int(w.shape[0])


def check_state(file: str, state: Dict[str, np.ndarray], tensors: List[Tensor], model: str,
                img_size: int, latent_dim: int, num_classes: int = 0) -> None:
    """Raises ReferenceMismatch listing every missing, unexpected or misshapen tensor, with
    the flag that most likely explains it."""
    if file == "D" and classes_of(state) != num_classes:
        raise ReferenceMismatch(
            f"{file}: a class-conditional checkpoint ({classes_of(state)} classes, fc2_class) "
            f"read as {num_classes} classes" if classes_of(state) else
            f"{file}: an unconditional checkpoint (no fc2_class) read as {num_classes} classes")
    if file == "G" and "fc1.weight" in state:
        fan_in = state["fc1.weight"].shape[1]
        if fan_in != latent_dim + num_classes:
            cond = (f" + the {num_classes} classes of this conditional checkpoint's D"
                    if num_classes else "")
            raise ReferenceMismatch(
                f"G: fc1.weight takes {fan_in} inputs; `latent_dim={latent_dim}`{cond} makes "
                f"{latent_dim + num_classes}: pass `latent_dim={fan_in - num_classes}`")
    expected = {t.key: t for t in tensors}
    problems = []
    extra = sorted(k for k in state if k not in expected and not k.endswith(".sv0"))
    if extra:
        hint = ""
        if any(k.startswith(("sub_G.", "sub_D.")) for k in extra):
            hint = " (HA-GAN's networks: pass `model=hagan`)"
        elif re.match(r"conv[12]\.", extra[0]) and file == "D":
            hint = f" (D has more layers than at `img_size={img_size}`: a larger `img_size`?)"
        problems.append(f"unexpected tensors {extra[:6]}{'...' if len(extra) > 6 else ''}{hint}")
    missing = sorted(k for k in expected if k not in state)
    if missing:
        hint = ""
        if file == "G" and any(k.startswith("sub_G.") for k in missing):
            hint = " (not HA-GAN's generator: pass `model=crfgan`)"
        elif file == "D" and re.match(r"conv[12]\.", missing[0]):
            hint = f" (D has fewer layers than at `img_size={img_size}`: a smaller `img_size`?)"
        problems.append(f"missing tensors {missing[:6]}{'...' if len(missing) > 6 else ''}{hint}")
    for key, t in expected.items():
        if key in state:
            want = reference_shape(t.kind, t.variable.shape)
            got = tuple(state[key].shape)
            if got != want:
                problems.append(f"tensor {key} has shape {got}, `model={model}` "
                                f"`img_size={img_size}` needs {want}")
    if problems:
        raise ReferenceMismatch(f"{file}: " + "; ".join(problems[:8]))


def _inner(opt):
    return getattr(opt, "inner_optimizer", opt)


def apply_state(model, file: str, phase: str, tensors: List[Tensor], raw: dict, log) -> dict:
    """Assigns one file's weights (and, where it holds them, its Adam state, to the
    optimizer of `phase`) to `model`.

    Returns:
      What was imported: {"tensors": n, "adam_step": step or None, "lr": ..., ...}.
    """
    state = raw["model"]
    for t in tensors:
        t.variable.assign(to_keras(t.kind, state[t.key]))
    info = {"tensors": len(tensors), "adam_step": None}
    osd = raw["optimizer"]
    if not osd or not osd.get("state"):
        log(f"import: {file}: no Adam state in the file; the {phase} optimizer starts fresh")
        return info
    params = [t for t in tensors if t.param]
    order = [k for k in state if not k.endswith((".u0", ".sv0"))]
    if order != [t.key for t in params]:
        raise ReferenceMismatch(f"{file}: parameter order {order[:4]}... differs from the "
                                f"reference modules' {[t.key for t in params][:4]}...")
    group = osd["param_groups"][0]
    indices = list(group["params"])
    if len(indices) != len(params):
        raise ReferenceMismatch(f"{file}: the optimizer holds {len(indices)} parameters, the "
                                f"network {len(params)}")
    opt = _inner(model.phase_optimizers()[phase])
    steps = set()
    for index, t in zip(indices, params):
        slot = osd["state"].get(index)
        if slot is None:  # a parameter that never had a gradient keeps zero moments
            continue
        i = opt._get_variable_index(t.variable)
        opt._momentums[i].assign(to_keras(t.kind, slot["exp_avg"]))
        opt._velocities[i].assign(to_keras(t.kind, slot["exp_avg_sq"]))
        steps.add(int(np.asarray(slot["step"]).item()))
    if len(steps) > 1:
        raise ReferenceMismatch(f"{file}: Adam step counts differ between parameters: "
                                f"{sorted(steps)}")
    step = steps.pop() if steps else 0
    opt.iterations.assign(step)
    betas = tuple(float(b) for b in group.get("betas", (0.0, 0.999)))
    info.update(adam_step=step, lr=float(group["lr"]), betas=betas,
                eps=float(group.get("eps", 1e-8)))
    return info
