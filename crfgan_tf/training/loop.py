"""The training driver: precision, input, checkpoints, TensorBoard, profiling, and the
in-training evaluation's place in the loop (replicas: crfgan_tf.training.distribute).

`train(config)` is what `python -m crfgan_tf.train` runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable, Optional

import keras
import tensorflow as tf

from crfgan_tf.core import intensity
from crfgan_tf.data import pipeline, records
from crfgan_tf.models import SubVolumeGAN
from crfgan_tf.run import config as config_lib
from crfgan_tf.run import factory, rundir
from crfgan_tf.training import summaries
from crfgan_tf.training.checkpointing import (checkpoint_bytes, checkpoint_managers,
                                              make_checkpoint, reading_checkpoint,
                                              restore_latest)
from crfgan_tf.training.distribute import (is_chief, make_distributed_step,
                                           make_stop_agreement, make_strategy)
from crfgan_tf.utils import dirlock, fileio, preemption, runtime


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; nothing after the last checkpoint is kept."""


class OutOfMemoryError(RuntimeError):
    """A device ran out of memory (TensorFlow's ResourceExhaustedError, chained): `phase`
    ("input pipeline": a batch did not fit in host memory; "training step";
    "in-training evaluation"), the `step` it was at and the last
    `checkpoint` (intact). crfgan-train adds what the memory planner says fits."""

    def __init__(self, phase: str, step: int, checkpoint: Optional[str]):
        self.phase, self.step, self.checkpoint = phase, step, checkpoint
        kept = f"the last checkpoint, {checkpoint}, is intact" if checkpoint else \
            "no checkpoint was written yet"
        super().__init__(f"out of memory in the {phase} at step {step}; {kept}")


@contextlib.contextmanager
def _phase(name: str, step: int, manager):
    """Turns an out-of-memory error inside the block into OutOfMemoryError(name, step)."""
    try:
        runtime.inject_out_of_memory(name)  # tests only: runtime.FAULT_OOM_VARIABLE
        yield
    except tf.errors.ResourceExhaustedError as err:
        raise OutOfMemoryError(name, step, manager.latest_checkpoint) from err


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_advice(config: config_lib.TrainConfig, has_gpu: bool, cpu_flags: set) -> list:
    """Warnings for settings that cost time on a CPU (figures: docs/benchmarks.md)."""
    if has_gpu:
        return []
    out = []
    if config.jit_compile:
        out.append("WARNING: `jit_compile` on a CPU: XLA made a 128^3 CRF-GAN iteration about "
                   "27x slower on a 2-core CPU (75.1 vs 2.73 s/it); it is for GPUs. "
                   "Drop `jit_compile` here.")
    if config.mixed_precision == "float32" and {"amx_bf16", "avx512_bf16"} & cpu_flags:
        out.append("note: this CPU computes bfloat16 natively (AMX/AVX-512 BF16): "
                   "`mixed_precision=mixed_bfloat16` made a 128^3 CRF-GAN iteration 1.79x "
                   "faster on one (1.52 vs 2.73 s/it)")
    return out


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def train(config: config_lib.TrainConfig, log: Callable[[str], None] = _log,
          flags_text: Optional[str] = None, break_lock: bool = False,
          allow_change: tuple = ()) -> dict:
    """Trains (or resumes) until `config.train_steps`; returns the last metrics and step.

    Before anything is written: the rules of resuming are applied (rundir.resume_config:
    a default embedding factor takes the stored run's), the config is validated, its
    global batch resolved for
    the strategy's replicas (TrainConfig.global_batch), and it is compared with the one stored
    in the run directory (only rundir.RESUMABLE_FIELDS and the `allow_change` fields may
    differ), a new run's `init_from` is resolved and its architecture compared
    (training.initialize), and the records are checked (they exist and hold img_size^3
    volumes). The run directory's lock
    (crfgan_tf.utils.dirlock) is held from before the checkpoints are read until the end.

    A signal of `config.save_on_signals` stops the run after the step in progress, with a
    checkpoint at that step (crfgan_tf.utils.preemption); under multi_worker every worker stops
    at the same step.

    Args:
      config: the run.
      log: progress lines.
      flags_text: the command line as a flagfile, kept as flags.txt.
      break_lock: take over a lock held from another host (`break_lock`).
      allow_change: fields of rundir.CHANGEABLE_FIELDS this start may change on resume;
        each change is logged with its step in config_changes.jsonl.

    Raises:
      ValueError: invalid config (before any work); rundir.RunDirError, a run directory
        started with other settings; records.RecordsError, missing, mismatched or damaged
        records (the file named); dirlock.LockedError, another process writes the run
        directory (named).
      NonFiniteLossError: a loss became NaN/inf (names the step and phase).
      preemption.Interrupted: a signal stopped the run; the checkpoint of its step is saved.
      fileio.DiskFullError: a checkpoint or run file could not be written for want of
        space (the previous checkpoint is intact).
    """
    config = rundir.resume_config(config)
    config.validate()
    strategy = make_strategy(config.strategy, config.cpu_devices)
    resolver = getattr(strategy, "cluster_resolver", None)
    if isinstance(resolver, tf.distribute.cluster_resolver.SlurmClusterResolver):
        log(f"train: Slurm cluster (SlurmClusterResolver): this is worker {resolver.task_id} "
            f"of {resolver.cluster_spec().as_dict()}")
    config = _resolve_batch(config, strategy.num_replicas_in_sync, log)
    files, changed, data_meta = _check_inputs(config, tuple(allow_change), log)
    source = _init_source(config)
    with contextlib.ExitStack() as held:
        run = _start(config, strategy, data_meta, changed, flags_text, log, held, break_lock,
                     source)
        return _loop(config, run, files, log)


