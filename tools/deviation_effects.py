"""Measures what each option that departs from the reference's training changes in one
iteration (crfgan_tf.deviations): losses and the share of weights that step differently.

  python -m tools.deviation_effects --model=crfgan --img_size=64
  python -m tools.deviation_effects --model=hagan --img_size=128 --json
"""

import json
import sys

from crfgan_tf import runtime  # noqa: E402

runtime.quiet_tensorflow()  # before TensorFlow loads (crfgan_tf/runtime.py)

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "crfgan", ["crfgan", "hagan"], "Model.")
flags.DEFINE_integer("img_size", 64, "Volume side (HA-GAN: 128 or 256).")
flags.DEFINE_integer("seed", 0, "Seed of the weights, the batch and the CRF's W.")
flags.DEFINE_bool("json", False, "Print the rows as JSON instead of a markdown table.")


@runtime.reports_user_errors
def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    if FLAGS.model == "hagan" and FLAGS.img_size not in (128, 256):
        print("error: --model=hagan needs --img_size 128 or 256", file=sys.stderr)
        return 2
    from crfgan_tf import deviations

    rows = deviations.measure(FLAGS.model, FLAGS.img_size, FLAGS.seed,
                              log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(rows, indent=2) if FLAGS.json else deviations.markdown(rows))
    return 0


if __name__ == "__main__":
    app.run(main)
