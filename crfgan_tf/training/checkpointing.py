"""Checkpoints of a training run: what they hold, which managers write them, and restoring
the newest readable one with errors that name what does not fit (the run directory's
layout is crfgan_tf.run.rundir's)."""

from __future__ import annotations

import os
import re
import sys
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from crfgan_tf.models import SubVolumeGAN
from crfgan_tf.run import rundir


class NoReadableCheckpointError(RuntimeError):
    """A run directory has checkpoints and none of them can be read; nothing is changed."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_checkpoint(model: SubVolumeGAN) -> tf.train.Checkpoint:
    """Every network, every optimizer state and the step (the input stream and all
    randomness are functions of the step, so that is the whole RNG state)."""
    return tf.train.Checkpoint(**model.checkpoint_items())


def reading_checkpoint(model: SubVolumeGAN, stored_precision: str,
                       stored_augment: bool) -> tf.train.Checkpoint:
    """The checkpoint to restore a run's checkpoints into when they were written with
    another `mixed_precision` or with augmentation off (`allow_change`): a phase optimizer
    is a LossScaleOptimizer under mixed_float16 only, holding the Adam it wraps as
    `inner_optimizer`, so the Adam state is read across the wrapper (the loss scale of
    a run that turns mixed_float16 on starts at its initial value; one turned off is
    dropped); `augment_p` is left at its flag's value where the checkpoint has none."""
    import keras

    items = model.checkpoint_items()
    if not stored_augment:
        items.pop("augment_p", None)
    was_scaled = stored_precision == "mixed_float16"
    for phase, opt in model.phase_optimizers().items():
        scaled = isinstance(opt, keras.optimizers.LossScaleOptimizer)
        if scaled and not was_scaled:
            items[f"{phase}_optimizer"] = opt.inner_optimizer
        elif was_scaled and not scaled:
            items[f"{phase}_optimizer"] = tf.train.Checkpoint(inner_optimizer=opt)
    return tf.train.Checkpoint(**items)


def checkpoint_bytes(items: dict) -> int:
    """About the bytes a checkpoint of `items` (SubVolumeGAN.checkpoint_items()) writes:
    every variable of its networks and optimizers and the step, without the index file."""
    variables = {}
    for item in items.values():
        for var in item.variables if hasattr(item, "variables") else [item]:
            variables[id(var)] = var
    return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in variables.values())


_SHAPE_MISMATCH = re.compile(r"incompatible tensor with shape \(([\d, ]*)\) when attempting "
                             r"to restore variable with shape \(([\d, ]*)\) and name ([^\s]+?)\.?$",
                             re.M)


def _shape(text: str) -> tuple:
    return tuple(int(v) for v in text.replace(" ", "").split(",") if v)


def shape_mismatch(err: Exception):
    """(variable name, stored shape, built shape) of TensorFlow's error for a checkpoint
    tensor that does not fit its variable, or None for any other error."""
    found = _SHAPE_MISMATCH.search(str(err))
    if not found:
        return None
    return found.group(3).split(":")[0], _shape(found.group(1)), _shape(found.group(2))


# D's and HA-GAN's D^L's layers (networks.discriminator, networks.hagan): their own flags
_D_LAYER = re.compile(r"(conv\d+|conv_out|fc1|logit|class_logits)/")


def architecture_flag(name: str, stored: tuple, built: tuple) -> str:
    """The flag that most likely explains a variable stored as `stored` but built as
    `built` (from the shapes the flags give: latent size, channel width, volume size)."""
    if name.split(":")[0].endswith("fc/kernel") and len(stored) == 2 and stored[1:] == built[1:]:
        return (f"`latent_dim` (the checkpoint's G1 input is {stored[0]} = latent_dim + "
                f"num_classes)")
    discriminator = _D_LAYER.match(name) is not None
    if discriminator and name.startswith("fc1/") and len(stored) == 2 \
            and stored[1:] == built[1:] and abs(stored[0] - built[0]) == 1:
        return ("`d_minibatch_std` (D's dense layer has one input more or less: the batch "
                "statistic)")
    ratios = {b / a for a, b in zip(stored, built) if a != b and a}
    if len(stored) == len(built) and len(ratios) == 1:
        if discriminator:
            return (f"`width` or `d_width` (D's channels x{ratios.pop():g} of the "
                    "checkpoint's)")
        return f"`width` (channels x{ratios.pop():g} of the checkpoint's)"
    return "`img_size` or `model`"


