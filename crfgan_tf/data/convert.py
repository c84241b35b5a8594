"""Offline conversion of LUNA16 / GSP / generic scan archives into sharded TFRecords.

`run_conversion(config)` is the whole job; `crfgan_tf/cli/convert.py` parses the flags.

Guarantees:
- Deterministic split: cases are ordered by sha256(seed, case id) and the first
  round(n * val_fraction) are validation; identical on every rerun.
- Resumable: a shard is written to a temporary file and renamed when complete;
  `manifest.json` (also written atomically) records complete shards, so a rerun of the
  same command only does the missing work and never duplicates a case.
- A scan that fails is reported by name with its reason; the others are converted; the
  shard that held it is redone on the next run (so a fixed file gets picked up).
- DICOM series (`--dataset=dicom`, and `generic` finds them too) are chosen and checked by
  `crfgan_tf.data.dicom`; every series' decision is a reason code in the manifest's
  `dicom` section and a line of the report. Their case ids, sources and messages hold no
  path and no patient data unless `--case_ids=path` asks for paths; a study's series share
  a split.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import multiprocessing
import os
import re
import sys
import time
from typing import Callable, Dict, List, Optional

from crfgan_tf.core import intensity
from crfgan_tf.data import labels as labels_lib
from crfgan_tf.data import manifest as manifest_lib
from crfgan_tf.data import dicom, preprocess
from crfgan_tf.utils import dirlock, fileio
from crfgan_tf.utils.progress import Progress

SIZES = (64, 128, 256, 512)  # --size (512 for other tools; training: geometry.SIZES)
LIBRARY_SIZES = (16, 32) + SIZES  # 16 and 32 serve tests
DATASETS = ("luna16", "gsp", "generic", "dicom")
SUFFIXES = {"luna16": (".mhd", ".mha"), "gsp": (".nii", ".nii.gz"),
            "generic": preprocess.SCAN_SUFFIXES, "dicom": ()}
# ConvertConfig fields of the DICOM rules -> their defaults (settings() holds them for
# --dataset=dicom, and for generic when they differ from these)
DICOM_SETTINGS = {"min_slices": dicom.DEFAULT_MIN_SLICES, "series_policy": "thinnest",
                  "slice_spacing_tolerance": dicom.DEFAULT_SPACING_TOLERANCE,
                  "allow_tilt": False, "case_ids": "hash", "include_derived": False}


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """Settings of one conversion (crfgan_tf/cli/convert.py holds the flags)."""

    dataset: str
    input_dir: str
    output_dir: str
    size: int = 256
    num_shards: int = 16
    num_val_shards: int = 0  # 0: max(1, round(num_shards * val_fraction))
    val_fraction: float = 0.1
    seed: int = 0
    workers: int = 2
    modality: str = ""  # generic only: "ct" or "mri"; luna16 -> ct, gsp -> mri
    compression: str = "none"  # "none" or "gzip"
    air_correction: bool = True
    max_air_shift: float = 100.0
    overwrite: bool = False
    labels_csv: str = ""  # case_id,label[,name]: labelled records for conditional training
    groups_csv: str = ""  # case_id,group: cases of one group share a split (patients)
    num_classes: int = 0  # with labels_csv: labels must be below it (0: max label + 1)
    # DICOM series (crfgan_tf.data.dicom): --dataset=dicom, or found by generic
    min_slices: int = dicom.DEFAULT_MIN_SLICES
    series_policy: str = "thinnest"
    slice_spacing_tolerance: float = dicom.DEFAULT_SPACING_TOLERANCE
    allow_tilt: bool = False
    case_ids: str = "hash"
    include_derived: bool = False  # DICOM: convert DERIVED series too (synthetic ones)

    @property
    def resolved_modality(self) -> str:
        if self.dataset == "dicom":
            return self.modality or "ct"
        return {"luna16": "ct", "gsp": "mri"}.get(self.dataset, self.modality)

    def series_options(self) -> dicom.SeriesOptions:
        return dicom.SeriesOptions(
            modality=self.resolved_modality, min_slices=self.min_slices,
            series_policy=self.series_policy, spacing_tolerance=self.slice_spacing_tolerance,
            allow_tilt=self.allow_tilt, case_ids=self.case_ids,
            include_derived=self.include_derived)

    def validate(self) -> None:
        """Raises ValueError naming the offending setting (the flag of the same name)."""
        if self.dataset not in DATASETS:
            raise ValueError(f"`dataset` must be one of {DATASETS}, got {self.dataset!r}")
        if self.dataset == "generic" and self.modality not in ("ct", "mri"):
            raise ValueError("`dataset=generic` needs `modality=ct` or `modality=mri`")
        if (self.dataset not in ("generic", "dicom")
                and self.modality not in ("", self.resolved_modality)):
            raise ValueError(f"`modality={self.modality}` contradicts `dataset={self.dataset}`")
        if self.size not in LIBRARY_SIZES:  # the CLI allows 64-512; 16 and 32 serve tests
            raise ValueError(f"`size` must be one of {LIBRARY_SIZES}, got {self.size}")
        if self.num_shards < 1:
            raise ValueError(f"`num_shards` must be >= 1, got {self.num_shards}")
        if self.num_val_shards < 0:
            raise ValueError(f"`num_val_shards` must be >= 0, got {self.num_val_shards}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in [0, 1), got {self.val_fraction}")
        if self.workers < 1:
            raise ValueError(f"`workers` must be >= 1, got {self.workers}")
        if self.compression not in ("none", "gzip"):
            raise ValueError(f"`compression` must be none or gzip, got {self.compression!r}")
        if not os.path.isdir(self.input_dir):
            raise ValueError(f"`input_dir` {self.input_dir!r} is not a directory")
        if self.labels_csv and not os.path.isfile(self.labels_csv):
            raise ValueError(f"`labels_csv` {self.labels_csv!r} is not a file")
        if self.groups_csv and not os.path.isfile(self.groups_csv):
            raise ValueError(f"`groups_csv` {self.groups_csv!r} is not a file")
        if self.num_classes < 0 or (self.num_classes and not self.labels_csv):
            raise ValueError("`num_classes` needs `labels_csv` and must be >= 0, got "
                             f"{self.num_classes}")
        self.series_options().validate()

    def preprocess_options(self) -> preprocess.PreprocessOptions:
        return preprocess.PreprocessOptions(
            size=self.size, modality=self.resolved_modality,
            air_correction=self.air_correction, max_air_shift=self.max_air_shift)

    def settings(self) -> dict:
        """The settings that decide the output; a rerun must match them to resume."""
        keys = ("dataset", "size", "num_shards", "num_val_shards", "val_fraction", "seed",
                "compression", "air_correction", "max_air_shift")
        out = {k: getattr(self, k) for k in keys}
        out["modality"] = self.resolved_modality
        out["input_dir"] = os.path.abspath(self.input_dir)
        for key, default in DICOM_SETTINGS.items():  # include_derived only when on: the
            # manifests of conversions before it existed resume unchanged
            if (self.dataset == "dicom" and key != "include_derived") or \
                    getattr(self, key) != default:
                out[key] = getattr(self, key)
        if self.dataset == "dicom":  # folder names are often patient names: a hash only
            out["input_dir_sha256"] = hashlib.sha256(out.pop("input_dir").encode()).hexdigest()
        if self.labels_csv:  # only then: older manifests have no such keys
            with open(self.labels_csv, "rb") as fh:
                out["labels_sha256"] = hashlib.sha256(fh.read()).hexdigest()
            out["num_classes"] = self.num_classes
        if self.groups_csv:  # the same
            with open(self.groups_csv, "rb") as fh:
                out["groups_sha256"] = hashlib.sha256(fh.read()).hexdigest()
        return out


def discover_scans(input_dir: str, dataset: str) -> List[str]:
    """All scan files under `input_dir` (recursively) for the dataset, sorted (DICOM
    series are found by `crfgan_tf.data.dicom.find_series`)."""
    suffixes = SUFFIXES[dataset]
    if not suffixes:
        return []
    found = []
    for root, dirs, files in os.walk(input_dir):
        dirs.sort()
        for name in files:
            if name.lower().endswith(suffixes):
                found.append(os.path.join(root, name))
    return sorted(found)


def split_cases(case_ids: List[str], val_fraction: float, seed: int,
                groups: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Deterministic train/val split: {case_id: "train" | "val"}.

    Cases are ordered by sha256 of (seed, case id); the first round(n * val_fraction)
    (at least one when val_fraction > 0 and n >= 2) are validation. With `groups` (case id
    -> group, split_groups: a patient, a study, a `groups_csv` group) the groups are split
    that way instead, so that one patient's scans never land in both splits.
    """
    groups = groups or {}
    members: Dict[str, List[str]] = {}
    for c in case_ids:
        members.setdefault(groups.get(c, c), []).append(c)
    order = sorted(members, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    n_val = int(round(len(order) * val_fraction))
    if val_fraction > 0 and len(order) >= 2:
        n_val = min(max(n_val, 1), len(order) - 1)
    return {c: ("val" if i < n_val else "train") for i, g in enumerate(order) for c in members[g]}


@dataclasses.dataclass
class Shard:
    name: str
    split: str
    cases: List[tuple]  # (case_id, path or dicom.Series)


def plan_shards(cases: Dict[str, str], split: Dict[str, str], config: ConvertConfig) -> List[Shard]:
    """Assigns cases (id -> path) to shards, round-robin in hash order within each split."""
    shards = []
    suffix = ".tfrecord.gz" if config.compression == "gzip" else ".tfrecord"
    for name in ("train", "val"):
        ids = sorted((c for c in cases if split[c] == name),
                     key=lambda c: hashlib.sha256(f"{config.seed}:{c}".encode()).hexdigest())
        if not ids:
            continue
        wanted = config.num_shards if name == "train" else (
            config.num_val_shards or max(1, round(config.num_shards * config.val_fraction)))
        count = min(wanted, len(ids))  # never write empty shards
        for k in range(count):
            members = sorted(ids[k::count])
            shards.append(Shard(f"{name}-{k:05d}-of-{count:05d}{suffix}", name,
                                [(c, cases[c]) for c in members]))
    return shards


def _init_worker(threads: int) -> None:
    import SimpleITK as sitk
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))


