r"""LUNA16 nodule labels for conditional training: label 1 for a scan with at least one
annotated nodule of --min_diameter_mm or more, 0 otherwise (every scan gets a label).

  python -m data_prep.luna16_labels --annotations=/data/LUNA16/annotations.csv \
      --input_dir=/data/LUNA16 --output=labels.csv --min_diameter_mm=3
  python -m data_prep.convert --dataset=luna16 --input_dir=/data/LUNA16 \
      --output_dir=data/luna16_256_labelled --labels_csv=labels.csv
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.luna16_labels: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.luna16_labels").run())

import os
import sys

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.data import convert, labels, preprocess
from crfgan_tf.utils import fileio

FLAGS = flags.FLAGS
flags.DEFINE_string("annotations", None, "LUNA16 annotations.csv (seriesuid, coordX, coordY, "
                    "coordZ, diameter_mm).")
flags.DEFINE_string("input_dir", None, "The archive (subset0..9 with .mhd/.raw): its scans "
                    "are the ones labelled.")
flags.DEFINE_string("output", None, "The labels CSV to write (case_id,label,name).")
flags.DEFINE_float("min_diameter_mm", 3.0, "Smallest nodule diameter that makes label 1.")
flags.mark_flags_as_required(["annotations", "input_dir", "output"])
flags.register_validator("min_diameter_mm", lambda v: v > 0,
                         message="--min_diameter_mm must be > 0")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Input": "annotations input_dir",
    "Labels": "min_diameter_mm",
    "Output": "output",
}
EXAMPLE = ("crfgan-luna16-labels --annotations=/data/LUNA16/annotations.csv "
           "--input_dir=/data/LUNA16 --output=data/luna16_labels.csv")


@common.command()
def main(argv):
    del argv
    if not os.path.isdir(FLAGS.input_dir):
        raise common.CommandError(f"--input_dir {FLAGS.input_dir!r} is not a directory")
    fileio.ensure_output_file(FLAGS.output, "--output")
    try:
        nodules = labels.read_luna_annotations(FLAGS.annotations)
    except labels.LabelsError as err:
        raise common.CommandError(f"--annotations: {err}") from None
    case_ids = [preprocess.case_id_from_path(p)
                for p in convert.discover_scans(FLAGS.input_dir, "luna16")]
    if not case_ids:
        raise common.CommandError(f"no .mhd/.mha scans under --input_dir {FLAGS.input_dir!r}")
    table = labels.luna16_labels(nodules, case_ids, FLAGS.min_diameter_mm)
    labels.write_labels_csv(FLAGS.output, table, labels.LUNA_CLASS_NAMES)
    positive = sum(table.values())
    missing = sorted(set(nodules) - set(case_ids))
    print(f"luna16_labels: {len(table)} scans: {positive} with a nodule >= "
          f"{FLAGS.min_diameter_mm:g} mm (label 1), {len(table) - positive} without (label 0) "
          f"-> {FLAGS.output}", file=sys.stderr)
    if missing:
        print(f"luna16_labels: {len(missing)} annotated series are not in --input_dir "
              f"(ignored), e.g. {missing[:3]}", file=sys.stderr)
    return 0


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main, load_tensorflow=False)
