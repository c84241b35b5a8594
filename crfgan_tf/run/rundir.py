"""The run directory: its layout, and the rule that its config never changes under its
checkpoints.

  <model_dir>/config.json          the TrainConfig the checkpoints were written with, and
                                   `init_source` for a run started with `init_from`
  <model_dir>/flags.txt            the command-line flags of the latest start
  <model_dir>/config_changes.jsonl one line per start that changed a resumable field or
                                   a field of `allow_change` (with the step it resumed at)
  <model_dir>/trainer_state.json   step, checkpoint and metrics of the latest save
  <model_dir>/data.json            what generation needs to know of the training data
                                   (window, modality, output spacing, class names), written
                                   when training starts, so an export never reads records
  <model_dir>/checkpoints/ckpt-N   tf.train.Checkpoint (networks under the model's
                                   `modules()` names: models.options.TRUNK_KEY for G1, HEAD_KEY for G2;
                                   optimizers; step)
  <model_dir>/checkpoints/damaged/ unreadable checkpoints a resume skipped, moved aside
  <model_dir>/.crfgan.lock         the lock of the process writing the run
                                   (crfgan_tf.utils.dirlock; removed when it ends)
  <model_dir>/train/               TensorBoard events
  <model_dir>/eval.jsonl           one line per in-training evaluation (`eval_every`)
  <model_dir>/best/ckpt-N          the checkpoint with the best evaluation, kept apart
  <model_dir>/best.json            its step, metric and value
  <model_dir>/best_until_step_N/   the earlier best/ and best.json, when the evaluation
                                   changed on resume at step N (`allow_change`)
  <model_dir>/eval_cache/          features of the evaluation records (computed once)

Only the fields in RESUMABLE_FIELDS may differ when a run directory is started again, and
those of CHANGEABLE_FIELDS when the start names them (`allow_change`); any other
difference (architecture, data identity, seed, the initialisation) is refused before
anything is written, with the fields listed.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import time
from typing import Callable, Optional, Union

from crfgan_tf.core import geometry
from crfgan_tf.run import config as config_lib
from crfgan_tf.utils import fileio

CONFIG_FILE = "config.json"
FLAGS_FILE = "flags.txt"
CHANGES_FILE = "config_changes.jsonl"
STATE_FILE = "trainer_state.json"
CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged"  # inside CHECKPOINT_DIR: unreadable checkpoints moved aside
EVAL_FILE = "eval.jsonl"
BEST_DIR = "best"
BEST_FILE = "best.json"
EVAL_CACHE_DIR = "eval_cache"
DATA_FILE = "data.json"

# What may change when a run resumes: how long it runs, how often it reports and saves,
# and how it is executed. Everything else decides the weights or the data stream.
RESUMABLE_FIELDS = ("model_dir", "train_steps", "log_every", "checkpoint_every",
                    "image_every", "keep_checkpoints", "profile_steps", "jit_compile",
                    "strategy", "cpu_devices", "eval_every", "save_on_signals",
                    "crf_encoder_slab", "remat")

# What may change on resume when the start names it (`allow_change`): settings that do not
# change what a checkpoint holds or which data it was trained on, only how training goes
# on from it (learning rates, the loss weights' schedule, precision, batch, augmentation)
# or how it is evaluated. A changed evaluation (feature network, side, records, samples,
# metric) starts a new best: distances of two feature spaces do not compare.
CHANGEABLE_FIELDS = ("lr_g", "lr_d", "lr_crf", "lr_e", "crf_weight_start",
                     "crf_weight_decay_steps", "crf_decay_fraction", "r1_gamma",
                     "lambda_class", "mixed_precision", "batch_size", "per_replica_batch_size",
                     "augment", "augment_p", "ada_target", "ada_speed", "eval_records",
                     "eval_samples", "eval_feature_side", "fid_weights", "best_metric")
# the changes after which the stored best checkpoint's value no longer compares
EVALUATION_FIELDS = ("eval_records", "eval_samples", "eval_feature_side", "fid_weights",
                     "best_metric")
# config.json's record of where a run's initial weights came from (`init_from`)
INIT_SOURCE_KEY = "init_source"


class RunDirError(ValueError):
    """A run directory that this start must not touch; the message says why and what to do."""


def read_config(model_dir: str) -> Optional[config_lib.TrainConfig]:
    """The config stored in `model_dir`, or None when there is none."""
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        stored = json.load(f)
    known = {k: v for k, v in stored.items() if k in config_lib.TrainConfig.__dataclass_fields__}
    # a field added after the run started keeps its default, which is what the run used;
    # but embedding_factor's default depends on the size, and runs before it used 4
    known.setdefault("embedding_factor", geometry.EMBED_FACTOR)
    return config_lib.TrainConfig(**known)


def resume_config(config: config_lib.TrainConfig) -> config_lib.TrainConfig:
    """The config a start of `config.model_dir` runs with, by the rules of resuming: an
    embedding factor left at the size's default (`embedding_factor=0` when the config
    was made) takes the stored run's, when the directory holds a run of the same size and
    model (a 512^3 CRF-GAN run started with 4 before 8 became the default there resumes
    with 4). Anything else is `config` itself; a config.json that cannot be read is left
    for training to report. training.loop.train applies it; so does `crfgan-train
    --dry_run`, which prints what would run."""
    if not getattr(config, "factor_is_default", False) or not config.model_dir:
        return config
    try:
        stored = read_config(config.model_dir)
    except (OSError, ValueError, TypeError):
        return config
    if stored is None or (stored.img_size, stored.model) != (config.img_size, config.model):
        return config
    if stored.embedding_factor == config.embedding_factor:
        return config
    resumed = dataclasses.replace(config, embedding_factor=stored.embedding_factor)
    resumed.factor_is_default = True
    return resumed


def config_difference(old: config_lib.TrainConfig, new: config_lib.TrainConfig) -> dict:
    """{field: (old, new)} of every field that differs."""
    a, b = json.loads(old.to_json()), json.loads(new.to_json())
    return {k: (a.get(k), b[k]) for k in b if a.get(k) != b[k]}


def parse_allow_change(text: str) -> tuple:
    """`allow_change` ("lr_d,mixed_precision") as a tuple of field names.

    Raises:
      ValueError: a name that is not in CHANGEABLE_FIELDS; says which are, and why
        architecture and data fields are not.
    """
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in CHANGEABLE_FIELDS]
    if bad:
        raise ValueError(
            f"`allow_change`: {', '.join(bad)} cannot change on resume. It accepts "
            f"{', '.join(CHANGEABLE_FIELDS)}; the architecture, the data, the seed and the "
            "initialisation decide what the checkpoints hold (start a new run from this "
            "one's weights with `init_from` instead)")
    return names


def has_checkpoint(model_dir: str) -> bool:
    """Whether the run directory holds a checkpoint (rolling or best): what makes its
    stored settings binding."""
    return any(glob.glob(os.path.join(model_dir, folder, "ckpt-*.index"))
               for folder in (CHECKPOINT_DIR, BEST_DIR))


def check_config(config: config_lib.TrainConfig, allow: tuple = (),
                 log: Optional[Callable[[str], None]] = None) -> dict:
    """Compares `config` with the one stored in its run directory. Settings stored by a
    start that wrote no checkpoint (a first try that stopped early) give way to this
    start's, which `log` is told; nothing else of that start is kept.

    Args:
      allow: fields of CHANGEABLE_FIELDS this start may change (`allow_change`).

    Returns:
      {field: (old, new)} of the resumable and allowed fields that changed ({} for a new run).

    Raises:
      RunDirError: any other field differs from a run with a checkpoint; lists each
        (old -> new), and names `allow_change=FIELD` for those it would accept.
    """
    stored = read_config(config.model_dir)
    if stored is None:
        return {}
    diff = config_difference(stored, config)
    if not has_checkpoint(config.model_dir):
        diff.pop("model_dir", None)
        if diff and log is not None:
            log(f"train: {config.model_dir} holds the settings of a start that wrote no "
                "checkpoint; this start's replace them (" + ", ".join(
                    f"`{k}` {old!r} -> {new!r}" for k, (old, new) in sorted(diff.items())) + ")")
        return {}
    refused = {k: v for k, v in diff.items() if k not in RESUMABLE_FIELDS + tuple(allow)}
    if refused:
        fields = ", ".join(f"`{k}`: {old!r} -> {new!r}" for k, (old, new) in sorted(refused.items()))
        changeable = sorted(k for k in refused if k in CHANGEABLE_FIELDS)
        fixed = sorted(k for k in refused if k not in CHANGEABLE_FIELDS)
        ways = []
        if changeable:
            ways.append(f"allow the change explicitly with `allow_change={','.join(changeable)}` "
                        f"(logged in {CHANGES_FILE})" + (
                            f", and keep {', '.join(f'`{k}`' for k in fixed)} as stored"
                            if fixed else ""))
        if fixed:
            ways.append(f"start a new run from this one's weights with `init_from={config.model_dir}` "
                        "and another `model_dir`")
        ways.append(f"resume it with its own settings (`flagfile={os.path.join(config.model_dir, FLAGS_FILE)}`)")
        raise RunDirError(
            f"`model_dir` {config.model_dir!r} holds a run whose checkpoints were written with "
            f"other settings ({fields}). Nothing was changed there. Either " + "; or ".join(ways)
            + f". Without `allow_change` only {', '.join(RESUMABLE_FIELDS[1:])} may change on "
            "resume.")
    return {k: v for k, v in diff.items() if k != "model_dir"}


def record_config(config: config_lib.TrainConfig, flags_text: Optional[str],
                  changed: dict, log: Callable[[str], None], step: Optional[int] = None,
                  init_source: Optional[dict] = None) -> None:
    """Writes config.json (and flags.txt), after check_config; logs and appends the changes
    (with `step`, the step the run resumes at). `init_source` (a new run's `init_from`,
    resolved: kind, path, step, checksum) is kept in config.json under INIT_SOURCE_KEY,
    and kept there on every later start."""
    os.makedirs(config.model_dir, exist_ok=True)
    if changed:
        log("train: resuming with " + ", ".join(
            f"`{k}` {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items())))
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": step,
                           "changed": {k: list(v) for k, v in changed.items()}})
        with open(os.path.join(config.model_dir, CHANGES_FILE), "a") as f:
            f.write(line + "\n")
    # a resume keeps the source it started from; a new start (step 0) has its own or none
    stored = read_init_source(config.model_dir) if step is None or step > 0 else None
    record = json.loads(config.to_json())
    if init_source or stored:
        record[INIT_SOURCE_KEY] = init_source or stored
    fileio.atomic_write(os.path.join(config.model_dir, CONFIG_FILE),
                        json.dumps(record, indent=2, sort_keys=True))
    if flags_text is not None:
        fileio.atomic_write(os.path.join(config.model_dir, FLAGS_FILE), flags_text)


def retire_best(model_dir: str, step: int, log: Callable[[str], None]) -> Optional[str]:
    """Moves best/ and best.json aside into `best_until_step_<step>/` when the evaluation
    changed on resume (EVALUATION_FIELDS): the next evaluation starts a new best, and the
    old best checkpoint is kept. Returns the new folder, or None when there was no best."""
    best_json = os.path.join(model_dir, BEST_FILE)
    best_dir = os.path.join(model_dir, BEST_DIR)
    if not os.path.exists(best_json) and not os.path.isdir(best_dir):
        return None
    target = os.path.join(model_dir, f"best_until_step_{step}")
    if os.path.exists(target):
        shutil.rmtree(target)
    if os.path.isdir(best_dir):
        os.replace(best_dir, target)
    else:
        os.makedirs(target)
    if os.path.exists(best_json):
        os.replace(best_json, os.path.join(target, BEST_FILE))
    log(f"train: the evaluation changed, so its distances do not compare with the earlier "
        f"best; that one is kept in {target}/ and the next evaluation starts a new best")
    return target


def read_init_source(model_dir: str) -> Optional[dict]:
    """Where a run's initial weights came from (config.json's INIT_SOURCE_KEY), or None
    for a run that started from its seed."""
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get(INIT_SOURCE_KEY)


def read_changes(model_dir: str) -> list:
    """config_changes.jsonl's lines (dicts), oldest first; [] when there are none."""
    path = os.path.join(model_dir, CHANGES_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def remove_partial_checkpoints(model_dir: str, log: Callable[[str], None]) -> list:
    """Deletes what a save killed half-way leaves (`checkpoints/ckpt-N_temp*`); the
    checkpoints it was not renamed over are intact. Returns the paths removed."""
    removed = []
    for path in sorted(glob.glob(os.path.join(model_dir, CHECKPOINT_DIR, "*_temp*"))):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
        removed.append(path)
    if removed:
        log(f"train: removed {len(removed)} partial checkpoint file(s) of an interrupted save: "
            + ", ".join(os.path.basename(p) for p in removed))
    return removed


def write_data_metadata(model_dir: str, metadata: dict) -> None:
    """Stores what generation needs to know of the training data (data.json)."""
    fileio.atomic_write(os.path.join(model_dir, DATA_FILE), json.dumps(metadata, indent=2))


def read_data_metadata(model_dir: str) -> Optional[dict]:
    """data.json of a run, or None for a run started before it was written."""
    path = os.path.join(model_dir, DATA_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def checkpoint_path(model_dir: str, step: Union[None, int, str] = None) -> str:
    """The checkpoint of `step` in a run directory: None = the latest, an int = that step,
    "best" = the best in-training evaluation (best/).

    Raises:
      FileNotFoundError: there is no such checkpoint (the message says which and why).
    """
    if step is not None and step != "best":
        path = os.path.join(model_dir, CHECKPOINT_DIR, f"ckpt-{int(step)}")
        if not os.path.exists(path + ".index"):
            raise FileNotFoundError(f"no checkpoint for step {step} ({path})")
        return path
    import tensorflow as tf  # deferred: TensorFlow-free code reads this module too

    directory = os.path.join(model_dir, BEST_DIR if step == "best" else CHECKPOINT_DIR)
    latest = tf.train.latest_checkpoint(directory)
    if latest is None:
        raise FileNotFoundError(
            f"no best checkpoint in {directory!r}: it is written by in-training evaluation "
            "(`eval_every`)" if step == "best" else f"no checkpoint in {directory!r}")
    return latest


def checkpoint_step(path: str) -> Optional[int]:
    """N of a checkpoint path ".../ckpt-N" (an export's metadata records it), or None."""
    tail = os.path.basename(path).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None