def source_name(scan) -> str:
    """What the manifest, the records and the log call a case's scan: a file's path, a
    DICOM series' description (no path unless `case_ids=path`)."""
    return scan.source if isinstance(scan, dicom.Series) else scan


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/:]+)+[\\/]?")


def _process(task):
    """Worker: (case_id, path or dicom.Series, options) -> ("ok", result with int16 volume)
    | ("failed", reason). The reasons of a DICOM series hold no path."""
    case_id, scan, options = task
    start = time.time()
    is_series = isinstance(scan, dicom.Series)
    try:
        if is_series:
            result = dicom.process_series(scan, options)
        else:
            result = preprocess.process_scan(scan, options)
            result.case_id = case_id
        result.volume = intensity.quantize(result.volume)  # half the bytes to ship back
        return case_id, "ok", result, time.time() - start
    except preprocess.ScanError as err:
        reason = str(err)
    except (MemoryError, ValueError, OSError, RuntimeError) as err:
        reason = f"{type(err).__name__}: {err}"
    if is_series:  # folder and file names may be patient names
        for known in sorted({*scan.files, *map(os.path.dirname, scan.files)}, key=len,
                            reverse=True):
            reason = reason.replace(known, "<path>")
        reason = _PATH.sub("<path>", reason)
    return case_id, "failed", reason, time.time() - start


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_conversion(config: ConvertConfig, log: Callable[[str], None] = _log,
                   break_lock: bool = False) -> dict:
    """Converts every scan of `config.input_dir`; returns the summary (also in the manifest).
    The output directory's lock (crfgan_tf.utils.dirlock) is held throughout.

    Raises:
      ValueError: invalid settings, no scans found, or an output directory holding a
        conversion with other settings (unless `overwrite`); dirlock.LockedError, another
        process writes the output directory (named).
      fileio.DiskFullError: a shard or the manifest could not be written for want of
        space; the shards already complete stay valid and a rerun converts the rest.
    """
    config.validate()
    start = time.time()
    cases, failures, series = _discover_cases(config, log)
    table = _apply_labels(config, cases, log) if config.labels_csv else None
    groups, grouping = split_groups(config, cases, log)
    split = split_cases(list(cases), config.val_fraction, config.seed, groups)
    shards = plan_shards(cases, split, config)
    summary = split_summary(split, groups, grouping)
    with dirlock.DirLock(config.output_dir, "`output_dir`", break_lock, log):
        return _convert(config, cases, failures, table, shards, start, log, series, summary)


