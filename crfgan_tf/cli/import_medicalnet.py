"""Converts MedicalNet's PyTorch ResNet-50 checkpoint into the .npz this project reads.

  pip install torch          # only this tool needs it (CPU build is enough)
  python -m tools.import_medicalnet --checkpoint=resnet_50.pth --output=weights/medicalnet_resnet50.npz

resnet_50.pth is MedicalNet's public pretrained model (github.com/Tencent/MedicalNet,
"pretrain" archive), the extractor HA-GAN and CRF-GAN use for 3D FID. The tool loads it on
the CPU, drops the segmentation head, checks that every tensor fits the Keras network, runs
one forward pass, and prints the weights' sha256 (the number every FID result quotes).
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.import_medicalnet: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.import_medicalnet").run())

import os

from absl import flags

from crfgan_tf.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "MedicalNet resnet_50.pth (PyTorch).")
flags.DEFINE_string("output", "weights/medicalnet_resnet50.npz", "Where to write the .npz.")
flags.mark_flag_as_required("checkpoint")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Input": "checkpoint",
    "Output": "output",
}
EXAMPLE = ("crfgan-import-medicalnet --checkpoint=resnet_50.pth "
           "--output=weights/medicalnet_resnet50.npz")


@common.command()
def main(argv):
    del argv
    if not os.path.isfile(FLAGS.checkpoint):
        raise common.CommandError(f"--checkpoint: no file {FLAGS.checkpoint!r}")
    try:
        import torch
    except ImportError:
        raise common.CommandError(
            "reading a .pth checkpoint needs PyTorch: pip install torch (CPU build: pip "
            "install torch --index-url https://download.pytorch.org/whl/cpu)") from None
    import numpy as np

    from crfgan_tf.evaluation import medicalnet
    from crfgan_tf.utils import fileio

    try:
        ckpt = torch.load(FLAGS.checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a bad file
        raise common.CommandError(f"--checkpoint {FLAGS.checkpoint!r} is not a readable "
                                  f"PyTorch checkpoint: {err}", status=1) from None
    raw = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(raw, dict):
        raise common.CommandError(f"--checkpoint {FLAGS.checkpoint!r} holds no state_dict",
                                  status=1)
    state = medicalnet.clean_state_dict({k: v.numpy() for k, v in raw.items()
                                         if hasattr(v, "numpy")})
    model = medicalnet.build_resnet50()
    try:
        medicalnet.set_weights(model, state)
    except ValueError as err:  # the file is not MedicalNet's ResNet-50
        raise common.CommandError(str(err), status=1) from None
    features = model(np.zeros((1, 16, 16, 16, 1), np.float32), training=False).numpy()
    if not np.all(np.isfinite(features)):
        raise common.CommandError("the converted network gives non-finite features", status=1)
    fileio.ensure_output_dir(os.path.dirname(FLAGS.output) or ".", "`output`")  # weights/
    with fileio.atomic_output(FLAGS.output, ".npz") as tmp:
        medicalnet.save_state(state, tmp)
    print(f"wrote {FLAGS.output}: {len(state)} tensors, "
          f"{sum(v.size for v in state.values()):,d} numbers")
    print(f"extractor {medicalnet.NAME} weights sha256 {medicalnet.state_sha256(state)}")


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main)
