r"""LIDC-IDRI labels for conditional training: the readers' XML annotations clustered into
physical nodules, one label per scan (crfgan_tf/data/lidc.py states the rules).

  python -m data_prep.lidc_labels --input_dir=/data/LIDC-IDRI --output=labels.csv
  python -m data_prep.convert --dataset=dicom --input_dir=/data/LIDC-IDRI \
      --output_dir=/data/lidc_256 --labels_csv=labels.csv

--classes=presence (default): 1 for a scan with a nodule >= --min_diameter_mm marked by
>= --min_readers of its readers (LUNA16's reference standard: 3 mm, 3 of 4), else 0.
--classes=malignancy: the worst such nodule's median rating: benign (< 3), indeterminate
(3), malignant (> 3); scans without one get no label. Also writes the per-nodule table
(--nodules_output). Exit status 1 when an XML file could not be used (each named).
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.lidc_labels: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.lidc_labels").run())

import os
import sys

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.data import lidc
from crfgan_tf.utils import fileio

FLAGS = flags.FLAGS
flags.DEFINE_string("input_dir", None, "The LIDC-IDRI download (DICOM series with their XML "
                    "annotation files), searched at any depth.")
flags.DEFINE_string("output", None, "The labels CSV to write (case_id,label,name).")
flags.DEFINE_string("nodules_output", "", "The per-nodule table (default: the --output name "
                    "with _nodules before .csv).")
flags.DEFINE_enum("classes", "presence", list(lidc.CLASSES), "What the label says.")
flags.DEFINE_float("min_diameter_mm", lidc.DEFAULT_MIN_DIAMETER_MM,
                   "Smallest nodule (median of its readers' diameters) that counts.")
flags.DEFINE_integer("min_readers", lidc.DEFAULT_MIN_READERS,
                     "Readers (of 4) who must have marked a nodule for it to count.")
flags.DEFINE_float("cluster_tolerance_mm", lidc.DEFAULT_CLUSTER_TOLERANCE_MM,
                   "Two readers' marks are one nodule when closer than half the larger "
                   "diameter plus this.")
flags.DEFINE_enum("case_ids", "hash", ["hash", "series_uid"],
                  "The case ids conversion gives the series: the same value as its --case_ids.")
flags.mark_flags_as_required(["input_dir", "output"])


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Input": "input_dir case_ids",
    "Labels": "classes min_diameter_mm min_readers cluster_tolerance_mm",
    "Output": "output nodules_output",
}
EXAMPLE = "crfgan-lidc-labels --input_dir=/data/LIDC-IDRI --output=data/lidc_labels.csv"


@common.command()
def main(argv):
    del argv
    options = lidc.LabelOptions(
        classes=FLAGS.classes, min_diameter_mm=FLAGS.min_diameter_mm,
        min_readers=FLAGS.min_readers, cluster_tolerance_mm=FLAGS.cluster_tolerance_mm,
        case_ids=FLAGS.case_ids)
    stem = FLAGS.output[:-4] if FLAGS.output.lower().endswith(".csv") else FLAGS.output
    nodules_output = FLAGS.nodules_output or stem + "_nodules.csv"
    options.validate()
    if not os.path.isdir(FLAGS.input_dir):
        raise lidc.LidcError(f"--input_dir {FLAGS.input_dir!r} is not a directory")
    fileio.ensure_output_file(FLAGS.output, "--output")
    fileio.ensure_output_file(nodules_output, "--nodules_output")
    result = lidc.label_archive(FLAGS.input_dir, options)
    lidc.write_outputs(result, options, FLAGS.output, nodules_output)
    names = lidc.CLASSES[FLAGS.classes]
    counts = {name: sum(v == k for v in result["labels"].values()) for k, name in enumerate(names)}
    qualifying = sum(q for _, _, q in result["nodules"])
    print(f"lidc_labels: {len(result['labels'])} scans labelled {counts} -> {FLAGS.output}; "
          f"{len(result['nodules'])} nodules ({qualifying} of >= {FLAGS.min_diameter_mm:g} mm "
          f"by >= {FLAGS.min_readers} readers) -> {nodules_output}", file=sys.stderr)
    if result["unlabelled"]:
        print(f"lidc_labels: {len(result['unlabelled'])} scans without a qualifying rated "
              f"nodule get no {FLAGS.classes} label, e.g. {result['unlabelled'][:3]}",
              file=sys.stderr)
    for problem in result["problems"]:
        print(common.flagged(f"lidc_labels: SKIPPED {problem}"), file=sys.stderr)
    return 1 if result["problems"] else 0


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main, load_tensorflow=False)
