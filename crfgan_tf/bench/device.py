"""The device benchmark (crfgan-bench-device): the figures a GPU user asks for first,
each beside the memory planner's prediction, in one run of a few minutes.

  training   CRF-GAN and HA-GAN iterations: it/s and peak memory (the GPU allocator's
             peak on a GPU, peak RSS and working memory on CPU), per (size, batch,
             precision, XLA) configuration, each in a fresh process (bench.training)
  generate   seconds and peak memory of generating one volume from an export (slab by
             slab), per size (bench.pipeline.generate_memory)
  planned    crfgan_tf.memory_plan's prediction for each training row: gpu_bytes less
             the CUDA reserve on a GPU (what the allocator's peak should be), working_bytes
             on CPU
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
    ("crfgan", 256, 2, "float32", False),
    ("crfgan", 512, 1, "mixed_float16", False),
    ("hagan", 512, 1, "mixed_float16", False),
)


def planned_bytes(model: str, img_size: int, batch_size: int, precision: str, width: float,
                  latent_dim: int, on_gpu: bool, log=print) -> tuple:
    """(the planner's prediction comparable to the measured peak, its kind)."""
    from crfgan_tf import memory_plan

    req = memory_plan.PlanRequest(model=model, img_size=img_size, batch_size=batch_size,
                                  precision=precision, width=width, latent_dim=latent_dim)
    # traced in a fresh process: the planner builds a model, which this process must not
    from crfgan_tf.bench.runner import run_fresh

    child = run_fresh("crfgan_tf.bench.device:child_plan", dataclasses.asdict(req),
                      env={"CUDA_VISIBLE_DEVICES": "-1"})  # tracing needs no GPU
    if child.value is None:
        log(f"  planner failed: {child.failure}")
        return None, None
    p = child.value
    if on_gpu:
        return p["gpu_bytes"] - memory_plan.GPU_RESERVE_BYTES, "gpu allocator peak"
    return p["working_bytes"], "cpu working memory"


def child_plan(request: dict) -> dict:
    from crfgan_tf import memory_plan

    return memory_plan.plan(memory_plan.PlanRequest(**request))


def run(configs=GPU_CONFIGS, generate_sizes=(256, 512), width: float = 1.0,
        latent_dim: int = 1024, steps: int = 5, warmup: int = 2, log=print) -> dict:
    """Measures every training configuration and generation size; returns
    {"device", "training": [rows], "generate": [rows]}."""
    from crfgan_tf.bench import pipeline

    rows, device, on_gpu = [], None, False
    for model, size, batch, precision, xla in configs:
        label = f"{model} {size}^3 batch {batch} {precision}{' XLA' if xla else ''}"
        log(f"training {label} ...")
        row = training.profile(training.ProfileRequest(
            model=model, img_size=size, batch_size=batch, steps=steps, warmup=warmup,
            precision=precision, width=width, latent_dim=latent_dim, jit_compile=xla))
        row["jit_compile"] = xla
        device = device or row.get("device")
        on_gpu = on_gpu or row.get("peak_kind") == "gpu_allocator_peak"
        measured = (row.get("working_bytes") if row.get("peak_kind") == "process_max_rss"
                    else row.get("peak_bytes"))
        planned, kind = planned_bytes(model, size, batch, precision, width, latent_dim,
                                      row.get("peak_kind") == "gpu_allocator_peak", log)
        row.update(measured_bytes=measured, planned_bytes=planned, planned_kind=kind,
                   planned_over_measured=(round(planned / measured, 3)
                                          if planned and measured else None))
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
