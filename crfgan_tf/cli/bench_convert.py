"""Seconds per scan of the conversion vs the reference approach (docs/benchmarks.md).

  python -m tools.bench_convert --in_plane=512 --num_slices=300 --size=256 --repeats=3
"""

import json

from absl import flags

from crfgan_tf import runtime
from crfgan_tf.bench import pipeline

FLAGS = flags.FLAGS
flags.DEFINE_integer("in_plane", 512, "Scan rows/columns.")
flags.DEFINE_integer("num_slices", 300, "Scan slices.")
flags.DEFINE_integer("size", 256, "Output side.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (median reported).")
flags.DEFINE_bool("reference", True, "Also time the reference approach (needs scikit-image).")


@runtime.reports_user_errors
def main(argv):
    del argv
    print(json.dumps(pipeline.convert_speed(FLAGS.in_plane, FLAGS.num_slices, FLAGS.size,
                                             FLAGS.repeats, FLAGS.reference)))


def run():
    """The command (console script, python -m shim)."""
    runtime.run_command(main, load_tensorflow=False)
