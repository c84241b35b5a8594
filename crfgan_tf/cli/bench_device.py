"""The device benchmark: training it/s and peak memory at 256^3 batch 2 and 512^3 batch 1
(mixed precision, and XLA at 256^3) for CRF-GAN and HA-GAN, seconds and memory per
generated 256^3/512^3 volume, and the memory planner's prediction beside each training
row (crfgan_tf/bench/device.py). Planned to take about 8 minutes on one GPU (not yet run
on one); on CPU give small configs.

  python -m tools.bench_device --json_out=bench_device.json
  python -m tools.bench_device --configs=crfgan:64:1:float32 --generate_sizes=64 --width=0.0625
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.bench_device: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.bench_device").run())

import json

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.core import geometry

FLAGS = flags.FLAGS


def _default_configs():
    from crfgan_tf.bench.device import GPU_CONFIGS

    return [f"{m}:{s}:{b}:{p}{':xla' if x else ''}" for m, s, b, p, x in GPU_CONFIGS]


flags.DEFINE_list("configs", _default_configs(),
                  "Training configurations, each model:img_size:batch:precision[:xla].")
flags.DEFINE_list("generate_sizes", ["256", "512"], "Sizes of the generated volumes timed.")
flags.DEFINE_float("width", 1.0, "Channel multiplier (1 = the paper's networks).")
flags.DEFINE_integer("latent_dim", 1024, "Latent size.")
flags.DEFINE_integer("steps", 5, "Timed training iterations per configuration (median).")
flags.DEFINE_integer("warmup", 2, "Untimed iterations first (tracing, autotuning).")
flags.DEFINE_string("json_out", "", "Also write the results here as JSON (atomically).")


def parse_config(text: str) -> tuple:
    """'crfgan:256:2:mixed_float16[:xla]' -> (model, size, batch, precision, xla)."""
    parts = text.split(":")
    if len(parts) not in (4, 5) or (len(parts) == 5 and parts[4] != "xla"):
        raise ValueError(f"--configs entries are model:img_size:batch:precision[:xla], "
                         f"got {text!r}")
    model, size, batch, precision = parts[:4]
    if model not in ("crfgan", "hagan"):
        raise ValueError(f"--configs: model must be crfgan or hagan, got {model!r} in {text!r}")
    if not (size.isdigit() and batch.isdigit() and int(batch) >= 1):
        raise ValueError(f"--configs: img_size and batch must be positive integers in {text!r}")
    try:
        geometry.check_size(int(size), model, flag="configs")
    except ValueError as err:
        raise ValueError(f"{err} (in {text!r})") from None
    if precision not in ("float32", "mixed_float16", "mixed_bfloat16"):
        raise ValueError(f"--configs: precision must be float32, mixed_float16 or "
                         f"mixed_bfloat16, got {precision!r} in {text!r}")
    return model, int(size), int(batch), precision, len(parts) == 5


def _check_configs(values):
    for v in values:
        try:
            parse_config(v)
        except ValueError as err:
            raise flags.ValidationError(common.flagged(str(err))) from None
    return True


flags.register_validator("configs", _check_configs)
flags.register_validator("generate_sizes",
                         lambda v: all(x.isdigit() and int(x) in geometry.SIZES for x in v),
                         message=f"--generate_sizes must be sizes of {geometry.SIZES}")
flags.register_validator("steps", lambda v: v >= 1, message="--steps must be >= 1")
flags.register_validator("warmup", lambda v: v >= 0, message="--warmup must be >= 0")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Measurement": "configs generate_sizes width latent_dim steps warmup",
    "Output": "json_out",
}
EXAMPLE = "crfgan-bench-device --json_out=bench_device.json"


@common.command()
def main(argv):
    del argv
    from crfgan_tf.bench import device
    from crfgan_tf.utils import fileio

    if FLAGS.json_out:  # a bad output path is refused before minutes of measuring
        fileio.ensure_output_file(FLAGS.json_out, "--json_out")
    result = device.run([parse_config(c) for c in FLAGS.configs],
                        [int(s) for s in FLAGS.generate_sizes], width=FLAGS.width,
                        latent_dim=FLAGS.latent_dim, steps=FLAGS.steps, warmup=FLAGS.warmup)
    if FLAGS.json_out:
        fileio.atomic_write(FLAGS.json_out, json.dumps(result, indent=1))
    print(device.markdown(result))


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main, load_tensorflow=False)
