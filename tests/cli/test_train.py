"""crfgan-train as a user meets it before and around training: the records checked by
--dry_run, an out-of-memory error explained in one line, the warning when a GPU machine's
TensorFlow sees no GPU."""

import os
import resource
import shutil
import stat
import subprocess
import sys

import pytest
from conftest import REPO


def _train(*args, preexec_fn=None, **env_extra):
    env = dict(os.environ, PYTHONPATH=REPO, **env_extra)
    return subprocess.run([sys.executable, "-m", "crfgan_tf.train", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=preexec_fn)


def _address_space(limit_bytes):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


@pytest.mark.slow  # the step runs for about two minutes before an allocation fails
def test_out_of_memory_in_the_step_is_one_line_with_the_planner_and_the_flags(records_64,
                                                                             tmp_path):
    """A real allocation failure without a GPU: an 8 GB address space (`ulimit -v`) and a
    64^3 full-width batch of 512, whose activations alone need more. TensorFlow's Eigen CPU
    kernels (oneDNN off) then raise the ResourceExhaustedError a GPU raises (oneDNN's
    fail otherwise; a limit that small allocations reach first aborts in C++)."""
    res = _train(f"--model_dir={tmp_path}/run", f"--train_records={records_64}/train-*.tfrecord",
                 "--img_size=64", "--width=1", "--batch_size=512", "--train_steps=1",
                 "--eval_every=0", preexec_fn=_address_space(8 * 10 ** 9),
                 TF_ENABLE_ONEDNN_OPTS="0")
    assert res.returncode == 4, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    (line,) = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: out of memory in the training step at step 1 on CPU "
                           "(address-space limit 7.5 GiB)"), line
    assert "the memory planner's largest batch per device here is " in line, line
    assert int(line.split("here is ")[1].split()[0]) < 512 and "(this run: 512)" in line
    for flag in ("--batch_size", "--per_replica_batch_size", "--mixed_precision=mixed_float16",
                 "--crf_encoder_slab=16", "--remat",
                 "crfgan-plan-memory --model=crfgan --img_size=64 --width=1 --batch_size=512"):
        assert flag in line, (flag, line)
    assert line.endswith("; no checkpoint was written yet"), line


@pytest.mark.slow  # the input pipeline reads for about two minutes before it gives up
def test_a_batch_larger_than_memory_is_one_line_naming_the_phase(records_64, tmp_path):
    """A real allocation failure: a batch of 100,000 whole 64^3 volumes (50 GB) cannot be
    assembled in host memory; status 4, one line, no traceback."""
    res = _train(f"--model_dir={tmp_path}/run", f"--train_records={records_64}/train-*.tfrecord",
                 "--img_size=64", "--width=0.0625", "--latent_dim=16", "--batch_size=100000",
                 "--train_steps=1", "--eval_every=0")
    assert res.returncode == 4, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    (line,) = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert line == ("error: out of memory in the input pipeline at step 1 on CPU (" +
                    line.split(" on CPU (")[1].split(")")[0] + "); what cuts memory: a lower "
                    "--batch_size (a batch of whole volumes is assembled in host memory), which "
                    "resumes this run with --allow_change=batch_size "
                    "(crfgan-plan-memory --model=crfgan --img_size=64 --width=0.0625 "
                    "--batch_size=100000 breaks it down); no checkpoint was written yet"), line


TINY = ("--img_size=64", "--width=0.0625", "--latent_dim=16", "--batch_size=2")


def test_out_of_memory_in_the_step_after_a_checkpoint(records_64, trained_run, tmp_path):
    """A forced allocation failure (runtime.FAULT_OOM_VARIABLE: a real 4 TiB TensorFlow
    allocation) in the training step of a resumed run: status 4, one line with the phase,
    the step, the planner's figure, the flags and the intact checkpoint."""
    shutil.copytree(trained_run[0], tmp_path / "run")  # tiny_config: 64^3, batch 2, ckpt-1
    res = _train(f"--model_dir={tmp_path}/run", f"--train_records={records_64}/train-*.tfrecord",
                 *TINY, "--seed=1", "--eval_every=0", "--train_steps=2",
                 CRFGAN_FAULT_OOM="training step")
    assert res.returncode == 4, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    (line,) = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: out of memory in the training step at step 2 on CPU ("), line
    fit = int(line.split("the memory planner puts the largest batch per device here at ")[1]
              .split(",")[0])
    assert fit > 2, line  # a tiny model: the planner sees room for more than this batch
    assert line.endswith(
        "what cuts memory: --crf_encoder_slab=16 (CRF-GAN) or --remat, which resume this run; a "
        "lower --batch_size (or --per_replica_batch_size) or --mixed_precision=mixed_float16 "
        "on a GPU, which resume it with --allow_change=batch_size,mixed_precision (crfgan-plan-memory --model=crfgan --img_size=64 --width=0.0625 --batch_size=2 breaks "
        f"it down); the last checkpoint, {tmp_path}/run/checkpoints/ckpt-1, is intact"), line


@pytest.mark.slow  # an evaluation's set-up before the failure: half a minute (the fast
# tier forces the same path in the training step and in sampling)
def test_out_of_memory_in_the_in_training_evaluation(records_64, tmp_path):
    res = _train(f"--model_dir={tmp_path}/run", f"--train_records={records_64}/train-*.tfrecord",
                 *TINY, "--train_steps=1", "--eval_every=1", "--eval_samples=2",
                 f"--eval_records={records_64}/train-*.tfrecord", CRFGAN_FAULT_OOM="in-training evaluation")
    assert res.returncode == 4, res.stderr[-3000:]
    (line,) = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: out of memory in the in-training evaluation at step 0 on "
                           "CPU ("), line
    assert ("what cuts memory: --eval_every=0, which resumes this run (evaluate afterwards "
            "with crfgan-fid-mmd); --eval_feature_side=128 or fewer --eval_samples, which "
            "resume it with --allow_change=eval_feature_side,eval_samples") in line, line


