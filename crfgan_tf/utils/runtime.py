"""What every entry point does to the process, explicitly: `configure()` (oneDNN kernels,
lean CPU memory on request, a quiet TensorFlow start-up) before TensorFlow loads
(commands: crfgan_tf.cli.common.run_command). Importing crfgan_tf changes nothing in the
process; library users who want these settings call `configure()`.

TensorFlow prints a dozen lines while it loads (oneDNN notices, "Could not find cuda
drivers", CPU instruction sets, `E0000 ... failed call to cuInit` on machines without a
GPU) that newcomers read as errors. `quiet_tensorflow()` loads it with those silenced:
its C++ log level is set to 3 and the lines written to stderr while it loads are dropped
when they are such start-up notices (anything else is passed through). A user who sets
TF_CPP_MIN_LOG_LEVEL or gives `verbosity` / -v gets TensorFlow's own output unchanged.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile


_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IWE]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] "
    r"|To enable the following instructions:"
    r"|\s*$)")


def verbosity_given(argv) -> bool:
    return any(a.split("=")[0] in ("--verbosity", "-v", "--v") for a in argv)


def user_wants_tensorflow_logs(environ=os.environ, argv=None) -> bool:
    """TF_CPP_MIN_LOG_LEVEL set, or `verbosity` / -v on the command line."""
    return "TF_CPP_MIN_LOG_LEVEL" in environ or verbosity_given(
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
    `mmap_threshold` bytes, so large tensors are mapped and unmapped: less working memory
    for more time (the pages are faulted in again every iteration; less so with glibc's
    huge pages, LEAN_GLIBC_TUNABLE, which run_command adds; the figures are in
    docs/benchmarks.md, "Where the working memory goes"). Results are unchanged. Call it before TensorFlow runs its first operation; `configure()` does when
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
# freed. Less working memory at the same speed; 2 MiB was the lowest of the thresholds
# measured (docs/benchmarks/2026-12-02-three-cuts-against-reference.md).
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
# at a time instead of 4 KiB, which cuts most of the lean allocator's time cost
# (docs/benchmarks/2026-12-02-lean-allocator-huge-pages.md). glibc reads it only when a
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
      (quiet_tensorflow); entry points that may not need it (`dry_run`) call
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