def restore_latest(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager,
                   log: Callable[[str], None] = _log, move_damaged: bool = False,
                   reader: Optional[tf.train.Checkpoint] = None) -> Optional[str]:
    """Restores the newest readable checkpoint; an unreadable one is skipped with a warning.
    `reader` (reading_checkpoint) reads instead of `checkpoint` where the objects were
    saved under another structure.

    With `move_damaged` (the process that writes the run directory), the unreadable
    checkpoints newer than the one restored are moved into `checkpoints/damaged/` and the
    checkpoint state file lists the rest, so the next start does not trip on them again
    and a later save of the same step does not mix with their files. When none is
    readable nothing is moved.

    Returns:
      The path restored, or None when there is none (a fresh start).

    Raises:
      rundir.RunDirError: a checkpoint holds a variable of another shape (networks built
        with other flags); names the variable and the flag. Nothing is changed.
      NoReadableCheckpointError: no checkpoint could be read.
    """
    damaged = []
    for path in reversed(manager.checkpoints):
        try:
            status = (reader or checkpoint).read(path)
            status.assert_existing_objects_matched()
            if reader is not None:
                status.expect_partial()  # a dropped loss scale or augment_p
            if damaged and move_damaged:
                move_aside(manager, damaged, log)
            return path
        except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways
            # (DataLossError, IndexError "read less bytes", ValueError ...); each is skipped.
            mismatch = shape_mismatch(err)
            if mismatch:
                name, stored, built = mismatch
                raise rundir.RunDirError(
                    f"checkpoint {path} does not fit the networks these settings build: "
                    f"variable {name} is {stored} in the checkpoint and {built} "
                    f"here; check {architecture_flag(name, stored, built)}. Nothing was "
                    "changed; resume with the settings the run was started with.") from None
            log(f"WARNING: checkpoint {path} is unreadable ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}); trying the previous one")
            damaged.append(path)
    if manager.checkpoints:
        raise NoReadableCheckpointError(
            f"no readable checkpoint in {manager.directory} (nothing was changed there; "
            "each failure is above. Checkpoints written by crfgan-tf before 2026-11-25, when "
            "G1/G2's up-sampling and padding layers were fused into their convolutions, have "
            "another layout and do not restore into the current networks)")
    return None


def move_aside(manager: tf.train.CheckpointManager, paths: list,
               log: Callable[[str], None] = _log) -> list:
    """Moves the files of the checkpoints `paths` into `<directory>/damaged/` and rewrites
    the checkpoint state file without them; returns the new locations."""
    target = os.path.join(manager.directory, rundir.DAMAGED_DIR)
    os.makedirs(target, exist_ok=True)
    moved = []
    for path in paths:
        for f in tf.io.gfile.glob(path + ".*"):
            dest = os.path.join(target, os.path.basename(f))
            os.replace(f, dest)
            moved.append(dest)
        log(f"train: moved the unreadable checkpoint {os.path.basename(path)} to {target}/ "
            "(inspect or delete it; it is not read again)")
    kept = [p for p in manager.checkpoints if p not in paths]
    tf.compat.v1.train.update_checkpoint_state(
        manager.directory, kept[-1] if kept else "", all_model_checkpoint_paths=kept)
    return moved


def checkpoint_managers(checkpoint, model_dir: str, keep: int, chief: bool, strategy):
    """(reader, writer): the run's checkpoints; a multi_worker worker other than the chief
    writes its (identical) copy to a scratch directory that is deleted after each save
    (tf.train.CheckpointManager needs every worker to save)."""
    reader = tf.train.CheckpointManager(
        checkpoint, os.path.join(model_dir, rundir.CHECKPOINT_DIR), max_to_keep=keep)
    if chief:
        return reader, reader
    scratch = os.path.join(model_dir, f".worker-{strategy.cluster_resolver.task_id}")
    return reader, tf.train.CheckpointManager(checkpoint, scratch, max_to_keep=1)
