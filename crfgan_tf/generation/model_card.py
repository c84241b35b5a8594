"""The model card of an export: MODEL_CARD.md for people, model_card.json for tools.

Written by crfgan-export beside every SavedModel and weights package. It states what the
generator is (model, size, parameters, resolution, spacing), what it learnt from (the
dataset kind, the number of cases and their digests, never their ids: file stems may name
a patient; manifest.case_digest), how (steps, seed, batch, learning rates, the source it
was initialised from by kind, folder name, step and checksum, not its path; the changes
made on resume), what was measured in the
run (the in-training FID/MMD with their feature network and side; a memorisation audit
when one is given), its intended use, its limitations and its licence.

Nothing in it is read from a scan: every field comes from the run directory's
config.json, data.json, eval.jsonl, best.json and config_changes.jsonl, or the export's
metadata, which themselves hold no patient data (docs/data.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Optional

from crfgan_tf.run import config as config_lib
from crfgan_tf.run import rundir

CARD_FORMAT = "crfgan-tf-model-card/1"
CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
MODEL_NAMES = {"crfgan": "CRF-GAN", "hagan": "HA-GAN (baseline, this project's port)"}
INTENDED_USE = (
    "Research: synthetic 3D volumes for method development, data augmentation studies, "
    "benchmarking generative models and reader studies. Not a medical device.")
LIMITATIONS = (
    "Every volume it generates is synthetic: it shows no patient and must never be used "
    "for diagnosis, treatment or as a record of a person.",
    "It reproduces the training data's population, scanners and protocol, and their biases; "
    "it has not been validated on any other population.",
    "Anatomical plausibility is not guaranteed: check samples (crfgan-fid-mmd, the reader "
    "study) before using them.",
    "A GAN may reproduce training cases closely; run crfgan-memorization before sharing "
    "samples or weights outside the data's terms.",
    "Metrics computed with the random-feature fallback (no MedicalNet weights) are "
    "internal comparisons only, not FID.")
CODE_LICENSE = "Apache-2.0"


def _eval_rows(model_dir: str) -> list:
    path = os.path.join(model_dir, rundir.EVAL_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _evaluation(model_dir: str, step: Optional[int]) -> dict:
    """The in-training evaluations of the run: the one at the exported step, the best, the
    last; each with its feature network and side."""
    keep = ("step", "fd", "mmd", "hist_w1_hu", "profile_l1_hu", "lung_fraction_diff",
            "ms_ssim", "ms_ssim_real", "diversity_ratio", "coverage",
            "body_fraction_sd_ratio", "lung_fraction_sd_ratio", "extractor", "pretrained",
            "feature_side", "n_real", "n_fake", "alarms")
    rows = _eval_rows(model_dir)
    out: dict = {"in_training": None}
    if rows:
        at = [r for r in rows if r["step"] == step]
        out["in_training"] = {
            "real_side": "the run's evaluation records (val split unless eval_records)",
            "at_exported_step": {k: at[-1].get(k) for k in keep} if at else None,
            "last": {k: rows[-1].get(k) for k in keep},
            "evaluations": len(rows)}
        best = None
        best_path = os.path.join(model_dir, rundir.BEST_FILE)
        if os.path.exists(best_path):
            with open(best_path) as f:
                best = json.load(f)
            best = {k: best.get(k) for k in ("step", "metric", "value", "extractor", "fd",
                                             "coverage", "recall", "body_fraction_sd_ratio",
                                             "lung_fraction_sd_ratio") if k in best}
        out["in_training"]["best"] = best
    return out


def _memorisation(path: str) -> Optional[dict]:
    if not path:
        return None
    with open(path) as f:
        audit = json.load(f)
    return {"file": os.path.basename(path), "verdict": audit.get("verdict"),
            "memorisation_flagged": audit.get("memorisation_flagged"),
            "extractor": audit.get("extractor"), "pretrained": audit.get("pretrained"),
            "generated": (audit.get("generated") or {}).get("count"),
            "train": audit.get("train"), "holdout": audit.get("holdout"),
            "created": audit.get("created")}


def card_id(metadata: dict, checkpoint_step: Optional[int]) -> str:
    """A short, stable id of the exported weights: the sha256 of the export metadata's
    architecture, checkpoint and training cases (12 hex digits)."""
    key = json.dumps({"metadata": {k: metadata.get(k) for k in sorted(metadata)
                                   if k not in ("metadata_source",)},
                      "step": checkpoint_step}, sort_keys=True, default=str)
    return "crfgan-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def build(config: config_lib.TrainConfig, model_dir: str, metadata: dict,
          checkpoint_step: Optional[int], parameters: dict, version: str,
          license_text: str = "", memorization_report: str = "",
          package_sha256: Optional[str] = None) -> dict:
    """model_card.json's dict (see the module docstring)."""
    data = rundir.read_data_metadata(model_dir) or {}
    case_digests = metadata.get("train_case_digests")
    arch = {"model": config.model, "name": MODEL_NAMES.get(config.model, config.model),
            "img_size": config.img_size, "embedding_factor": config.embedding_factor,
            "latent_dim": config.latent_dim, "width": config.width,
            "head_width": config.head_width,
            "num_classes": config.num_classes,
            "class_names": metadata.get("class_names"),
            "parameters": parameters, "parameters_total": int(sum(parameters.values()))}
    changes = rundir.read_changes(model_dir)
    card = {
        "format": CARD_FORMAT,
        "id": card_id(metadata, checkpoint_step),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "crfgan_tf_version": version,
        "model": arch,
        "output": {"shape_zyx": [config.img_size] * 3,
                   "spacing_zyx_mm": metadata.get("output_spacing"),
                   "modality": metadata.get("modality"), "window": metadata.get("window"),
                   "units": "HU" if metadata.get("modality", "ct") == "ct" else "intensity",
                   "orientation": "LPS, axial slices along z"},
        "training": {
            "dataset": data.get("dataset", "not recorded (a run started before 0.3.0)"),
            "cases": len(case_digests) if case_digests is not None else None,
            "case_digests": case_digests,
            "case_digest_kind": ("sha256 digests of the records' case ids (the scan's file "
                                 "stem, or an id derived from a DICOM series), not the ids: "
                                 "whoever holds a scan can digest its id and compare "
                                 "(crfgan_tf.data.manifest.case_digest)"),
            "steps": checkpoint_step, "train_steps": config.train_steps, "seed": config.seed,
            "batch_size": config.batch_size, "mixed_precision": config.mixed_precision,
            "learning_rates": {k: getattr(config, k) for k in ("lr_g", "lr_d", "lr_crf", "lr_e")},
            "augment": config.augment or None,
            "initialised_from": _shared_init_source(rundir.read_init_source(model_dir)),
            "changes_on_resume": [{"step": c.get("step"), "changed": c.get("changed")}
                                  for c in changes] or None},
        "evaluation": dict(_evaluation(model_dir, checkpoint_step),
                           memorisation_audit=_memorisation(memorization_report)),
        "intended_use": INTENDED_USE,
        "limitations": list(LIMITATIONS),
        "license": {"weights": license_text or None, "code": CODE_LICENSE},
        "weights_package_sha256": package_sha256,
    }
    return card


