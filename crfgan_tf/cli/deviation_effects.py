"""Measures what each option that departs from the reference's training changes in one
iteration (crfgan_tf.deviations): losses and the share of weights that step differently.

  python -m tools.deviation_effects --model=crfgan --img_size=64
  python -m tools.deviation_effects --model=hagan --img_size=128 --json
"""

import json
import sys

from absl import flags

from crfgan_tf import geometry, runtime

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "crfgan", ["crfgan", "hagan"], "Model.")
flags.DEFINE_integer("img_size", 64, "Volume side (crfgan_tf.geometry.SIZES; HA-GAN: HAGAN_SIZES).")
flags.DEFINE_integer("seed", 0, "Seed of the weights, the batch and the CRF's W.")
flags.DEFINE_bool("json", False, "Print the rows as JSON instead of a markdown table.")


# --help (crfgan_tf/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Model": "model img_size seed",
    "Output": "json",
}
EXAMPLE = "crfgan-deviation-effects --model=crfgan --img_size=64"


@runtime.reports_user_errors
def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    try:
        geometry.check_size(FLAGS.img_size, FLAGS.model)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from crfgan_tf.bench import deviations

    rows = deviations.measure(FLAGS.model, FLAGS.img_size, FLAGS.seed,
                              log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(rows, indent=2) if FLAGS.json else deviations.markdown(rows))
    return 0


def run():
    """The command (console script, python -m shim)."""
    runtime.run_command(main)
