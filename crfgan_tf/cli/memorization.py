r"""Is the synthetic data private? A memorisation audit: each generated volume's nearest
training scan against its nearest held-out scan, in MedicalNet feature space and in
downsampled voxel space, with a verdict and the closest pairs as PNG.

  python -m tools.memorization --saved_model=exports/luna256 \
      --train_records='data/luna16_256/train-*.tfrecord' \
      --holdout_records='data/luna16_256/val-*.tfrecord' --num_samples=256 \
      --weights=weights/medicalnet_resnet50.npz --output_dir=studies/memorization

--saved_model also takes a folder / glob of generated volume files (crfgan-sample output).
--train_records are the generator's training scans; --holdout_records real scans it never
saw (checked against the export's training cases). Writes memorization.json (statistics,
verdict, every generated volume's nearest neighbours), closest_<space>_NN.png, ratios.png.
Exit status 0 either way; --fail_on_memorisation makes a flagged audit exit 1.
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.memorization: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.memorization").run())

import json

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.core.geometry import FEATURE_SIDE

FLAGS = flags.FLAGS
# data
flags.DEFINE_string("saved_model", None, "The generator: a SavedModel, or generated volume "
                    "files (folder / glob of NIfTI, MetaImage, NRRD, .npy).")
flags.DEFINE_string("train_records", None, "The generator's training scans (TFRecord glob).")
flags.DEFINE_string("holdout_records", None, "Real scans the generator never saw (TFRecord glob).")
flags.DEFINE_integer("num_samples", 64, "Volumes generated from a SavedModel.")
flags.DEFINE_integer("seed", 0, "Generated volume i uses latent (seed, i).")
flags.DEFINE_integer("batch_size", 1, "Volumes per generator call.")
# the spaces
flags.DEFINE_string("weights", "", "MedicalNet ResNet-50 .npz from tools.import_medicalnet.")
flags.DEFINE_bool("allow_random_features", False, "Without --weights, a fixed-seed random "
                  "ResNet-50 (labelled; smoke tests only).")
flags.DEFINE_integer("feature_side", FEATURE_SIDE, "MedicalNet's input side. " + common.FEATURE_SIDE_HELP)
flags.DEFINE_integer("voxel_size", 32, "Voxel space: volumes averaged over blocks down to "
                     "voxel_size^3.")
# the verdict
flags.DEFINE_float("max_copy_share", 0.05, "Flag when more generated volumes than this share "
                   "are closer to a training scan than any held-out scan is.")
flags.DEFINE_float("alpha", 0.01, "Flag when the closer-to-train share's one-sided binomial "
                   "p-value is below this.")
flags.DEFINE_bool("fail_on_memorisation", False, "Exit with status 1 when flagged.")
# output
flags.DEFINE_string("output_dir", None, "Where memorization.json and the PNGs go.")
flags.DEFINE_integer("pairs", 8, "Closest pairs rendered per space.")
flags.DEFINE_bool("json", False, "Print the result's statistics as one JSON object.")
flags.mark_flags_as_required(["saved_model", "train_records", "holdout_records", "output_dir"])


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Data": "saved_model train_records holdout_records num_samples seed",
    "Features": "weights allow_random_features feature_side voxel_size",
    "Verdict": "max_copy_share alpha fail_on_memorisation",
    "Running": "batch_size",
    "Output": "output_dir pairs json",
}
EXAMPLE = ("crfgan-memorization --saved_model=exports/luna256 "
           "--train_records='data/luna16_256/train-*.tfrecord' "
           "--holdout_records='data/luna16_256/val-*.tfrecord' --output_dir=results/memorization")


@common.command()
def main(argv):
    del argv
    from crfgan_tf.studies import memorization

    result = memorization.run_audit(memorization.AuditConfig(
        saved_model=FLAGS.saved_model, train_records=FLAGS.train_records,
        holdout_records=FLAGS.holdout_records, output_dir=FLAGS.output_dir,
        num_samples=FLAGS.num_samples, seed=FLAGS.seed, batch_size=FLAGS.batch_size,
        voxel_size=FLAGS.voxel_size, weights=FLAGS.weights,
        allow_random_features=FLAGS.allow_random_features, feature_side=FLAGS.feature_side,
        max_copy_share=FLAGS.max_copy_share, alpha=FLAGS.alpha, pairs=FLAGS.pairs),
        log=common.log)
    if FLAGS.json:
        print(json.dumps({k: v for k, v in result.items() if k != "closest"}))
    else:
        print(common.flagged(result["verdict"]))
    return 1 if FLAGS.fail_on_memorisation and result["memorisation_flagged"] else 0


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main)
