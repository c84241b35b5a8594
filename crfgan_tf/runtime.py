"""What every entry point does to the process, explicitly: `configure()` (oneDNN kernels,
lean CPU memory on request, a quiet TensorFlow start-up) before TensorFlow loads, and
user errors reported in one line (`reports_user_errors`). Importing crfgan_tf changes
nothing in the process; library users who want these settings call `configure()`.

TensorFlow prints a dozen lines while it loads (oneDNN notices, "Could not find cuda
drivers", CPU instruction sets, `E0000 ... failed call to cuInit` on machines without a
GPU) that newcomers read as errors. `quiet_tensorflow()` loads it with those silenced:
its C++ log level is set to 3 and the lines written to stderr while it loads are dropped
when they are such start-up notices (anything else is passed through). A user who sets
TF_CPP_MIN_LOG_LEVEL or gives --verbosity / -v gets TensorFlow's own output unchanged.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
import tempfile
from typing import Callable

from crfgan_tf import fileio

_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IWE]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] "
    r"|To enable the following instructions:"
    r"|\s*$)")


def _verbosity_given(argv) -> bool:
    return any(a.split("=")[0] in ("--verbosity", "-v", "--v") for a in argv)


def user_wants_tensorflow_logs(environ=os.environ, argv=None) -> bool:
    """TF_CPP_MIN_LOG_LEVEL set, or --verbosity / -v on the command line."""
    return "TF_CPP_MIN_LOG_LEVEL" in environ or _verbosity_given(
        sys.argv[1:] if argv is None else argv)


def quiet_tensorflow(environ=os.environ, argv=None) -> bool:
    """Imports TensorFlow with its start-up notices silenced (see the module docstring).

    Returns:
      Whether anything was silenced (False when TensorFlow was already loaded or the user
      asked for its logs).
    """
    if "tensorflow" in sys.modules or user_wants_tensorflow_logs(environ, argv):
        return False
    environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # also the first operation's cuInit error
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            importlib.import_module("tensorflow")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if not _NOISE.match(line):
                    print(line, file=sys.stderr)
    return True


def lean_cpu_memory(mmap_threshold: int = 256 * 1024) -> bool:
    """Returns freed CPU tensor memory to the system instead of keeping it in pools.

    TensorFlow's oneDNN CPU allocator keeps every block it ever allocated, and glibc's
    malloc raises its mmap threshold as large blocks are freed, so both hold on to the
    transient memory of every phase. This makes oneDNN allocate through malloc
    (TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1) and fixes glibc's mmap threshold at
    `mmap_threshold` bytes, so large tensors are mapped and unmapped. On the 2-core CPU of
    docs/benchmarks.md a 128^3 CRF-GAN iteration then holds about 28 % less working memory
    and runs about 12 % slower (the pages are faulted in again every iteration; about 5 %
    with glibc's huge pages, LEAN_GLIBC_TUNABLE, which run_command adds). Results are
    unchanged. Call it before TensorFlow runs its first operation; `configure()` does when
    CRFGAN_LEAN_CPU_MEMORY=1 is in the environment.

    Returns:
      Whether glibc's mallopt accepted the threshold (False off glibc, or when
      GLIBC_TUNABLES sets one: fix_mmap_threshold).
    """
    os.environ["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] = "1"
    return fix_mmap_threshold(mmap_threshold)


# glibc's mmap threshold every command fixes (configure): blocks of 2 MiB or more are
# mapped and unmapped. glibc's default threshold is dynamic: each freed mapped block raises
# it (up to 32 MiB), after which blocks of that size come from its heap and stay there when
# freed. CRF-GAN 128^3 batch 2, float32: 8-15 % less working memory at the same speed
# (1-8 MiB measured alike, 2 MiB lowest; docs/benchmarks.md).
MMAP_THRESHOLD = 2 * 1024 * 1024


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD, environ=os.environ) -> bool:
    """Fixes glibc's mmap threshold at `threshold` bytes (mallopt M_MMAP_THRESHOLD), unless
    GLIBC_TUNABLES already sets glibc.malloc.mmap_threshold (the user's choice wins).

    Returns:
      Whether glibc accepted it (False off glibc, or when the user's setting was kept).
    """
    if _tunable_set("glibc.malloc.mmap_threshold", environ):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def ignore_file_size_signal() -> None:
    """A write past the process's file-size limit (RLIMIT_FSIZE, `ulimit -f`) sends
    SIGXFSZ, whose default action kills the process mid-write with no message; ignored,
    the write fails with EFBIG, which every command reports as a full disk (naming the
    file and what is still valid)."""
    import signal

    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def lean_cpu_memory_requested(environ=os.environ) -> bool:
    """Whether `environ` asks for lean_cpu_memory (CRFGAN_LEAN_CPU_MEMORY set, not 0)."""
    return environ.get("CRFGAN_LEAN_CPU_MEMORY", "0") not in ("", "0")


# glibc (>= 2.35) then advises the kernel to back its mmapped chunks with transparent huge
# pages: the blocks lean_cpu_memory() maps and unmaps every iteration are faulted in 2 MiB
# at a time instead of 4 KiB (CRF-GAN 128^3 batch 2 on CPU: the lean allocator's time cost
# falls from about 12 % to about 5 %, means of 3 runs, docs/benchmarks.md). glibc reads it only when a
# process starts; where THP is off, or off glibc, it changes nothing.
LEAN_GLIBC_TUNABLE = "glibc.malloc.hugetlb=1"


def lean_start_environment(environ=os.environ) -> dict:
    """The variables a process must start with for the lean allocator's huge pages:
    {"GLIBC_TUNABLES": the existing tunables plus LEAN_GLIBC_TUNABLE}, or {} when
    GLIBC_TUNABLES already sets glibc.malloc.hugetlb (to anything: the user's choice wins)."""
    if _tunable_set(LEAN_GLIBC_TUNABLE.split("=")[0], environ):
        return {}
    tunables = environ.get("GLIBC_TUNABLES", "")
    return {"GLIBC_TUNABLES": ":".join(t for t in (tunables, LEAN_GLIBC_TUNABLE) if t)}


def _tunable_set(key: str, environ=os.environ) -> bool:
    """Whether GLIBC_TUNABLES sets glibc tunable `key` (to anything: the user's choice)."""
    return any(t.split("=")[0] == key for t in environ.get("GLIBC_TUNABLES", "").split(":"))


def configure(load_tensorflow: bool = True, environ=os.environ, argv=None) -> None:
    """The process settings every entry point applies first, before TensorFlow loads:

    - oneDNN convolutions on CPU (TF_ENABLE_ONEDNN_OPTS=1 unless set): at 128^3 a CRF-GAN
      iteration takes 40 % less peak memory and runs 1.33x faster than with the default
      Eigen kernels, which expand every 3D convolution into a full patch matrix
      (docs/benchmarks.md); an explicit TF_ENABLE_ONEDNN_OPTS=0 still wins;
    - a file-size limit (ulimit -f) makes writes fail with an error naming the file
      instead of killing the process (ignore_file_size_signal);
    - lean_cpu_memory() when CRFGAN_LEAN_CPU_MEMORY=1, else glibc's mmap threshold fixed at
      MMAP_THRESHOLD (fix_mmap_threshold);
    - with load_tensorflow, TensorFlow loaded now with its start-up notices silenced
      (quiet_tensorflow); entry points that may not need it (--dry_run) call
      quiet_tensorflow() themselves when they do.
    """
    environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    ignore_file_size_signal()
    if lean_cpu_memory_requested(environ):
        lean_cpu_memory()
    else:
        fix_mmap_threshold(environ=environ)
    if load_tensorflow:
        quiet_tensorflow(environ, argv)


def peak_memory_bytes() -> int:
    """Peak accelerator memory when there is a GPU, else this process's peak RSS."""
    import resource

    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run_command(main: Callable, load_tensorflow: bool = True) -> None:
    """What every command's run() does: --help answered from the command's own flags
    (crfgan_tf.helptext), else configure(), then absl's app.run(main) (flags parsed,
    exit status from main). With CRFGAN_LEAN_CPU_MEMORY=1 the command first starts itself
    again (same process id, same arguments) with lean_start_environment() added.
    `load_tensorflow=False` for commands that may finish without TensorFlow (--dry_run,
    flag errors, conversion workers' parent)."""
    from absl import app

    from crfgan_tf import helptext

    if helptext.wants_help(sys.argv):
        helptext.print_help_and_exit(sys.modules[main.__module__])
    start_env = lean_start_environment() if lean_cpu_memory_requested() else {}
    if start_env:  # glibc reads its tunables at start: the same command again, with them
        os.execve(sys.executable, sys.orig_argv, {**os.environ, **start_env})
    configure(load_tensorflow=load_tensorflow)
    app.run(main)


def _tensorflow_file_errors() -> tuple:
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return ()
    return (tf.errors.PermissionDeniedError, tf.errors.FailedPreconditionError,
            tf.errors.AlreadyExistsError)


def reports_user_errors(main: Callable) -> Callable:
    """Wraps an absl `main`: a file-system error on a path the user gave (an output under
    a regular file, a read-only directory, a full disk: fileio.DiskFullError, or any
    error whose cause is a full disk) is printed as one line and exits with status 2;
    anything else keeps its traceback (a bug). Python-side INFO logging
    (TensorFlow's "Assets written to ...") is off unless --verbosity is given."""

    @functools.wraps(main)
    def wrapped(argv):
        if not _verbosity_given(sys.argv[1:]):  # absl has removed the flags from argv
            from absl import logging  # TensorFlow's INFO lines drown the progress lines

            logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except fileio.DiskFullError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            if not err.filename and err.errno not in fileio.DISK_FULL_ERRNOS:
                raise
            print(f"error: {fileio.describe_os_error(err)}", file=sys.stderr)
            return 2
        except _tensorflow_file_errors() as err:
            print(f"error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
            return 2
        except Exception as err:  # noqa: BLE001 - only a full disk is the user's to fix
            reason = fileio.disk_full_reason(err)
            if reason is None:
                raise
            print(f"error: {reason}: {str(err).strip().splitlines()[-1][:300]}", file=sys.stderr)
            return 2

    return wrapped
