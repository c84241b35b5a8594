"""crfgan_tf.utils.dirlock: one writer per run or output directory, through the commands that
write them (train, convert, make_2afc, import_reference)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from crfgan_tf.data import convert
from crfgan_tf.training import loop as train_lib
from crfgan_tf.utils import dirlock

from conftest import REPO, run_train, start_train, tiny_config, train_args, wait_for_line


def write_lock(directory, **record):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, dirlock.LOCK_FILE), "w") as f:
        json.dump(record, f)


@pytest.fixture
def live_process():
    """Another process of this host that runs for the test's length."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def held_by(directory, proc, command):
    """A lock in `directory` held by the running process `proc`."""
    write_lock(directory, host=socket.gethostname(), pid=proc.pid,
               start_ticks=dirlock.process_start_ticks(proc.pid), since="2026-12-01T08:00:00",
               command=command)


def test_holder_states(live_process):
    host = socket.gethostname()
    me = dirlock.holder_record()
    assert dirlock.holder_state(me) == "self"
    pid, ticks = live_process.pid, dirlock.process_start_ticks(live_process.pid)
    assert dirlock.holder_state({"host": host, "pid": pid, "start_ticks": ticks}) == "alive"
    # the pid runs, but it is a process started after the lock's holder: the pid was reused
    assert dirlock.holder_state({"host": host, "pid": pid, "start_ticks": ticks - 1}) == "gone"
    assert dirlock.holder_state({"host": host, "pid": dead_pid()}) == "gone"
    assert dirlock.holder_state({"host": "node-17", "pid": pid}) == "unknown"
    assert dirlock.holder_state({}) == "gone"  # an unreadable lock file (read_holder's {})


def test_lock_records_flag_names_not_values(monkeypatch):
    # a lock left by a killed process stays in a shared directory; values may be paths
    # whose folder names identify patients
    monkeypatch.setattr(sys, "argv", ["/opt/x/crfgan-convert", "--input_dir=/data/DOE_JOHN",
                                      "--size=256", "--overwrite"])
    assert dirlock.holder_record()["command"] == "crfgan-convert --input_dir --size --overwrite"


@pytest.mark.slow
def test_second_train_on_the_same_run_directory_is_refused_and_the_first_is_unharmed(
        records_64, tmp_path):
    args = train_args(records_64, tmp_path, "--train_steps=100000")
    first = start_train(args)
    wait_for_line(first, r"^step 1/")
    t0 = time.time()
    rc, err = run_train(args, timeout=120)
    refused_after = time.time() - t0
    assert rc == 2, err
    assert f"--model_dir {str(tmp_path)!r} is being written by another process: pid " \
           f"{first.pid} on host {socket.gethostname()!r}" in err
    assert "resumed" not in err and "Traceback" not in err
    assert refused_after < 60  # the import of TensorFlow and a look at the records
    # the first goes on training, and stops as it would have
    lines = wait_for_line(first, r"^step \d+/", timeout=60)
    first.send_signal(signal.SIGTERM)
    _, rest = first.communicate(timeout=120)
    assert first.returncode == 143, rest
    step = int(re.search(r"stopped at step (\d+), checkpoint", rest).group(1))
    assert os.path.exists(tmp_path / "checkpoints" / f"ckpt-{step}.index")
    assert not os.path.exists(tmp_path / dirlock.LOCK_FILE), lines


@pytest.mark.slow
def test_stale_lock_of_this_host_is_taken_over_with_a_note(records_64, tmp_path):
    write_lock(tmp_path, host=socket.gethostname(), pid=dead_pid(), since="2026-01-01T00:00:00",
               command="crfgan-train (killed)")
    logs = []
    out = train_lib.train(tiny_config(tmp_path, os.path.join(records_64, "train-*.tfrecord"),
                                      train_steps=1, checkpoint_every=1), log=logs.append)
    assert out["step"] == 1
    assert any("took over the lock of `model_dir`" in m and "its process is gone" in m
               for m in logs)
    assert not os.path.exists(tmp_path / dirlock.LOCK_FILE)


def test_lock_from_another_host_is_only_broken_with_break_lock(records_64, tmp_path):
    write_lock(tmp_path, host="node-17", pid=4242, since="2026-01-01T00:00:00",
               command="crfgan-train --flagfile=configs/luna.flags")
    config = tiny_config(tmp_path, os.path.join(records_64, "train-*.tfrecord"), train_steps=1,
                         checkpoint_every=1)
    with pytest.raises(dirlock.LockedError, match=r"locked by pid 4242 on host 'node-17' .*"
                       r"rerun with `break_lock`"):
        train_lib.train(config)
    assert sorted(os.listdir(tmp_path)) == [dirlock.LOCK_FILE]  # nothing else written
    logs = []
    assert train_lib.train(config, log=logs.append, break_lock=True)["step"] == 1
    assert any("took over" in m and "node-17" in m and "(`break_lock`)" in m for m in logs)


