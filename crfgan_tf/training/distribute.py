"""Replicas: the tf.distribute strategy of a run, which process writes, and the step that
runs train_step on every replica and reduces its results."""

from __future__ import annotations

import os
import zlib
from typing import Callable, Optional

import tensorflow as tf

from crfgan_tf.models import REPLICA_INVARIANT, SubVolumeGAN


def slurm_tasks(environ=os.environ) -> int:
    """The tasks of the Slurm job step this process is one of (srun sets
    SLURM_STEP_NUM_TASKS), or 0 outside srun (a batch script's shell is not a step)."""
    try:
        return int(environ.get("SLURM_STEP_NUM_TASKS") or 0)
    except ValueError:
        return 0


def slurm_port_base(environ=os.environ) -> int:
    """The first port of this job's workers on each node: CRFGAN_SLURM_PORT_BASE, else
    derived from the job id (20000-59992, 8 apart), so that two jobs sharing a node do
    not collide as they would on one fixed port."""
    if environ.get("CRFGAN_SLURM_PORT_BASE"):
        return int(environ["CRFGAN_SLURM_PORT_BASE"])
    return 20000 + 8 * (zlib.crc32(environ.get("SLURM_JOB_ID", "0").encode()) % 5000)


class _SlurmCluster(tf.distribute.cluster_resolver.SlurmClusterResolver):
    """TensorFlow's SlurmClusterResolver (hosts, ranks and ports from srun's environment)
    for tasks whose GPUs Slurm has already bound: it leaves CUDA_VISIBLE_DEVICES alone
    (TensorFlow's would renumber GPUs that srun's --gpus-per-task already chose) and
    gives each worker the GPUs it sees, none on a CPU node (where TensorFlow's would
    count one per task)."""

    def __init__(self, local_gpus: int, environ=os.environ):
        self._local_gpus = local_gpus
        per_task = max(local_gpus, 1)  # the resolver lays out ports by GPU slots
        tasks_per_node = max(tf.distribute.cluster_resolver.SlurmClusterResolver
                             ._resolve_task_configuration(self).values())
        super().__init__(port_base=slurm_port_base(environ), gpus_per_task=per_task,
                         gpus_per_node=per_task * tasks_per_node, auto_set_gpu=False)

    def num_accelerators(self, task_type=None, task_id=None, config_proto=None):
        return {"GPU": self._local_gpus} if self._local_gpus else {}


def slurm_cluster(environ=os.environ) -> Optional[tf.distribute.cluster_resolver.ClusterResolver]:
    """The cluster of an srun step of several tasks (SlurmClusterResolver), or None
    outside one. TF_CONFIG, when set, wins (make_strategy)."""
    if slurm_tasks(environ) < 2:
        return None
    return _SlurmCluster(len(tf.config.list_physical_devices("GPU")), environ)


def check_slurm_strategy(name: str, environ=os.environ) -> None:
    """Refuses a run that would train once per task: under an srun step of several tasks,
    every task but multi_worker's would train alone on the same run directory.

    Raises:
      ValueError: naming `strategy`, the task and the two ways out.
    """
    tasks = slurm_tasks(environ)
    if tasks > 1 and name != "multi_worker":
        raise ValueError(
            f"`strategy={name}` under srun with {tasks} tasks (this is task "
            f"{environ.get('SLURM_PROCID', '?')}): every task would train alone on the same "
            "run directory. Use `strategy=multi_worker` (the tasks form one cluster, "
            "SlurmClusterResolver), or run one task (srun --ntasks=1) with "
            "`strategy=mirrored` for the GPUs of one node")


def make_strategy(name: str, cpu_devices: int = 1) -> tf.distribute.Strategy:
    """default: one device; mirrored: all local GPUs, or without GPUs the CPU split into
    `cpu_devices` logical devices (one replica each); multi_worker: the cluster in
    TF_CONFIG, else, under srun with several tasks, Slurm's (slurm_cluster), else this
    process alone (docs/training.md). Call before TensorFlow runs any operation."""
    check_slurm_strategy(name)
    if cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
    if name == "mirrored":
        if not tf.config.list_physical_devices("GPU") and cpu_devices > 1:
            return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_devices)])
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        cluster = None if os.environ.get("TF_CONFIG") else slurm_cluster()
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster)
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
