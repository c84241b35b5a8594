r"""Generates volumes from an exported SavedModel and writes them as medical images.

  python -m crfgan_tf.sample --saved_model=exports/luna256 --num_samples=4 --seed=0 \
      --output_dir=samples/luna256 --format=nii.gz
  python -m crfgan_tf.sample --saved_model=exports/luna256_cond --labels=0,1 ...  # conditional

Each volume is written in HU as int16 with spacing, origin and direction (opens in 3D Slicer
and ITK-SNAP), plus a PNG preview of its mid-slices at a lung window.
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.sample: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.sample").run())

from absl import flags

from crfgan_tf.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "Directory written by crfgan-export: a SavedModel, "
                    "or a weights package alone (--format=weights; the name is historical).")
flags.DEFINE_integer("num_samples", 1, "Volumes to generate.")
flags.DEFINE_integer("seed", 0, "Sample i uses z drawn from (seed, i).")
flags.DEFINE_string("output_dir", None, "Where the volumes and previews go.")
flags.DEFINE_enum("format", "nii.gz", ["nii.gz", "mha", "nrrd", "npy", "dicom"],
                  "Output format; dicom: a CT series per sample, in a folder of its own, "
                  "marked synthetic in its header (docs/generation.md#dicom-output).")
flags.DEFINE_integer("batch_size", 1, "Volumes generated per call.")
flags.DEFINE_integer("label", None, "Conditional models: the class of every sample.")
flags.DEFINE_list("labels", None, "Conditional models: classes cycled over the samples "
                  "(sample i gets labels[i % len]), e.g. 0,1.")
flags.DEFINE_bool("quality_check", False,
                  "Check each sample's anatomy statistics against the training data's ranges "
                  "stored in the export; regenerate a failing one from its next latent; write "
                  "quality.json (exit status 1 when a sample still fails).")
flags.DEFINE_integer("quality_tries", 5, "With --quality_check: latents tried per sample.")
flags.mark_flags_as_required(["saved_model", "output_dir"])
flags.register_validator("num_samples", lambda v: v >= 1, message="--num_samples must be >= 1")
flags.register_validator("batch_size", lambda v: v >= 1, message="--batch_size must be >= 1")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Input": "saved_model",
    "Generation": "num_samples seed batch_size label labels",
    "Output": "output_dir format",
    "Quality gate": "quality_check quality_tries",
}
EXAMPLE = "crfgan-sample --saved_model=exports/luna256 --num_samples=4 --output_dir=samples/luna256"


@common.command(oom=common.default_out_of_memory(
    "sampling", "a lower `batch_size` (1 generates one volume at a time; the samples do not "
    "change with it)"))
def main(argv):
    del argv
    if FLAGS.label is not None and FLAGS.labels:
        raise common.CommandError("give --label or --labels, not both")
    try:
        labels = [FLAGS.label] if FLAGS.label is not None else \
            [int(v) for v in FLAGS.labels or []]
    except ValueError:
        raise common.CommandError(f"--labels must be integers, got {FLAGS.labels}") from None
    if FLAGS.quality_check:
        from crfgan_tf.evaluation import quality

        report = quality.sample_checked(
            FLAGS.saved_model, FLAGS.num_samples, FLAGS.seed, FLAGS.output_dir, FLAGS.format,
            FLAGS.batch_size, log=common.log, labels=labels, max_tries=FLAGS.quality_tries)
        if report["failed"]:
            raise common.CommandError(
                f"{report['failed']} of {report['failed'] + report['passed']} samples failed the "
                f"quality gate after {FLAGS.quality_tries} latents each (written, marked "
                f"passed: false in {FLAGS.output_dir}/quality.json)", status=1)
        return
    from crfgan_tf.generation import sample as sample_lib

    sample_lib.sample(FLAGS.saved_model, FLAGS.num_samples, FLAGS.seed, FLAGS.output_dir,
                      FLAGS.format, FLAGS.batch_size, log=common.log, labels=labels)


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main)
