r"""Imports a PyTorch reference checkpoint (CRF-GAN or HA-GAN) as a crfgan-tf run directory.

  pip install torch          # only reading .pth files needs it (a CPU build is enough)
  python -m tools.import_reference --model=hagan --checkpoint_dir=checkpoint/HA_GAN_COPD \
      --iteration=80000 --img_size=256 --model_dir=runs/hagan_copd
  python -m crfgan_tf.export --model_dir=runs/hagan_copd --export_dir=exports/hagan_copd

Reads `{G,D,E,crf}_iter{N}.pth` (CRF-GAN) or `{G,D,E,Sub_E}_iter{N}.pth` (HA-GAN), with or
without nn.DataParallel's `module.` prefix, and writes config.json, flags.txt, a checkpoint
at step N of every network (spectral-norm u vectors and Adam states included) and
reference_import.json. Export, sampling, FID/MMD and continued training then work on it.
Exit status: 0 done, 1 the files do not fit (the message names the tensor and the flag),
2 invalid flags or missing files.
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.import_reference: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.import_reference").run())

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.core import geometry, intensity

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", None, ["crfgan", "hagan"], "Which reference wrote the checkpoint.")
flags.DEFINE_string("checkpoint_dir", None, "Directory of the reference's *_iter{N}.pth files.")
flags.DEFINE_integer("iteration", None, "N of the files *_iter{N}.pth.")
flags.DEFINE_integer("img_size", None,
                     f"Volume side the reference trained at {geometry.REFERENCE_SIZES}.")
flags.DEFINE_string("model_dir", None, "Run directory to write.")
flags.DEFINE_integer("latent_dim", 1024, "Size of z (the reference's --latent-dim).")
flags.DEFINE_string("train_records", "",
                    "Optional: records (data_prep.convert) of the data the reference trained on; "
                    "export takes the intensity window, modality and spacing from them "
                    f"(without: the CT window {list(intensity.CT_WINDOW)} HU and 1 mm spacing).")
flags.DEFINE_bool("overwrite", False, "Replace a --model_dir that exists and is not empty "
                  "(never one that a running command holds: its lock is named).")
flags.DEFINE_bool("break_lock", False,
                  "Take over --model_dir's lock when it was written on another host whose "
                  "process cannot be checked from here (only when that run is gone).")
for _name in ("model", "checkpoint_dir", "iteration", "img_size", "model_dir"):
    flags.mark_flag_as_required(_name)
flags.register_validator(
    "img_size", lambda v: v is None or v in geometry.REFERENCE_SIZES,
    message=f"--img_size must be one of {geometry.REFERENCE_SIZES}, the sizes the references "
            "define (512^3 is this implementation's own)")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Input": "model checkpoint_dir iteration",
    "Model": "img_size latent_dim",
    "Output": "model_dir train_records overwrite break_lock",
}
EXAMPLE = ("crfgan-import-reference --model=hagan --checkpoint_dir=checkpoint/HA_GAN_COPD "
           "--iteration=80000 --img_size=256 --model_dir=runs/hagan_imported")


# a file whose tensors do not fit is 1; PyTorch missing (files.load_pth) is the user's
@common.command(statuses={"crfgan_tf.reference.mapping:ReferenceMismatch": 1},
                errors=(RuntimeError,))
def main(argv):
    del argv
    if FLAGS.iteration < 0:
        raise common.CommandError(f"--iteration must be >= 0, got {FLAGS.iteration}")
    from crfgan_tf import reference

    reference.import_checkpoint(FLAGS.model, FLAGS.checkpoint_dir, FLAGS.iteration,
                                FLAGS.img_size, FLAGS.model_dir, latent_dim=FLAGS.latent_dim,
                                overwrite=FLAGS.overwrite, train_records=FLAGS.train_records,
                                log=common.log, break_lock=FLAGS.break_lock)


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main)
