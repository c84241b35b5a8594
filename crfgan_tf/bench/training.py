"""Speed and peak memory of full training iterations (all four phases), per configuration.

Each configuration runs in its own fresh process (crfgan_tf.bench.runner), so that one
configuration's allocations do not inflate the next one's peak. Synthetic data: the
input pipeline is not what is measured.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

from crfgan_tf.bench.runner import run_fresh
from crfgan_tf.utils import runtime


@dataclasses.dataclass
class ProfileRequest:
    model: str = "crfgan"
    img_size: int = 128
    batch_size: int = 2
    steps: int = 5
    warmup: int = 2
    precision: str = "float32"
    width: float = 1.0
    latent_dim: int = 1024
    jit_compile: bool = False
    lean_cpu_memory: bool = False  # runtime.lean_cpu_memory() in the child
    crf_sample: str = "fresh"  # TrainConfig.crf_sample (CRF-GAN)
    crf_encoder_slab: int = 0  # TrainConfig.crf_encoder_slab (CRF-GAN)
    embedding_factor: int = 0  # TrainConfig.embedding_factor (0: the size's default)
    remat: bool = False  # TrainConfig.remat
    adam: str = "pytorch"  # TrainConfig.adam
    live_at_peak: int = 0  # >0: one more step under the profiler (bench.allocations), top N


def measure(request: dict) -> dict:
    """Runs in the child process (a ProfileRequest as a dict): warm-up, then timed
    iterations."""
    import tensorflow as tf

    from crfgan_tf.core import intensity
    from crfgan_tf.data import pipeline
    from crfgan_tf.models import params
    from crfgan_tf.run import config as config_lib
    from crfgan_tf.run import factory
    from crfgan_tf.training import distribute

    after_import = runtime.peak_memory_bytes()  # nothing built yet: the framework's own RSS
    req = ProfileRequest(**request)
    factory.set_precision(req.precision)
    cfg = config_lib.step_config(req)
    model = factory.build_model(cfg)
    s, b = req.img_size, req.batch_size
    batch = pipeline.synthetic_batch(s, b, req.latent_dim, factor=cfg.embedding_factor)
    # the whole volume as the input stream hands it over: int16, as stored
    batch["volume"] = tf.constant(intensity.quantize(batch["volume"].numpy()))
    step = distribute.trace_step(model.train_step, req.jit_compile)
    gpu = bool(tf.config.list_physical_devices("GPU"))
    for _ in range(req.warmup):
        float(step(batch)["d_loss"])
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    times = []
    for _ in range(req.steps):
        t = time.perf_counter()
        float(step(batch)["d_loss"])  # the host read waits for the step to finish
        times.append(time.perf_counter() - t)
    device = (tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
              .get("device_name", "GPU") if gpu else f"CPU ({os.cpu_count()} cores)")
    median = statistics.median(times)
    peak = runtime.peak_memory_bytes()  # read before the profiled step and its profiler
    allocator_peak = None
    if req.live_at_peak:
        from crfgan_tf.bench import allocations

        allocator_peak = allocations.step_peak(lambda: float(step(batch)["d_loss"]),
                                               top=req.live_at_peak)
    return {"model": req.model, "img_size": s, "batch_size": b,
            "peak_bytes": peak,
            "peak_kind": "gpu_allocator_peak" if gpu else "process_max_rss",
            # CPU: the iteration's own memory, peak RSS less the RSS after the imports
            "rss_after_import_bytes": None if gpu else after_import,
            "working_bytes": None if gpu else peak - after_import,
            "iters_per_sec": round(1.0 / median, 4), "sec_per_iter": round(median, 4),
            "params": sum(params.trainable_count(m) for m in model.modules().values()),
            "device": device, "precision": req.precision, "width": req.width,
            "steps": req.steps, "warmup": req.warmup,
            "cpu_allocator": "lean" if req.lean_cpu_memory else "default",
            "crf_sample": req.crf_sample, "crf_encoder_slab": req.crf_encoder_slab,
            "embedding_factor": cfg.embedding_factor, "remat": req.remat, "adam": req.adam,
            **({"allocator_peak": allocator_peak} if req.live_at_peak else {})}


def profile(req: ProfileRequest, timeout: float = 3600) -> dict:
    """Measures one configuration in a fresh process; out-of-memory becomes a row with
    `"oom": true` (the paper's "-") instead of an exception."""
    env = {"CRFGAN_LEAN_CPU_MEMORY": "1" if req.lean_cpu_memory else "0"}
    if req.lean_cpu_memory:
        env.update(runtime.lean_start_environment())
    elif runtime.lean_cpu_memory_requested():  # set by this process's own lean mode
        env["TF_ONEDNN_USE_SYSTEM_ALLOCATOR"] = None
        if os.environ.get("GLIBC_TUNABLES") == runtime.LEAN_GLIBC_TUNABLE:
            env["GLIBC_TUNABLES"] = None
    child = run_fresh("crfgan_tf.bench.training:measure", dataclasses.asdict(req), env=env,
                      timeout=timeout)
    if child.value is not None:
        return child.value
    row = {"model": req.model, "img_size": req.img_size, "batch_size": req.batch_size,
           "precision": req.precision}
    if child.oom:
        return dict(row, oom=True, peak_bytes=None, iters_per_sec=None)
    raise RuntimeError(f"profiling {row} failed:\n{child.stderr}")


def comparison(rows: list) -> list:
    """'CRF-GAN / HA-GAN' memory and speed ratios per (size, batch) measured for both."""
    by_key = {(r["model"], r["img_size"], r["batch_size"]): r for r in rows if not r.get("oom")}
    lines = []
    for (model, size, batch), crf in sorted(by_key.items()):
        ha = by_key.get(("hagan", size, batch))
        if model != "crfgan" or ha is None:
            continue
        mem = crf["peak_bytes"] / ha["peak_bytes"]
        speed = crf["iters_per_sec"] / ha["iters_per_sec"]
        memory = (f"{100 * (1 - mem):.1f}% less memory" if mem <= 1
                  else f"{100 * (mem - 1):.1f}% MORE memory")
        pace = (f"runs {100 * (speed - 1):.1f}% faster" if speed >= 1
                else f"runs {100 * (1 - speed):.1f}% SLOWER")
        lines.append(f"{size}^3 batch {batch}: CRF-GAN uses {memory} ({mem:.3f}x HA-GAN's) and "
                     f"{pace} ({speed:.3f}x HA-GAN's iterations/s)")
    return lines


def plot(rows: list, path: str) -> str:
    """Peak memory against batch size, one line per (model, size); OOM rows as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    groups = sorted({(r["model"], r["img_size"]) for r in rows})
    for model, size in groups:
        pts = sorted((r["batch_size"], r["peak_bytes"]) for r in rows
                     if (r["model"], r["img_size"]) == (model, size) and not r.get("oom"))
        label = f"{'CRF-GAN' if model == 'crfgan' else 'HA-GAN'} {size}^3"
        if pts:
            ax.plot([p[0] for p in pts], [p[1] / 2**20 for p in pts], marker="o", label=label)
        colour = ax.get_lines()[-1].get_color() if pts else "red"
        ooms = [r["batch_size"] for r in rows
                if (r["model"], r["img_size"]) == (model, size) and r.get("oom")]
        if ooms:  # drawn at the top of the axis, in the model's colour
            ax.plot(ooms, [ax.get_ylim()[1]] * len(ooms), marker="x", linestyle="none",
                    markersize=9, color=colour, label=f"{label}: out of memory")
    ax.set_xticks(sorted({r["batch_size"] for r in rows}))
    ax.set_ylim(bottom=0)  # ratios read right only from zero
    kinds = {r.get("peak_kind", "") for r in rows if not r.get("oom")}
    ax.set_xlabel("batch size")
    ax.set_ylabel("peak memory (MiB)" + (" - process RSS" if kinds == {"process_max_rss"} else ""))
    ax.set_title(f"Training memory ({rows[0].get('device', '') if rows else ''})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
