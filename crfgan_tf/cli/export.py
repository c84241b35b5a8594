"""Exports a trained generator as a TensorFlow SavedModel.

  python -m crfgan_tf.export --model_dir=runs/luna256 --export_dir=exports/luna256

The SavedModel loads with `tf.saved_model.load` alone. Signature `generate`:
z float32 [batch, latent_dim] -> volume float32 [batch, S, S, S] in [-1, 1]. Variables
`latent_dim`, `img_size`, `window`, `output_spacing` and `metadata_json` describe it.
"""

import sys

from absl import flags

from crfgan_tf import runtime

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Training run directory (config.json, checkpoints/).")
flags.DEFINE_string("export_dir", None, "Where the SavedModel goes (replaced if present).")
flags.DEFINE_string("step", None, "Checkpoint step to export, or 'best' (the best "
                    "in-training evaluation, model_dir/best); default: the latest.")
flags.DEFINE_integer("slab", 8, "Embedding slices per G2 slab: smaller = less memory, same result.")
flags.mark_flags_as_required(["model_dir", "export_dir"])
flags.register_validator("slab", lambda v: v >= 1, message="--slab must be >= 1")


# --help (crfgan_tf/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Input": "model_dir step",
    "Output": "export_dir",
    "Generation": "slab",
}
EXAMPLE = "crfgan-export --model_dir=runs/luna256 --export_dir=exports/luna256"


@runtime.reports_user_errors
def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]} (flags need --name=value)", file=sys.stderr)
        return 2
    from crfgan_tf import export_lib

    try:
        step = FLAGS.step
        if step is not None and step != "best":
            try:
                step = int(step)
            except ValueError:
                print(f"error: --step must be an integer or 'best', got {step!r}",
                      file=sys.stderr)
                return 2
        export_lib.export(FLAGS.model_dir, FLAGS.export_dir, step, FLAGS.slab,
                          log=lambda m: print(m, file=sys.stderr))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run():
    """The command (console script, python -m shim)."""
    runtime.run_command(main)
