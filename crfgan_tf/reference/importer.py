"""Importing a reference run's files as a run directory of this project
(`import_checkpoint`), and the flagfile that continues it."""

from __future__ import annotations

import json
import os
import shutil
from typing import Callable

from crfgan_tf.core import geometry
from crfgan_tf.reference.files import available_iterations, load_pth
from crfgan_tf.run import config as config_lib
from crfgan_tf.run import rundir
from crfgan_tf.utils import dirlock, fileio
from crfgan_tf.reference.mapping import (LR_FIELDS, FILES, apply_state, check_state,
                                        classes_of, layout, strip_prefix)

IMPORT_RECORD = "reference_import.json"


def import_checkpoint(model: str, checkpoint_dir: str, iteration: int, img_size: int,
                      model_dir: str, latent_dim: int = 1024, overwrite: bool = False,
                      train_records: str = "", log: Callable[[str], None] = print,
                      break_lock: bool = False) -> dict:
    """Writes a run directory from the reference files `{prefix}_iter{iteration}.pth`.

    The run directory holds config.json (the architecture, the reference's learning rates
    and Adam settings where the files hold them, crf_nodes="channels": the reference CRF's
    nodes, which its W was trained with; `train_records`, whose window, modality and
    spacing export writes into the SavedModel's metadata), flags.txt (the same as flags,
    to continue training with `flagfile`), a checkpoint at step `iteration` of every
    network with its spectral-norm u vectors and Adam state, and reference_import.json
    (the source files, their sha256 and what each held). It is written beside `model_dir`
    and renamed into place whole; an existing non-empty `model_dir` is replaced only with
    `overwrite`, and never while another process holds its lock (crfgan_tf.utils.dirlock;
    `break_lock` takes over one from another host).

    Raises:
      FileNotFoundError: a file is missing (names it, and the iterations present).
      ReferenceMismatch: a tensor does not fit (names it, and the flag to change).
      FileExistsError: model_dir exists, is not empty, and not `overwrite`.
      dirlock.LockedError: another process writes model_dir (named).
    """
    if model not in FILES:
        raise ValueError(f"`model` must be one of {sorted(FILES)}, got {model!r}")
    if img_size not in geometry.REFERENCE_SIZES:
        raise ValueError(f"`img_size` must be one of {geometry.REFERENCE_SIZES}, the sizes "
                         f"the references define, got {img_size}")
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"`checkpoint_dir` {checkpoint_dir!r} is not a directory")
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
        raise FileExistsError(f"`model_dir` {model_dir!r} already exists and is not empty; "
                              "choose a new directory or pass `overwrite` to replace it")
    # a training run still writing there is never replaced; the lock goes with the
    # directory when the import renames its copy into place
    with dirlock.DirLock(model_dir, "`model_dir`", break_lock, log):
        return _import(model, paths, img_size, model_dir, latent_dim, train_records,
                       checkpoint_dir, iteration, log)


def _import(model: str, paths: dict, img_size: int, model_dir: str, latent_dim: int,
            train_records: str, checkpoint_dir: str, iteration: int, log) -> dict:
    """import_checkpoint's work, once the inputs are checked and model_dir is locked: one
    transaction (read every file, build, check, assign, write beside model_dir, rename),
    read top to bottom; its parts are the helpers above (check_state, apply_state)."""
    import tensorflow as tf

    from crfgan_tf.run import factory
    from crfgan_tf.training import checkpointing

    raws = {f: load_pth(p) for f, p in paths.items()}
    # a conditional run (the references' --num-class N) is recognised by D's class head
    num_classes = classes_of(strip_prefix(raws["D"]["model"]))
    config = config_lib.TrainConfig(model_dir=model_dir, model=model, img_size=img_size,
                                    latent_dim=latent_dim, width=1.0, crf_nodes="channels",
                                    train_records=train_records, num_classes=num_classes)
    config.validate()

    factory.set_precision("float32")
    built = factory.build_model(config)
    tensors = layout(built)
    for f, raw in raws.items():
        check_state(f, raw["model"], tensors[f], model, img_size, latent_dim, num_classes)
    record = {"source": os.path.abspath(checkpoint_dir), "model": model, "iteration": iteration,
              "img_size": img_size, "files": {}}
    for f, raw in raws.items():
        info = apply_state(built, f, FILES[model][f], tensors[f], raw, log)
        record["files"][os.path.basename(paths[f])] = dict(info, sha256=fileio.sha256(paths[f]))
        if "lr" in info:  # the reference run's own settings
            setattr(config, LR_FIELDS[FILES[model][f]], info["lr"])
            config.beta_1, config.beta_2 = info["betas"]
            config.adam_epsilon = info["eps"]
    built.step_counter.assign(iteration)

    tmp = model_dir.rstrip("/") + ".importing"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    config.model_dir = model_dir
    manager = tf.train.CheckpointManager(checkpointing.make_checkpoint(built),
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