def read_groups_csv(path: str) -> Dict[str, str]:
    """`groups_csv`: a header `case_id,group`, then one row per case.

    Raises:
      ValueError: no such header, a row without both values, or a case given twice
        (the line named).
    """
    import csv

    out: Dict[str, str] = {}
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        header = [h.strip() for h in next(rows, [])]
        if header[:2] != ["case_id", "group"]:
            raise ValueError(f"`groups_csv` {path!r}: the first line must be the header "
                             f"'case_id,group', got {','.join(header)!r}")
        for line, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"`groups_csv` {path!r} line {line}: needs a case id and a "
                                 f"group, got {row!r}")
            case = row[0].strip()
            if case in out:
                raise ValueError(f"`groups_csv` {path!r} line {line}: case {case!r} is given "
                                 "twice")
            out[case] = row[1].strip()
    return out


def split_groups(config: ConvertConfig, cases: Dict[str, object], log=_log):
    """({case id: group key}, a sentence saying how): the cases that must share a split.
    `groups_csv` first; a DICOM series then goes with its patient's other series
    (PatientID, held in memory and used only here: the key is never written), or, without
    a PatientID, with its study's; anything else is a group of its own."""
    given = read_groups_csv(config.groups_csv) if config.groups_csv else {}
    groups: Dict[str, object] = {}
    kinds = {"groups_csv": 0, "patient": 0, "study": 0, "case": 0}
    for cid, scan in cases.items():
        if cid in given:
            groups[cid], kind = ("csv", given[cid]), "groups_csv"
        elif isinstance(scan, dicom.Series) and scan.patient:
            groups[cid], kind = ("patient", scan.patient), "patient"
        elif isinstance(scan, dicom.Series):
            groups[cid], kind = ("study", scan.study), "study"
        else:
            groups[cid], kind = ("case", cid), "case"
        kinds[kind] += 1
    if given:
        unknown = sorted(set(given) - set(cases))
        if unknown:
            log(f"convert: {len(unknown)} case(s) of `groups_csv` are not in the archive "
                f"(ignored), e.g. {unknown[:3]}")
    words = {"groups_csv": "`groups_csv`", "patient": "DICOM patient (PatientID)",
             "study": "DICOM study (no PatientID)", "case": "scan (no group)"}
    grouping = "; ".join(f"{words[k]} for {n} scans" for k, n in kinds.items() if n)
    return groups, grouping or "scan"


