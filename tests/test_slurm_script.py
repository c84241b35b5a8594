"""configs/slurm.sbatch, run as Slurm runs it, with stand-in `srun` and `scontrol` on PATH
driving the real crfgan-train: the time limit's SIGUSR1 to the batch shell is forwarded to
the training step, which saves; the shell requeues the job; the requeued job resumes."""

import os
import signal
import stat
import subprocess
import sys

import pytest
import time

from conftest import REPO, train_args


def _stand_ins(folder):
    folder.mkdir()
    # srun: drops its own options and runs the task in its place (exec: one process, as
    # srun's signal forwarding reaches the task)
    (folder / "srun").write_text(
        '#!/bin/bash\nwhile [[ "$1" == -* ]]; do shift; done\nexec "$@"\n')
    # scontrol: records what it was asked
    (folder / "scontrol").write_text('#!/bin/bash\necho "$*" >> "$SCONTROL_LOG"\n')
    for name in ("srun", "scontrol"):
        path = folder / name
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(folder)


def _job(tmp_path, records, restart, *extra):
    env = dict(os.environ, PYTHONPATH=REPO, SLURM_JOB_ID="4242",
               SLURM_RESTART_COUNT=str(restart), CRFGAN_FLAGFILE="configs/demo.flags",
               SCONTROL_LOG=str(tmp_path / "scontrol.log"),
               PATH=os.pathsep.join([str(tmp_path / "bin"), os.path.dirname(sys.executable),
                                     os.environ["PATH"]]))
    log = open(tmp_path / f"job-{restart}.out", "w")
    args = train_args(records, tmp_path / "run", "--demo_data_dir=", "--eval_every=0",
                      "--train_steps=12", *extra)
    return subprocess.Popen(["bash", "configs/slurm.sbatch", *args], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT), log


# 37 s on 2 cores; tests/utils/test_preemption.py keeps SIGTERM's save-and-resume fast
@pytest.mark.slow
def test_time_limit_saves_requeues_and_the_requeued_job_resumes(records_64, tmp_path):
    _stand_ins(tmp_path / "bin")
    job, log = _job(tmp_path, records_64, 0)
    out = tmp_path / "job-0.out"
    deadline = time.time() + 300
    while "step 2/12" not in out.read_text():
        assert time.time() < deadline and job.poll() is None, out.read_text()[-3000:]
        time.sleep(0.1)
    job.send_signal(signal.SIGUSR1)  # Slurm's --signal=B:USR1@300: to the batch shell only
    assert job.wait(timeout=300) == 0, out.read_text()[-3000:]
    log.close()
    text = out.read_text()
    assert "slurm.sbatch: SIGUSR1 (the time limit is near): asking crfgan-train to save" in text
    assert "train: SIGUSR1 received" in text
    step = int(text.split("train: SIGUSR1: stopped at step ")[1].split(",")[0])
    assert 2 <= step < 12, text[-3000:]
    assert "slurm.sbatch: saved at the time limit; requeueing job 4242 to resume" in text
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert (tmp_path / "run" / "checkpoints" / f"ckpt-{step}.index").exists()

    # Slurm starts the job again (same id, restart 1): it resumes and ends; no requeue
    job, log = _job(tmp_path, records_64, 1)
    assert job.wait(timeout=600) == 0, (tmp_path / "job-1.out").read_text()[-3000:]
    log.close()
    text = (tmp_path / "job-1.out").read_text()
    assert f"resumed from" in text and f"ckpt-{step}" in text and "step 12/12" in text
    assert "slurm.sbatch: crfgan-train ended with status 0" in text
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"


def test_a_failed_training_is_not_requeued(records_64, tmp_path):
    """An error (here a bad flag value) ends the job with
    crfgan-train's status; nothing is requeued."""
    _stand_ins(tmp_path / "bin")
    job, log = _job(tmp_path, records_64, 0, "--img_size=100")
    assert job.wait(timeout=300) == 2
    log.close()
    text = (tmp_path / "job-0.out").read_text()
    assert "error: flag --img_size=100: --img_size must be one of" in text
    assert "slurm.sbatch: crfgan-train ended with status 2" in text
    assert not (tmp_path / "scontrol.log").exists()
