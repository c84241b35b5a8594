"""Exports a trained generator: a TensorFlow SavedModel, a weights package and a model card.

  python -m crfgan_tf.export --model_dir=runs/luna256 --export_dir=exports/luna256

The export directory holds, by --format:
  - the SavedModel (saved_model.pb, variables/): loads with `tf.saved_model.load` alone.
    Signature `generate`: z float32 [batch, latent_dim] -> volume float32 [batch, S, S, S]
    in [-1, 1]. Variables `latent_dim`, `img_size`, `window`, `output_spacing` and
    `metadata_json` describe it. Loading a SavedModel runs its graph: it is code;
  - the weights package (package.json, <network>.weights.h5): arrays and JSON only, with
    checksums; every command that reads an export loads it by rebuilding the networks from
    code, and prefers it where both are present. Share this one (docs/sharing.md);
  - always the model card, MODEL_CARD.md and model_card.json: model, data (case ids, no
    patient data), training, evaluation, intended use, limitations, licence.
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.export: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.export").run())

from absl import flags

from crfgan_tf.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Training run directory (config.json, checkpoints/).")
flags.DEFINE_string("export_dir", None, "Where the SavedModel goes (replaced if present).")
flags.DEFINE_string("step", None, "Checkpoint step to export: an integer, 'best' (the best "
                    "in-training evaluation, model_dir/best, by the run's --best_metric) or "
                    "'latest'. Default: 'best' where the run kept one (its healthiest step, "
                    "named in the model card), else 'latest'.")
flags.DEFINE_bool("ema", True, "For a run trained with --ema_decay: export G's moving "
                  "average (what its evaluations measured); --noema: the trained weights.")
flags.DEFINE_integer("slab", 8, "Embedding slices per G2 slab: smaller = less memory, same result.")
flags.DEFINE_enum("format", "both", ["both", "weights", "savedmodel"],
                  "What to write beside the model card: both (SavedModel and weights "
                  "package), weights (the package alone: data only, to share) or savedmodel.")
flags.DEFINE_string("license", "", "The weights' licence for the model card (e.g. CC-BY-4.0); "
                    "they carry the terms of their training data. Default: not stated.")
flags.DEFINE_bool("quality_ranges", True,
                  "Compute the quality gate's ranges (quality_ranges.json, and in the model "
                  "card) from up to 256 of the run's training volumes, for crfgan-sample "
                  "--quality_check; skipped with a warning when the records are gone.")
flags.DEFINE_string("memorization_report", "",
                    "memorization.json of crfgan-memorization on this model: its verdict goes "
                    "into the model card.")
flags.mark_flags_as_required(["model_dir", "export_dir"])
flags.register_validator("slab", lambda v: v >= 1, message="--slab must be >= 1")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Input": "model_dir step ema",
    "Output": "export_dir format",
    "Model card": "license memorization_report quality_ranges",
    "Generation": "slab",
}
EXAMPLE = "crfgan-export --model_dir=runs/luna256 --export_dir=exports/luna256"


@common.command()
def main(argv):
    del argv
    step = FLAGS.step
    if step not in (None, "best", "latest"):
        try:
            step = int(step)
        except ValueError:
            raise common.CommandError(
                f"--step must be an integer, 'best' or 'latest', got {step!r}") from None
    from crfgan_tf.generation import export as export_lib

    meta = export_lib.export(FLAGS.model_dir, FLAGS.export_dir, step, FLAGS.slab,
                             log=common.log, fmt=FLAGS.format, license_text=FLAGS.license,
                             memorization_report=FLAGS.memorization_report, ema=FLAGS.ema)
    if FLAGS.quality_ranges:
        from crfgan_tf.evaluation import quality

        quality.export_ranges(FLAGS.model_dir, FLAGS.export_dir, meta, log=common.log)


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main)