def test_sampling_out_of_memory_is_one_line(exported, tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "crfgan_tf.sample", f"--saved_model={exported[0]}",
         f"--output_dir={tmp_path}/samples"], cwd=REPO, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=REPO, CRFGAN_FAULT_OOM="sampling"), timeout=600)
    assert res.returncode == 4, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    (line,) = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: out of memory in sampling on CPU ("), line
    assert line.endswith("what cuts memory: a lower --batch_size (1 generates one volume at a "
                         "time; the samples do not change with it)"), line


def _fake_nvidia_smi(folder):
    folder.mkdir()
    tool = folder / "nvidia-smi"
    tool.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA Stand-in (UUID: GPU-0)'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return str(folder)


def test_a_driver_without_a_gpu_tensorflow_sees_is_one_warning_line(records_64, tmp_path):
    """nvidia-smi on PATH (a driver) but no GPU for TensorFlow: one warning naming the
    likely cause (here: no CUDA libraries in the environment) as the command starts (a
    --dry_run too), and it goes on."""
    path = _fake_nvidia_smi(tmp_path / "bin") + os.pathsep + os.environ["PATH"]
    args = (f"--train_records={records_64}/train-*.tfrecord", "--img_size=64", "--dry_run")
    res = _train(f"--model_dir={tmp_path}/run", *args, PATH=path)
    assert res.returncode == 0, res.stderr[-3000:]
    warnings = [line for line in res.stderr.splitlines() if "sees no GPU" in line]
    assert len(warnings) == 1, res.stderr[-3000:]
    assert warnings[0].startswith("warning: an NVIDIA driver is present but TensorFlow sees "
                                  "no GPU, so this runs on the CPU: ")
    assert "make install-gpu" in warnings[0] or "driver" in warnings[0].split(": ", 2)[2]
    # no driver, or GPUs hidden on purpose: not a word
    res = _train(f"--model_dir={tmp_path}/run2", *args)
    assert res.returncode == 0 and "sees no GPU" not in res.stderr, res.stderr[-3000:]
    res = _train(f"--model_dir={tmp_path}/run3", *args, PATH=path, CUDA_VISIBLE_DEVICES="-1")
    assert res.returncode == 0 and "sees no GPU" not in res.stderr, res.stderr[-3000:]


def test_dry_run_checks_that_the_records_exist(tmp_path):
    res = _train(f"--model_dir={tmp_path}/run", f"--train_records={tmp_path}/none/train-*.tfrecord",
                 "--dry_run")
    assert res.returncode == 2, res.stderr[-3000:]
    (line,) = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: --train_records: no TFRecord files match "
                           f"'{tmp_path}/none/train-*.tfrecord'. Convert the scans first: "
                           f"crfgan-convert --dataset="), line
    assert "crfgan-convert" in line and "data_prep" not in line, line
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_a_refused_first_try_leaves_nothing_that_blocks_the_corrected_one(records_64, tmp_path):
    """Evaluation records holding one volume are refused before anything is written, with
    the remedy; the corrected command (other records, other settings) then trains."""
    run = tmp_path / "run"
    one = sorted(f for f in os.listdir(records_64) if f.startswith("val-"))[0]
    base = [f"--model_dir={run}", f"--train_records={records_64}/train-*.tfrecord",
            "--img_size=64", "--batch_size=2", "--latent_dim=16", "--width=0.0625",
            "--eval_every=1", "--eval_samples=2", "--eval_feature_side=16", "--image_every=100"]
    res = _train(*base, f"--eval_records={records_64}/{one}", "--train_steps=1")
    assert res.returncode == 2, res.stderr[-3000:]
    (line,) = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert "evaluation needs at least 2 volumes" in line and "--eval_records" in line, line
    assert "--eval_every=0" in line, line
    assert not os.path.exists(run) or not os.listdir(run), os.listdir(run)
    res = _train(*base, f"--eval_records={records_64}/*.tfrecord", "--train_steps=1",
                 "--lr_d=2e-4")
    assert res.returncode == 0, res.stderr[-3000:]
    assert os.path.exists(run / "checkpoints" / "ckpt-1.index")


@pytest.mark.slow
def test_the_demo_flagfile_with_a_users_records_makes_no_phantoms(records_64, tmp_path):
    """configs/demo.flags names --demo_data_dir; a user's own --train_records outside it
    means their data: nothing is written or converted there, and the log says why."""
    demo = tmp_path / "demo"
    res = _train("--flagfile=configs/demo.flags", f"--demo_data_dir={demo}",
                 f"--train_records={records_64}/train-*.tfrecord",
                 f"--eval_records={records_64}/*.tfrecord", f"--model_dir={tmp_path}/run",
                 "--train_steps=0")
    assert res.returncode == 0, res.stderr[-3000:]
    assert not os.path.exists(demo)
    assert "--train_records is not under --demo_data_dir" in res.stderr, res.stderr[-3000:]
