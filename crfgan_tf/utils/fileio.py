"""Small helpers shared by the conversion, training, export and sampling code."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from typing import Optional

# A write that failed for want of space: a full file system, a file-size limit
# (ulimit -f, RLIMIT_FSIZE), a quota. TensorFlow's file system reports them with the
# same strerror text inside its own error types (ResourceExhausted, OutOfRange).
DISK_FULL_ERRNOS = {errno.ENOSPC: "no space left on the device",
                    errno.EFBIG: "file too large for the file-size limit (ulimit -f)",
                    errno.EDQUOT: "disk quota exceeded"}
_DISK_FULL_TEXT = {os.strerror(e): words for e, words in DISK_FULL_ERRNOS.items()}


class OutputError(ValueError):
    """An output path that cannot be written; the message names it and says why."""


def describe_os_error(err: OSError, known_path: str = "") -> str:
    """'PATH: reason' of an OSError, in words a user can act on (the path left out when it
    is `known_path`, already named by the caller)."""
    path = err.filename if err.filename and err.filename != known_path else ""
    if err.errno in DISK_FULL_ERRNOS:
        reason = DISK_FULL_ERRNOS[err.errno]
    elif isinstance(err, (NotADirectoryError, FileExistsError)):
        reason = "a file is in the way (a directory is needed there)"
    elif isinstance(err, PermissionError):
        reason = "permission denied (read-only?)"
    else:
        reason = err.strerror or str(err)
    return f"{path}: {reason}" if path else reason


class DiskFullError(RuntimeError):
    """A write failed for want of space; the message names the file, the space it needed,
    what is still valid and how to go on."""


def disk_full_reason(err: BaseException) -> Optional[str]:
    """Why `err` is a write that failed for want of space, in words, or None when it is
    not one (an OSError's errno, or its strerror text inside TensorFlow's errors)."""
    if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
        return DISK_FULL_ERRNOS[err.errno]
    text = str(err)
    for strerror, words in _DISK_FULL_TEXT.items():
        if strerror in text:
            return words
    return None


def mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:,.1f} MiB"


def disk_full_error(path: str, reason: str, needed_bytes: Optional[int],
                    intact: str, resume: str) -> DiskFullError:
    """The one-line error of a write that found no space.

    Args:
      path: the file (or checkpoint prefix) that could not be written.
      reason: disk_full_reason's words.
      needed_bytes: about how much the write needed (None: unknown).
      intact: what is still valid, e.g. "the previous checkpoint ckpt-2 is intact".
      resume: what to do after freeing space.
    """
    try:
        free = f"{mib(shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free)} free there"
    except OSError:
        free = ""
    if needed_bytes:
        free = f"it needs about {mib(needed_bytes)}" + (f", {free}" if free else "")
    return DiskFullError(f"cannot write {path}: {reason}" + (f" ({free})" if free else "")
                         + f". {intact}; {resume}")


def ensure_output_dir(path: str, flag: str) -> str:
    """Creates directory `path` (and its parents) and checks that a file can be written
    in it, so that a run fails before any work rather than when it first saves.

    Raises:
      OutputError: naming `flag`, the path and the reason.
    """
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise OutputError(f"{flag}: cannot write {path!r}: "
                          f"{describe_os_error(err, path)}") from None
    return path


def ensure_output_file(path: str, flag: str) -> str:
    """ensure_output_dir for the directory a file `path` goes in."""
    ensure_output_dir(os.path.dirname(os.path.abspath(path)), flag)
    if os.path.isdir(path):
        raise OutputError(f"{flag}: cannot write {path!r}: it is a directory")
    return path


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = ""):
    """Yields a temporary path beside `path` for the caller to write; on success the file
    is fsynced and renamed over `path`, on error removed: readers never see a half-written
    file, a killed writer leaves the old file intact. `suffix` keeps the extension that
    writers such as np.savez and matplotlib go by."""
    tmp = f"{path}.tmp-{os.getpid()}{suffix}"
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sha256(path: str) -> str:
    """The hex sha256 of a file's content, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str, text: str) -> None:
    """Writes `text` to `path` atomically (see atomic_output)."""
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` atomically (see atomic_output)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
