"""One progress reporter for every long loop (training steps, scans, samples, features):

  <what> <done>/<total> [=====>..............] 1.23 <unit>/s ETA 00:04:10 | <details>
"""

from __future__ import annotations

import math
import time
from typing import Callable


class Progress:
    """Reports how far a loop of `total` items has come, its rate since the start (or since
    `start`, the items already done when this process began) and the time left.

    Args:
      total: items in the whole loop.
      log: where lines go.
      what: the line's first word ("step", "convert:", ...).
      unit: the items' name in the rate ("it", "scans", "volumes").
      start: items done before this process started (a resumed run).
      clock: seconds (time.time; tests pass their own).
    """

    def __init__(self, total: int, log: Callable[[str], None], what: str = "", unit: str = "it",
                 start: int = 0, clock: Callable[[], float] = time.time):
        self.total, self.log, self.what, self.unit, self.start = total, log, what, unit, start
        self.clock = clock
        self.t0 = clock()
        self.done = start  # callers that count as they go keep it here

    def rate(self, done: int) -> float:
        """Items per second since the start."""
        return (done - self.start) / max(self.clock() - self.t0, 1e-9)

    def line(self, done: int, details: str = "") -> str:
        rate = self.rate(done)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        frac = min(done / max(self.total, 1), 1.0)
        bar = "=" * int(20 * frac) + ">" + "." * (20 - int(20 * frac))
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        head = f"{self.what} " if self.what else ""
        tail = f" | {details}" if details else ""
        return f"{head}{done}/{self.total} [{bar}] {rate:.2f} {self.unit}/s ETA {eta_s}{tail}"

    def report(self, done: int, details: str = "") -> float:
        """Logs one line; returns the rate."""
        self.log(self.line(done, details))
        return self.rate(done)
