"""The PyTorch reference implementations' checkpoints (CRF-GAN: mahshid1998/CRF-GAN; HA-GAN:
batmanlab/HA-GAN) mapped onto this project's networks, and imported as a run directory.

A reference run writes, every few thousand iterations, one file per network,
`{G,D,E,crf}_iter{N}.pth` (HA-GAN: `{G,D,E,Sub_E}_iter{N}.pth`), each
`{'model': state_dict, 'optimizer': torch.optim.Adam state_dict}`, the keys prefixed with
`module.` when the run used nn.DataParallel. This module owns the correspondence between
those tensors and our Keras variables (`layout`), converts them both ways (`to_keras`,
`to_reference`), and `import_checkpoint` writes a normal run directory (config.json, a
checkpoint at step N with every network, the spectral-norm u vectors and the Adam states)
that export, sample, FID and continued training use like any other.

Tensor conventions (checked side by side with the reference code):
- Conv3d [out, in, kd, kh, kw] -> Keras [kd, kh, kw, in, out]; Linear [out, in] -> [in, out];
  GroupNorm weight/bias -> gamma/beta; SN buffer u0 [1, out] -> sn_u [out] (sv0, a logged
  copy of sigma, is not used); CRF W [1, N, N] -> [N, N].
- G1's first Linear produces its units in torch's (c, d, h, w) order (`view(-1, 512, 4, 4,
  4)`); our Reshape((4, 4, 4, 512)) reads (d, h, w, c): its units (and the Adam moments of
  them) are permuted.
- D's convolutions are numbered from the 256^3 network: at 128^3 they start at conv2, at
  64^3 at conv3; D^L's (sub_D) and the sub-encoder's at 128^3 start at conv2.
- Adam: the reference's `torch.optim.Adam` is `crfgan_tf.optimizers.PyTorchAdam` here, with
  the same first and second moments and step count.
- A class-conditional run (the references' --num-class N) is recognised by D's `fc2_class`
  head and imports with num_classes=N: G1's fc1 then takes z and the one-hot label
  concatenated, in that order, as ours does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from typing import Callable, Dict, List

import numpy as np

from crfgan_tf import config as config_lib
from crfgan_tf import dirlock, fileio, geometry, rundir

# file prefix -> the phase (optimizer) of ours that holds its parameters
FILES = {"crfgan": {"G": "g", "D": "d", "E": "rec", "crf": "crf"},
         "hagan": {"G": "g", "D": "d", "E": "rec", "Sub_E": "sub_rec"}}
# phase -> learning-rate field of TrainConfig (the reference's lr per optimizer)
_LR_FIELD = {"g": "lr_g", "d": "lr_d", "rec": "lr_e", "crf": "lr_crf", "sub_rec": "lr_e"}
IMPORT_RECORD = "reference_import.json"


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
                         "(crfgan_tf.geometry's 512^3 networks are this implementation's own)")
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
                f"G: fc1.weight takes {fan_in} inputs; --latent_dim={latent_dim}{cond} makes "
                f"{latent_dim + num_classes}: pass --latent_dim={fan_in - num_classes}")
    expected = {t.key: t for t in tensors}
    problems = []
    extra = sorted(k for k in state if k not in expected and not k.endswith(".sv0"))
    if extra:
        hint = ""
        if any(k.startswith(("sub_G.", "sub_D.")) for k in extra):
            hint = " (HA-GAN's networks: pass --model=hagan)"
        elif re.match(r"conv[12]\.", extra[0]) and file == "D":
            hint = f" (D has more layers than at --img_size={img_size}: a larger --img_size?)"
        problems.append(f"unexpected tensors {extra[:6]}{'...' if len(extra) > 6 else ''}{hint}")
    missing = sorted(k for k in expected if k not in state)
    if missing:
        hint = ""
        if file == "G" and any(k.startswith("sub_G.") for k in missing):
            hint = " (not HA-GAN's generator: pass --model=crfgan)"
        elif file == "D" and re.match(r"conv[12]\.", missing[0]):
            hint = f" (D has fewer layers than at --img_size={img_size}: a smaller --img_size?)"
        problems.append(f"missing tensors {missing[:6]}{'...' if len(missing) > 6 else ''}{hint}")
    for key, t in expected.items():
        if key in state:
            want = reference_shape(t.kind, t.variable.shape)
            got = tuple(state[key].shape)
            if got != want:
                problems.append(f"tensor {key} has shape {got}, --model={model} "
                                f"--img_size={img_size} needs {want}")
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


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_checkpoint(model: str, checkpoint_dir: str, iteration: int, img_size: int,
                      model_dir: str, latent_dim: int = 1024, overwrite: bool = False,
                      train_records: str = "", log: Callable[[str], None] = print,
                      break_lock: bool = False) -> dict:
    """Writes a run directory from the reference files `{prefix}_iter{iteration}.pth`.

    The run directory holds config.json (the architecture, the reference's learning rates
    and Adam settings where the files hold them, crf_nodes="channels": the reference CRF's
    nodes, which its W was trained with; `train_records`, whose window, modality and
    spacing export writes into the SavedModel's metadata), flags.txt (the same as flags,
    to continue training with --flagfile), a checkpoint at step `iteration` of every
    network with its spectral-norm u vectors and Adam state, and reference_import.json
    (the source files, their sha256 and what each held). It is written beside `model_dir`
    and renamed into place whole; an existing non-empty `model_dir` is replaced only with
    `overwrite`, and never while another process holds its lock (crfgan_tf.dirlock;
    `break_lock` takes over one from another host).

    Raises:
      FileNotFoundError: a file is missing (names it, and the iterations present).
      ReferenceMismatch: a tensor does not fit (names it, and the flag to change).
      FileExistsError: model_dir exists, is not empty, and not `overwrite`.
      dirlock.LockedError: another process writes model_dir (named).
    """
    from crfgan_tf.reference_files import available_iterations

    if model not in FILES:
        raise ValueError(f"--model must be one of {sorted(FILES)}, got {model!r}")
    if img_size not in geometry.REFERENCE_SIZES:
        raise ValueError(f"--img_size must be one of {geometry.REFERENCE_SIZES}, the sizes "
                         f"the references define, got {img_size}")
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"--checkpoint_dir {checkpoint_dir!r} is not a directory")
    paths = {f: os.path.join(checkpoint_dir, f"{f}_iter{iteration}.pth") for f in FILES[model]}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        present = available_iterations(checkpoint_dir, model)
        raise FileNotFoundError(
            f"missing {', '.join(missing)}; {model} needs "
            f"{', '.join(f'{f}_iter{iteration}.pth' for f in FILES[model])}; iterations with "
            f"every file in {checkpoint_dir}: {present or 'none'}")
    if os.path.exists(model_dir) and (not os.path.isdir(model_dir) or set(os.listdir(model_dir))
                                      - {dirlock.LOCK_FILE}) \
            and not overwrite:  # --overwrite replaces the whole directory
        raise FileExistsError(f"--model_dir {model_dir!r} already exists and is not empty; "
                              "choose a new directory or pass --overwrite to replace it")
    # a training run still writing there is never replaced; the lock goes with the
    # directory when the import renames its copy into place
    with dirlock.DirLock(model_dir, "--model_dir", break_lock, log):
        return _import(model, paths, img_size, model_dir, latent_dim, train_records,
                       checkpoint_dir, iteration, log)


def _import(model: str, paths: dict, img_size: int, model_dir: str, latent_dim: int,
            train_records: str, checkpoint_dir: str, iteration: int, log) -> dict:
    """import_checkpoint's work, once the inputs are checked and model_dir is locked: one
    transaction (read every file, build, check, assign, write beside model_dir, rename),
    read top to bottom; its parts are the helpers above (check_state, apply_state)."""
    import tensorflow as tf

    from crfgan_tf import train_lib
    from crfgan_tf.reference_files import load_pth

    raws = {f: load_pth(p) for f, p in paths.items()}
    # a conditional run (the references' --num-class N) is recognised by D's class head
    num_classes = classes_of(strip_prefix(raws["D"]["model"]))
    config = config_lib.TrainConfig(model_dir=model_dir, model=model, img_size=img_size,
                                    latent_dim=latent_dim, width=1.0, crf_nodes="channels",
                                    train_records=train_records, num_classes=num_classes)
    config.validate()

    train_lib.set_precision("float32")
    built = train_lib.build_model(config)
    tensors = layout(built)
    for f, raw in raws.items():
        check_state(f, raw["model"], tensors[f], model, img_size, latent_dim, num_classes)
    record = {"source": os.path.abspath(checkpoint_dir), "model": model, "iteration": iteration,
              "img_size": img_size, "files": {}}
    for f, raw in raws.items():
        info = apply_state(built, f, FILES[model][f], tensors[f], raw, log)
        record["files"][os.path.basename(paths[f])] = dict(info, sha256=_sha256(paths[f]))
        if "lr" in info:  # the reference run's own settings
            setattr(config, _LR_FIELD[FILES[model][f]], info["lr"])
            config.beta_1, config.beta_2 = info["betas"]
            config.adam_epsilon = info["eps"]
    built.step_counter.assign(iteration)

    tmp = model_dir.rstrip("/") + ".importing"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    config.model_dir = model_dir
    manager = tf.train.CheckpointManager(train_lib.make_checkpoint(built),
                                         os.path.join(tmp, rundir.CHECKPOINT_DIR),
                                         max_to_keep=config.keep_checkpoints)
    manager.save(checkpoint_number=iteration)
    fileio.atomic_write(os.path.join(tmp, rundir.CONFIG_FILE), config.to_json())
    fileio.atomic_write(os.path.join(tmp, rundir.FLAGS_FILE), flagfile_text(config))
    fileio.atomic_write(os.path.join(tmp, IMPORT_RECORD), json.dumps(record, indent=2))
    if os.path.exists(model_dir):
        shutil.rmtree(model_dir)
    os.makedirs(os.path.dirname(os.path.abspath(model_dir)), exist_ok=True)
    os.rename(tmp, model_dir)  # CheckpointManager's state file holds relative paths
    files = record["files"].values()
    adam = "imported" if any(i["adam_step"] is not None for i in files) else "absent"
    classes = f", {num_classes} classes" if num_classes else ""
    log(f"import: {model} {img_size}^3{classes} iteration {iteration} from {checkpoint_dir} -> "
        f"{model_dir} ({sum(i['tensors'] for i in files)} tensors; Adam state {adam})")
    return record


def flagfile_text(config: config_lib.TrainConfig) -> str:
    """The training flags that must stay as imported, for `--flagfile` when continuing."""
    names = ("model", "img_size", "latent_dim", "width", "crf_nodes", "num_classes", "lr_g",
             "lr_d", "lr_crf", "lr_e", "beta_1", "beta_2", "adam_epsilon", "adam")
    lines = ["# Written by tools.import_reference: the imported run's architecture and optimizer",
             "# settings. Continue training with",
             f"#   python -m crfgan_tf.train --flagfile={config.model_dir}/flags.txt "
             f"--model_dir={config.model_dir} --train_records=... --train_steps=..."]
    lines += [f"--{n}={getattr(config, n)}" for n in names]
    return "\n".join(lines) + "\n"