def _resolve_batch(config: config_lib.TrainConfig, replicas: int,
                   log) -> config_lib.TrainConfig:
    """The config with its global batch for `replicas` (config.global_batch) in
    `batch_size`; `per_replica_batch_size` is resolved into it (and stored as 0, so a
    resume compares the batch the run trained with)."""
    batch = config.global_batch(replicas)
    if config.per_replica_batch_size:
        log(f"train: batch {config.per_replica_batch_size} per replica x {replicas} "
            f"replica(s) = global batch {batch} (`per_replica_batch_size`; `batch_size` is "
            "not used)")
        config = dataclasses.replace(config, batch_size=batch, per_replica_batch_size=0)
    return config


def _loop(config: config_lib.TrainConfig, run: "_Run", files: list, log) -> dict:
    """The steps of a started run, from its restored step to config.train_steps."""
    step = start = int(run.model.step_counter.numpy())
    if step >= config.train_steps:
        log(f"train: step {step} >= `train_steps={config.train_steps}`; nothing to do")
        return {"step": step, "metrics": {}, "model": run.model}
    evaluation = _InTrainingEvaluation(config, run.checkpoint, step, log) \
        if run.evaluate else None
    dataset = pipeline.make_train_dataset(
        config.train_records, config.img_size, config.batch_size, config.latent_dim,
        seed=config.seed, start_step=step, shuffle_buffer=config.shuffle_buffer,
        num_classes=config.num_classes, fake_labels=config.fake_labels,
        balance_classes=config.balance_classes, factor=config.embedding_factor)
    iterator = iter(run.strategy.experimental_distribute_dataset(dataset))
    distributed_step = make_distributed_step(run.strategy, run.model, config.jit_compile)
    ema_step = tf.function(run.model.update_ema) if run.model.ema_decay else None
    writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "train")) \
        if run.chief else tf.summary.create_noop_writer()
    reporter = summaries.Reporter(config, run.model, writer, step, log)
    log(f"train: {config.model} {config.img_size}^3, batch {config.batch_size} on "
        f"{run.strategy.num_replicas_in_sync} replica(s), {config.mixed_precision}, "
        f"steps {step} -> {config.train_steps}, model_dir {config.model_dir}")
    signals = preemption.parse_signals(config.save_on_signals)
    # multi_worker: every worker must stop at the same step (the save is collective)
    agree = make_stop_agreement(run.strategy) \
        if signals and config.strategy == "multi_worker" else None
    profile = _Profile(config, log) if run.chief else None
    metrics, stop_signal = {}, None
    with preemption.StopOnSignal(signals, log) as stop:
        if evaluation and step == 0:
            with _phase("in-training evaluation", 0, run.manager):
                evaluation.run(run.model, 0, writer)  # the baseline: distances at initialisation
        while step < config.train_steps and not stop_signal:
            if profile:
                profile.before(step + 1)
            try:
                with _phase("input pipeline", step + 1, run.manager):
                    batch = next(iterator)
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
                raise records.RecordsError(
                    f"{records.describe_read_error(err, files)} (at step {step + 1}; the last "
                    f"checkpoint, {run.manager.latest_checkpoint}, is intact)") from None
            with _phase("training step", step + 1, run.manager):
                metrics = {k: float(v) for k, v in distributed_step(batch).items()}
                if ema_step is not None:  # G's moving average, from the updated weights
                    metrics["ema_decay"] = float(ema_step())
            step += 1
            if profile:
                profile.after(step)
            _after_step(config, run, step, metrics, writer, reporter, evaluation)
            stop_signal = agree(stop.signum or 0) if agree else stop.signum
    writer.flush()
    if stop_signal and step < config.train_steps:
        _stop(config, run, step, start, metrics, stop_signal, log)
    log(f"train: finished at step {step}; checkpoint {run.manager.latest_checkpoint}")
    return {"step": step, "metrics": metrics, "model": run.model}