def split_summary(split: Dict[str, str], groups: Dict[str, object], grouping: str) -> dict:
    """The manifest's `split`: how cases were grouped and the groups and cases per split
    (counts only: no group key, which may be a patient's id, is written)."""
    out = {"grouping": grouping, "groups": {}, "cases": {}}
    for name in ("train", "val"):
        members = [c for c, s in split.items() if s == name]
        out["cases"][name] = len(members)
        out["groups"][name] = len({groups.get(c, c) for c in members})
    return out


def _convert(config: ConvertConfig, cases: Dict[str, object], failures: Dict[str, dict],
             table: Optional[labels_lib.LabelTable], shards: List[Shard], start: float,
             log, series: List[dicom.Series], split: Optional[dict] = None) -> dict:
    """The conversion's work in its locked output directory."""
    manifest = _resume_manifest(config, {s.name for s in shards})
    if split:
        manifest["split"] = split
        log(f"convert: split by {split['grouping']}: {split['groups']['train']} groups "
            f"({split['cases']['train']} scans) train, {split['groups']['val']} groups "
            f"({split['cases']['val']} scans) val")
    if series:
        manifest["dicom"] = {"series": {s.case_id: s.summary() for s in series},
                             "reasons": dicom.REASONS}
    todo = [s for s in shards if not _shard_done(config, manifest, s)]
    done_cases = sum(len(s.cases) for s in shards) - sum(len(s.cases) for s in todo)
    log(f"convert: {len(cases)} scans found ({config.dataset}, {config.resolved_modality}) -> "
        f"{len(shards)} shards of size {config.size}^3 in {config.output_dir}; "
        f"{done_cases} already converted, {sum(len(s.cases) for s in todo)} to do, "
        f"{config.workers} workers")

    def save():
        manifest_lib.finish(manifest, failures, cases, table.num_classes if table else 0,
                            table.names if table else ())
        _series_outcomes(manifest)
        try:
            manifest_lib.write(config.output_dir, manifest)
        except OSError as err:
            _raise_if_disk_full(err, os.path.join(config.output_dir, manifest_lib.MANIFEST),
                                None, manifest)
            raise

    progress = Progress(len(cases), log, "convert:", "scans", start=done_cases)
    stream = _results(config, [(cid, path, config.preprocess_options())
                               for shard in todo for cid, path in shard.cases])
    try:
        for shard in todo:
            _write_shard(config, shard, stream, manifest, table, progress)
            save()
    finally:
        stream.close()  # stops the workers, also when a shard could not be written
    save()
    processed = progress.done - done_cases
    summary = dict(manifest["counts"])
    summary.update(seconds=round(time.time() - start, 2), processed=processed,
                   scans_per_sec=round(progress.rate(progress.done), 4),
                   output_dir=config.output_dir, failures=manifest["failures"])
    log(f"convert: done in {summary['seconds']:.1f} s: {summary['train']} train, "
        f"{summary['val']} val, {summary['failed']} failed "
        f"({processed} processed now, {summary['scans_per_sec']:.3f} scans/s)")
    for failure in manifest["failures"]:
        log(f"  FAILED {failure['case_id']} ({failure['source']}): {failure['reason']}")
    return summary


