"""Peak CPU memory of generating one full-resolution volume from an export, per slab size.

  python -m tools.bench_generate --img_size=256 --slabs=8,64
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.bench_generate: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.bench_generate").run())

import json

from absl import flags

from crfgan_tf.bench import pipeline
from crfgan_tf.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("img_size", 256, "Volume side.")
flags.DEFINE_list("slabs", ["8", "64"], "G2 slab sizes (embedding slices); "
                  "img_size/embedding_factor = one shot.")
flags.DEFINE_integer("embedding_factor", 0, common.EMBEDDING_FACTOR_HELP)
common.validate_embedding_factor()


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Measurement": "img_size embedding_factor slabs",
}
EXAMPLE = "crfgan-bench-generate --img_size=256 --slabs=8,64"


@common.command()
def main(argv):
    del argv
    rows = pipeline.generate_memory(FLAGS.img_size, [int(s) for s in FLAGS.slabs],
                                    embedding_factor=FLAGS.embedding_factor)
    print(json.dumps(rows))


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main, load_tensorflow=False)
