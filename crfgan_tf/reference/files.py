"""The reference's checkpoint files (`<prefix>_iter<N>.pth`): which iterations a folder holds
and reading one into numpy without keeping torch objects (PyTorch is needed only here)."""

from __future__ import annotations

import glob
import os
import re
from typing import List

from crfgan_tf.reference.mapping import FILES, ReferenceMismatch, strip_prefix


def load_pth(path: str) -> dict:
    """{'model': {key: ndarray}, 'optimizer': dict or None} of one reference file."""
    try:
        import torch
    except ImportError:
        raise RuntimeError("reading the reference's .pth files needs PyTorch: pip install torch "
                           "(a CPU build is enough: pip install torch --index-url "
                           "https://download.pytorch.org/whl/cpu)") from None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a bad file
        raise ReferenceMismatch(f"{path} is not a readable PyTorch checkpoint: "
                                f"{str(err).splitlines()[0][:300]}") from None
    if not isinstance(ckpt, dict):
        raise ReferenceMismatch(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict):
        raise ReferenceMismatch(f"{path}: its 'model' entry is not a state_dict")
    arrays = {k: v.detach().cpu().numpy() for k, v in strip_prefix(state).items()
              if hasattr(v, "detach")}

    def numpy_tree(x):
        if hasattr(x, "detach"):
            return x.detach().cpu().numpy()
        if isinstance(x, dict):
            return {k: numpy_tree(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(numpy_tree(v) for v in x)
        return x

    optimizer = ckpt.get("optimizer")
    return {"model": arrays, "optimizer": numpy_tree(optimizer) if optimizer else None}


def available_iterations(checkpoint_dir: str, model: str) -> List[int]:
    """Iterations N for which every file of `model` exists in checkpoint_dir."""
    found = None
    for prefix in FILES[model]:
        pattern = re.compile(rf"{re.escape(prefix)}_iter(\d+)\.pth$")
        names = (os.path.basename(p)
                 for p in glob.glob(os.path.join(checkpoint_dir, f"{prefix}_iter*.pth")))
        its = {int(m.group(1)) for n in names if (m := pattern.search(n))}
        found = its if found is None else found & its
    return sorted(found or ())
