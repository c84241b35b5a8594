"""Seconds per scan of the conversion vs the reference approach (docs/benchmarks.md).

  python -m tools.bench_convert --in_plane=512 --num_slices=300 --size=256 --repeats=3
  python -m tools.bench_convert --dicom=raw,jpeg,jpeg2000 --noreference  # DICOM vs .mhd
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.bench_convert: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.bench_convert").run())

import json

from absl import flags

from crfgan_tf.bench import pipeline
from crfgan_tf.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("in_plane", 512, "Scan rows/columns.")
flags.DEFINE_integer("num_slices", 300, "Scan slices.")
flags.DEFINE_integer("size", 256, "Output side.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (median reported).")
flags.DEFINE_bool("reference", True, "Also time the reference approach (needs scikit-image).")
flags.DEFINE_list("dicom", [], "Also time the scan as a DICOM series, one file per slice, in "
                  "these encodings: raw (explicit VR little endian), jpeg (lossless), jpeg2000.")
flags.register_validator("dicom", lambda v: set(v) <= {"raw", "jpeg", "jpeg2000"},
                         message="--dicom takes raw, jpeg and/or jpeg2000")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Scan": "in_plane num_slices dicom",
    "Conversion": "size",
    "Measurement": "repeats reference",
}
EXAMPLE = "crfgan-bench-convert --in_plane=512 --num_slices=300 --size=256 --repeats=3"


@common.command()
def main(argv):
    del argv
    print(json.dumps(pipeline.convert_speed(
        FLAGS.in_plane, FLAGS.num_slices, FLAGS.size, FLAGS.repeats, FLAGS.reference,
        dicom_compressions=["" if c == "raw" else c for c in FLAGS.dicom])))


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main, load_tensorflow=False)
