"""crfgan_tf.utils.preemption through the real training command: a signal mid-run saves the step
reached, the exit status says preempted, and the rerun ends bit-identical to a run that
was never stopped."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from crfgan_tf.utils import preemption

from conftest import (REPO, STEPS, assert_bit_identical, run_train, start_train, train_args,
                      wait_for_line)

def interrupt_mid_run(records, model_dir, signum, *extra):
    """Starts training, sends `signum` once step 2 is logged; returns (status, stderr,
    the step the command says it stopped at)."""
    proc = start_train(train_args(records, model_dir, *extra))
    lines = wait_for_line(proc, r"^step 2/")
    proc.send_signal(signum)
    _, rest = proc.communicate(timeout=240)
    err = "".join(lines) + rest
    stopped = re.search(r"stopped at step (\d+), checkpoint (\S+);", err)
    assert stopped, err
    return proc.returncode, err, int(stopped.group(1)), stopped.group(2)


def test_sigterm_saves_the_step_reached_and_the_rerun_ends_bit_identical(
        records_64, tmp_path, straight_run):
    rc, err, step, ckpt = interrupt_mid_run(records_64, tmp_path, signal.SIGTERM)
    assert rc == 143, err  # 128 + SIGTERM: what Slurm reads as a job ended by the signal
    assert "SIGTERM received; finishing this step" in err
    assert 2 <= step < STEPS and ckpt == str(tmp_path / "checkpoints" / f"ckpt-{step}")
    assert os.path.exists(ckpt + ".index")
    assert json.load(open(tmp_path / "trainer_state.json"))["step"] == step
    assert not os.path.exists(tmp_path / ".crfgan.lock")  # released on the way out

    rc, err = run_train(train_args(records_64, tmp_path))
    assert rc == 0, err
    assert f"resumed from {ckpt} at step {step}" in err
    assert_bit_identical(tmp_path, straight_run)


@pytest.mark.slow
def test_sigusr1_with_exit_zero_on_signal_and_break_lock_not_kept(records_64, tmp_path):
    rc, err, step, ckpt = interrupt_mid_run(records_64, tmp_path, signal.SIGUSR1,
                                            "--exit_zero_on_signal", "--break_lock")
    assert rc == 0, err
    assert "SIGUSR1 received" in err and os.path.exists(ckpt + ".index")
    assert json.load(open(tmp_path / "trainer_state.json"))["step"] == step
    # --break_lock is a one-off decision: flags.txt, which resumes the run, does not hold it
    flagfile = open(tmp_path / "flags.txt").read().splitlines()
    assert "--exit_zero_on_signal" in flagfile
    assert not [line for line in flagfile if re.match(r"--(no)?break_lock", line)]


SECOND_SIGNAL_DURING_SAVE = r"""
import os, signal, sys
import tensorflow as tf
from crfgan_tf.cli import train

real_save = tf.train.CheckpointManager.save

def save(self, *args, **kwargs):
    # the first SIGTERM has set the default action back: this second one, sent while
    # the checkpoint of the interrupted step is being written, ends the process at once
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        os.kill(os.getpid(), signal.SIGTERM)
    return real_save(self, *args, **kwargs)

tf.train.CheckpointManager.save = save
sys.argv = ["train"] + sys.argv[1:]
train.run()
"""


@pytest.mark.slow  # a save slowed down on purpose, then a rerun: over a minute
def test_a_second_signal_while_saving_exits_at_once_keeping_the_last_checkpoint(
        records_64, tmp_path):
    args = train_args(records_64, tmp_path)
    args[args.index("--checkpoint_every=100")] = "--checkpoint_every=2"
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-c", SECOND_SIGNAL_DURING_SAVE, *args], cwd=REPO,
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    wait_for_line(proc, r"^step 3/")  # ckpt-2 was written on schedule
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGTERM, err  # ended by the signal itself
    assert "stopped at step" not in err
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert "ckpt-2.index" in names and not any(n.startswith(("ckpt-3", "ckpt-4"))
                                               for n in names), names
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-2")
    rc, err = run_train(train_args(records_64, tmp_path))
    assert rc == 0, err
    assert "took over the lock" in err  # the killed process could not remove it
    assert re.search(r"resumed from \S+ckpt-2 at step 2", err)


def test_signal_names_exit_status_and_handlers():
    assert preemption.parse_signals("SIGTERM,INT, usr1") == (
        signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    assert preemption.parse_signals("none") == () and preemption.parse_signals("") == ()
    with pytest.raises(ValueError, match="`save_on_signals`: SIGKILL cannot be caught"):
        preemption.parse_signals("SIGTERM,KILL")
    with pytest.raises(ValueError, match="`save_on_signals`: unknown signal 'SIGFOO'"):
        preemption.parse_signals("SIGFOO")
    assert preemption.exit_status(signal.SIGTERM) == 143
    assert preemption.exit_status(signal.SIGINT) == 130
    assert preemption.exit_status(signal.SIGUSR1, exit_zero=True) == 0

    before = signal.getsignal(signal.SIGUSR1)
    lines = []
    with preemption.StopOnSignal((signal.SIGUSR1, signal.SIGUSR2), lines.append) as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)  # the handler runs at the next bytecode boundary
        assert stop.signum == signal.SIGUSR1 and "SIGUSR1 received" in lines[0]
        # a second signal would now take the default action (end the process)
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGUSR1) is before


def test_save_on_signals_is_validated_before_work(tmp_path):
    rc, err = run_train(["--model_dir=" + str(tmp_path / "run"), "--save_on_signals=SIGSTOP"])
    assert rc == 2 and "--save_on_signals: SIGSTOP cannot be caught" in err
    assert not os.path.exists(tmp_path / "run")