def _discover_cases(config: ConvertConfig, log=_log):
    """({case id: path or dicom.Series}, {key: failure}, [every DICOM series]) of the
    archive; a second file with a case id already seen is a failure (named), not a case,
    and so is a refused DICOM series."""
    paths = discover_scans(config.input_dir, config.dataset)
    series = []
    if config.dataset in ("dicom", "generic"):
        scan_files = set(paths)
        series = _find_series(config, log, lambda p: p in scan_files
                              or p.lower().endswith((".raw", ".zraw", ".img")))
    if not paths and not any(s.kept or s.refused for s in series):
        what = ("DICOM series" if config.dataset == "dicom" else
                f"{'/'.join(SUFFIXES[config.dataset])} scans"
                + (" or DICOM series" if config.dataset == "generic" else ""))
        found = f" ({len(series)} series found, none convertible: see above)" if series else ""
        raise ValueError(f"no {what} under `input_dir` {config.input_dir!r}{found}")
    cases: Dict[str, object] = {}
    failures: Dict[str, dict] = {}
    for s in series:
        if s.kept:
            cases[s.case_id] = s
        elif s.refused:
            failures[s.case_id] = {"case_id": s.case_id, "source": s.source,
                                   "reason": f"{s.decision}: {s.detail}"}
    for path in paths:
        cid = preprocess.case_id_from_path(path)
        if cid in cases:
            failures[f"{cid}@{path}"] = {"case_id": cid, "source": path,
                                        "reason": f"duplicate case id (also {source_name(cases[cid])})"}
            continue
        cases[cid] = path
    return cases, failures, series


POOLED_HEADERS = 2000  # from this many DICOM files on, --workers processes read headers


def _read_headers(workers: int, paths: List[str]):
    """dicom.read_header of every path, in order: in this process, or for large archives
    (POOLED_HEADERS files) in `workers` spawned processes."""
    if workers == 1 or len(paths) < POOLED_HEADERS:
        yield from map(dicom.read_header, paths)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(dicom.read_header, paths, chunksize=64)


def _series_outcomes(manifest: dict) -> None:
    """The decisions of the manifest's DICOM series updated by what their workers found
    (a series kept at discovery may be refused when its pixels are read)."""
    decided = manifest.get("dicom", {}).get("series", {})
    for cid, entry in manifest["cases"].items():
        if cid in decided and entry["status"] != "ok":
            code = entry["reason"].split(":", 1)[0]
            decided[cid]["decision"] = code if code in dicom.REASONS else "failed"
            decided[cid]["detail"] = entry["reason"]


