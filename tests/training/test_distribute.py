"""Multi-replica and multi-worker training through the real entry point
(`python -m crfgan_tf.train`), each through a checkpoint, a resume and an export; and the
distributed step `train` runs, on two replicas against one device."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from support.doc_commands import invocations, page_text

# the documented commands (docs/training.md); the tests add --train_steps, their records and run directories
DEMO = ("--flagfile=configs/demo.flags", "--demo_data_dir=", "--eval_every=0")


def _env(**extra):
    return dict(os.environ, PYTHONPATH=REPO, **extra)


def _module(name, *args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", name, *args], cwd=REPO, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def _export_and_generate(model_dir, tmp_path):
    res = _module("crfgan_tf.export", f"--model_dir={model_dir}",
                  f"--export_dir={tmp_path}/export")
    assert res.returncode == 0, res.stderr[-3000:]
    res = _module("crfgan_tf.sample", f"--saved_model={tmp_path}/export", "--num_samples=1",
                  f"--output_dir={tmp_path}/samples", "--format=npy")
    assert res.returncode == 0, res.stderr[-3000:]
    (sample,) = [n for n in os.listdir(tmp_path / "samples") if n.endswith(".npy")]
    assert np.load(tmp_path / "samples" / sample).shape == (64, 64, 64)


@pytest.mark.slow  # two CLI runs and an export on two devices: minutes beside another test
# (the fast tier runs the documented command on 2 replicas and the 2-replica step's numerics)
def test_cli_mirrored_on_two_cpu_devices_checkpoints_resumes_exports(records_64, tmp_path):
    run = tmp_path / "run"
    common = (*DEMO, f"--train_records={records_64}/train-*.tfrecord", f"--model_dir={run}",
              "--strategy=mirrored", "--cpu_devices=2")
    res = _module("crfgan_tf.train", *common, "--train_steps=2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "on 2 replica(s)" in res.stderr and "step 2/2" in res.stderr
    res = _module("crfgan_tf.train", *common, "--train_steps=3")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stderr and "ckpt-2" in res.stderr and "step 3/3" in res.stderr
    assert json.load(open(run / "trainer_state.json"))["step"] == 3
    _export_and_generate(run, tmp_path)


def documented_command(page, marker):
    """The flags of the first command line of `page` that has `marker`, as written there."""
    for _, args, _ in invocations(page_text(page), inline=False):
        if marker in args:
            return [a for a in args if a.startswith("--")]
    raise AssertionError(f"no command with {marker!r} in {page}")


@pytest.mark.parametrize("replicas", [
    pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow),
    pytest.param(4, marks=pytest.mark.slow), pytest.param(8, marks=pytest.mark.slow)])
def test_documented_multi_gpu_command_runs_on_1_2_4_8_replicas(records_64, tmp_path, replicas):
    """docs/training.md's several-GPU command, as written (its flagfile's global
    --batch_size=2 included), on `replicas` CPU devices; the tests add their data, a
    64^3 tiny-width size, one step and the device count."""
    args = documented_command("docs/training.md", "--strategy=mirrored")
    assert "--flagfile=configs/luna.flags" in args and "--per_replica_batch_size=2" in args
    res = _module("crfgan_tf.train", *args, f"--model_dir={tmp_path}/run",
                  f"--train_records={records_64}/train-*.tfrecord", "--img_size=64",
                  "--width=0.125", "--latent_dim=128", "--train_steps=1", "--eval_every=0",
                  f"--cpu_devices={replicas}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"2 per replica x {replicas} replica(s) = global batch {2 * replicas}" in res.stderr
    assert f"batch {2 * replicas} on {replicas} replica(s)" in res.stderr
    assert "step 1/1" in res.stderr
    stored = json.load(open(tmp_path / "run" / "config.json"))
    assert (stored["batch_size"], stored["per_replica_batch_size"]) == (2 * replicas, 0)


def test_global_batch_that_does_not_divide_is_refused_with_the_fix(records_64, tmp_path):
    """--batch_size is global: 6 on 4 replicas is refused before anything is written,
    naming the nearest valid batches and --per_replica_batch_size."""
    res = _module("crfgan_tf.train", *DEMO, f"--model_dir={tmp_path}/run",
                  f"--train_records={records_64}/train-*.tfrecord", "--batch_size=6",
                  "--strategy=mirrored", "--cpu_devices=4", "--train_steps=1")
    assert res.returncode == 2, res.stderr[-3000:]
    assert ("--batch_size=6 is the global batch (all replicas together) and does not divide "
            "by the 4 replicas. Use --batch_size=4 or --batch_size=8, or "
            "--per_replica_batch_size=N for a global batch of N x 4") in res.stderr
    assert not os.path.exists(tmp_path / "run")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_workers(records, run, steps, log_dir, *extra):
    """Starts both workers of a 2-worker cluster on loopback: [(process, log file)]."""
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers},
                                "task": {"type": "worker", "index": i}})
        out = open(os.path.join(log_dir, f"worker{i}-{steps}.log"), "w")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "crfgan_tf.train", *DEMO,
             f"--train_records={records}/train-*.tfrecord", f"--model_dir={run}",
             "--strategy=multi_worker", f"--train_steps={steps}", *extra],
            cwd=REPO, env=_env(TF_CONFIG=tf_config), stdout=out, stderr=subprocess.STDOUT), out))
    return procs


def _multi_worker(records, run, steps, log_dir, *extra, procs=None):
    """Starts both workers of a 2-worker cluster on loopback (or takes `procs`), waits for
    both to stop; returns their exit codes and logs."""
    procs = procs or _start_workers(records, run, steps, log_dir, *extra)
    codes = []
    for proc, out in procs:
        try:
            codes.append(proc.wait(timeout=420))
        finally:
            if proc.poll() is None:
                proc.kill()
            out.close()
    logs = [open(os.path.join(log_dir, f"worker{i}-{steps}.log")).read() for i in range(2)]
    return codes, logs


@pytest.mark.slow  # two workers, twice, then an export: about two minutes (the fast tier
# runs two workers in test_cli_multi_worker_signal_to_one_worker_stops_both_at_one_step)
def test_cli_multi_worker_two_processes_checkpoint_resume_export(records_64, tmp_path):
    """Two workers of one CPU each: 2 replicas; --per_replica_batch_size=2 makes the
    global batch 4 (docs/training.md's advice for several hosts)."""
    run = tmp_path / "run"
    per_replica = "--per_replica_batch_size=2"
    codes, logs = _multi_worker(records_64, run, 2, str(tmp_path), per_replica)
    assert codes == [0, 0], [log[-3000:] for log in logs]
    for log in logs:
        assert "= global batch 4" in log and "batch 4 on 2 replica(s)" in log
        assert "step 2/2" in log
    codes, logs = _multi_worker(records_64, run, 3, str(tmp_path), per_replica)
    assert codes == [0, 0], [log[-3000:] for log in logs]
    for log in logs:
        assert "resumed from" in log and "ckpt-2" in log and "step 3/3" in log
    # the chief alone wrote the run directory; the other worker's scratch copies are gone
    assert json.load(open(run / "trainer_state.json"))["step"] == 3
    assert sorted(n for n in os.listdir(run) if n.startswith(".worker")) == []
    _export_and_generate(run, tmp_path)


@pytest.mark.slow
def test_cli_multi_worker_signal_to_one_worker_stops_both_at_one_step(records_64, tmp_path):
    run = tmp_path / "run"
    procs = _start_workers(records_64, run, 40, str(tmp_path), "--log_every=1",
                           "--checkpoint_every=100")
    log1 = os.path.join(str(tmp_path), "worker1-40.log")
    deadline = time.time() + 300
    while "step 2/40" not in open(log1).read():
        assert time.time() < deadline and procs[1][0].poll() is None, open(log1).read()[-3000:]
        time.sleep(0.2)
    procs[1][0].send_signal(signal.SIGTERM)  # the other worker gets no signal
    codes, logs = _multi_worker(records_64, run, 40, str(tmp_path), procs=procs)
    assert codes == [143, 143], [log[-3000:] for log in logs]
    assert "SIGTERM received" in logs[1] and "SIGTERM received" not in logs[0]
    step = int(re.search(r"stopped at step (\d+), checkpoint", logs[0]).group(1))
    assert 2 <= step < 40
    assert sorted(n for n in os.listdir(run / "checkpoints") if n.endswith(".index")) == \
        [f"ckpt-{step}.index"]
    assert json.load(open(run / "trainer_state.json"))["step"] == step
    assert not [n for n in os.listdir(run) if n.startswith(".worker")]
    assert not os.path.exists(run / ".crfgan.lock")  # the chief's, released
    # (resuming a multi_worker run from its checkpoint: the test above)


MIRRORED_SCRIPT = r"""
import json, sys
import numpy as np, tensorflow as tf
sys.path.insert(0, "tests")
from conftest import tiny_batch, tiny_config
from crfgan_tf.run import factory
from crfgan_tf.training import distribute
import keras

model_name, size, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
two = distribute.make_strategy("mirrored", cpu_devices=2)  # before TensorFlow starts
one = tf.distribute.OneDeviceStrategy("/cpu:0")
batch = tiny_batch(img_size=size, batch=2)
results = {}
for name, strategy in (("one", one), ("two", two)):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = factory.build_model(tiny_config("/tmp/unused", model=model_name,
                                                  img_size=size))
    if name == "one":
        init = [v.numpy() for v in model.weights]
    else:
        for v, w in zip(model.weights, init):
            v.assign(w)
    dist = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch)))
    out = distribute.make_distributed_step(strategy, model)(next(dist))
    results[name] = {"losses": {k: float(v) for k, v in out.items()},
                     "replicas": strategy.num_replicas_in_sync}
    np.savez(f"{out_path}.{name}.npz", *[v.numpy() for v in model.trainable_weights])
print(json.dumps(results))
"""


@pytest.mark.parametrize("model,size", [
    ("crfgan", 64), pytest.param("hagan", 128, marks=pytest.mark.slow)])
def test_two_replica_distributed_step_equals_one_device(model, size, tmp_path):
    """The step `train` runs (distribute.make_distributed_step), on 2 replicas vs one
    device from the same weights: every weight after the step, element by element."""
    res = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, model, str(size),
                          str(tmp_path / "w")], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["one"]["replicas"] == 1 and out["two"]["replicas"] == 2
    for k, v in out["one"]["losses"].items():
        assert out["two"]["losses"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    one, two = np.load(tmp_path / "w.one.npz"), np.load(tmp_path / "w.two.npz")
    assert len(one.files) == len(two.files) > 20
    for k in one.files:
        # atol: conv biases ahead of GroupNorm get gradients of pure rounding noise, which
        # Adam turns into steps of up to lr (1e-4) in either direction.
        np.testing.assert_allclose(two[k], one[k], rtol=1e-4, atol=2e-4, err_msg=k)


def _slurm_env(task, port_base, **extra):
    """What srun sets for task `task` of a 2-task step on one node ("localhost")."""
    return _env(SLURM_JOB_ID="4242", SLURM_STEP_ID="0", SLURM_PROCID=str(task),
                SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="localhost",
                SLURM_STEP_TASKS_PER_NODE="2", CRFGAN_SLURM_PORT_BASE=str(port_base), **extra)


def _consecutive_free_ports():
    for _ in range(50):
        (port,) = _free_ports(1)
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise AssertionError("no two consecutive free ports")


@pytest.mark.slow  # two workers through a checkpoint: a minute and a half
def test_srun_with_two_tasks_builds_its_cluster_with_slurm_cluster_resolver(records_64,
                                                                            tmp_path):
    """crfgan-train --strategy=multi_worker under a faked srun step of 2 tasks on loopback,
    without TF_CONFIG: the workers find each other through SlurmClusterResolver (hosts,
    ranks and ports from srun's variables) and train one run, written by task 0."""
    port = _consecutive_free_ports()
    run = tmp_path / "run"
    procs = []
    for task in range(2):
        env = {k: v for k, v in _slurm_env(task, port).items() if k != "TF_CONFIG"}
        out = open(tmp_path / f"worker{task}-2.log", "w")  # the log _multi_worker reads
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "crfgan_tf.train", *DEMO,
             f"--train_records={records_64}/train-*.tfrecord", f"--model_dir={run}",
             "--strategy=multi_worker", "--train_steps=2"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT), out))
    codes, logs = _multi_worker(records_64, run, 2, str(tmp_path), procs=procs)
    assert codes == [0, 0], [log[-3000:] for log in logs]
    workers = f"{{'worker': ['localhost:{port}', 'localhost:{port + 1}']}}"
    for task, log in enumerate(logs):
        assert (f"Slurm cluster (SlurmClusterResolver): this is worker {task} of {workers}"
                in log), log[-3000:]
        assert "batch 2 on 2 replica(s)" in log and "step 2/2" in log
    assert json.load(open(run / "trainer_state.json"))["step"] == 2


def test_several_srun_tasks_without_multi_worker_are_refused(records_64, tmp_path):
    """Under srun with 2 tasks, --strategy=default would train twice on one directory."""
    res = subprocess.run(
        [sys.executable, "-m", "crfgan_tf.train", *DEMO, "--train_steps=1",
         f"--train_records={records_64}/train-*.tfrecord", f"--model_dir={tmp_path}/run"],
        cwd=REPO, env=_slurm_env(1, 20000), capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr[-3000:]
    (line,) = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert line == ("error: --strategy=default under srun with 2 tasks (this is task 1): every "
                    "task would train alone on the same run directory. Use "
                    "--strategy=multi_worker (the tasks form one cluster, SlurmClusterResolver), "
                    "or run one task (srun --ntasks=1) with --strategy=mirrored for the GPUs of "
                    "one node"), line
    assert not os.path.exists(tmp_path / "run")
