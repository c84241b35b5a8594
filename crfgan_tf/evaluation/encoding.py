"""Features of real volumes from a model's own encoder (the SavedModel's `encode` and
`reconstruct` signatures, crfgan_tf.generation.export): per case the pooled hE embedding (CRF-GAN
and HA-GAN; HA-GAN also its sub-encoder's latent z) and how well G2 reconstructs the volume
from it, in the training window's units (HU for CT). Written as one .npz keyed by case id,
which `crfgan-downstream --features` probes."""

from __future__ import annotations

import json
from typing import Iterable

import numpy as np
import tensorflow as tf

from crfgan_tf.evaluation.sources import Case, EvaluationError
from crfgan_tf.generation import sample as sample_lib
from crfgan_tf.utils import fileio
from crfgan_tf.utils.progress import Progress

FEATURES_FORMAT = "crfgan-tf-features/1"
FEATURE_DEFINITION = ("hE(volume) embedding (S/4)^3 x C, per channel its mean then its "
                      "standard deviation over the grid: 2C values")


def load_encoder(saved_model: str):
    """(module, metadata, saved_model) of an export that has the `encode` signature."""
    try:
        module, meta = sample_lib.load(saved_model)
    except sample_lib.SavedModelError as err:
        raise EvaluationError(f"`saved_model`: {err}") from None
    if "encode" not in module.signatures:
        raise EvaluationError(
            f"--saved_model {saved_model!r} was exported before exports had an 'encode' "
            "signature; export the run again (crfgan-export --model_dir=... --export_dir=...): "
            "its checkpoints hold the encoder")
    return module, meta, saved_model


def encode_batch(module, volumes: np.ndarray) -> dict:
    """The `encode` outputs of a batch (b, S, S, S) as numpy arrays."""
    return {k: v.numpy() for k, v in module.encode(volume=tf.constant(volumes)).items()}


def reconstruction_errors(module, volumes: np.ndarray, window) -> tuple:
    """(mean absolute, root mean square) error of G2(hE(x)) against x per volume, in the
    window's units (HU for CT): a difference of 2 in [-1, 1] is the window's width."""
    recon = module.reconstruct(volume=tf.constant(volumes))["volume"].numpy()
    diff = (recon.astype(np.float64) - volumes) * (float(window[1]) - float(window[0])) / 2.0
    axes = tuple(range(1, diff.ndim))
    return np.abs(diff).mean(axis=axes), np.sqrt((diff ** 2).mean(axis=axes))


def encode_cases(encoder, cases: Iterable[Case], count: int, output: str,
                 source: str, batch_size: int = 1, save_embeddings: bool = False,
                 log=print) -> dict:
    """Encodes every case and writes `output` (.npz): case_ids, labels (-1: none), features
    (N, 2C) float32, reconstruction_mae / reconstruction_rmse (N,) in window units, latent
    (N, latent) for HA-GAN, embeddings (N, S/4, S/4, S/4, C) float16 with save_embeddings,
    and meta (JSON). Returns the meta dict with the mean reconstruction errors.

    encoder: (module, metadata, saved_model path) of load_encoder."""
    module, meta, saved_model = encoder
    size = int(module.img_size.numpy())
    window = [float(v) for v in module.window.numpy()]
    out = {"case_ids": [], "labels": [], "features": [], "reconstruction_mae": [],
           "reconstruction_rmse": [], "latent": [], "embeddings": []}
    batch: list = []
    progress = Progress(count, log, "encode:", "volumes")
    units = "HU" if meta.get("modality", "ct") == "ct" else "window intensity units"

    def flush():
        volumes = np.stack([c.volume for c in batch]).astype(np.float32)
        enc = encode_batch(module, volumes)
        mae, rmse = reconstruction_errors(module, volumes, window)
        out["case_ids"] += [c.case_id for c in batch]
        out["labels"] += [-1 if c.label is None else int(c.label) for c in batch]
        out["features"].append(enc["features"])
        out["reconstruction_mae"].append(mae)
        out["reconstruction_rmse"].append(rmse)
        if "latent" in enc:
            out["latent"].append(enc["latent"])
        if save_embeddings:
            out["embeddings"].append(enc["embedding"].astype(np.float16))
        progress.report(len(out["case_ids"]),
                        f"reconstruction error {float(np.mean(mae)):.1f} {units} (mean abs)")
        batch.clear()

    seen = set()
    for case in cases:
        if case.volume.shape != (size,) * 3:
            raise EvaluationError(f"{source}: case {case.case_id} has shape {case.volume.shape}; "
                                  f"the model encodes ({size}, {size}, {size})")
        if case.case_id in seen:
            raise EvaluationError(f"{source}: case id {case.case_id!r} occurs twice; features "
                                  "are keyed by case id")
        seen.add(case.case_id)
        batch.append(case)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not out["case_ids"]:
        raise EvaluationError(f"{source}: no volumes")
    info = {"format": FEATURES_FORMAT, "saved_model": saved_model, "source": source,
            "model": meta.get("model"), "img_size": size, "window": window,
            "features": FEATURE_DEFINITION,
            "reconstruction_units": units,
            "cases": len(out["case_ids"]),
            "reconstruction_mae_mean": float(np.mean(np.concatenate(out["reconstruction_mae"]))),
            "reconstruction_rmse_mean": float(np.mean(
                np.concatenate(out["reconstruction_rmse"])))}
    arrays = {"case_ids": np.array(out["case_ids"], dtype=str),
              "labels": np.array(out["labels"], np.int64),
              "features": np.concatenate(out["features"]).astype(np.float32),
              "reconstruction_mae": np.concatenate(out["reconstruction_mae"]).astype(np.float32),
              "reconstruction_rmse": np.concatenate(out["reconstruction_rmse"]).astype(np.float32),
              "meta": np.array(json.dumps(info))}
    if out["latent"]:
        arrays["latent"] = np.concatenate(out["latent"]).astype(np.float32)
    if save_embeddings:
        arrays["embeddings"] = np.concatenate(out["embeddings"])
    with fileio.atomic_output(output, ".npz") as tmp:
        np.savez(tmp, **arrays)
    return info


def read_features(path: str) -> dict:
    """A features file of encode_cases: {"case_ids": [...], "features": (N, F), "labels",
    "meta"}; EvaluationError (naming `features`) when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise EvaluationError(f"`features` {path!r}: not readable as .npz: {err}") from None
    if "case_ids" not in out or "features" not in out or "meta" not in out:
        raise EvaluationError(f"--features {path!r}: not a crfgan-encode output (needs "
                              "case_ids, features and meta)")
    out["case_ids"] = [str(c) for c in out["case_ids"]]
    out["meta"] = json.loads(str(out["meta"]))
    return out
