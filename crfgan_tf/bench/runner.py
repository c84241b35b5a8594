"""One measurement in a fresh Python process, so that its peak memory is its own and one
configuration's allocations do not inflate the next one's; running out of memory is a
result ("out of memory"), not a crash of the benchmark.

  result = run_fresh("crfgan_tf.bench.training:measure", {...})

The child is `python -m crfgan_tf.bench.runner MODULE:FUNCTION JSON_ARGS`: it applies
runtime.configure() (CRFGAN_LEAN_CPU_MEMORY=1 in `env` asks for the lean CPU allocator),
calls FUNCTION(*args) and prints its JSON result as the last line of stdout.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
from typing import Optional

OOM_MARKERS = ("ResourceExhausted", "OOM", "bad_alloc", "MemoryError")


@dataclasses.dataclass
class ChildResult:
    """What a fresh process returned: its JSON `value`, or why it failed."""

    value: Optional[dict] = None
    oom: bool = False
    error: str = ""  # the child's last stderr line (or its exit code)
    stderr: str = ""  # the tail of its stderr

    @property
    def failure(self) -> Optional[str]:
        """None on success, "out of memory", or the child's last error line."""
        if self.value is not None:
            return None
        return "out of memory" if self.oom else self.error


def run_fresh(target: str, *args, env: Optional[dict] = None,
              timeout: Optional[float] = None) -> ChildResult:
    """Runs `target` ("module:function") on `args` (JSON-serialisable) in a fresh process.

    Args:
      env: environment variables set (or, with value None, removed) for the child.
      timeout: seconds before subprocess.TimeoutExpired.
    """
    return finish_fresh(start_fresh(target, *args, env=env), timeout=timeout)


def start_fresh(target: str, *args, env: Optional[dict] = None):
    """Starts run_fresh's child without waiting for it (finish_fresh collects it), so
    that a measurement can run beside it."""
    import subprocess

    child_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    return subprocess.Popen([sys.executable, "-m", "crfgan_tf.bench.runner", target,
                             json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env)


def finish_fresh(proc, timeout: Optional[float] = None) -> ChildResult:
    """Waits for a start_fresh child; its result, or why it failed."""
    import subprocess

    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode == 0:
        return ChildResult(value=json.loads(stdout.strip().splitlines()[-1]))
    lines = stderr.strip().splitlines()
    return ChildResult(oom=proc.returncode in (-9, 137) or any(m in stderr for m in OOM_MARKERS),
                       error=lines[-1][:300] if lines else f"exit code {proc.returncode}",
                       stderr=stderr[-3000:])


def _main(argv) -> None:
    from crfgan_tf.utils import runtime

    runtime.configure(load_tensorflow=False)
    module, function = argv[1].split(":")
    result = getattr(importlib.import_module(module), function)(*json.loads(argv[2]))
    print(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv)
