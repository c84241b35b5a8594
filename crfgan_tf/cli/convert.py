r"""Converts a LUNA16 / GSP / DICOM / generic scan archive into sharded TFRecords.

  python -m data_prep.convert --dataset=luna16 --input_dir=/data/LUNA16 \
      --output_dir=data/luna16_256 --size=256 --num_shards=16 --workers=2
  python -m data_prep.convert --dataset=dicom --input_dir=/data/hospital_export \
      --output_dir=data/hospital_256

DICOM: every series under --input_dir, at any depth, is one case (its id a hash of the
SeriesInstanceUID); localizers, derived images and other modalities are skipped, series
with missing slices, uneven spacing or gantry tilt are refused, each with its reason code
(crfgan_tf/data/dicom.py). No patient data and no path reaches anything written.

With --labels_csv=labels.csv (case_id,label[,name]) the records carry class labels for
conditional training (--num_classes in crfgan_tf.train).

Rerunning the same command resumes. While it runs it holds the lock
`--output_dir/.crfgan.lock`: a second conversion into the same directory is refused.
Exit status 1 if any scan failed (each is named, with its reason, and listed in
manifest.json), 2 for invalid flags, a locked output directory or a full disk (the shards
already complete stay valid; the rerun converts the rest).
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.convert: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.convert").run())

import os

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.data import convert, dicom
from crfgan_tf.utils import runtime

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", None, list(convert.DATASETS),
                  "Archive layout: luna16 (.mhd/.mha, CT), gsp (NIfTI, MRI), dicom (DICOM "
                  "series, CT unless --modality=mri), generic (any of these).")
flags.DEFINE_string("input_dir", None, "Archive root, searched recursively (LUNA16: subset0..9).")
flags.DEFINE_string("output_dir", None, "Where the shards and manifest.json go.")
flags.DEFINE_integer("size", 256, "Output side (64, 128, 256 or 512).")
flags.DEFINE_integer("num_shards", 16, "Training shards (fewer if there are fewer scans).")
flags.DEFINE_integer("num_val_shards", 0, "Validation shards; 0: round(num_shards * val_fraction), >= 1.")
flags.DEFINE_float("val_fraction", 0.1, "Fraction of cases held out for validation (0 allowed).")
flags.DEFINE_integer("seed", 0, "Seed of the deterministic train/val split.")
flags.DEFINE_integer("workers", min(4, os.cpu_count() or 1), "Parallel worker processes.")
flags.DEFINE_enum("modality", "", ["", "ct", "mri"],
                  "Required with --dataset=generic; --dataset=dicom: ct (default) or mri.")
flags.DEFINE_enum("compression", "none", ["none", "gzip"], "TFRecord compression (.tfrecord.gz).")
flags.DEFINE_bool("air_correction", True, "Shift CT scans so that outside air is -1000 HU.")
flags.DEFINE_float("max_air_shift", 100.0, "Larger air corrections are not applied (HU).")
flags.DEFINE_bool("overwrite", False, "Replace an output_dir converted with other settings.")
flags.DEFINE_string("labels_csv", "",
                    "CSV of case_id,label[,name] (class index 0..N-1): records get a 'label' "
                    "for conditional training; scans without a label are reported and skipped. "
                    "LUNA16 nodule labels: python -m data_prep.luna16_labels.")
flags.DEFINE_string("groups_csv", "",
                    "CSV with a header 'case_id,group': the cases of one group share a split "
                    "(e.g. LUNA16 series -> their LIDC-IDRI patient). DICOM series are grouped "
                    "by their PatientID without it (read in memory only, never written), or "
                    "by their study when it is empty.")
flags.DEFINE_integer("num_classes", 0, "With --labels_csv: labels must be below this "
                     "(0: the largest label + 1).")
flags.DEFINE_integer("min_slices", dicom.DEFAULT_MIN_SLICES,
                     "DICOM: series with fewer slice positions are skipped (scouts, stray slices).")
flags.DEFINE_enum("series_policy", "thinnest", list(dicom.SERIES_POLICIES),
                  "DICOM: several reconstructions of one study (kernels, thicknesses): keep the "
                  "thinnest (smallest slice spacing, then most slices), the largest (most "
                  "voxels) or all (a study's series always share a split).")
flags.DEFINE_float("slice_spacing_tolerance", dicom.DEFAULT_SPACING_TOLERANCE,
                   "DICOM: slice spacing may deviate from the series' median by this fraction "
                   "(the series is resampled to uniform); beyond it the series is refused.")
flags.DEFINE_bool("allow_tilt", False,
                  "DICOM: convert gantry-tilted series by shifting each slice back in-plane "
                  "(default: refuse them, with the angle).")
flags.DEFINE_bool("include_derived", False,
                  "DICOM: convert series whose ImageType is DERIVED too (reformats, and the "
                  "synthetic series of crfgan-sample --format=dicom); default: skip them, "
                  "so that no derived or synthetic image enters training data unasked.")
flags.DEFINE_enum("case_ids", "hash", list(dicom.CASE_IDS),
                  "DICOM case ids: hash (of the SeriesInstanceUID; no identifier written), "
                  "series_uid (the UID itself, e.g. LIDC-IDRI's public ones), or path (the "
                  "series' folder relative to --input_dir; paths then appear in the manifest, "
                  "records and logs: only for folders without patient names).")
flags.DEFINE_bool("break_lock", False,
                  "Take over --output_dir's lock when it was written on another host whose "
                  "process cannot be checked from here (only when that conversion is gone).")
flags.mark_flags_as_required(["dataset", "input_dir", "output_dir"])
flags.register_validator("size", lambda v: v in convert.SIZES,
                         message=f"--size must be one of {convert.SIZES}")
flags.register_validator("val_fraction", lambda v: 0.0 <= v < 1.0,
                         message="--val_fraction must be in [0, 1)")
flags.register_validator("num_shards", lambda v: v >= 1, message="--num_shards must be >= 1")
flags.register_validator("workers", lambda v: v >= 1, message="--workers must be >= 1")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Input": "dataset input_dir modality labels_csv num_classes groups_csv",
    "DICOM series": "min_slices series_policy slice_spacing_tolerance allow_tilt "
                    "include_derived case_ids",
    "Preprocessing": "size air_correction max_air_shift",
    "Output": "output_dir num_shards num_val_shards val_fraction seed compression overwrite",
    "Running": "workers break_lock",
}
EXAMPLE = ("crfgan-convert --dataset=luna16 --input_dir=/data/LUNA16 "
           "--output_dir=data/luna16_256 --size=256")


@common.command()
def main(argv):
    del argv
    config = convert.ConvertConfig(
        dataset=FLAGS.dataset, input_dir=FLAGS.input_dir, output_dir=FLAGS.output_dir,
        size=FLAGS.size, num_shards=FLAGS.num_shards, num_val_shards=FLAGS.num_val_shards,
        val_fraction=FLAGS.val_fraction, seed=FLAGS.seed, workers=FLAGS.workers,
        modality=FLAGS.modality, compression=FLAGS.compression,
        air_correction=FLAGS.air_correction, max_air_shift=FLAGS.max_air_shift,
        overwrite=FLAGS.overwrite, labels_csv=FLAGS.labels_csv, groups_csv=FLAGS.groups_csv,
        num_classes=FLAGS.num_classes, min_slices=FLAGS.min_slices,
        series_policy=FLAGS.series_policy, slice_spacing_tolerance=FLAGS.slice_spacing_tolerance,
        allow_tilt=FLAGS.allow_tilt, case_ids=FLAGS.case_ids,
        include_derived=FLAGS.include_derived)
    runtime.quiet_tensorflow()
    summary = convert.run_conversion(config, log=common.log, break_lock=FLAGS.break_lock)
    return 1 if summary["failed"] else 0


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main, load_tensorflow=False)
