"""What TensorFlow's allocator holds at a training step's peak, measured rather than planned.

One step runs under TensorFlow's profiler, which records every allocation and free of the
device's pooled allocator (on CPU oneDNN's "mklcpu" pool, which takes every tensor of
256 KiB or more; on a GPU "GPU_0_bfc") with the op that made the tensor, its shape and
dtype, and the bytes in use after it. Replaying those events in time order gives the
step's peak of bytes in use, the op running then, and the tensors made during the step
that are alive at that moment, largest first.

crfgan_tf.training.memory_plan predicts the same from the traced graph replayed in program order;
this is what the executor really did, in whatever order it ran the ops (the two differ
where the executor runs an op earlier than program order puts it; an example in
docs/benchmarks/2026-12-03-where-a-128-step-holds-its-memory.md).
`crfgan-profile-memory --live_at_peak=N` reports it per configuration.
"""

from __future__ import annotations

import glob
import os
import tempfile
from typing import Callable, List, Optional

ALLOCATE, FREE = "MemoryAllocation", "MemoryDeallocation"


def record(step: Callable[[], object], logdir: str) -> str:
    """Runs `step()` once under TensorFlow's profiler (host events, allocator events
    included) writing to `logdir`; returns the path of the XSpace file it wrote."""
    import tensorflow as tf

    options = tf.profiler.experimental.ProfilerOptions(
        host_tracer_level=2, python_tracer_level=0, device_tracer_level=0)
    tf.profiler.experimental.start(logdir, options=options)
    try:
        step()
    finally:
        tf.profiler.experimental.stop()
    paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
    if not paths:
        raise RuntimeError(f"TensorFlow's profiler wrote no .xplane.pb under {logdir}")
    return paths[-1]


def events(xspace) -> List[dict]:
    """The allocator events of an XSpace (a parsed proto or the path of a .xplane.pb), in
    time order: {"kind": ALLOCATE or FREE, "time_ps", and the event's stats by name
    (allocator_name, addr, requested_bytes, allocation_bytes, bytes_allocated = in use
    after the event, tf_op, shape, data_type, ...)}."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    if isinstance(xspace, (str, os.PathLike)):
        with open(xspace, "rb") as f:
            xspace = xplane_pb2.XSpace.FromString(f.read())
    out = []
    for plane in xspace.planes:
        names, stats = plane.event_metadata, plane.stat_metadata
        for line in plane.lines:
            for event in line.events:
                kind = names[event.metadata_id].name
                if kind not in (ALLOCATE, FREE):
                    continue
                row = {"kind": kind, "time_ps": line.timestamp_ns * 1000 + event.offset_ps}
                for stat in event.stats:
                    row[stats[stat.metadata_id].name] = _value(stat, stats)
                out.append(row)
    out.sort(key=lambda r: r["time_ps"])
    return out


def _value(stat, stats):
    which = stat.WhichOneof("value")
    if which == "ref_value":
        return stats[stat.ref_value].name
    if which == "bytes_value":
        return stat.bytes_value.decode(errors="replace")
    return getattr(stat, which) if which else None


def peak(rows: List[dict], allocator: Optional[str] = None, top: int = 10) -> Optional[dict]:
    """The peak of bytes in use over the allocator events `rows` (events()) of one
    allocator (`allocator`, or the one whose in-use maximum is largest).

    Returns None when there are no events, else:
      allocator; peak_bytes (in use at the peak); before_bytes (in use before the first
      event: what the step found allocated, weights and optimizer slots among it);
      op_at_peak (the op whose allocation made the peak); live_bytes and live_count (the
      tensors allocated during the step and still alive at the peak, in the allocator's
      rounded sizes: peak_bytes = before_bytes + live_bytes unless the step freed some of
      what it found); live (the `top` largest of them: op, shape, dtype, bytes).
    """
    by_allocator = {}
    for r in rows:
        by_allocator.setdefault(r.get("allocator_name"), []).append(r)
    if not by_allocator:
        return None
    if allocator is None:
        allocator = max(by_allocator, key=lambda a: max(r.get("bytes_allocated", 0)
                                                        for r in by_allocator[a]))
    rows = by_allocator.get(allocator, [])
    if not rows:
        return None
    first = rows[0]
    sign = 1 if first["kind"] == ALLOCATE else -1
    before = first.get("bytes_allocated", 0) - sign * first.get("allocation_bytes", 0)
    top_index = max(range(len(rows)), key=lambda i: rows[i].get("bytes_allocated", 0))
    live = {}
    for r in rows[:top_index + 1]:
        if r["kind"] == ALLOCATE:
            live[r.get("addr")] = r
        else:
            live.pop(r.get("addr"), None)
    tensors = sorted(live.values(), key=lambda r: -r.get("allocation_bytes", 0))
    return {"allocator": allocator,
            "peak_bytes": rows[top_index].get("bytes_allocated", 0),
            "before_bytes": before,
            "op_at_peak": rows[top_index].get("tf_op") or "",
            "live_bytes": sum(r.get("allocation_bytes", 0) for r in tensors),
            "live_count": len(tensors),
            "live": [{"op": r.get("tf_op") or "", "shape": r.get("shape") or "",
                      "dtype": _dtype_name(r.get("data_type")),
                      "bytes": r.get("allocation_bytes", 0)} for r in tensors[:top]]}


def _dtype_name(code) -> str:
    """A TensorFlow DataType enum value (the events' data_type) as its name."""
    import tensorflow as tf

    try:
        return tf.dtypes.as_dtype(int(code)).name if code else ""
    except (TypeError, ValueError):
        return str(code)


def step_peak(step: Callable[[], object], top: int = 10) -> Optional[dict]:
    """Runs `step()` once under the profiler and returns peak() of its allocator events
    (None when the allocator recorded none, e.g. a step that allocates nothing pooled)."""
    with tempfile.TemporaryDirectory(prefix="crfgan_alloc_") as logdir:
        return peak(events(record(step, logdir)), top=top)


def describe(result: dict) -> List[str]:
    """Report lines for peak()'s result."""
    mib = lambda b: b / 2**20
    lines = [f"allocator peak ({result['allocator']}): {mib(result['peak_bytes']):,.0f} MiB in "
             f"use at {result['op_at_peak'] or '?'}: {mib(result['before_bytes']):,.0f} MiB "
             f"held before the step + {mib(result['live_bytes']):,.0f} MiB in "
             f"{result['live_count']} tensors made in the step, the largest:"]
    for t in result["live"]:
        lines.append(f"  {mib(t['bytes']):8.1f} MiB  {t['op']}  {t['shape']} {t['dtype']}")
    return lines
