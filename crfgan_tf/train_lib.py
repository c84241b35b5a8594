"""The training driver: strategy, precision, input, checkpoints, TensorBoard, profiling.

`train(config)` is what `python -m crfgan_tf.train` runs.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import sys
import time
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from crfgan_tf import config as config_lib
from crfgan_tf import data, fileio, optimizers, rundir
from crfgan_tf.model import MODEL_CLASSES, REPLICA_INVARIANT, SubVolumeGAN


class NoReadableCheckpointError(RuntimeError):
    """A run directory has checkpoints and none of them can be read; nothing is changed."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; nothing after the last checkpoint is kept."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def set_precision(policy: str) -> None:
    """Sets the global Keras dtype policy (before any layer is built)."""
    keras.mixed_precision.set_global_policy(policy)


def make_strategy(name: str, cpu_devices: int = 1) -> tf.distribute.Strategy:
    """default: one device; mirrored: all local GPUs, or without GPUs the CPU split into
    `cpu_devices` logical devices (one replica each); multi_worker: the cluster in
    TF_CONFIG (see README). Call before TensorFlow runs any operation."""
    if cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
    if name == "mirrored":
        if not tf.config.list_physical_devices("GPU") and cpu_devices > 1:
            return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_devices)])
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run directory (all but multi_worker's workers > 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0
                                    and "chief" not in resolver.cluster_spec().as_dict())


