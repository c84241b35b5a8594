"""What each training option that departs from the reference changes in one iteration.

Every option whose default is the reference's behaviour (docs/fidelity.md, "Reference semantics and
deviations") is measured the same way: two models with the same initial weights and
spectral-norm u, one with the reference's setting and one with the option, run one
`train_step` on the same batch; reported are the losses of both and, per phase, the
share of weights whose update differs by more than 1 % of that phase's learning rate (the
first Adam step is about lr * sign(g), so this counts weights that move differently).
`python -m tools.deviation_effects` prints the table docs/benchmarks.md records.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List

import keras
import numpy as np
import tensorflow as tf

from crfgan_tf.core import geometry
from crfgan_tf.run import config as config_lib

# option -> the value that departs from the reference, per model
OPTIONS = {"crfgan": {"adam": "keras", "crf_sample": "reuse", "crf_nodes": "slices",
                      "lr_crf": 1e-4},
           "hagan": {"adam": "keras", "hagan_low_res": "average"}}


def reference_config(model: str, img_size: int, **overrides) -> config_lib.TrainConfig:
    """The reference's training semantics (including its channel-group CRF nodes)."""
    return config_lib.TrainConfig(model_dir="/nonexistent", model=model, img_size=img_size,
                                  batch_size=2, crf_nodes="channels", **overrides)


def _batch(img_size: int, latent_dim: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    vol = rng.uniform(-1, 1, (2, img_size, img_size, img_size, 1)).astype("float32")
    r = geometry.position(int(rng.integers(0, geometry.num_positions(img_size))))
    batch = {"volume": vol, "crop": vol[:, r:r + geometry.crop_depth(img_size)],
             "position": np.array([r, r], np.int32)}
    batch.update({k: rng.standard_normal((2, latent_dim)).astype("float32")
                  for k in ("z_d", "z_g", "z_c")})
    return {k: tf.constant(v) for k, v in batch.items()}


def _one_step(config: config_lib.TrainConfig, batch: dict, init_seed: int, w_init=None):
    from crfgan_tf.run import factory

    keras.utils.set_random_seed(init_seed)
    model = factory.build_model(config)
    if w_init is not None and hasattr(model, "crf"):
        model.crf.w.assign(w_init)
    before = {p: [v.numpy().copy() for v in ws] for p, ws in model.phase_weights().items()}
    losses = {k: float(v) for k, v in model.train_step(batch).items()
              if k in model.LOSS_PHASE}
    after = {p: [v.numpy() for v in ws] for p, ws in model.phase_weights().items()}
    steps = {p: [a - b for a, b in zip(after[p], before[p])] for p in before}
    return losses, steps, model


def measure(model: str = "crfgan", img_size: int = 64, seed: int = 0,
            log: Callable[[str], None] = print) -> List[dict]:
    """One row per option of OPTIONS[model]: losses and differing-update shares.

    The CRF's W starts at a small random value (not 0) so that the CRF options act on
    the first step; both sides get the same W.
    """
    from crfgan_tf.run import factory

    base = reference_config(model, img_size)
    batch = _batch(img_size, base.latent_dim, seed)
    n = img_size // 4
    w_init = np.random.default_rng(seed + 1).normal(0, 0.1, (n, n)).astype("float32")
    factory.set_precision("float32")
    ref_losses, ref_steps, ref_model = _one_step(base, batch, seed, w_init)
    lr = {p: getattr(base, f) for p, f in type(ref_model).LEARNING_RATES.items()}
    rows = []
    for option, value in OPTIONS[model].items():
        log(f"deviations: {model} {img_size}^3 --{option}={value}")
        config = dataclasses.replace(base, **{option: value})
        losses, steps, _ = _one_step(config, batch, seed, w_init)
        row = {"option": f"--{option}={value}", "losses": losses, "reference_losses": ref_losses,
               "differing_updates": {}}
        for phase, deltas in steps.items():
            diff = np.concatenate([np.abs(a - b).ravel()
                                   for a, b in zip(deltas, ref_steps[phase])])
            row["differing_updates"][phase] = float(np.mean(diff > 0.01 * lr[phase]))
        if "crf" in steps:
            ours = np.sign(steps["crf"][0])
            theirs = np.sign(ref_steps["crf"][0])
            row["crf_w_sign_agreement"] = float(np.mean(ours == theirs))
        rows.append(row)
    return rows


def markdown(rows: List[dict]) -> str:
    """The rows as the table in docs/benchmarks.md."""
    lines = ["| option | losses (reference -> option) | weights stepping > 1 % of lr apart |",
             "|---|---|---|"]
    for row in rows:
        losses = ", ".join(f"{k} {row['reference_losses'][k]:.4f} -> {v:.4f}"
                           for k, v in row["losses"].items())
        shares = ", ".join(f"{p} {100 * s:.1f} %" for p, s in row["differing_updates"].items())
        if "crf_w_sign_agreement" in row:
            shares += f" (W's update signs agree on {100 * row['crf_w_sign_agreement']:.0f} %)"
        lines.append(f"| `{row['option']}` | {losses} | {shares} |")
    return "\n".join(lines)
