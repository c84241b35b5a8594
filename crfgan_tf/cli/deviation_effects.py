"""Measures what each option that departs from the reference's training changes in one
iteration (crfgan_tf.deviations): losses and the share of weights that step differently.

  python -m tools.deviation_effects --model=crfgan --img_size=64
  python -m tools.deviation_effects --model=hagan --img_size=128 --json
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.deviation_effects: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.deviation_effects").run())

import json

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.core import geometry

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "crfgan", ["crfgan", "hagan"], "Model.")
flags.DEFINE_integer("img_size", 64, "Volume side (crfgan_tf.core.geometry.SIZES; HA-GAN: HAGAN_SIZES).")
flags.DEFINE_integer("seed", 0, "Seed of the weights, the batch and the CRF's W.")
flags.DEFINE_bool("json", False, "Print the rows as JSON instead of a markdown table.")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Model": "model img_size seed",
    "Output": "json",
}
EXAMPLE = "crfgan-deviation-effects --model=crfgan --img_size=64"


@common.command()
def main(argv):
    del argv
    geometry.check_size(FLAGS.img_size, FLAGS.model)
    from crfgan_tf.bench import deviations

    rows = deviations.measure(FLAGS.model, FLAGS.img_size, FLAGS.seed, log=common.log)
    print(json.dumps(rows, indent=2) if FLAGS.json else deviations.markdown(rows))
    return 0


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main)
