"""`manifest.json`, written by the conversion beside its shards, read by everyone else.

  format     MANIFEST_FORMAT
  settings   the conversion's settings (ConvertConfig.settings(); `size` is S)
  shards     {file name: {split, cases, num_records, status, bytes}}
  cases      {case id: {split, shard, status, source, corrections, original_size,
              original_spacing, output_spacing[, label] | reason}}
  counts     {train, val, failed}
  failures   [{case_id, source, reason}]
  classes    {num_classes, names, counts: {train: [...], val: [...]}}  (labelled only)
  dicom      {series: {case id: {decision, detail, slices, study, spacing_mm, modality,
              kernel, transfer_syntax}}, reasons: {decision code: meaning}}  (DICOM only)
  updated    time of the last write

Every read of a manifest goes through `read`; records without one (copied alone, or
written by another tool) are read from their own headers instead (crfgan_tf.data.records).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from typing import Optional

from crfgan_tf.utils import fileio

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "crfgan-tf-volumes/1"


def path_in(directory: str) -> str:
    return os.path.join(directory, MANIFEST)


def read(directory: str) -> dict:
    """The manifest of the records in `directory`, or {} when there is none."""
    path = path_in(directory)
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


def write(directory: str, manifest: dict) -> None:
    """Writes the manifest atomically (readers never see half of it)."""
    fileio.atomic_write(path_in(directory), json.dumps(manifest, indent=2, sort_keys=True))


def of_file(record_file: str) -> dict:
    """The manifest beside a record file ({} when none)."""
    return read(os.path.dirname(record_file))


def shard_records(record_file: str) -> Optional[int]:
    """Records in a shard according to its manifest; None when the manifest does not know
    it or the file's size differs from the one recorded (then the file is the truth)."""
    entry = of_file(record_file).get("shards", {}).get(os.path.basename(record_file))
    if entry is None or os.path.getsize(record_file) != entry.get("bytes",
                                                                   os.path.getsize(record_file)):
        return None
    return int(entry["num_records"])


def shard_cases(record_file: str) -> Optional[list]:
    """The case ids of a shard's converted cases in record order; None without a manifest
    entry for the shard or when the file's size differs from the one recorded."""
    manifest = of_file(record_file)
    shard = manifest.get("shards", {}).get(os.path.basename(record_file))
    if shard is None or shard_records(record_file) is None:
        return None
    cases = manifest.get("cases", {})
    return [c for c in shard["cases"] if cases.get(c, {}).get("status") == "ok"]


def shard_labels(record_file: str) -> Optional[list]:
    """The labels of a shard's converted cases in record order (None: see shard_cases)."""
    ids = shard_cases(record_file)
    if ids is None:
        return None
    cases = of_file(record_file)["cases"]
    return [cases[c]["label"] for c in ids]


def records_in(output_dir: str, split: str) -> Optional[int]:
    """Records of a split ("train" / "val") according to the manifest, or None without one."""
    manifest = read(output_dir)
    return manifest["counts"][split] if manifest else None


def finish(manifest: dict, failures: dict, cases: dict, num_classes: int = 0,
           class_names=()) -> None:
    """Fills in counts, the failure list and (num_classes > 0) the class counts per split
    from the per-case entries of the cases still present."""
    manifest["cases"] = {c: e for c, e in manifest["cases"].items() if c in cases}
    ok = [e for e in manifest["cases"].values() if e["status"] == "ok"]
    failed = [{"case_id": c, "source": e["source"], "reason": e["reason"]}
              for c, e in sorted(manifest["cases"].items()) if e["status"] == "failed"]
    failed += list(failures.values())
    manifest["failures"] = failed
    manifest["counts"] = {"train": sum(e["split"] == "train" for e in ok),
                          "val": sum(e["split"] == "val" for e in ok), "failed": len(failed)}
    if num_classes:
        counts = {split: [0] * num_classes for split in ("train", "val")}
        for e in ok:
            counts[e["split"]][e["label"]] += 1
        manifest["classes"] = {"num_classes": num_classes, "names": list(class_names),
                               "counts": counts}
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")


def label_problem(directory: str, num_classes: int) -> Optional[str]:
    """Why the records in `directory` cannot train a model of `num_classes` classes
    (unlabelled, or labels >= num_classes), from its manifest; None when they can or
    there is no manifest to tell."""
    manifest = read(directory)
    if not manifest:
        return None
    classes = manifest.get("classes")
    if not classes:
        return (f"`num_classes={num_classes}` needs labelled records, but {directory} was "
                "converted without labels; convert again with `labels_csv=FILE`")
    train, val = classes["counts"]["train"], classes["counts"]["val"]
    counts = [sum(c[k] for c in (train, val) if k < len(c)) for k in range(max(len(train), len(val)))]
    top = max((k for k, c in enumerate(counts) if c), default=-1)
    if top >= num_classes:
        return (f"`num_classes={num_classes}` but the records in {directory} hold labels up "
                f"to {top} ({classes['num_classes']} classes: {classes.get('names')}); train "
                f"with `num_classes={classes['num_classes']}`")
    return None


def class_names(directory: str, num_classes: int) -> list:
    """Names of classes 0..num_classes-1 (the manifest's, else their numbers)."""
    names = (read(directory).get("classes") or {}).get("names") or []
    return [names[k] if k < len(names) and names[k] else str(k) for k in range(num_classes)]


def median_output_spacing(directory: str) -> Optional[list]:
    """The median (z, y, x) output spacing of the converted cases: what a typical sample
    covers; None without a manifest or converted cases."""
    cases = [c for c in read(directory).get("cases", {}).values() if c.get("status") == "ok"]
    if not cases:
        return None
    return [statistics.median(c["output_spacing"][k] for c in cases) for k in range(3)]


# what a shared model (export metadata, weights package, model card) says of its training
# cases: digests, never the case ids, which for NIfTI input are file stems and may name a
# patient. A digest is compared, not read: a held-out scan's id is digested the same way.
CASE_DIGEST_PREFIX = "sha256:"


def case_digest(case_id: str) -> str:
    """A training case's name in a shared model: "sha256:" and the first 16 hex digits of
    the sha256 of "crfgan-tf case id:" + `case_id`. One-way, so a shared model does not
    carry the id (a file stem such as a patient's name); whoever holds a scan can digest
    its id and compare. Not a secret: someone who guesses an id can confirm the guess."""
    text = "crfgan-tf case id:" + (case_id.decode() if isinstance(case_id, bytes) else case_id)
    return CASE_DIGEST_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:16]


def cases_among(case_ids, digests: set) -> list:
    """The ids of `case_ids` whose digest is in `digests`, sorted, each once: which of
    these scans a generator with those training digests has seen."""
    return sorted(c for c in set(case_ids) if case_digest(c) in digests)


def training_case_digests(meta: dict) -> Optional[set]:
    """The digests of the cases a generator was trained on, from its export metadata:
    `train_case_digests`, or an older export's `train_case_ids` digested here; None when
    the export says neither (a run started before they were recorded)."""
    if meta.get("train_case_digests") is not None:
        return set(meta["train_case_digests"])
    if meta.get("train_case_ids") is not None:
        return {case_digest(c) for c in meta["train_case_ids"]}
    return None
