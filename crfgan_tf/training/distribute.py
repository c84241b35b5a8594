"""Replicas: the tf.distribute strategy of a run, which process writes, and the step that
runs train_step on every replica and reduces its results."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from crfgan_tf.models import REPLICA_INVARIANT, SubVolumeGAN


def make_strategy(name: str, cpu_devices: int = 1) -> tf.distribute.Strategy:
    """default: one device; mirrored: all local GPUs, or without GPUs the CPU split into
    `cpu_devices` logical devices (one replica each); multi_worker: the cluster in
    TF_CONFIG (docs/training.md). Call before TensorFlow runs any operation."""
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


def trace_step(fn: Callable, jit_compile: bool = False) -> Callable:
    """`tf.function` as every training step is traced (training, crfgan-plan-memory,
    crfgan-profile-memory): without AutoGraph. The steps are plain Python over tensors (no
    branch or loop on a tensor's value), so AutoGraph's rewrite of every function they call
    changes no op; it only cost each new process about 5 s of tracing (a tiny 64^3 run's
    first call, 20.5 -> 15.8 s)."""
    return tf.function(fn, jit_compile=jit_compile or None, autograph=False)


def make_distributed_step(strategy: tf.distribute.Strategy, model: SubVolumeGAN,
                          jit_compile: bool = False) -> Callable:
    """The training step `train_lib.train` runs: model.train_step on every replica, losses
    summed over replicas (each is already divided by the global batch), replica-invariant
    values (e.g. the CRF weight) averaged."""

    replica_step = trace_step(model.train_step, jit_compile)

    @trace_step
    def distributed_step(batch):
        per_replica = strategy.run(replica_step, args=(batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN if k in REPLICA_INVARIANT
                                   else tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}

    return distributed_step


def make_stop_agreement(strategy: tf.distribute.Strategy) -> Callable[[int], int]:
    """For multi_worker: a function that every worker calls after every step with its own
    pending stop signal (0: none) and that answers alike on all of them: non-zero when
    any worker got a signal (its own signal number, or SIGTERM's 15 for a peer's). One
    scalar all-reduce per step, so all workers stop, and save collectively, at the same
    step. (TF's PreemptionCheckpointHandler agrees on a step too, but it watches SIGTERM
    alone, probes the GCE metadata server over the network when it starts and does
    nothing on GCE CPU machines.)"""

    @tf.function
    def any_signal(local):
        per_replica = strategy.run(lambda: tf.identity(local))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def agree(signum: int) -> int:
        if float(any_signal(tf.constant(float(signum)))) == 0:
            return 0
        return signum or 15
    return agree