def _find_series(config: ConvertConfig, log, skip) -> List[dicom.Series]:
    """The archive's DICOM series with their decisions, reported: one count line, one
    line per series not kept."""
    def progress(done, total):
        if done == total or done % 5000 == 0:
            meter.total = total
            meter.report(done, "DICOM headers")
    meter = Progress(0, log, "convert:", "files")
    unread: List[str] = []
    series = dicom.find_series(config.input_dir, config.series_options(), skip, progress,
                               unread, functools.partial(_read_headers, config.workers))
    if unread:  # counted, not named: file and folder names may be patient names
        log(f"convert: {len(unread)} DICOM file(s) belong to no series (a header pydicom "
            "cannot parse, or a media directory): not converted")
    if not series:
        return series
    codes = collections.Counter(s.decision for s in series)
    log(f"convert: {len(series)} DICOM series: " + ", ".join(
        f"{n} {code}" for code, n in sorted(codes.items(),
                                            key=lambda kv: (kv[0] not in dicom.KEPT, kv[0]))))
    for s in series:
        if not s.kept:
            log(f"  {s.case_id}: {s.decision}: {s.detail}")
    return series


def _resume_manifest(config: ConvertConfig, planned: set) -> dict:
    """The manifest this run continues: the existing one when its settings are these
    (its stale shards removed), else a new one (an old conversion with other settings is
    refused, or removed with `overwrite`). Temporaries of a killed run are removed."""
    manifest = {"format": manifest_lib.MANIFEST_FORMAT, "settings": config.settings(),
                "shards": {}, "cases": {}}
    old = manifest_lib.read(config.output_dir)
    if old and old.get("settings") != config.settings():
        if not config.overwrite:
            diff = {k: (old.get("settings", {}).get(k), v) for k, v in config.settings().items()
                    if old.get("settings", {}).get(k) != v}
            raise ValueError(
                f"`output_dir` {config.output_dir!r} holds a conversion with other settings "
                f"(old, new): {diff}; use another `output_dir` or pass `overwrite`")
        for name in old.get("shards", {}):
            _remove(os.path.join(config.output_dir, name))
    elif old:
        manifest["shards"] = old.get("shards", {})
        manifest["cases"] = old.get("cases", {})
    for name in os.listdir(config.output_dir):  # temporaries of a killed run
        if ".tmp-" in name:
            _remove(os.path.join(config.output_dir, name))
    for name in list(manifest["shards"]):
        if name not in planned:  # the case set changed: this shard is stale
            _remove(os.path.join(config.output_dir, name))
            del manifest["shards"][name]
    return manifest


def _shard_done(config: ConvertConfig, manifest: dict, shard: Shard) -> bool:
    """Whether a complete shard with exactly these cases is already on disk."""
    entry = manifest["shards"].get(shard.name)
    path = os.path.join(config.output_dir, shard.name)
    return bool(entry and entry.get("status") == "complete"
                and entry.get("cases") == [c for c, _ in shard.cases]
                and os.path.exists(path) and os.path.getsize(path) == entry.get("bytes"))


