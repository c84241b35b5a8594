"""Peak CPU memory and seconds per volume of the FID feature extractor (MedicalNet
ResNet-50), each configuration in a fresh process.

  python -m tools.bench_features --img_sizes=128,256 --batch_sizes=1,2
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.bench_features: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.bench_features").run())

import json

from absl import flags

from crfgan_tf.bench import pipeline
from crfgan_tf.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_list("img_sizes", ["128", "256"], "Volume sides.")
flags.DEFINE_list("batch_sizes", ["1"], "Volumes per extractor call.")
flags.DEFINE_integer("repeats", 2, "Timed batches (median reported).")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Measurement": "img_sizes batch_sizes repeats",
}
EXAMPLE = "crfgan-bench-features --img_sizes=128,256 --batch_sizes=1,2"


@common.command()
def main(argv):
    del argv
    rows = pipeline.feature_memory([int(s) for s in FLAGS.img_sizes],
                                    [int(b) for b in FLAGS.batch_sizes], FLAGS.repeats)
    print(json.dumps(rows))


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main, load_tensorflow=False)
