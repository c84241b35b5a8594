"""Learnable parameters per module, against the reference.

  python -m tools.count_params --model=crfgan --img_size=256 --json
  python -m tools.count_params --model=hagan --img_size=128 --num_classes=2
  python -m tools.count_params --img_size=512
  python -m tools.count_params --img_size=512 --embedding_factor=4
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.count_params: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.count_params").run())

import json

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.core import geometry
from crfgan_tf.models import params

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "crfgan", ["crfgan", "hagan"], "Model type.")
flags.DEFINE_integer("img_size", 256, "Volume side (crfgan_tf.core.geometry.SIZES).")
flags.DEFINE_integer("embedding_factor", 0, common.EMBEDDING_FACTOR_HELP)
common.validate_embedding_factor("model")
flags.DEFINE_integer("latent_dim", 1024, "Latent size.")
flags.DEFINE_float("width", 1.0, "Channel multiplier.")
flags.DEFINE_integer("num_classes", 0, "Classes of a conditional model (0: unconditional).")
flags.DEFINE_bool("json", False, "Print JSON {\"total\": N, \"modules\": {...}}.")
flags.register_validator("img_size", lambda v: v in geometry.SIZES,
                         message=f"--img_size must be one of {geometry.SIZES}")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Model": "model img_size embedding_factor latent_dim width num_classes",
    "Output": "json",
}
EXAMPLE = "crfgan-count-params --img_size=256"


@common.command()
def main(argv):
    del argv
    result = params.count_parameters(FLAGS.model, FLAGS.img_size, FLAGS.latent_dim,
                                     FLAGS.width, FLAGS.num_classes, FLAGS.embedding_factor)
    if FLAGS.json:
        print(json.dumps(result))
        return
    classes = f", {result['num_classes']} classes" if result["num_classes"] else ""
    factor = (f", embedding factor {result['embedding_factor']}"
              if result["embedding_factor"] != geometry.EMBED_FACTOR else "")
    print(f"{result['model']} at {result['img_size']}^3{classes}{factor}")
    for name, count in result["modules"].items():
        print(f"  {name:16s} {count:>14,d}")
    print(f"  {'total':16s} {result['total']:>14,d}")
    if result["reference"] is not None:
        same = "equal" if result["reference"] == result["total"] else "DIFFERENT"
        print(f"  reference        {result['reference']:>14,d} ({same})")
    elif result["img_size"] not in geometry.REFERENCE_SIZES:
        print(f"  reference        {'-':>14s} (the references stop at 256^3; this size follows "
              "their growth rule: docs/resolution.md)")


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main)
