"""Peak memory and iterations/s of full training iterations (the paper's Table 4 / 3.3).

  python -m tools.profile_memory --models=crfgan,hagan --img_size=128 --batch_sizes=2,4,6 --steps=5 --json

Each (model, size, batch) runs in its own fresh process. Peak memory: the GPU allocator's
peak (reset after warm-up) on a GPU, the process's peak resident memory on CPU, there also
split into the RSS right after the imports and the working memory above it. The batch is
shaped as the input stream's (the whole volume int16, the crop float32). --live_at_peak=N
adds, from one more step under TensorFlow's profiler, the allocator's peak, the op then and
the N largest tensors alive at it (crfgan_tf.bench.allocations).
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.profile_memory: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.profile_memory").run())

import json
import sys

from absl import flags

from crfgan_tf.bench import training
from crfgan_tf.cli import common
from crfgan_tf.core import geometry

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["crfgan", "hagan"], "Models to profile: crfgan, hagan.")
flags.DEFINE_integer("img_size", 128, "Volume side (crfgan_tf.core.geometry.SIZES).")
flags.DEFINE_list("batch_sizes", ["2"], "Batch sizes.")
flags.DEFINE_integer("steps", 5, "Timed iterations (median reported).")
flags.DEFINE_integer("warmup", 2, "Untimed iterations first (tracing, allocator warm-up).")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"],
                  "Keras dtype policy.")
flags.DEFINE_float("width", 1.0, "Channel multiplier (1 = the paper's networks).")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step.")
flags.DEFINE_bool("lean_cpu_memory", False,
                  "CPU: give freed tensor memory back to the system (crfgan_tf.lean_cpu_memory): "
                  "lower peak RSS, slower iterations.")
flags.DEFINE_enum("crf_sample", "fresh", ["fresh", "reuse"],
                  "CRF-GAN's CRF phase sample (crfgan_tf.train --crf_sample).")
flags.DEFINE_integer("embedding_factor", 0, common.EMBEDDING_FACTOR_HELP)
common.validate_embedding_factor("models")
flags.DEFINE_integer("crf_encoder_slab", 0, "CRF-GAN's --crf_encoder_slab (0: one pass).")
flags.DEFINE_bool("remat", False, common.REMAT_HELP)
flags.DEFINE_enum("adam", "pytorch", ["pytorch", "keras"], "Adam variant (--adam).")
flags.DEFINE_integer("live_at_peak", 0,
                     "N > 0: after the timed steps, one more step under TensorFlow's profiler; "
                     "report the allocator's peak in that step, the op then, and the N largest "
                     "tensors made in the step alive at it (crfgan_tf.bench.allocations).")
flags.DEFINE_bool("json", False, "Print a JSON list of rows.")
flags.DEFINE_string("plot", "profile_memory.png", "PNG of memory against batch size ('' for none).")
flags.register_validator("img_size", lambda v: v in geometry.SIZES,
                         message=f"--img_size must be one of {geometry.SIZES}")
flags.register_validator("models", lambda v: all(m in ("crfgan", "hagan") for m in v),
                         message="--models must be crfgan and/or hagan")
flags.register_validator("batch_sizes", lambda v: all(x.isdigit() and int(x) >= 1 for x in v),
                         message="--batch_sizes must be positive integers")
flags.register_validator("live_at_peak", lambda v: v >= 0,
                         message="--live_at_peak must be >= 0 (0: not measured)")
flags.register_validator("crf_encoder_slab", lambda v: v >= 0,
                         message="--crf_encoder_slab must be >= 1 or 0 (one pass)")
flags.register_multi_flags_validator(
    ["models", "img_size"],
    lambda f: "hagan" not in f["models"] or f["img_size"] in geometry.HAGAN_SIZES,
    message=f"--models=hagan needs --img_size in {geometry.HAGAN_SIZES} (HA-GAN has no 64^3 variant)")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Models": "models img_size embedding_factor batch_sizes width crf_sample crf_encoder_slab "
              "remat adam",
    "Speed options": "precision jit_compile lean_cpu_memory",
    "Measurement": "steps warmup live_at_peak",
    "Output": "json plot",
}
EXAMPLE = "crfgan-profile-memory --models=crfgan,hagan --img_size=128 --batch_sizes=2,4"


@common.command()
def main(argv):
    del argv
    rows = []
    for model in FLAGS.models:
        for batch in FLAGS.batch_sizes:
            rows.append(training.profile(training.ProfileRequest(
                model=model, img_size=FLAGS.img_size, batch_size=int(batch), steps=FLAGS.steps,
                warmup=FLAGS.warmup, precision=FLAGS.precision, width=FLAGS.width,
                jit_compile=FLAGS.jit_compile, lean_cpu_memory=FLAGS.lean_cpu_memory,
                crf_sample=FLAGS.crf_sample, crf_encoder_slab=FLAGS.crf_encoder_slab,
                embedding_factor=FLAGS.embedding_factor, remat=FLAGS.remat,
                adam=FLAGS.adam, live_at_peak=FLAGS.live_at_peak)))
            r = rows[-1]
            out = sys.stderr if FLAGS.json else sys.stdout  # progress stays off the JSON
            if r.get("oom"):
                print(f"{model:8s} {FLAGS.img_size}^3 batch {batch}: out of memory (-)",
                      file=out, flush=True)
            else:
                working = (f" = {r['rss_after_import_bytes'] / 2**20:,.0f} after import + "
                           f"{r['working_bytes'] / 2**20:,.0f} working"
                           if r.get("working_bytes") is not None else "")
                print(f"{model:8s} {FLAGS.img_size}^3 batch {batch}: "
                      f"{r['peak_bytes'] / 2**20:,.0f} MiB peak ({r['peak_kind']}{working}), "
                      f"{r['iters_per_sec']:.3f} it/s ({r['sec_per_iter']:.2f} s/it), "
                      f"{r['params']:,} params, {r['device']}, {r['precision']}, "
                      f"{r['cpu_allocator']} allocator", file=out,
                      flush=True)
                if r.get("allocator_peak"):
                    from crfgan_tf.bench import allocations

                    print("\n".join(allocations.describe(r["allocator_peak"])), file=out,
                          flush=True)
    if FLAGS.json:
        print(json.dumps(rows))
    else:
        for line in training.comparison(rows):
            print(line)
    if FLAGS.plot:
        print(f"plot: {training.plot(rows, FLAGS.plot)}", file=sys.stderr)


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main, load_tensorflow=False)
