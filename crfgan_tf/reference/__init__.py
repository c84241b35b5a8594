"""The PyTorch reference implementations' checkpoints (CRF-GAN: mahshid1998/CRF-GAN; HA-GAN:
batmanlab/HA-GAN) mapped onto this project's networks, and imported as a run directory.

A reference run writes, every few thousand iterations, one file per network,
`{G,D,E,crf}_iter{N}.pth` (HA-GAN: `{G,D,E,Sub_E}_iter{N}.pth`), each
`{'model': state_dict, 'optimizer': torch.optim.Adam state_dict}`, the keys prefixed with
`module.` when the run used nn.DataParallel. This module owns the correspondence between
those tensors and our Keras variables (`layout`), converts them both ways (`to_keras`,
`to_reference`), and `import_checkpoint` writes a normal run directory (config.json, a
checkpoint at step N with every network, the spectral-norm u vectors and the Adam states)
that export, sample, FID and continued training use like any other.

Tensor conventions (checked side by side with the reference code):
- Conv3d [out, in, kd, kh, kw] -> Keras [kd, kh, kw, in, out]; Linear [out, in] -> [in, out];
  GroupNorm weight/bias -> gamma/beta; SN buffer u0 [1, out] -> sn_u [out] (sv0, a logged
  copy of sigma, is not used); CRF W [1, N, N] -> [N, N].
- G1's first Linear produces its units in torch's (c, d, h, w) order (`view(-1, 512, 4, 4,
  4)`); our Reshape((4, 4, 4, 512)) reads (d, h, w, c): its units (and the Adam moments of
  them) are permuted.
- D's convolutions are numbered from the 256^3 network: at 128^3 they start at conv2, at
  64^3 at conv3; D^L's (sub_D) and the sub-encoder's at 128^3 start at conv2.
- Adam: the reference's `torch.optim.Adam` is `crfgan_tf.models.optimizers.PyTorchAdam` here, with
  the same first and second moments and step count.
- A class-conditional run (the references' --num-class N) is recognised by D's `fc2_class`
  head and imports with num_classes=N: G1's fc1 then takes z and the one-hot label
  concatenated, in that order, as ours does.

Modules: `mapping` (the tensors' correspondence, `layout`), `files` (reading `.pth`,
needs PyTorch), `importer` (the run directory). This package's names are those of all three, loaded on first use
(`crfgan_tf.reference.import_checkpoint`), so importing it loads neither TensorFlow nor
PyTorch.
"""

import importlib

_MODULES = ("importer", "mapping", "files")


def __getattr__(name):
    if name in _MODULES:  # the submodule itself (`crfgan_tf.reference.mapping`)
        return importlib.import_module(f"{__name__}.{name}")
    for module in _MODULES:
        mod = importlib.import_module(f"{__name__}.{module}")
        if hasattr(mod, name):
            return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