@pytest.mark.parametrize("ours,takes", [
    ({"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "1"}, True),  # the job, requeued
    ({"SLURM_JOB_ID": "4242"}, False),  # the same run of the job: another task or step
    ({"SLURM_JOB_ID": "5151", "SLURM_RESTART_COUNT": "3"}, False),  # another job
    ({}, False)])  # not under Slurm
def test_a_requeued_slurm_job_takes_over_its_own_lock_from_a_failed_node(tmp_path, monkeypatch,
                                                                        ours, takes):
    """Slurm requeues a job after a node failure: the new run starts on another node and
    finds the lock its first run wrote there. Same job id, a higher restart count: that
    run is over (Slurm never runs one job twice), so the lock is taken over with a note;
    anything else from another host still needs --break_lock."""
    write_lock(tmp_path, host="node-17", pid=4242, since="2026-01-01T00:00:00",
               command="crfgan-train --flagfile", slurm_job="4242", slurm_restart=0)
    for name in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in ours.items():
        monkeypatch.setenv(name, value)
    notes = []
    lock = dirlock.DirLock(str(tmp_path), "`model_dir`", log=notes.append)
    if not takes:
        with pytest.raises(dirlock.LockedError, match="rerun with `break_lock`"):
            lock.acquire()
        return
    with lock:
        record = json.load(open(tmp_path / dirlock.LOCK_FILE))
        assert (record["slurm_job"], record["slurm_restart"]) == ("4242", 1)
    assert notes == [f"note: took over the lock of `model_dir` {tmp_path} from pid 4242 on host "
                     "'node-17' since 2026-01-01T00:00:00 (crfgan-train --flagfile) (Slurm "
                     "requeued job 4242: that run is over)"]


def test_convert_refuses_an_output_directory_in_use(tiny_archive, tmp_path, live_process):
    held_by(tmp_path, live_process, "crfgan-convert --dataset=luna16")
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-m", "data_prep.convert", "--dataset=luna16",
                          f"--input_dir={tiny_archive[0]}", f"--output_dir={tmp_path}",
                          "--size=64", "--workers=1"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert f"is being written by another process: pid {live_process.pid}" in res.stderr
    assert sorted(os.listdir(tmp_path)) == [dirlock.LOCK_FILE]
    live_process.kill()  # the holder is gone: the next conversion takes over and converts
    live_process.wait()
    logs = []
    summary = convert.run_conversion(convert.ConvertConfig(
        dataset="luna16", input_dir=tiny_archive[0], output_dir=str(tmp_path), size=64,
        num_shards=1, val_fraction=0.0, workers=1), log=logs.append)
    assert summary["train"] == 5 and any("took over the lock" in m for m in logs)
    assert not os.path.exists(tmp_path / dirlock.LOCK_FILE)


def test_make_2afc_refuses_an_output_directory_in_use(tmp_path, live_process):
    held_by(tmp_path, live_process, "crfgan-make-2afc")
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-m", "tools.make_2afc", "--real=unused",
                          "--model_a=unused", "--section2_pairs=0", f"--output_dir={tmp_path}"],
                         cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert f"--output_dir {str(tmp_path)!r} is being written by another process: pid " \
           f"{live_process.pid}" in res.stderr


def test_import_reference_never_replaces_a_run_in_progress(tmp_path, live_process):
    run = tmp_path / "run"
    held_by(run, live_process, "crfgan-train")
    ref = tmp_path / "ref"
    ref.mkdir()
    for name in ("G", "D", "E", "crf"):
        (ref / f"{name}_iter10.pth").write_bytes(b"")  # never read: refused before
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-m", "tools.import_reference", "--model=crfgan",
                          f"--checkpoint_dir={ref}", "--iteration=10", "--img_size=64",
                          f"--model_dir={run}", "--overwrite"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert f"is being written by another process: pid {live_process.pid}" in res.stderr
    assert sorted(os.listdir(run)) == [dirlock.LOCK_FILE]


def test_a_directory_the_lock_made_goes_again_when_nothing_was_written(tmp_path):
    """A command that fails after taking its lock (an import whose tensors do not fit, a
    bad flag found late) leaves no empty output directory behind; one that existed before,
    or that holds anything, stays."""
    made = tmp_path / "new" / "run"
    with dirlock.DirLock(str(made), "--model_dir", log=lambda m: None):
        assert (made / dirlock.LOCK_FILE).exists()
    assert not made.exists() and (tmp_path / "new").exists()  # only the lock's own directory
    with dirlock.DirLock(str(made), "--model_dir", log=lambda m: None):
        (made / "config.json").write_text("{}")
    assert os.listdir(made) == ["config.json"]
    existing = tmp_path / "existing"
    existing.mkdir()
    with dirlock.DirLock(str(existing), "--model_dir", log=lambda m: None):
        pass
    assert existing.is_dir() and not os.listdir(existing)
