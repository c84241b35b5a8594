"""The device benchmark (crfgan-bench-device): the figures a GPU user asks for first,
each beside the memory planner's prediction, in one run of a few minutes.

  training   CRF-GAN and HA-GAN iterations: it/s and peak memory (the GPU allocator's
             peak on a GPU, peak RSS and working memory on CPU), per (size, batch,
             precision, XLA) configuration, each in a fresh process (bench.training)
  generate   seconds and peak memory of generating one volume from an export (slab by
             slab), per size (bench.pipeline.generate_memory)
  planned    crfgan_tf.training.memory_plan's prediction for each training row: gpu_bytes less
             the CUDA reserve on a GPU (what the allocator's peak should be), working_bytes
             on CPU; traced in one CPU-only process that runs beside the measurements

The default plan (GPU_CONFIGS and 256^3/512^3 generation) is sized to take about 8 minutes
on one GPU: five fresh training processes (each: start-up, tracing, 2 warm-up and 5 timed
iterations) and two exports. That estimate is not yet checked on a GPU.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import tempfile

from crfgan_tf.bench import training

# (model, img_size, batch_size, precision, jit_compile): the default plan of a GPU run
GPU_CONFIGS = (
    ("crfgan", 256, 2, "mixed_float16", False),
    ("hagan", 256, 2, "mixed_float16", False),
    ("crfgan", 256, 2, "mixed_float16", True),
    ("crfgan", 512, 1, "mixed_float16", False),
    ("hagan", 512, 1, "mixed_float16", False),
)


def child_plans(requests: list) -> list:
    """In a fresh CPU-only process: memory_plan.plan of each PlanRequest (as dicts)."""
    from crfgan_tf.training import memory_plan

    return [memory_plan.plan(memory_plan.PlanRequest(**r)) for r in requests]


def run(configs=GPU_CONFIGS, generate_sizes=(256, 512), width: float = 1.0,
        latent_dim: int = 1024, steps: int = 5, warmup: int = 2, log=print) -> dict:
    """Measures every training configuration and generation size; returns
    {"device", "host_cpus", "training": [rows], "generate": [rows]}."""
    from crfgan_tf.bench import pipeline
    from crfgan_tf.bench.runner import finish_fresh, start_fresh
    from crfgan_tf.training import memory_plan

    requests = [dataclasses.asdict(memory_plan.PlanRequest(
        model=m, img_size=s, batch_size=b, precision=p, width=width, latent_dim=latent_dim))
        for m, s, b, p, _ in configs]
    planner = start_fresh("crfgan_tf.bench.device:child_plans", requests,
                          env={"CUDA_VISIBLE_DEVICES": "-1"})  # tracing needs no GPU
    rows = []
    for model, size, batch, precision, xla in configs:
        log(f"training {model} {size}^3 batch {batch} {precision}{' XLA' if xla else ''} ...")
        row = training.profile(training.ProfileRequest(
            model=model, img_size=size, batch_size=batch, steps=steps, warmup=warmup,
            precision=precision, width=width, latent_dim=latent_dim, jit_compile=xla))
        row["jit_compile"] = xla
        row["measured_bytes"] = (row.get("working_bytes")
                                 if row.get("peak_kind") == "process_max_rss"
                                 else row.get("peak_bytes"))
        log("  " + describe_training(row))
        rows.append(row)
    generated = []
    for size in generate_sizes:
        log(f"generating one {size}^3 volume ...")
        with tempfile.TemporaryDirectory(prefix="crfgan_benchdev_") as work:
            for g in pipeline.generate_memory(size, slabs=(8,), work_dir=work, width=width,
                                              log=lambda m: None):
                generated.append(g)
                log("  " + describe_generation(g))
    log("collecting the planner's predictions ...")
    plans = finish_fresh(planner)
    if plans.value is None:
        log(f"  the planner failed: {plans.failure}")
    for i, row in enumerate(rows):
        p = plans.value[i] if plans.value is not None else None
        gpu = row.get("peak_kind") == "gpu_allocator_peak"
        planned = (None if p is None else
                   p["gpu_bytes"] - memory_plan.GPU_RESERVE_BYTES if gpu else p["working_bytes"])
        measured = row.get("measured_bytes")
        row.update(planned_bytes=planned,
                   planned_kind="gpu allocator peak" if gpu else "cpu working memory",
                   planned_over_measured=(round(planned / measured, 3)
                                          if planned and measured else None))
    device = next((r["device"] for r in rows if r.get("device")), None)
    return {"device": device or platform.processor() or "unknown", "host_cpus": os.cpu_count(),
            "training": rows, "generate": generated}


def describe_training(r: dict) -> str:
    if r.get("oom"):
        return "out of memory"
    planned = (f"; planned {r['planned_bytes'] / 2**20:,.0f} MiB "
               f"({r['planned_over_measured']:.2f}x)" if r.get("planned_bytes") else "")
    return (f"{r['iters_per_sec']:.3f} it/s, {r['measured_bytes'] / 2**20:,.0f} MiB "
            f"{'GPU allocator peak' if r['peak_kind'] == 'gpu_allocator_peak' else 'working'}"
            f"{planned}")


def describe_generation(g: dict) -> str:
    if g.get("failed"):
        return f"{g['img_size']}^3: FAILED ({g['failed']})"
    gpu = (f", GPU peak {g['gpu_peak_bytes'] / 2**20:,.0f} MiB"
           if g.get("gpu_peak_bytes") is not None else "")
    return (f"{g['img_size']}^3: {g['seconds']} s, peak RSS {g['peak_rss_bytes'] / 2**20:,.0f} MiB"
            f"{gpu}")


def markdown(result: dict) -> str:
    """The result as the table docs/benchmarks.md records."""
    lines = [f"Device: {result['device']}", "",
             "| configuration | it/s | measured | planned | planned / measured |",
             "|---|---|---|---|---|"]
    for r in result["training"]:
        name = (f"{r['model']} {r['img_size']}³ batch {r['batch_size']} {r['precision']}"
                f"{' XLA' if r.get('jit_compile') else ''}")
        if r.get("oom"):
            lines.append(f"| {name} | out of memory | | | |")
            continue
        planned = f"{r['planned_bytes'] / 2**20:,.0f} MiB" if r.get("planned_bytes") else "-"
        ratio = f"{r['planned_over_measured']:.2f}" if r.get("planned_over_measured") else "-"
        lines.append(f"| {name} | {r['iters_per_sec']:.3f} | "
                     f"{r['measured_bytes'] / 2**20:,.0f} MiB | {planned} | {ratio} |")
    lines += ["", "| generating one volume (slab 8) | seconds | peak RSS | GPU peak |",
              "|---|---|---|---|"]
    for g in result["generate"]:
        if g.get("failed"):
            lines.append(f"| {g['img_size']}³ | failed: {g['failed']} | | |")
            continue
        gpu = f"{g['gpu_peak_bytes'] / 2**20:,.0f} MiB" if g.get("gpu_peak_bytes") else "-"
        lines.append(f"| {g['img_size']}³ | {g['seconds']} | "
                     f"{g['peak_rss_bytes'] / 2**20:,.0f} MiB | {gpu} |")
    return "\n".join(lines)
