"""Small helpers shared by the conversion, training, export and sampling code."""

from __future__ import annotations

import contextlib
import os

class OutputError(ValueError):
    """An output path that cannot be written; the message names it and says why."""


def describe_os_error(err: OSError, known_path: str = "") -> str:
    """'PATH: reason' of an OSError, in words a user can act on (the path left out when it
    is `known_path`, already named by the caller)."""
    path = err.filename if err.filename and err.filename != known_path else ""
    if isinstance(err, (NotADirectoryError, FileExistsError)):
        reason = "a file is in the way (a directory is needed there)"
    elif isinstance(err, PermissionError):
        reason = "permission denied (read-only?)"
    else:
        reason = err.strerror or str(err)
    return f"{path}: {reason}" if path else reason


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


def atomic_write(path: str, text: str) -> None:
    """Writes `text` to `path` atomically (see atomic_output)."""
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` atomically (see atomic_output)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