def _results(config: ConvertConfig, tasks: list):
    """_process of every task, in task order: in this process, or in `workers` spawned
    processes (no forked TensorFlow state)."""
    if config.workers == 1 or len(tasks) <= 1:
        _init_worker(os.cpu_count() or 1)
        for task in tasks:
            yield _process(task)
        return
    threads = max(1, (os.cpu_count() or 1) // config.workers)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(config.workers, initializer=_init_worker, initargs=(threads,)) as pool:
        yield from pool.imap(_process, tasks, chunksize=1)


def _write_shard(config: ConvertConfig, shard: Shard, stream, manifest: dict,
                 table: Optional[labels_lib.LabelTable], progress: Progress) -> None:
    """Writes one shard from the next results of `stream` to a temporary file, renames it
    into place and enters it and its cases in `manifest`."""
    import tensorflow as tf  # deferred: workers must not pay for it

    final = os.path.join(config.output_dir, shard.name)
    tmp = os.path.join(config.output_dir, f".{shard.name}.tmp-{os.getpid()}")
    options = tf.io.TFRecordOptions(compression_type="GZIP" if config.compression == "gzip" else "")
    try:
        _write_records(tmp, options, shard, stream, manifest, table, progress)
        os.replace(tmp, final)
    except Exception as err:  # noqa: BLE001 - TensorFlow reports a full disk in several types
        _remove(tmp)  # frees the space; the manifest never listed this shard
        _raise_if_disk_full(err, final, len(shard.cases) * (config.size ** 3 * 2 + 4096),
                            manifest)
        raise
    shard_failures = sum(manifest["cases"][cid]["status"] != "ok" for cid, _ in shard.cases)
    manifest["shards"][shard.name] = {
        "split": shard.split, "cases": [c for c, _ in shard.cases],
        "num_records": len(shard.cases) - shard_failures,
        "status": "complete" if shard_failures == 0 else "has_failures",
        "bytes": os.path.getsize(final)}


def _raise_if_disk_full(err: BaseException, path: str, needed: Optional[int],
                        manifest: dict) -> None:
    """fileio.DiskFullError for `err` when it is a write that found no space."""
    reason = fileio.disk_full_reason(err)
    if reason is None:
        return
    done = sum(1 for s in manifest["shards"].values() if s.get("status") == "complete")
    raise fileio.disk_full_error(
        path, reason, needed, f"The {done} shard(s) already complete and manifest.json are "
        "intact", "free space and run the same command again: it converts only what is "
        "missing") from None


def _write_records(tmp: str, options, shard: Shard, stream, manifest: dict,
                   table: Optional[labels_lib.LabelTable], progress: Progress) -> None:
    """The records of one shard's cases, from `stream`, into the file `tmp`."""
    import tensorflow as tf  # deferred: workers must not pay for it

    from crfgan_tf.data import records

    with tf.io.TFRecordWriter(tmp, options) as writer:
        for cid, scan in shard.cases:
            got_id, status, payload, seconds = next(stream)
            assert got_id == cid, (got_id, cid)  # imap keeps task order
            progress.done += 1
            source = source_name(scan)
            entry = {"split": shard.split, "shard": shard.name, "status": status, "source": source}
            if status == "ok":
                if table is not None:
                    payload.label = entry["label"] = table.labels[cid]
                writer.write(records.serialize_result(payload))
                entry.update(corrections=payload.corrections(),
                             original_size=list(payload.original_size),
                             original_spacing=list(payload.original_spacing),
                             output_spacing=list(payload.output_spacing))
                progress.report(progress.done, f"{cid}: ok ({seconds:.1f} s)")
            else:
                entry["reason"] = payload
                progress.report(progress.done, f"{cid}: FAILED {source}: {payload}")
            manifest["cases"][cid] = entry


def _apply_labels(config: ConvertConfig, cases: Dict[str, str], log) -> labels_lib.LabelTable:
    """Reads `labels_csv` and drops the cases it does not label from `cases` (each
    reported by name: they are not converted); returns the table.

    Raises:
      labels_lib.LabelsError: bad rows (named), or no scan of the archive is labelled.
    """
    table = labels_lib.read_labels_csv(config.labels_csv, config.num_classes)
    unlabelled = sorted(c for c in cases if c not in table.labels)
    for cid in unlabelled:
        log(f"convert: {cid} ({source_name(cases.pop(cid))}): no label in `labels_csv`; "
            "not converted")
    unknown = sorted(set(table.labels) - set(cases) - set(unlabelled))
    if unknown:
        log(f"convert: {len(unknown)} case(s) of `labels_csv` are not in the archive "
            f"(ignored), e.g. {unknown[:3]}")
    if not cases:
        raise labels_lib.LabelsError(f"`labels_csv` {config.labels_csv!r} labels none of the "
                                     "scans found (case ids are file stems / series UIDs)")
    names = [n or str(k) for k, n in enumerate(table.names)]
    log(f"convert: {len(cases)} labelled scans, {table.num_classes} classes "
        f"{dict(zip(names, table.counts(cases)))}; {len(unlabelled)} unlabelled")
    return table


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