def cpu_advice(config: config_lib.TrainConfig, has_gpu: bool, cpu_flags: set) -> list:
    """Warnings for settings that cost time on a CPU (figures: docs/benchmarks.md)."""
    if has_gpu:
        return []
    out = []
    if config.jit_compile:
        out.append("WARNING: --jit_compile on a CPU: XLA made a 128^3 CRF-GAN iteration about "
                   "27x slower on a 2-core CPU (75.1 vs 2.73 s/it); it is for GPUs. "
                   "Drop --jit_compile here.")
    if config.mixed_precision == "float32" and {"amx_bf16", "avx512_bf16"} & cpu_flags:
        out.append("note: this CPU computes bfloat16 natively (AMX/AVX-512 BF16): "
                   "--mixed_precision=mixed_bfloat16 made a 128^3 CRF-GAN iteration 1.79x "
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


def make_optimizer(learning_rate: float, config: config_lib.TrainConfig, name: str):
    opt = optimizers.make_adam(config.adam, learning_rate, config.beta_1, config.beta_2,
                               config.adam_epsilon, name)
    if config.mixed_precision == "mixed_float16":
        # compile() only wraps its own optimizer; a GAN with four must wrap each.
        opt = keras.optimizers.LossScaleOptimizer(opt, name=f"{name}_loss_scale")
    return opt


def build_model(config: config_lib.TrainConfig,
                window=(-1024.0, 600.0)) -> SubVolumeGAN:
    """The model of `config.model` with one optimizer per phase, all slots built (call
    inside strategy.scope()); `window` is the records' intensity window (augmentation)."""
    common = dict(img_size=config.img_size, latent_dim=config.latent_dim, width=config.width,
                  global_batch_size=config.batch_size, name=config.model,
                  num_classes=config.num_classes, lambda_class=config.lambda_class,
                  augment=config.augment_transforms(), augment_p=config.augment_p,
                  augment_window=window, seed=config.seed)
    if config.model == "crfgan":
        common.update(crf_iterations=config.crf_iterations, crf_nodes=config.crf_nodes,
                      crf_weight_start=config.crf_weight_start,
                      crf_weight_decay_steps=config.crf_weight_decay_steps,
                      crf_sample=config.crf_sample)
    else:
        common.update(low_res=config.hagan_low_res)
    cls = MODEL_CLASSES[config.model]
    model = cls(**common)
    model.compile({phase: make_optimizer(getattr(config, field), config, f"adam_{phase}")
                   for phase, field in cls.LEARNING_RATES.items()})
    model.build_optimizers()
    return model


def make_checkpoint(model: SubVolumeGAN) -> tf.train.Checkpoint:
    """Every network, every optimizer state and the step (the input stream and all
    randomness are functions of the step, so that is the whole RNG state)."""
    return tf.train.Checkpoint(**model.checkpoint_items())


_SHAPE_MISMATCH = re.compile(r"incompatible tensor with shape \(([\d, ]*)\) when attempting "
                             r"to restore variable with shape \(([\d, ]*)\) and name ([^\s]+?)\.?$",
                             re.M)


def _shape(text: str) -> tuple:
    return tuple(int(v) for v in text.replace(" ", "").split(",") if v)


def architecture_flag(name: str, stored: tuple, built: tuple) -> str:
    """The flag that most likely explains a variable stored as `stored` but built as
    `built` (from the shapes the flags give: latent size, channel width, volume size)."""
    if name.split(":")[0].endswith("fc/kernel") and len(stored) == 2 and stored[1:] == built[1:]:
        return (f"--latent_dim (the checkpoint's G1 input is {stored[0]} = latent_dim + "
                f"num_classes)")
    ratios = {b / a for a, b in zip(stored, built) if a != b and a}
    if len(stored) == len(built) and len(ratios) == 1:
        return f"--width (channels x{ratios.pop():g} of the checkpoint's)"
    return "--img_size or --model"


def restore_latest(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager,
                   log: Callable[[str], None] = _log) -> Optional[str]:
    """Restores the newest readable checkpoint; an unreadable one is skipped with a warning.

    Returns:
      The path restored, or None when there is none (a fresh start).

    Raises:
      rundir.RunDirError: a checkpoint holds a variable of another shape (networks built
        with other flags); names the variable and the flag. Nothing is changed.
      NoReadableCheckpointError: no checkpoint could be read.
    """
    for path in reversed(manager.checkpoints):
        try:
            checkpoint.read(path).assert_existing_objects_matched()
            return path
        except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways
            # (DataLossError, IndexError "read less bytes", ValueError ...); each is skipped.
            mismatch = _SHAPE_MISMATCH.search(str(err))
            if mismatch:
                stored, built, name = (_shape(mismatch.group(1)), _shape(mismatch.group(2)),
                                       mismatch.group(3))
                raise rundir.RunDirError(
                    f"checkpoint {path} does not fit the networks these settings build: "
                    f"variable {name.split(':')[0]} is {stored} in the checkpoint and {built} "
                    f"here; check {architecture_flag(name, stored, built)}. Nothing was "
                    "changed; resume with the settings the run was started with.") from None
            log(f"WARNING: checkpoint {path} is unreadable ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}); trying the previous one")
    if manager.checkpoints:
        raise NoReadableCheckpointError(
            f"no readable checkpoint in {manager.directory} (nothing was changed there; "
            "each failure is above. Checkpoints written by crfgan-tf before 2026-11-25, when "
            "G1/G2's up-sampling and padding layers were fused into their convolutions, have "
            "another layout and do not restore into the current networks)")
    return None


def peak_memory_bytes() -> int:
    """Peak accelerator memory when there is a GPU, else this process's peak RSS."""
    if tf.config.list_physical_devices("GPU"):
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class _Progress:
    """One line per report: step, bar, it/s, ETA and the losses."""

    def __init__(self, start_step: int, total: int, log):
        self.start_step, self.total, self.log = start_step, total, log
        self.t0 = time.time()

    def report(self, step: int, values: dict) -> float:
        rate = (step - self.start_step) / max(time.time() - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        frac = step / max(self.total, 1)
        bar = "=" * int(20 * frac) + ">" + "." * (20 - int(20 * frac))
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        parts = " ".join(f"{k} {v:.4f}" for k, v in values.items())
        self.log(f"step {step}/{self.total} [{bar}] {rate:.2f} it/s ETA {eta_s} | {parts}")
        return rate


def make_distributed_step(strategy: tf.distribute.Strategy, model: SubVolumeGAN,
                          jit_compile: bool = False) -> Callable:
    """The training step `train` runs: model.train_step on every replica, losses summed
    over replicas (each is already divided by the global batch), replica-invariant values
    (e.g. the CRF weight) averaged."""

    @tf.function(jit_compile=jit_compile or None)
    def replica_step(batch):
        return model.train_step(batch)

    @tf.function
    def distributed_step(batch):
        per_replica = strategy.run(replica_step, args=(batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN if k in REPLICA_INVARIANT
                                   else tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}

    return distributed_step


def _checkpoint_managers(checkpoint, config, chief: bool, strategy):
    """(reader, writer): the run's checkpoints; a multi_worker worker other than the chief
    writes its (identical) copy to a scratch directory that is deleted after each save."""
    reader = tf.train.CheckpointManager(
        checkpoint, os.path.join(config.model_dir, rundir.CHECKPOINT_DIR),
        max_to_keep=config.keep_checkpoints)
    if chief:
        return reader, reader
    scratch = os.path.join(config.model_dir, f".worker-{strategy.cluster_resolver.task_id}")
    return reader, tf.train.CheckpointManager(checkpoint, scratch, max_to_keep=1)


def train(config: config_lib.TrainConfig, log: Callable[[str], None] = _log,
          flags_text: Optional[str] = None) -> dict:
    """Trains (or resumes) until `config.train_steps`; returns the last metrics and step.

    Before anything is written: the config is validated and compared with the one stored
    in the run directory (only rundir.RESUMABLE_FIELDS may differ), and the records are
    checked (they exist and hold img_size^3 volumes).

    Args:
      config: the run.
      log: progress lines.
      flags_text: the command line as a flagfile, kept as flags.txt.

    Raises:
      ValueError: invalid config (before any work); rundir.RunDirError, a run directory
        started with other settings; data.RecordsError, missing, mismatched or damaged
        records (the file named).
      NonFiniteLossError: a loss became NaN/inf (names the step and phase).
    """
    config.validate()
    if not config.train_records and config.train_steps > 0:
        raise ValueError("--train_records is required")
    changed = rundir.check_config(config)
    files = data.check_records(config.train_records, config.img_size) \
        if config.train_steps > 0 else []
    if files and config.num_classes:
        data.check_labels(files, config.num_classes)
    # the intensity window matters only to the augmentation: read a record only for it
    window = data.records_window(files) if files and config.augment else (-1024.0, 600.0)
    strategy = make_strategy(config.strategy, config.cpu_devices)
    chief = is_chief(strategy)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"--batch_size={config.batch_size} is not divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas")
    evaluate = config.eval_every > 0 and chief
    if config.eval_every and config.strategy == "multi_worker":
        log("warning: --eval_every is not run with --strategy=multi_worker (the chief would "
            "evaluate while the workers wait in the next step); score checkpoints with "
            "tools.fid_mmd")
        evaluate = False
    if evaluate:  # deferred: evaluation loads SimpleITK and the feature network
        from crfgan_tf import monitor
    if evaluate and config.train_steps > 0:
        monitor.check_eval_records(config)
    if chief:
        fileio.ensure_output_dir(config.model_dir, "--model_dir")
        rundir.remove_partial_checkpoints(config.model_dir, log)
    for line in cpu_advice(config, bool(tf.config.list_physical_devices("GPU")), _cpu_flags()):
        log(line)
    set_precision(config.mixed_precision)
    # Initial weights follow from the seed (a resumed run overwrites them anyway).
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_model(config, window)
        checkpoint = make_checkpoint(model)
    manager, writer_manager = _checkpoint_managers(checkpoint, config, chief, strategy)
    restored = restore_latest(checkpoint, manager, log)
    if chief:  # only now: the checkpoints fit this config (or there are none)
        rundir.record_config(config, flags_text, changed, log)
    step = int(model.step_counter.numpy())
    if restored:
        log(f"train: resumed from {restored} at step {step}")
    if step >= config.train_steps:
        log(f"train: step {step} >= --train_steps={config.train_steps}; nothing to do")
        return {"step": step, "metrics": {}, "model": model}
    evaluator = monitor.Evaluator(config, log) if evaluate else None
    best_manager, best = None, None
    if evaluator:
        kept = monitor.truncate_log(config.model_dir, step)
        best = monitor.read_best(config.model_dir)
        best_manager = tf.train.CheckpointManager(
            checkpoint, os.path.join(config.model_dir, rundir.BEST_DIR), max_to_keep=1)
        if kept and best:
            log(f"eval: {kept} earlier evaluations in {rundir.EVAL_FILE}; best so far "
                f"{best['metric']} {best['value']:.5g} at step {best['step']}")

    dataset = data.make_train_dataset(
        config.train_records, config.img_size, config.batch_size, config.latent_dim,
        seed=config.seed, start_step=step, shuffle_buffer=config.shuffle_buffer,
        num_classes=config.num_classes, fake_labels=config.fake_labels,
        balance_classes=config.balance_classes)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    distributed_step = make_distributed_step(strategy, model, config.jit_compile)
    learning_rates = {phase: getattr(config, field)
                      for phase, field in type(model).LEARNING_RATES.items()}

    writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "train")) if chief \
        else tf.summary.create_noop_writer()
    profile = config.profile_range() if chief else None
    progress = _Progress(step, config.train_steps, log)
    log(f"train: {config.model} {config.img_size}^3, batch {config.batch_size} on "
        f"{strategy.num_replicas_in_sync} replica(s), {config.mixed_precision}, "
        f"steps {step} -> {config.train_steps}, model_dir {config.model_dir}")
    metrics = {}
    r_t_sum, r_t_steps = 0.0, 0

    def run_evaluation():
        nonlocal best
        result = evaluator.evaluate(model, step, r_t_sum / r_t_steps if r_t_steps else None)
        monitor.append_log(config.model_dir, result)
        monitor.write_summaries(writer, result)
        shown = " ".join(f"{k} {result[k]:.4g}" for k in
                         ("fd", "mmd", "hist_w1_hu", "lung_fraction_diff", "profile_l1_hu",
                          "ms_ssim", "diversity_ratio", "r_t") if result.get(k) is not None)
        log(f"eval: step {step}: {shown} ({result['seconds']:.1f} s)")
        for alarm in result["alarms"]:
            log(f"warning: eval at step {step}: {alarm}")
        if step > 0 and monitor.is_better(result, best, config.best_metric):  # not the init
            path = best_manager.save(checkpoint_number=step)
            best = monitor.record_best(config.model_dir, result, config.best_metric, path)
            log(f"eval: best {config.best_metric} so far; kept as {path}")

    if evaluator and step == 0:
        run_evaluation()  # the baseline: distances at initialisation
    window_t0, window_step = time.time(), step
    while step < config.train_steps:
        if profile and step + 1 == profile[0]:
            tf.profiler.experimental.start(config.model_dir)
        try:
            batch = next(iterator)
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
            raise data.RecordsError(
                f"{data.describe_read_error(err, files)} (at step {step + 1}; the last "
                f"checkpoint, {manager.latest_checkpoint}, is intact)") from None
        metrics = {k: float(v) for k, v in distributed_step(batch).items()}
        step += 1
        r_t_sum, r_t_steps = r_t_sum + metrics["r_t"], r_t_steps + 1
        if config.ada_target:  # ADA: raise p while D calls too many reals real
            p = float(model.augment_p.numpy())
            model.augment_p.assign(min(max(
                p + math.copysign(config.ada_speed, metrics["r_t"] - config.ada_target), 0.0), 1.0))
        if profile and step == profile[1]:
            tf.profiler.experimental.stop()
            log(f"train: profiler trace of steps {profile[0]}-{profile[1]} written to "
                f"{config.model_dir}/plugins/profile (TensorBoard's Profile tab)")
        bad = [k for k in model.LOSS_PHASE if not math.isfinite(metrics[k])]
        if bad:
            raise NonFiniteLossError(
                f"non-finite {bad[0]} = {metrics[bad[0]]} at step {step} in the "
                f"{model.LOSS_PHASE[bad[0]]}; stopped without checkpointing, the last checkpoint "
                f"({manager.latest_checkpoint}) is intact")
        if step % config.log_every == 0 or step == config.train_steps:
            rate = (step - window_step) / max(time.time() - window_t0, 1e-9)
            window_t0, window_step = time.time(), step
            shown = list(model.LOSS_PHASE) + [k for k in ("d_class_loss", "g_class_loss")
                                               if k in metrics]
            progress.report(step, {k: metrics[k] for k in shown})
            with writer.as_default(step=step):
                for k, v in metrics.items():
                    tf.summary.scalar(k, v)
                for phase, lr in learning_rates.items():
                    tf.summary.scalar(f"learning_rate/{phase}", lr)
                tf.summary.scalar("iterations_per_sec", rate)
                if model.augment_p is not None:
                    tf.summary.scalar("augment_p", model.augment_p)
                tf.summary.scalar("peak_memory_bytes", peak_memory_bytes())
        if chief and (step % config.image_every == 0 or step == config.train_steps):
            write_images(model, writer, step, config)
        if evaluator and (step % config.eval_every == 0 or step == config.train_steps):
            run_evaluation()
            r_t_sum, r_t_steps = 0.0, 0
        if step % config.checkpoint_every == 0 or step == config.train_steps:
            path = writer_manager.save(checkpoint_number=step)
            if not chief:
                tf.io.gfile.rmtree(writer_manager.directory)
                continue
            fileio.atomic_write(os.path.join(config.model_dir, rundir.STATE_FILE), json.dumps(
                {"step": step, "checkpoint": path, "train_steps": config.train_steps,
                 "metrics": metrics, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))
    writer.flush()
    log(f"train: finished at step {step}; checkpoint {manager.latest_checkpoint}")
    return {"step": step, "metrics": metrics, "model": model}


def write_images(model: SubVolumeGAN, writer, step: int, config: config_lib.TrainConfig) -> None:
    """Mid-slices (axial, coronal, sagittal) of a real crop, a generated crop and a whole
    generated volume, from a fixed z so that images are comparable across steps."""
    records = data.raw_record_dataset(data.list_record_files(config.train_records)).take(1)
    volume = data.parse_volume(next(iter(records)), config.img_size)
    real_crop = volume[: config.img_size // 8].numpy()
    z = tf.random.stateless_normal([1, config.latent_dim], seed=[config.seed, 7])
    label = tf.constant([config.num_classes - 1]) if config.num_classes else None  # last class
    embedding = model.embed(z, label, training=False)
    fake_crop = model.head(embedding[:, : model.slab_depth], training=False)
    whole = model.head(embedding, training=False)
    with writer.as_default(step=step):
        for name, vol in (("real_crop", real_crop),
                          ("generated_crop", np.asarray(fake_crop)[0, ..., 0]),
                          ("generated_volume", np.asarray(whole)[0, ..., 0])):
            for view, img in fileio.mid_slices(np.asarray(vol, np.float32)).items():
                tf.summary.image(f"{name}/{view}", np.clip((img + 1.0) / 2.0, 0, 1)[None, ..., None])