def _stop(config: config_lib.TrainConfig, run: "_Run", step: int, start: int, metrics: dict,
          signum: int, log) -> None:
    """The end of a run stopped by a signal: the checkpoint of `step` (unless it was just
    written, or no step ran), one line, and preemption.Interrupted."""
    saved = None
    if step > start:
        if step % config.checkpoint_every:
            _save(config, run, step, metrics)
        saved = os.path.join(config.model_dir, rundir.CHECKPOINT_DIR, f"ckpt-{step}")
    err = preemption.Interrupted(signum, step, saved)
    if run.chief:
        log(f"train: {err}")
    raise err


@dataclasses.dataclass
class _Run:
    """What a started run holds: its replicas, model, checkpoint and their managers."""

    strategy: tf.distribute.Strategy
    chief: bool
    evaluate: bool
    model: SubVolumeGAN
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    writer_manager: tf.train.CheckpointManager


def _init_source(config: config_lib.TrainConfig):
    """The resolved `init_from` of a run directory without checkpoints (None otherwise: a
    resume restores its own), its architecture checked against `config`."""
    if not config.init_from:
        return None
    from crfgan_tf.training import initialize

    if tf.train.latest_checkpoint(os.path.join(config.model_dir, rundir.CHECKPOINT_DIR)):
        return None
    source = initialize.resolve(config.init_from)
    initialize.check_architecture(source, config)
    return source


