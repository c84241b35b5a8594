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
from typing import Optional


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
    """Imports TensorFlow with its start-up notices silenced (see the module docstring), or
    as it is when the user asked for its logs.

    Returns:
      Whether anything was silenced (False when TensorFlow was already loaded or the user
      asked for its logs).
    """
    if "tensorflow" in sys.modules:
        return False
    if user_wants_tensorflow_logs(environ, argv):
        importlib.import_module("tensorflow")
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

    - GPU memory growth (TF_FORCE_GPU_ALLOW_GROWTH=true unless set): TensorFlow takes GPU
      memory as it needs it instead of the whole card at its first operation, so
      nvidia-smi shows what a run uses and a card can be shared; commands turn it off with
      --nogpu_memory_growth (cli.common), an explicit TF_FORCE_GPU_ALLOW_GROWTH=false too;
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
    environ.setdefault(GPU_MEMORY_GROWTH_VARIABLE, "true")
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


# TensorFlow's own switch, read when it creates its GPU devices (the first operation):
# "true" grows the allocator's region as tensors need it instead of reserving nearly all
# of each card up front.
GPU_MEMORY_GROWTH_VARIABLE = "TF_FORCE_GPU_ALLOW_GROWTH"

# What the pinned TensorFlow (2.21) was built against and needs on a GPU machine
# (tf.sysconfig.get_build_info(); the `and-cuda` extra's pins); docs/installation.md
# states them, and a test compares them with the installed TensorFlow.
CUDA_VERSION = "12.5"
CUDNN_MAJOR = "9"
MIN_DRIVER = "525.60.13"  # CUDA 12 minor-version compatibility (CUDA 12.5's own: 555.42.02)
NVIDIA_DRIVER_FILE = "/proc/driver/nvidia/version"


def nvidia_driver_present(environ=os.environ) -> bool:
    """Whether this machine has an NVIDIA driver: its kernel module's version file, or
    nvidia-smi on PATH."""
    import shutil

    return os.path.exists(NVIDIA_DRIVER_FILE) or shutil.which(
        "nvidia-smi", path=environ.get("PATH")) is not None


def unseen_gpu_warning(environ=os.environ) -> Optional[str]:
    """One warning line when an NVIDIA driver is present but TensorFlow sees no GPU (the
    run would go on, on the CPU, without a word), naming the likely cause; None when
    TensorFlow sees a GPU, when there is no driver, or when CUDA_VISIBLE_DEVICES hides the
    GPUs on purpose (empty or -1). Lists the physical devices: TensorFlow must be loaded,
    and CUDA_VISIBLE_DEVICES final."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return None
    if not nvidia_driver_present(environ):
        return None
    import importlib.util

    quiet_tensorflow(environ)
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return None
    if not tf.test.is_built_with_cuda():
        cause = "this TensorFlow is a CPU-only build"
    elif importlib.util.find_spec("nvidia") is None or importlib.util.find_spec(
            "nvidia.cudnn") is None:
        cause = (f"the CUDA {CUDA_VERSION} and cuDNN {CUDNN_MAJOR} libraries TensorFlow loads "
                 "are not installed in this environment (`make install-gpu`)")
    else:
        cause = (f"the CUDA libraries are installed, so the driver is likely older than CUDA "
                 f"{CUDA_VERSION} needs ({MIN_DRIVER} or later; `nvidia-smi` shows it), or the "
                 "GPU is in use by a process that holds it exclusively")
    return (f"warning: an NVIDIA driver is present but TensorFlow sees no GPU, so this runs "
            f"on the CPU: {cause}; docs/installation.md#gpus")


def device_memory(environ=os.environ) -> tuple:
    """(description, bytes) of the memory the first device TensorFlow uses has: a GPU's
    total (nvidia-smi; None when it cannot be read) or, without a GPU, what this process
    may use of the CPU's memory beyond what it held when the command started
    (note_baseline_memory): the smallest of the physical RAM, the cgroup's memory.max and
    the address-space limit (`ulimit -v`), less that baseline."""
    import resource
    import subprocess

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total",
                                  "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=20, check=True)
            total = int(float(out.stdout.split()[0]) * 2 ** 20)
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return f"GPU:0 ({name})", None
        return f"GPU:0 ({name}, {total / 2 ** 30:.1f} GiB)", total
    limits = {"RAM": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}
    try:
        text = open("/sys/fs/cgroup/memory.max").read().strip()
        if text.isdigit():
            limits["cgroup memory.max"] = int(text)
    except OSError:
        pass
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft != resource.RLIM_INFINITY:
        limits["address-space limit"] = soft
    which = min(limits, key=limits.get)
    free = limits[which] - _BASELINE.get("address-space" if which == "address-space limit"
                                         else "resident", 0)
    return f"CPU ({which} {limits[which] / 2 ** 30:.1f} GiB)", free


_BASELINE: dict = {}


def note_baseline_memory() -> None:
    """Remembers this process's address space and resident memory now (after TensorFlow
    loaded, before any work): device_memory() subtracts them from a CPU's limit, as the
    memory planner's working memory leaves them out."""
    try:
        status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
        _BASELINE["address-space"] = int(status["VmSize"].split()[0]) * 1024
        _BASELINE["resident"] = int(status["VmRSS"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass


# Fault injection for the tests of the out-of-memory path (tests/cli/test_train.py): a
# comma-separated list of phases ("training step", "in-training evaluation", "sampling")
# in which a real TensorFlow allocation of 4 TiB is made, so that the
# ResourceExhaustedError a full device raises goes through the path a real one takes.
# Unset (always, outside tests), it does nothing.
FAULT_OOM_VARIABLE = "CRFGAN_FAULT_OOM"


def inject_out_of_memory(phase: str, environ=os.environ) -> None:
    """Allocates 4 TiB when `phase` is listed in CRFGAN_FAULT_OOM (see above)."""
    if phase in environ.get(FAULT_OOM_VARIABLE, "").split(","):
        import tensorflow as tf

        tf.zeros([2 ** 40], tf.float32)  # raises ResourceExhaustedError
