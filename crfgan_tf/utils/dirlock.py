"""One writer per output directory: the lock file that `train` (a run directory),
`import_reference`, `convert` and `make_2afc` hold in the directory they write while they
run.

The lock is a small JSON file, `LOCK_FILE`, put in place whole (a hard link that fails when
the file exists, or a rename over a stale one): the holder's host, pid, process start
time, start date and command (its flag names, not their values). A second writer is
refused with one line naming the holder. A lock whose holder is gone is taken over with a note: on the
same host, a pid that no longer runs (or now belongs to a process started later: the
pid was reused). A lock written on another host cannot be checked from here and is never
broken silently: `--break_lock` takes it over, for a holder known to be gone (a node
that crashed), and so does a later run of the same Slurm job (requeued: same job id, a
higher restart count). Deciding and taking over run under an flock of the directory, so two
starts that both find a stale lock do not both take it.

No TensorFlow here; the lock is released when the command ends, and a holder killed with
SIGKILL leaves it for the next start to take over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from typing import Callable, Optional

from crfgan_tf.utils import fileio

LOCK_FILE = ".crfgan.lock"


class LockedError(fileio.OutputError):
    """The directory is being written by another process (named in the message)."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def process_start_ticks(pid: int) -> Optional[int]:
    """The start time of process `pid` in clock ticks since boot (/proc), or None when
    there is no such process or no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name (field 2) may hold spaces and parentheses: split after it
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    return True


def holder_record() -> dict:
    """What this process writes into a lock it takes."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "start_ticks": process_start_ticks(os.getpid()),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": command_line(), **slurm_job()}


def slurm_job(environ=os.environ) -> dict:
    """{"slurm_job": id, "slurm_restart": n} inside a Slurm job, else {}: a job that Slurm
    requeued (after a node failure, a preemption or the batch script's requeue at the time
    limit) runs again under the same id with a higher SLURM_RESTART_COUNT, and Slurm never
    runs two instances of one job id, so its new start may take over its own old lock,
    written on another node (holder_state)."""
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return {}
    try:
        restart = int(environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restart = 0
    return {"slurm_job": job, "slurm_restart": restart}


def command_line() -> str:
    """This process's program and the names of its flags, without their values: a lock
    left behind by a killed process stays in a directory people share, and values are
    often paths whose folder names identify patients."""
    flags = [a.split("=", 1)[0] for a in sys.argv[1:] if a.startswith("-")]
    return " ".join([os.path.basename(sys.argv[0] or "python")] + flags)[:500]


def holder_state(holder: dict) -> str:
    """'self', 'alive', 'gone' (same host, the process ended or its pid was reused; or an
    unreadable lock file), 'requeued' (another host, an earlier run of this Slurm job:
    slurm_job), or 'unknown' (another host)."""
    if not holder:  # written atomically, so unreadable means damaged: nobody's lock
        return "gone"
    if holder.get("host") != socket.gethostname():
        ours = slurm_job()
        if ours and holder.get("slurm_job") == ours["slurm_job"] and isinstance(
                holder.get("slurm_restart"), int) and holder["slurm_restart"] < ours["slurm_restart"]:
            return "requeued"  # an earlier run of this Slurm job: it cannot still run
        return "unknown"
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return "gone"
    if pid == os.getpid() and holder.get("start_ticks") == process_start_ticks(pid):
        return "self"
    if not _pid_runs(pid):
        return "gone"
    ticks = holder.get("start_ticks")
    if ticks is not None and process_start_ticks(pid) not in (None, ticks):
        return "gone"  # the pid now names a process started after the holder
    return "alive"


def describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on host {holder.get('host')!r} since "
            f"{holder.get('since')} ({holder.get('command', '?')})")


def read_holder(directory: str) -> Optional[dict]:
    """The lock's record, {} for an unreadable lock file, None when there is none."""
    try:
        with open(os.path.join(directory, LOCK_FILE)) as f:
            record = json.load(f)
        return record if isinstance(record, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _directory_guard(directory: str):
    """An exclusive flock of the directory while a start decides about the lock."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock (some NFS mounts): taking over a
            pass         # stale lock is then unguarded; creating a new one is not
        yield
    finally:
        os.close(fd)  # releases the flock


class DirLock:
    """The lock of one output directory, for as long as a `with` block runs.

    Args:
      directory: the directory written (created if missing).
      flag: its flag, for messages (e.g. "`model_dir`").
      break_lock: take over a lock from another host (`--break_lock`).
      log: where notes go.

    Raises (on entering):
      LockedError: another process holds the lock (named), or a host that cannot be
        checked from here does and break_lock is off.
    """

    def __init__(self, directory: str, flag: str, break_lock: bool = False,
                 log: Callable[[str], None] = _log):
        self.directory, self.flag, self.break_lock, self.log = directory, flag, break_lock, log
        self.path = os.path.join(directory, LOCK_FILE)
        self.owned = False
        self.made = False

    def __enter__(self) -> "DirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.made = not os.path.exists(self.directory)  # removed again if left empty
        fileio.ensure_output_dir(self.directory, self.flag)
        record = json.dumps(holder_record(), indent=1)
        while True:  # again only when another start created the lock since we looked
            with _directory_guard(self.directory):
                holder = read_holder(self.directory)
                if holder is not None and not self._may_take(holder):
                    return  # this process holds it already (nested use)
                if self._write(record, replace=holder is not None):
                    break
        self.owned = True

    def _may_take(self, holder: dict) -> bool:
        """Whether an existing lock may be taken over (noted); False when this process
        holds it already.

        Raises:
          LockedError: its holder runs, or runs on a host that cannot be checked.
        """
        state = holder_state(holder)
        if state == "self":
            return False
        if state == "alive":
            raise LockedError(
                f"{self.flag} {self.directory!r} is being written by another process: "
                f"{describe(holder)}. Refusing to write there too; wait for it to end or "
                f"stop it (lock file {self.path})")
        if state == "unknown" and not self.break_lock:
            raise LockedError(
                f"{self.flag} {self.directory!r} is locked by {describe(holder)}, which "
                "cannot be checked from this host. If that process is gone (its node "
                f"crashed), rerun with `break_lock` (lock file {self.path})")
        why = ("`break_lock`" if state == "unknown" else
               f"Slurm requeued job {holder.get('slurm_job')}: that run is over"
               if state == "requeued" else
               "its process is gone" if holder else "the lock file is unreadable")
        self.log(f"note: took over the lock of {self.flag} {self.directory} from "
                 f"{describe(holder) if holder else 'an unknown holder'} ({why})")
        return True

    def _write(self, record: str, replace: bool) -> bool:
        """Puts the whole record in place: a new lock by a hard link, which fails when the
        file appeared meanwhile (False), a stale one by an atomic rename over it."""
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write(record)
                f.flush()
                os.fsync(f.fileno())
            if replace:
                os.replace(tmp, self.path)
                return True
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links: create it exclusively
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w") as f:
                    f.write(record)
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    def release(self) -> None:
        """Removes the lock if this process still holds it, and the directory too if the
        lock made it and nothing else was written there (a command that failed after
        taking its lock leaves no empty output directory)."""
        if not self.owned:
            return
        self.owned = False
        holder = read_holder(self.directory)
        if holder and holder.get("pid") == os.getpid() \
                and holder.get("host") == socket.gethostname():
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            if self.made:
                with contextlib.suppress(OSError):  # not empty, or gone: kept as it is
                    os.rmdir(self.directory)

