"""Exports a trained generator as a TensorFlow SavedModel.

  python -m crfgan_tf.export --model_dir=runs/luna256 --export_dir=exports/luna256

The SavedModel loads with `tf.saved_model.load` alone. Signature `generate`:
z float32 [batch, latent_dim] -> volume float32 [batch, S, S, S] in [-1, 1]. Variables
`latent_dim`, `img_size`, `window`, `output_spacing` and `metadata_json` describe it.
"""

from absl import flags

from crfgan_tf.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Training run directory (config.json, checkpoints/).")
flags.DEFINE_string("export_dir", None, "Where the SavedModel goes (replaced if present).")
flags.DEFINE_string("step", None, "Checkpoint step to export, or 'best' (the best "
                    "in-training evaluation, model_dir/best); default: the latest.")
flags.DEFINE_integer("slab", 8, "Embedding slices per G2 slab: smaller = less memory, same result.")
flags.mark_flags_as_required(["model_dir", "export_dir"])
flags.register_validator("slab", lambda v: v >= 1, message="--slab must be >= 1")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Input": "model_dir step",
    "Output": "export_dir",
    "Generation": "slab",
}
EXAMPLE = "crfgan-export --model_dir=runs/luna256 --export_dir=exports/luna256"


@common.command()
def main(argv):
    del argv
    step = FLAGS.step
    if step is not None and step != "best":
        try:
            step = int(step)
        except ValueError:
            raise common.CommandError(
                f"--step must be an integer or 'best', got {step!r}") from None
    from crfgan_tf.generation import export as export_lib

    export_lib.export(FLAGS.model_dir, FLAGS.export_dir, step, FLAGS.slab, log=common.log)


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main)