def _start(config: config_lib.TrainConfig, strategy: tf.distribute.Strategy,
           data_meta: Optional[dict], changed: dict, flags_text: Optional[str], log,
           held: contextlib.ExitStack, break_lock: bool = False, source=None) -> _Run:
    """The run directory's lock (the chief's, kept in `held`), model and checkpoint
    restored (or fresh, or from `source`: `init_from`) under `strategy`; only then, on
    the chief, the run directory's config.json, flags.txt and data.json are written (and a
    run started from `source` saves its step-0 checkpoint)."""
    chief = is_chief(strategy)
    evaluate = _evaluation_wanted(config, chief, log)
    if chief:  # before anything is read or removed there: one writer per run directory
        held.enter_context(dirlock.DirLock(config.model_dir, "`model_dir`", break_lock, log))
        rundir.remove_partial_checkpoints(config.model_dir, log)
    for line in cpu_advice(config, bool(tf.config.list_physical_devices("GPU")), _cpu_flags()):
        log(line)
    factory.set_precision(config.mixed_precision)
    # Initial weights follow from the seed (a resumed run overwrites them anyway).
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = factory.build_model(config, data_meta["window"] if data_meta else intensity.CT_WINDOW)
        checkpoint = make_checkpoint(model)
    manager, writer_manager = checkpoint_managers(checkpoint, config.model_dir,
                                                  config.keep_checkpoints, chief, strategy)
    reader = None
    if {"mixed_precision", "augment"} & set(changed):  # `allow_change`: another structure
        stored = rundir.read_config(config.model_dir)
        reader = reading_checkpoint(model, stored.mixed_precision, bool(stored.augment))
    restored = restore_latest(checkpoint, manager, log, move_damaged=chief, reader=reader)
    if restored and restored != manager.latest_checkpoint:  # damaged ones moved aside
        manager, writer_manager = checkpoint_managers(checkpoint, config.model_dir,
                                                      config.keep_checkpoints, chief, strategy)
    if restored:
        _apply_settings(config, model, changed)
    init_record = None
    if not restored and source is not None:
        init_record = _initialize(config, source, model, log)
    step = int(model.step_counter.numpy())
    if chief:  # only now: the checkpoints fit this config (or there are none)
        rundir.record_config(config, flags_text, changed, log, step=step,
                             init_source=init_record)
        if data_meta:
            rundir.write_data_metadata(config.model_dir, data_meta)
        if restored and set(changed) & set(rundir.EVALUATION_FIELDS):
            rundir.retire_best(config.model_dir, step, log)
    if restored:
        log(f"train: resumed from {restored} at step {step}")
    run = _Run(strategy, chief, evaluate, model, checkpoint, manager, writer_manager)
    if init_record is not None:  # the initial weights, as a checkpoint of their own
        _save(config, run, 0, {})
    return run


def _apply_settings(config: config_lib.TrainConfig, model: SubVolumeGAN, changed: dict) -> None:
    """After a restore: the learning rates of `config` into the phase optimizers (a Keras
    optimizer checkpoints its rate, which would otherwise override `allow_change=lr_d`),
    and a changed `augment_p` into the model (ADA's adapted p is otherwise resumed)."""
    for phase, field in type(model).LEARNING_RATES.items():
        opt = model.phase_optimizers()[phase]
        getattr(opt, "inner_optimizer", opt).learning_rate = getattr(config, field)
    if "augment_p" in changed and model.augment_p is not None:
        model.augment_p.assign(config.augment_p)


def _initialize(config: config_lib.TrainConfig, source, model: SubVolumeGAN, log) -> dict:
    """Copies `source`'s networks (by `init_networks`) into `model`; returns the record."""
    from crfgan_tf.training import initialize

    modules = model.modules()
    keys = initialize.selected(source, config, modules)
    initialize.apply(source, modules, keys)
    model.reset_ema()  # the averages start from the initial weights
    fresh = [k for k in modules if k not in keys]
    log(f"train: initialised {', '.join(keys)} from {source.kind} {source.location}"
        + (f" (step {source.step})" if source.step is not None else "")
        + (f"; {', '.join(fresh)} from the seed" if fresh else "")
        + "; optimizers fresh, step 0")
    return source.record(keys)


