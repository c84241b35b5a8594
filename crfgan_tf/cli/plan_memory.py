"""The memory a training run will need, before it runs: a breakdown read off the real
training step (crfgan_tf/training/memory_plan.py) and what fits on which GPU.

  python -m tools.plan_memory --model=crfgan --img_size=256 --batch_size=2
  python -m tools.plan_memory --model=hagan --img_size=512 --batch_size=1 --gpu_memory=24GB --nofits
  python -m tools.plan_memory --img_size=128 --batch_size=2 --nofits --json

It builds the model and traces its training step (no volume is computed: seconds, on any
machine); the fits table traces every size (or --fits_sizes) at each precision (a few minutes).
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.plan_memory: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.plan_memory").run())

import dataclasses
import json
import sys

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.core import geometry

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "crfgan", ["crfgan", "hagan"], "Model type.")
flags.DEFINE_integer("img_size", 256, "Volume side (crfgan_tf.core.geometry.SIZES).")
flags.DEFINE_integer("batch_size", 2, "Batch size per device (crfgan-train --batch_size on "
                     "one device; with several, the per-replica batch).")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"],
                  "Keras dtype policy (crfgan-train --mixed_precision).")
flags.DEFINE_float("width", 1.0, "Channel multiplier (1 = the paper's networks).")
flags.DEFINE_integer("latent_dim", 1024, "Latent size.")
flags.DEFINE_enum("crf_sample", "fresh", ["fresh", "reuse"], "CRF-GAN's --crf_sample.")
flags.DEFINE_integer("embedding_factor", 0, common.EMBEDDING_FACTOR_HELP)
common.validate_embedding_factor("model")
flags.DEFINE_integer("crf_encoder_slab", 0, "CRF-GAN's --crf_encoder_slab (0: one pass).")
flags.DEFINE_bool("remat", False, common.REMAT_HELP)
flags.DEFINE_integer("num_classes", 0, "Classes of a conditional model (0: unconditional).")
flags.DEFINE_bool("lean_cpu_memory", False,
                  "Plan the CPU working memory for crfgan-train's lean allocator "
                  "(CRFGAN_LEAN_CPU_MEMORY=1) instead of the default one.")
flags.DEFINE_string("gpu_memory", "", "A GPU's memory (e.g. 24GB, 24GiB, 16000MiB): say "
                    "whether this run fits on it and the largest batch that does.")
flags.DEFINE_string("cpu_memory", "", "Memory a CPU run may use beyond the framework (e.g. "
                    "16GiB): the largest batch whose predicted working memory fits in it.")
flags.DEFINE_bool("fits", True, "Also print, per size and precision, the GPU memory at batch "
                  "1, 2 and 4 and the largest batch on 12-141 GB cards (traces every size).")
flags.DEFINE_list("fits_precisions", ["float32", "mixed_float16"],
                  "Precisions of the fits table.")
flags.DEFINE_list("fits_sizes", [], "Sizes of the fits table, e.g. 256,512 (default: every "
                  "size the model has; each is one trace per precision).")
flags.DEFINE_bool("json", False, "Print the plan as JSON (working_bytes: the predicted CPU "
                  "working memory; gpu_calibrated_bytes: what to plan a GPU with, scaled "
                  "to the paper's Table 4; gpu_bytes: its lower bound), with the fits "
                  "table.")
flags.register_validator("crf_encoder_slab", lambda v: v >= 0,
                         message="--crf_encoder_slab must be >= 1 or 0 (one pass)")
flags.register_validator("img_size", lambda v: v in geometry.SIZES,
                         message=f"--img_size must be one of {geometry.SIZES}")
flags.register_validator("batch_size", lambda v: v >= 1, message="--batch_size must be >= 1")
flags.register_validator("width", lambda v: v > 0, message="--width must be positive")
flags.register_validator(
    "fits_precisions",
    lambda v: bool(v) and all(p in ("float32", "mixed_float16", "mixed_bfloat16") for p in v),
    message="--fits_precisions must name float32, mixed_float16 and/or mixed_bfloat16")
flags.register_validator(
    "fits_sizes", lambda v: all(s.isdigit() and int(s) in geometry.SIZES for s in v),
    message=f"--fits_sizes must name sizes in {geometry.SIZES}")
flags.register_multi_flags_validator(
    ["model", "fits_sizes"],
    lambda f: f["model"] != "hagan" or all(int(s) in geometry.HAGAN_SIZES for s in f["fits_sizes"]),
    message=f"--model=hagan needs --fits_sizes in {geometry.HAGAN_SIZES} (HA-GAN has no 64^3 "
            "variant)")
flags.register_multi_flags_validator(
    ["model", "img_size"],
    lambda f: f["model"] != "hagan" or f["img_size"] in geometry.HAGAN_SIZES,
    message=f"--model=hagan needs --img_size in {geometry.HAGAN_SIZES} (HA-GAN has no 64^3 variant)")


def _check_gpu_memory(value):
    if not value:
        return True
    from crfgan_tf.training import memory_plan

    try:
        memory_plan.parse_memory(value)
    except ValueError as err:
        raise flags.ValidationError(common.flagged(str(err))) from None
    return True


flags.register_validator("gpu_memory", _check_gpu_memory)
flags.register_validator("cpu_memory", _check_gpu_memory)


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Run to plan": "model img_size embedding_factor batch_size precision width latent_dim "
                   "crf_sample crf_encoder_slab remat num_classes",
    "Devices": "lean_cpu_memory cpu_memory gpu_memory fits fits_precisions fits_sizes",
    "Output": "json",
}
EXAMPLE = "crfgan-plan-memory --model=crfgan --img_size=256 --batch_size=2 --gpu_memory=24GB"

FITS_BATCHES = (1, 2, 4)


def _mib(n) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _gb(n) -> str:
    return f"{n / 1e9:.1f}"


def _print_plan(p: dict, gpu_memory: int) -> None:
    from crfgan_tf.training import memory_plan

    name = "CRF-GAN" if p["model"] == "crfgan" else "HA-GAN"
    print(f"{name} {p['img_size']}^3 batch {p['batch_size']}, {p['precision']}, width "
          f"{p['width']:g}"
          + (f", embedding factor {p['embedding_factor']}"
             if p["embedding_factor"] != geometry.EMBED_FACTOR else "")
          + f": {p['params']:,} parameters; training step traced "
          f"({p['graph_ops']:,} ops, {p['trace_seconds']:.0f} s)")
    rows = [("weights (and spectral-norm vectors)", p["weights_bytes"]),
            ("optimizer slots (Adam m and v, every phase)", p["optimizer_bytes"]),
            ("input batch (volume int16, crop, latents)", p["input_bytes"])]
    for label, n in rows:
        print(f"  {label:52s} {_mib(n):>12s}")
    print(f"  {'transient peak of the step':52s} {_mib(p['transient_bytes']):>12s}"
          f"   in phase {p['peak_phase']!r}, at {p['peak_op']}")
    for kind, n in sorted(p["peak_by_kind"].items(), key=lambda kv: -kv[1]):
        print(f"    {kind:50s} {_mib(n):>12s}")
    print("    largest live tensors: " + "; ".join(
        f"{t['op']} {_mib(t['bytes'])}" for t in p["largest_at_peak"][:3]))
    print("  each phase's transient peak: " + ", ".join(
        f"{k} {_mib(v)}" for k, v in p["phase_transient_bytes"].items()))
    if p["model"] == "crfgan" and p["peak_phase"] == "crf" and not p.get("crf_encoder_slab"):
        slab = 64 // p["embedding_factor"]  # 64 volume slices at a time
        print("  the peak is hE embedding the whole real volume in one pass: "
              f"--crf_encoder_slab={slab} embeds it slab by slab (less memory, more time)")
    alloc = memory_plan.ALLOCATORS[p["allocator"]]
    print(f"  {'CPU working memory (' + alloc.name + ')':52s} {_mib(p['working_bytes']):>12s}"
          f"   = persistent + {alloc.factor:g} x transient + {_mib(alloc.runtime_bytes)} "
          f"runtime; compare crfgan-profile-memory's 'working'")
    cal = p["calibration"]
    print(f"  {'GPU memory, to plan with':52s} {_mib(p['gpu_calibrated_bytes']):>12s}"
          f"   ({_gb(p['gpu_calibrated_bytes'])} GB) = the allocator peak of the lower bound "
          f"below x {max(1.0, cal['ratio']):.2f} + the reserve; {cal['ratio']:.2f} is the "
          f"ratio of {memory_plan.PAPER_TABLE4} to this planner's allocator peak at "
          f"{cal['img_size']}^3 batch {cal['batch_size']} ({_gb(cal['paper_bytes'])} GB "
          f"against {_gb(cal['planned_bytes'])} GB; {cal['kind']})")
    print(f"  {'GPU memory, lower bound':52s} {_mib(p['gpu_bytes']):>12s}"
          f"   ({_gb(p['gpu_bytes'])} GB) = persistent + transient + "
          f"{_mib(memory_plan.GPU_RESERVE_BYTES)} CUDA/cuDNN reserve: this code's live "
          "tensors, not measured on a GPU; crfgan-bench-device measures it")
    if gpu_memory:
        verdict = "fits" if p["gpu_calibrated_bytes"] <= gpu_memory else "does NOT fit"
        print(f"  on a {_gb(gpu_memory)} GB GPU: {verdict}; largest batch there: "
              f"{p['largest_batch_on_gpu_memory']} (by the lower bound at most "
              f"{p['largest_batch_on_gpu_memory_lower_bound']})")
    if "largest_batch_on_cpu_memory" in p:
        print(f"  in {_gb(p['cpu_memory_bytes'])} GB of CPU memory: largest batch "
              f"{p['largest_batch_on_cpu_memory']}")


def _fits_table(req, step, progress) -> list:
    """Per (size, precision): GPU bytes at FITS_BATCHES and the largest batch per card
    (`step`, req's own trace, is reused for its size and precision)."""
    from crfgan_tf.training import memory_plan

    sizes = geometry.HAGAN_SIZES if req.model == "hagan" else geometry.SIZES
    if FLAGS.fits_sizes:
        sizes = sorted({int(s) for s in FLAGS.fits_sizes})
    rows = []
    for precision in FLAGS.fits_precisions:
        for size in sizes:
            factor = req.embedding_factor  # a factor given for 512 (8) is 512's only:
            if factor and size not in geometry.EMBED_FACTORS[factor]:
                factor = 0  # other sizes take their default
            r = dataclasses.replace(req, img_size=size, precision=precision, batch_size=1,
                                    embedding_factor=factor)
            traced = step
            if (size, precision) != (req.img_size, req.precision):
                print(f"tracing {req.model} {size}^3 {precision} ...", file=progress, flush=True)
                traced = memory_plan.trace(r)
            rows.append({
                "img_size": size, "precision": precision,
                "gpu_bytes": {b: memory_plan.calibrated_gpu_bytes(
                    dataclasses.replace(r, batch_size=b),
                    memory_plan.plan(dataclasses.replace(r, batch_size=b), traced)["gpu_bytes"])
                    for b in FITS_BATCHES},
                "largest_batch": {gb: memory_plan.largest_batch(
                    traced, r, gb * memory_plan.GB, measure="gpu_calibrated_bytes")
                    for gb in memory_plan.DEVICE_MEMORY_GB}})
    return rows


def _print_fits(rows: list, model: str) -> None:
    from crfgan_tf.training import memory_plan

    cards = memory_plan.DEVICE_MEMORY_GB
    print(f"\nGPU memory (GB) and the largest batch per card, {model} (planned, scaled to "
          f"{memory_plan.PAPER_TABLE4}; not measured on a GPU):")
    head = "  size  precision       " + "".join(f"b={b:<6d}" for b in FITS_BATCHES) + " | " \
        + "".join(f"{gb:>4d}GB" for gb in cards)
    print(head)
    for r in rows:
        need = "".join(f"{_gb(r['gpu_bytes'][b]):<8s}" for b in FITS_BATCHES)
        fit = "".join(f"{r['largest_batch'][gb] or '-':>6}" for gb in cards)
        print(f"  {r['img_size']:>4d}  {r['precision']:<15s} {need}|{fit}")
    print("  '-': not even batch 1. Batches above 256 are not searched.")


@common.command()
def main(argv):
    del argv
    import tensorflow as tf

    from crfgan_tf.training import memory_plan

    try:  # tracing needs no GPU: leave a GPU that is training something alone
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialised (not from this command's main)
        pass
    req = memory_plan.PlanRequest(model=FLAGS.model, img_size=FLAGS.img_size,
                                  batch_size=FLAGS.batch_size, precision=FLAGS.precision,
                                  width=FLAGS.width, latent_dim=FLAGS.latent_dim,
                                  crf_sample=FLAGS.crf_sample,
                                  crf_encoder_slab=FLAGS.crf_encoder_slab,
                                  embedding_factor=FLAGS.embedding_factor,
                                  remat=FLAGS.remat,
                                  num_classes=FLAGS.num_classes)
    progress = sys.stderr if FLAGS.json else sys.stdout
    allocator = memory_plan.CPU_LEAN if FLAGS.lean_cpu_memory else memory_plan.CPU_DEFAULT
    print(f"tracing {req.model} {req.img_size}^3 {req.precision} ...", file=progress, flush=True)
    step = memory_plan.trace(req)
    p = memory_plan.plan(req, step, allocator)
    p["calibration"] = memory_plan.calibration(req)
    p["gpu_calibrated_bytes"] = memory_plan.calibrated_gpu_bytes(req, p["gpu_bytes"])
    gpu_memory = memory_plan.parse_memory(FLAGS.gpu_memory) if FLAGS.gpu_memory else 0
    if gpu_memory:
        p["gpu_memory_bytes"] = gpu_memory
        p["fits_gpu_memory"] = p["gpu_calibrated_bytes"] <= gpu_memory
        p["largest_batch_on_gpu_memory"] = memory_plan.largest_batch(
            step, req, gpu_memory, measure="gpu_calibrated_bytes")
        p["largest_batch_on_gpu_memory_lower_bound"] = memory_plan.largest_batch(
            step, req, gpu_memory)
    cpu_memory = memory_plan.parse_memory(FLAGS.cpu_memory) if FLAGS.cpu_memory else 0
    if cpu_memory:
        p["cpu_memory_bytes"] = cpu_memory
        p["largest_batch_on_cpu_memory"] = memory_plan.largest_batch(
            step, req, cpu_memory, measure="working_bytes", allocator=allocator)
    if not FLAGS.json:
        _print_plan(p, gpu_memory)
    if FLAGS.fits:
        p["fits"] = _fits_table(req, step, progress)
        if not FLAGS.json:
            _print_fits(p["fits"], req.model)
    if FLAGS.json:
        print(json.dumps(p))


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main)
