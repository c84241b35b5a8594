"""crfgan-tf: CRF-GAN for 3D chest CT synthesis in Keras 3 / TensorFlow.

Kept import-light on purpose: `crfgan_tf.phantom` and `crfgan_tf.preprocess` do not
import TensorFlow, so conversion workers start fast. Import submodules directly.
"""

import os

# oneDNN convolutions on CPU: at 128^3 a CRF-GAN training iteration takes 40 % less peak
# memory and runs 1.33x faster than with TensorFlow's default Eigen kernels, which expand
# every 3D convolution into a full patch matrix (docs/benchmarks.md). Must be set before
# TensorFlow is imported; an explicit TF_ENABLE_ONEDNN_OPTS=0 still wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def lean_cpu_memory(mmap_threshold: int = 256 * 1024) -> bool:
    """Returns freed CPU tensor memory to the system instead of keeping it in pools.

    TensorFlow's oneDNN CPU allocator keeps every block it ever allocated, and glibc's
    malloc raises its mmap threshold as large blocks are freed, so both hold on to the
    transient memory of every phase. This makes oneDNN allocate through malloc
    (TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1) and fixes glibc's mmap threshold at
    `mmap_threshold` bytes, so large tensors are mapped and unmapped. On the 2-core CPU of
    docs/benchmarks.md a 128^3 CRF-GAN iteration then peaks about 20 % lower and runs
    about 20 % slower (the pages are faulted in again every iteration). Results are
    unchanged. Call it before TensorFlow runs its first operation; importing crfgan_tf
    with CRFGAN_LEAN_CPU_MEMORY=1 in the environment does.

    Returns:
      Whether glibc's mallopt accepted the threshold (False off glibc).
    """
    os.environ["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] = "1"
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(mmap_threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def lean_cpu_memory_requested(environ=os.environ) -> bool:
    """Whether `environ` asks for lean_cpu_memory (CRFGAN_LEAN_CPU_MEMORY set, not 0)."""
    return environ.get("CRFGAN_LEAN_CPU_MEMORY", "0") not in ("", "0")


if lean_cpu_memory_requested():
    lean_cpu_memory()

__version__ = "0.1.0"