def _after_step(config: config_lib.TrainConfig, run: _Run, step: int, metrics: dict, writer,
                reporter, evaluation) -> None:
    """Everything a finished step triggers: ADA, the NaN check, the progress line and
    scalars, images, evaluation and the checkpoint, each at its interval."""
    _adapt_augmentation(config, run.model, metrics["r_t"])
    _check_finite(run.model, metrics, step, run.manager)
    last = step == config.train_steps
    if step % config.log_every == 0 or last:
        reporter.report(step, metrics)
    if run.chief and (step % config.image_every == 0 or last):
        summaries.write_images(run.model, writer, step, config)
    if evaluation:
        evaluation.add_r_t(metrics["r_t"])
        if step % config.eval_every == 0 or last:
            with _phase("in-training evaluation", step, run.manager):
                evaluation.run(run.model, step, writer)
    if step % config.checkpoint_every == 0 or last:
        _save(config, run, step, metrics)


class _Profile:
    """`profile_steps`: the TensorBoard profiler around steps first..last."""

    def __init__(self, config: config_lib.TrainConfig, log):
        self.range, self.model_dir, self.log = config.profile_range(), config.model_dir, log

    def before(self, step: int) -> None:
        if self.range and step == self.range[0]:
            tf.profiler.experimental.start(self.model_dir)

    def after(self, step: int) -> None:
        if self.range and step == self.range[1]:
            tf.profiler.experimental.stop()
            self.log(f"train: profiler trace of steps {self.range[0]}-{self.range[1]} written "
                     f"to {self.model_dir}/plugins/profile (TensorBoard's Profile tab)")


def _check_inputs(config: config_lib.TrainConfig, allow: tuple = (), log=None):
    """Everything checked before any work: the config, the run directory's stored config
    (returns the resumable and `allow`ed fields that changed), the records and, for a
    conditional run, their labels (`config` is validated, its batch resolved). Returns
    (record files, changed fields, the data metadata to store)."""
    if not config.train_records and config.train_steps > 0:
        raise ValueError("`train_records` is required")
    changed = rundir.check_config(config, rundir.parse_allow_change(",".join(allow)), log)
    if config.train_steps <= 0:
        return [], changed, None
    files = records.check_records(config.train_records, config.img_size)
    if config.num_classes:
        records.check_labels(files, config.num_classes)
    return files, changed, records.records_metadata(files, config.num_classes)


def _evaluation_wanted(config: config_lib.TrainConfig, chief: bool, log) -> bool:
    """Whether this process evaluates during training (`eval_every` on the chief; not
    with multi_worker, where the chief would evaluate while the workers wait)."""
    if config.eval_every and config.strategy == "multi_worker":
        log("warning: --eval_every is not run with --strategy=multi_worker (the chief would "
            "evaluate while the workers wait in the next step); score checkpoints with "
            "tools.fid_mmd")
        return False
    if config.eval_every > 0 and chief and config.train_steps > 0:
        from crfgan_tf.training import monitor  # deferred: SimpleITK, the feature network

        monitor.check_eval_records(config)
    return config.eval_every > 0 and chief


def _adapt_augmentation(config: config_lib.TrainConfig, model: SubVolumeGAN, r_t: float) -> None:
    """ADA: raise the augmentation probability while D calls too many reals real."""
    if config.ada_target:
        p = float(model.augment_p.numpy())
        model.augment_p.assign(min(max(
            p + math.copysign(config.ada_speed, r_t - config.ada_target), 0.0), 1.0))


def _check_finite(model: SubVolumeGAN, metrics: dict, step: int, manager) -> None:
    bad = [k for k in model.LOSS_PHASE if not math.isfinite(metrics[k])]
    if bad:
        raise NonFiniteLossError(
            f"non-finite {bad[0]} = {metrics[bad[0]]} at step {step} in the "
            f"{model.LOSS_PHASE[bad[0]]}; stopped without checkpointing, the last checkpoint "
            f"({manager.latest_checkpoint}) is intact")


