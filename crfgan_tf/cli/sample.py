"""Generates volumes from an exported SavedModel and writes them as medical images.

  python -m crfgan_tf.sample --saved_model=exports/luna256 --num_samples=4 --seed=0 \
      --output_dir=samples/luna256 --format=nii.gz
  python -m crfgan_tf.sample --saved_model=exports/luna256_cond --labels=0,1 ...  # conditional

Each volume is written in HU as int16 with spacing, origin and direction (opens in 3D Slicer
and ITK-SNAP), plus a PNG preview of its mid-slices at a lung window.
"""

import sys

from absl import flags

from crfgan_tf import runtime

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "Directory written by python -m crfgan_tf.export.")
flags.DEFINE_integer("num_samples", 1, "Volumes to generate.")
flags.DEFINE_integer("seed", 0, "Sample i uses z drawn from (seed, i).")
flags.DEFINE_string("output_dir", None, "Where the volumes and previews go.")
flags.DEFINE_enum("format", "nii.gz", ["nii.gz", "mha", "nrrd", "npy"], "Output format.")
flags.DEFINE_integer("batch_size", 1, "Volumes generated per call.")
flags.DEFINE_integer("label", None, "Conditional models: the class of every sample.")
flags.DEFINE_list("labels", None, "Conditional models: classes cycled over the samples "
                  "(sample i gets labels[i % len]), e.g. 0,1.")
flags.mark_flags_as_required(["saved_model", "output_dir"])
flags.register_validator("num_samples", lambda v: v >= 1, message="--num_samples must be >= 1")
flags.register_validator("batch_size", lambda v: v >= 1, message="--batch_size must be >= 1")


# --help (crfgan_tf/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Input": "saved_model",
    "Generation": "num_samples seed batch_size label labels",
    "Output": "output_dir format",
}
EXAMPLE = "crfgan-sample --saved_model=exports/luna256 --num_samples=4 --output_dir=samples/luna256"


@runtime.reports_user_errors
def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]} (flags need --name=value)", file=sys.stderr)
        return 2
    if FLAGS.label is not None and FLAGS.labels:
        print("error: give --label or --labels, not both", file=sys.stderr)
        return 2
    try:
        labels = [FLAGS.label] if FLAGS.label is not None else \
            [int(v) for v in FLAGS.labels or []]
    except ValueError:
        print(f"error: --labels must be integers, got {FLAGS.labels}", file=sys.stderr)
        return 2
    from crfgan_tf import sample_lib

    try:
        sample_lib.sample(FLAGS.saved_model, FLAGS.num_samples, FLAGS.seed, FLAGS.output_dir,
                          FLAGS.format, FLAGS.batch_size, log=lambda m: print(m, file=sys.stderr),
                          labels=labels)
    except (sample_lib.SavedModelError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run():
    """The command (console script, python -m shim)."""
    runtime.run_command(main)
