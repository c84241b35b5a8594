"""Stopping a training run on a signal without losing its work (no TensorFlow here).

Schedulers stop jobs with a signal before they kill them: Slurm sends SIGTERM (and, with
`#SBATCH --signal=USR1@120`, SIGUSR1 two minutes before the end of the time limit), a
terminal sends SIGINT on Ctrl-C, cloud spot VMs turn their preemption notice into
SIGTERM. While `StopOnSignal` is active (train_lib's step loop), the first of
`--save_on_signals` is remembered and the step in progress finishes; the loop then
writes a checkpoint at that step and ends with `Interrupted`, whose exit status is
128 + the signal's number (143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1: what a
shell and Slurm report for a job ended by that signal), or 0 with `exit_zero_on_signal`.
The first signal also restores the signals' default action, so a second one ends the
process at once: a save it cuts short leaves only `ckpt-N_temp` files, which the next
start removes; the previous checkpoint is never touched.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Callable, Optional, Sequence

DEFAULT_SIGNALS = "SIGTERM,SIGINT,SIGUSR1"
_UNCATCHABLE = {"SIGKILL", "SIGSTOP"}


def parse_signals(text: str, flag: str = "`save_on_signals`") -> tuple:
    """Signal numbers of a comma-separated list of names ('SIGTERM' or 'TERM');
    '' or 'none' gives ().

    Raises:
      ValueError: an unknown or uncatchable signal, naming `flag`.
    """
    if text.strip().lower() in ("", "none"):
        return ()
    out = []
    for raw in text.split(","):
        name = raw.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        if name in _UNCATCHABLE:
            raise ValueError(f"{flag}: {name} cannot be caught by any process")
        sig = signal.Signals.__members__.get(name)
        if sig is None:
            raise ValueError(f"{flag}: unknown signal {raw.strip()!r}; e.g. {DEFAULT_SIGNALS}")
        out.append(int(sig))
    return tuple(dict.fromkeys(out))


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_status(signum: int, exit_zero: bool = False) -> int:
    """The exit status of a run stopped by `signum`: 128 + signum (as for a process the
    signal ended: schedulers read it as preempted/cancelled), or 0 with exit_zero."""
    return 0 if exit_zero else 128 + int(signum)


class Interrupted(Exception):
    """Training stopped on a signal after saving; `signum`, `step` and `checkpoint` say
    where, and the message how to resume."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[str]):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        saved = f"checkpoint {checkpoint}" if checkpoint else "no new checkpoint (no step ran)"
        super().__init__(f"{signal_name(signum)}: stopped at step {step}, {saved}; run the "
                         "same command again to resume from it")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class StopOnSignal:
    """Context manager: the first of `signals` sets `signum` (the loop checks it between
    steps) and restores every one of them to its default action; leaving restores the
    handlers found on entry. Outside the main thread (where Python cannot install
    handlers) it does nothing.

    Args:
      signals: signal numbers (parse_signals); () turns it off.
      log: where the line saying that a signal came goes.
    """

    def __init__(self, signals: Sequence[int], log: Callable[[str], None] = _log):
        self.signals, self.log = tuple(signals), log
        self.signum: Optional[int] = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the default action is back: not reached normally
            return
        self.signum = signum
        for sig in self.signals:
            signal.signal(sig, signal.SIG_DFL)  # a second signal ends the process at once
        self.log(f"train: {signal_name(signum)} received; finishing this step, then saving a "
                 "checkpoint (a second signal stops at once without saving)")