def _save(config: config_lib.TrainConfig, run: _Run, step: int, metrics: dict) -> None:
    """A checkpoint, and (chief) trainer_state.json; a non-chief's scratch copy is removed.

    Raises:
      fileio.DiskFullError: no space for the checkpoint (its partial files are removed;
        the previous checkpoint stays the latest) or for trainer_state.json.
    """
    manager, chief = run.writer_manager, run.chief
    previous = manager.latest_checkpoint
    try:
        path = manager.save(checkpoint_number=step)
    except Exception as err:  # noqa: BLE001 - TensorFlow reports a full disk in several types
        reason = fileio.disk_full_reason(err)
        if reason is None:
            raise
        if chief:  # free what the failed save wrote
            rundir.remove_partial_checkpoints(config.model_dir, lambda m: None)
        raise fileio.disk_full_error(
            os.path.join(manager.directory, f"ckpt-{step}"), reason,
            checkpoint_bytes(run.model.checkpoint_items()),
            f"Nothing of it was kept and the previous checkpoint ({previous or 'none'}) is "
            "intact", "free space and run the same command again to resume from there") from None
    if not chief:
        tf.io.gfile.rmtree(manager.directory)
        return
    state = os.path.join(config.model_dir, rundir.STATE_FILE)
    try:
        fileio.atomic_write(state, json.dumps(
            {"step": step, "checkpoint": path, "train_steps": config.train_steps,
             "metrics": metrics, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))
    except OSError as err:
        if fileio.disk_full_reason(err) is None:
            raise
        raise fileio.disk_full_error(
            state, fileio.disk_full_reason(err), None,
            f"The checkpoint {path} was written and is what a rerun resumes from",
            "free space and run the same command again") from None


class _InTrainingEvaluation:
    """`eval_every`: evaluations logged to eval.jsonl and TensorBoard, and the best
    checkpoint kept in best/ (crfgan_tf.training.monitor)."""

    def __init__(self, config, checkpoint, step: int, log):
        from crfgan_tf.training import monitor

        self.monitor, self.config, self.log = monitor, config, log
        self.evaluator = monitor.Evaluator(config, log)
        kept = monitor.truncate_log(config.model_dir, step)
        self.best = monitor.read_best(config.model_dir)
        self.best_manager = tf.train.CheckpointManager(
            checkpoint, os.path.join(config.model_dir, rundir.BEST_DIR), max_to_keep=1)
        self.r_t_sum, self.r_t_steps = 0.0, 0
        if kept and self.best:
            log(f"eval: {kept} earlier evaluations in {rundir.EVAL_FILE}; best so far "
                f"{self.best['metric']} {self.best['value']:.5g} at step {self.best['step']}")

    def add_r_t(self, r_t: float) -> None:
        self.r_t_sum, self.r_t_steps = self.r_t_sum + r_t, self.r_t_steps + 1

    def run(self, model: SubVolumeGAN, step: int, writer) -> None:
        monitor, config = self.monitor, self.config
        r_t = self.r_t_sum / self.r_t_steps if self.r_t_steps else None
        result = self.evaluator.evaluate(model, step, r_t)
        self.r_t_sum, self.r_t_steps = 0.0, 0
        monitor.append_log(config.model_dir, result)
        monitor.write_summaries(writer, result)
        shown = " ".join(f"{k} {result[k]:.4g}" for k in
                         ("fd", "mmd", "hist_w1_hu", "lung_fraction_diff", "profile_l1_hu",
                          "ms_ssim", "coverage", "body_fraction_sd_ratio",
                          "lung_fraction_sd_ratio", "structure_recall", "structure_coverage",
                          "quality_pass_rate", "lung_profile_corr", "r_t")
                          if result.get(k) is not None)
        self.log(f"eval: step {step}: {shown} ({result['seconds']:.1f} s)")
        for alarm in result["alarms"]:
            self.log(f"warning: eval at step {step}: {alarm}")
        if step > 0 and monitor.is_better(result, self.best, config.best_metric):  # not init
            path = self.best_manager.save(checkpoint_number=step)
            self.best = monitor.record_best(config.model_dir, result, config.best_metric, path)
            self.log(f"eval: best {config.best_metric} so far; kept as {path}")