def _shared_init_source(source: Optional[dict]) -> Optional[dict]:
    """What the card says of `init_from`: the source's kind, folder name, step, checksum
    and the networks taken; not its path on the exporter's machine (config.json keeps it)."""
    if not source:
        return None
    shared = {k: source.get(k) for k in ("kind", "step", "sha256", "networks")}
    shared["name"] = os.path.basename(os.path.normpath(str(source.get("path", "")))) or None
    return shared


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(card: dict) -> str:
    """MODEL_CARD.md of model_card.json's dict."""
    m, o, t, e = card["model"], card["output"], card["training"], card["evaluation"]
    lines = [f"# Model card: {m['name']} {m['img_size']}³ ({card['id']})", "",
             "**Synthetic images only: not for diagnosis.** Every volume this model generates "
             "is synthetic and shows no patient.", "",
             "## Model", "",
             "| field | value |", "|---|---|",
             f"| model | {m['name']} (`{m['model']}`) |",
             f"| volume | {m['img_size']}³ voxels, spacing (z, y, x) {o['spacing_zyx_mm']} mm, "
             f"{o['modality']}, window {o['window']} {o['units']} |",
             f"| latent size, width, embedding factor | {m['latent_dim']}, {m['width']:g}, "
             f"{m['embedding_factor']} |",
             f"| classes | {m['num_classes'] or 'unconditional'}"
             + (f" ({', '.join(map(str, m['class_names'] or []))})" if m['num_classes'] else "")
             + " |",
             f"| parameters (exported networks) | {m['parameters_total']:,} ("
             + ", ".join(f"{k} {v:,}" for k, v in m["parameters"].items()) + ") |",
             f"| crfgan-tf version | {card['crfgan_tf_version']} |",
             f"| weights package sha256 | {card['weights_package_sha256'] or 'no package'} |",
             "", "## Training", "",
             "| field | value |", "|---|---|",
             f"| dataset | {t['dataset']} |",
             f"| training cases | {_fmt(t['cases'])} (model_card.json lists their "
             "sha256 digests, not their ids) |",
             f"| steps | {_fmt(t['steps'])} of {t['train_steps']}, seed {t['seed']}, batch "
             f"{t['batch_size']}, {t['mixed_precision']} |",
             "| learning rates | " + ", ".join(f"{k} {v:g}" for k, v in t["learning_rates"].items())
             + " |",
             f"| augmentation | {t['augment'] or 'none'} |"]
    src = t["initialised_from"]
    lines.append("| initialised from | " + (
        f"{src.get('kind')} {src.get('name', src.get('path'))} step {src.get('step')} "
        f"(networks: {', '.join(src.get('networks', []))}; sha256 {str(src.get('sha256'))[:16]}…)"
        if src else "its seed (trained from scratch)") + " |")
    if t["changes_on_resume"]:
        lines.append("| changed on resume | " + "; ".join(
            f"step {c['step']}: " + ", ".join(f"{k} {v[0]} → {v[1]}" for k, v in c["changed"].items())
            for c in t["changes_on_resume"]) + " |")
    lines += ["", "## Evaluation", ""]
    ev = e.get("in_training")
    if ev:
        row = ev["at_exported_step"] or ev["last"]
        kind = "MedicalNet" if row.get("pretrained") else "random features (not FID)"
        lines += [f"In-training evaluation at step {row['step']} against {ev['real_side']}: "
                  f"FD {_fmt(row.get('fd'))}, MMD {_fmt(row.get('mmd'))} with "
                  f"{row.get('extractor')} ({kind}, side {row.get('feature_side')}), "
                  f"{row.get('n_fake')} generated against {row.get('n_real')} real volumes; "
                  f"coverage {_fmt(row.get('coverage'))}, body and lung fraction spread "
                  f"{_fmt(row.get('body_fraction_sd_ratio'))} and "
                  f"{_fmt(row.get('lung_fraction_sd_ratio'))} x the real volumes'."]
        if ev.get("best"):
            b = ev["best"]
            shown = ", ".join(f"{k.replace('_', ' ')} {_fmt(b[k])}" for k in
                              ("fd", "coverage", "recall", "body_fraction_sd_ratio",
                               "lung_fraction_sd_ratio") if b.get(k) is not None)
            exported = "the exported step" if b["step"] == row["step"] else \
                "not the exported step (`crfgan-export --step=best` exports it)"
            lines.append(f"Best {b['metric']} {_fmt(b['value'])} at step {b['step']}, "
                         f"{exported}" + (f": {shown}." if shown else "."))
    else:
        lines.append("No in-training evaluation was run (`eval_every`); score the export "
                     "with crfgan-fid-mmd.")
    audit = e.get("memorisation_audit")
    lines.append("")
    lines.append(f"Memorisation audit: {audit['verdict']} ({audit['extractor']}, "
                 f"{audit['generated']} generated, {audit['train']} training, "
                 f"{audit['holdout']} held-out volumes)." if audit else
                 "Memorisation audit: none given (crfgan-memorization, then crfgan-export "
                 "--memorization_report).")
    gate = card.get("quality_gate")
    if gate:
        lines += ["", "## Quality gate", "",
                  f"`crfgan-sample --quality_check` accepts a sample whose statistics lie in "
                  f"these ranges (from {gate['volumes']} training volumes, widened by a "
                  f"margin; {gate['definition']}):", "",
                  "| statistic | training min | training max | accepted |", "|---|---|---|---|"]
        lines += [f"| {k} | {_fmt(r['min'])} | {_fmt(r['max'])} | {_fmt(r['low'])} to "
                  f"{_fmt(r['high'])} |" for k, r in gate["ranges"].items()]
    lines += ["", "## Intended use", "", card["intended_use"], "", "## Limitations", ""]
    lines += [f"- {text}" for text in card["limitations"]]
    lic = card["license"]
    lines += ["", "## Licence", "",
              f"Weights: {lic['weights']}." if lic["weights"] else
              "Weights: not stated by the exporter. They carry the terms of the data they "
              f"were trained on ({_data_terms(card['training']['dataset'])}); state them "
              "with crfgan-export --license.",
              f"Code: {lic['code']} (crfgan-tf).", ""]
    return "\n".join(lines)


# the terms of the public datasets the converters know; any other data's terms are the
# exporter's to state
DATASET_TERMS = {"luna16": "LUNA16 and LIDC-IDRI: CC BY 3.0"}


def _data_terms(dataset) -> str:
    return DATASET_TERMS.get(str(dataset), f"dataset {dataset!s}: terms not known to "
                             "crfgan-tf; for scans of your own institution, its data-sharing "
                             "rules")


def write(directory: str, card: dict) -> None:
    from crfgan_tf.utils import fileio

    fileio.atomic_write(os.path.join(directory, CARD_JSON), json.dumps(card, indent=2))
    fileio.atomic_write(os.path.join(directory, CARD_MD), markdown(card))
