"""Throughput of the training input stream (read, seek, parse, crop, batch) at 256^3.

  python -m tools.bench_input --img_size=256 --num_records=24 --batches=30
  python -m tools.bench_input --records='data/luna16_256/train-*.tfrecord'

Without --records, synthetic records are written to --work_dir first (24 x 32 MiB at
256^3). Results in docs/benchmarks.md.
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.bench_input: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.bench_input").run())

import json
import os
import tempfile

from absl import flags

from crfgan_tf.bench import pipeline
from crfgan_tf.cli import common
from crfgan_tf.utils import runtime

FLAGS = flags.FLAGS
flags.DEFINE_string("records", "", "Training records to read (default: synthetic ones).")
flags.DEFINE_integer("img_size", 256, "Volume side of the records.")
flags.DEFINE_integer("num_records", 24, "Synthetic records to write.")
flags.DEFINE_integer("num_shards", 4, "Synthetic shards.")
flags.DEFINE_integer("batch_size", 2, "Global batch size.")
flags.DEFINE_integer("batches", 30, "Batches timed (after 3 warm-up batches).")
flags.DEFINE_list("start_steps", ["0", "1000"], "Measure from these steps (a resume).")
flags.DEFINE_string("work_dir", "", "Where synthetic records go (default: a temporary dir).")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Data": "records img_size num_records num_shards work_dir",
    "Measurement": "batch_size batches start_steps",
}
EXAMPLE = "crfgan-bench-input --img_size=256 --num_records=24 --batches=30"


@common.command()
def main(argv):
    del argv
    runtime.quiet_tensorflow()
    pattern = FLAGS.records
    if not pattern:
        work = FLAGS.work_dir or tempfile.mkdtemp(prefix="crfgan_input_")
        pattern = pipeline.write_synthetic_records(
            os.path.join(work, f"records_{FLAGS.img_size}"), FLAGS.img_size,
            FLAGS.num_records, FLAGS.num_shards)
    for start in FLAGS.start_steps:
        print(json.dumps(pipeline.input_throughput(
            pattern, FLAGS.img_size, FLAGS.batch_size, FLAGS.batches,
            start_step=int(start))), flush=True)


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main, load_tensorflow=False)
