"""A head-to-head study (crfgan-study): every arm trained with every seed on the same
records, exported at the evaluation steps, sampled and measured against the real volumes,
and the comparison written as report.html, report.json and report.md (studies.report).

Stages, each resumable (a rerun continues where the last stopped; a finished study does
nothing):
  check    each arm's training flags through `crfgan-train --dry_run`, before any work;
  real     the real volumes measured once:                      DIR/measure/real.npz
  train    `crfgan-train` in its own process per arm and seed:  DIR/runs/ARM-seedS/
           (it resumes itself; its peak RSS and seconds per iteration are recorded,
            DIR/runs/ARM-seedS/study_train.json)
  export   the weights package of each evaluation step:         DIR/exports/ARM-seedS/step-N/
  measure  `num_samples` volumes generated from the fixed latents (sample_seed, i) and
           measured (3D features, 2.5D slice features at the last step, anatomy
           statistics, MS-SSIM, mid-slices for the pictures):  DIR/measure/ARM-seedS-step-N.npz
  report   studies.report: DIR/report.{json,md,html} and the figures as DIR/figures/*.png

One study writes a directory at a time (utils.dirlock); every file is written whole
(utils.fileio). The settings are kept in DIR/study.json: a rerun with other settings is
refused, naming them (the analysis settings, `resamples` and `permutations`, may change).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import subprocess
import sys
import time
from typing import Callable, List, Optional

import numpy as np

from crfgan_tf.studies import report as report_lib
from crfgan_tf.studies.report import read_json, unit_name
from crfgan_tf.utils import dirlock, fileio
from crfgan_tf.utils.progress import Progress

STUDY_FILE = "study.json"
FORMAT = "crfgan-tf-study/1"
MODELS = ("crfgan", "hagan")
GRID_VOLUMES = 4          # volumes per set shown in the report's mid-slice grids
MAX_REAL_VOLUMES = 256    # real volumes measured at most (the first ones of the records)
SAMPLE_SEED = 1 << 16     # generated volume i of every arm and step uses latent (this, i)
ANALYSIS_FIELDS = ("resamples", "permutations")
PROGRESS_EVERY_S = 30.0


class StudyError(ValueError):
    """A study that cannot start or go on as asked; the message says what to change."""


@dataclasses.dataclass
class Arm:
    name: str
    model: str = ""        # crfgan | hagan, or "" when the flagfile sets --model
    flagfile: str = ""


@dataclasses.dataclass
class StudyConfig:
    study_dir: str
    train_records: str
    real_records: str
    arms: List[Arm]
    seeds: List[int]
    train_steps: int
    num_samples: int
    eval_every: int = 0            # 0: the last step only
    img_size: int = 128
    width: float = 1.0
    batch_size: int = 2
    train_flags: List[str] = dataclasses.field(default_factory=list)
    fid_weights: str = ""
    fid25d_weights: str = ""
    allow_random_features: bool = False
    feature_side: int = 256
    resamples: int = 1000
    permutations: int = 1000

    def settings(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("study_dir")
        for k in ANALYSIS_FIELDS:
            d.pop(k)
        # an arm's flagfile by its content too: an edited flagfile is another arm
        d["arms"] = [dict(dataclasses.asdict(a), flagfile_sha256=fileio.sha256(a.flagfile)
                          if a.flagfile and os.path.isfile(a.flagfile) else "")
                     for a in self.arms]
        return d

    def eval_steps(self) -> List[int]:
        if self.eval_every <= 0:
            return [self.train_steps]
        steps = list(range(self.eval_every, self.train_steps, self.eval_every))
        return steps + [self.train_steps]

    def validate(self) -> None:
        def need(ok, message):
            if not ok:
                raise StudyError(message)

        need(len(self.arms) >= 1, "`arms` needs at least one arm")
        names = [a.name for a in self.arms]
        need(len(set(names)) == len(names), f"`arms`: an arm name appears twice: {names}")
        need(len(self.seeds) >= 1, "`seeds` needs at least one seed")
        need(len(set(self.seeds)) == len(self.seeds), f"`seeds` repeats a seed: {self.seeds}")
        need(self.train_steps >= 1, f"`train_steps` must be >= 1, got {self.train_steps}")
        need(self.num_samples >= 4, f"`num_samples` must be >= 4 (the intervals need a few "
             f"volumes per set), got {self.num_samples}")
        need(self.eval_every >= 0, f"`eval_every` must be >= 0, got {self.eval_every}")
        need(self.resamples >= 10, f"`resamples` must be >= 10, got {self.resamples}")
        need(self.permutations >= 10, f"`permutations` must be >= 10, got {self.permutations}")
        for arm in self.arms:
            need(arm.model in MODELS or arm.flagfile,
                 f"`arms`: {arm.name!r} is neither a model ({', '.join(MODELS)}) nor "
                 "NAME=FLAGFILE")
            need(not arm.flagfile or os.path.isfile(arm.flagfile),
                 f"`arms`: {arm.name!r}'s flagfile {arm.flagfile!r} does not exist")

        for flag in self.train_flags:
            need(flag.startswith("--"), f"`train_flags`: {flag!r} is not a --flag=value")
            name = flag[2:].split("=", 1)[0]
            need(name not in FIXED_TRAIN_FLAGS,
                 f"`train_flags`: --{name} is set by the study itself "
                 f"({', '.join('--' + f for f in FIXED_TRAIN_FLAGS)})")
        if not (self.fid_weights or self.allow_random_features):
            raise StudyError("no feature weights (`fid_weights`, `fid25d_weights`): give them, "
                             "or `allow_random_features` for the labelled random networks "
                             "(a study's own comparison only, never published FIDs)")


# The training flags the study sets for every run (the arm's flagfile cannot move them)
FIXED_TRAIN_FLAGS = ("model_dir", "seed", "train_steps", "checkpoint_every",
                     "keep_checkpoints", "eval_every", "train_records", "img_size")


def parse_arms(values: List[str]) -> List[Arm]:
    """`crfgan,hagan` or `NAME=FLAGFILE` entries (a flagfile of training flags: its
    --model and any override of the common flags)."""
    arms = []
    for value in values:
        name, _, flagfile = value.partition("=")
        name = name.strip()
        if not name:
            raise StudyError(f"`arms`: empty arm name in {value!r}")
        model = name if name in MODELS and not flagfile else ""
        if flagfile:
            model = _flagfile_model(flagfile)
        arms.append(Arm(name=name, model=model, flagfile=flagfile))
    return arms


def _flagfile_lines(path: str) -> list:
    if not path or not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip().startswith("--")]


def _flagfile_names(path: str) -> list:
    return [line[2:].split("=", 1)[0] for line in _flagfile_lines(path)]


def _flagfile_model(path: str) -> str:
    """The --model a flagfile sets (the last one), or ""."""
    models = [line.split("=", 1)[1] for line in _flagfile_lines(path)
              if line.startswith("--model=")]
    return models[-1] if models else ""


class Study:
    """One study directory: its paths, stages and the state of each."""

    def __init__(self, config: StudyConfig, log: Callable[[str], None] = print):
        self.c = config
        self.log = log
        self.dir = config.study_dir

    # ---- paths ---------------------------------------------------------------------
    def run_dir(self, arm: str, seed: int) -> str:
        return os.path.join(self.dir, "runs", unit_name(arm, seed))

    def export_dir(self, arm: str, seed: int, step: int) -> str:
        return os.path.join(self.dir, "exports", unit_name(arm, seed), f"step-{step}")

    def measure_path(self, name: str) -> str:
        return os.path.join(self.dir, "measure", f"{name}.npz")

    def log_path(self, arm: str, seed: int) -> str:
        return os.path.join(self.dir, "logs", f"{unit_name(arm, seed)}.log")

    # ---- settings ------------------------------------------------------------------
    def finished_work(self) -> list:
        """What a start of this study left that depends on its settings: checkpoints of its
        runs (their directories, by the run directory's own rule), measurements, exports
        (paths; [] for a study that finished nothing)."""
        from crfgan_tf.run import rundir

        return sorted([d for d in glob.glob(os.path.join(self.dir, "runs", "*"))
                       if rundir.has_checkpoint(d)]
                      + glob.glob(os.path.join(self.dir, "measure", "*.npz"))
                      + glob.glob(os.path.join(self.dir, "exports", "*", "*")))

    def check_settings(self) -> bool:
        """Compares the settings with study.json's, writing nothing. A rerun with other
        settings is refused once a start finished some work; settings of a start that
        finished nothing give way (said in the log). Returns whether study.json is to be
        (re)written (write_settings, once every check has passed)."""
        path = os.path.join(self.dir, STUDY_FILE)
        settings = self.c.settings()
        if not os.path.exists(path):
            return True
        with open(path, encoding="utf-8") as f:
            kept = json.load(f)["settings"]
        changed = sorted(k for k in set(kept) | set(settings) if kept.get(k) != settings.get(k))
        if not changed:
            return False
        detail = "; ".join(f"`{k}` was {kept.get(k)!r}, now {settings.get(k)!r}"
                           for k in changed)
        done = self.finished_work()
        if done:
            raise StudyError(f"`study_dir` {self.dir!r} holds a study with other settings "
                             f"({detail}) and finished work ({len(done)} file(s), e.g. "
                             f"{done[0]}): rerun with its settings to continue it, or give a "
                             "new `study_dir`")
        self.log(f"study: {self.dir} holds the settings of a start that finished nothing; "
                 f"this start's replace them ({detail})")
        return True

    def write_settings(self) -> None:
        """study.json: the settings every later start is compared with."""
        fileio.atomic_write(os.path.join(self.dir, STUDY_FILE),
                            json.dumps({"format": FORMAT, "settings": self.c.settings(),
                                        "started": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                       indent=1) + "\n")

    # ---- training --------------------------------------------------------------------
    def train_command(self, arm: Arm, seed: int, dry_run: bool = False) -> list:
        c = self.c
        cmd = [sys.executable, "-m", "crfgan_tf.train", f"--width={c.width:g}",
               f"--batch_size={c.batch_size}"]
        if arm.model:
            cmd.append(f"--model={arm.model}")
        cmd += list(c.train_flags)
        if arm.flagfile:
            cmd.append(f"--flagfile={arm.flagfile}")
        steps = c.eval_steps()
        every = c.eval_every if c.eval_every > 0 else c.train_steps
        cmd += [f"--train_records={c.train_records}", f"--img_size={c.img_size}",
                f"--model_dir={self.run_dir(arm.name, seed)}", f"--seed={seed}",
                f"--train_steps={c.train_steps}", f"--checkpoint_every={every}",
                f"--image_every={c.train_steps}", f"--keep_checkpoints={len(steps) + 1}",
                "--eval_every=0"]
        if dry_run:
            cmd.append("--dry_run")
        return cmd

    def check_arms(self) -> None:
        """Each arm's training flags through crfgan-train --dry_run (no work, no writes)."""
        for arm in self.c.arms:
            fixed = sorted({n for n in _flagfile_names(arm.flagfile) if n in FIXED_TRAIN_FLAGS})
            if fixed:  # e.g. configs/luna.flags as an arm: its run settings give way
                self.log(f"study: arm {arm.name}: the study sets "
                         f"{', '.join('--' + n for n in fixed)} for every arm; {arm.flagfile}'s "
                         "values of them are not used")
            out = subprocess.run(self.train_command(arm, self.c.seeds[0], dry_run=True),
                                 capture_output=True, text=True, env=_child_env())
            if out.returncode != 0:
                lines = [l for l in out.stderr.splitlines() if l.startswith("error:")]
                raise StudyError(f"arm {arm.name!r}: crfgan-train refuses its flags: "
                                 f"{lines[-1][7:] if lines else out.stderr.strip()[-500:]}")
            config = json.loads(out.stdout[out.stdout.index("{"):])
            if config["model"] not in MODELS:
                raise StudyError(f"arm {arm.name!r}: model {config['model']!r}")

    def trained_step(self, arm: str, seed: int) -> int:
        from crfgan_tf.run import rundir

        path = os.path.join(self.run_dir(arm, seed), rundir.CHECKPOINT_DIR)
        steps = [rundir.checkpoint_step(p[:-len(".index")])
                 for p in glob.glob(os.path.join(path, "ckpt-*.index"))]
        return max([s for s in steps if s is not None], default=0)

    def train(self, arm: Arm, seed: int) -> None:
        run = self.run_dir(arm.name, seed)
        record = os.path.join(run, "study_train.json")
        if os.path.exists(record) and self.trained_step(arm.name, seed) >= self.c.train_steps:
            return
        os.makedirs(os.path.dirname(self.log_path(arm.name, seed)), exist_ok=True)
        self.log(f"study: train {unit_name(arm.name, seed)} to step {self.c.train_steps} "
                 f"(log {self.log_path(arm.name, seed)})")
        start_step = self.trained_step(arm.name, seed)
        t0 = time.time()
        with open(self.log_path(arm.name, seed), "a", encoding="utf-8") as out:
            proc = subprocess.Popen(self.train_command(arm, seed), stdout=out,
                                    stderr=subprocess.STDOUT, env=_child_env())
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            tail = _tail(self.log_path(arm.name, seed))
            raise StudyError(f"training {unit_name(arm.name, seed)} stopped with status "
                             f"{proc.returncode}; its log {self.log_path(arm.name, seed)} ends:"
                             f"\n{tail}\nFix the cause and rerun: it resumes")
        speed = _training_speed(run)
        previous = read_json(record) or {}
        fileio.atomic_write(record, json.dumps({
            "peak_rss_bytes": max(int(usage.ru_maxrss) * 1024,
                                  int(previous.get("peak_rss_bytes", 0))),
            "seconds_per_iteration": speed,
            "wall_seconds": round(time.time() - t0 + float(previous.get("wall_seconds", 0)), 1),
            "steps_run": self.c.train_steps - start_step + int(previous.get("steps_run", 0)),
            "parameters": _parameters(run)}, indent=1) + "\n")

    # ---- export and measure ----------------------------------------------------------
    def export(self, arm: str, seed: int, step: int) -> str:
        from crfgan_tf.generation import export as export_lib, package

        out = self.export_dir(arm, seed, step)
        if package.is_package(out):
            return out
        export_lib.export(self.run_dir(arm, seed), out, step=step, fmt="weights",
                          log=lambda m: None)
        return out

    def measure(self, name: str, volumes, meter, total: int) -> None:
        path = self.measure_path(name)
        if os.path.exists(path):
            return
        t0 = time.time()
        result = meter.measure(volumes, Progress(total, self.log, f"study: measure {name}",
                                                 "volumes"))
        result["seconds"] = np.array(time.time() - t0)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with fileio.atomic_output(path, ".npz") as tmp:
            np.savez(tmp, **result)
        self.log(f"study: measured {name}: {int(result['count'])} volumes in "
                 f"{time.time() - t0:.0f} s")

    def generated_volumes(self, export_dir: str):
        from crfgan_tf.generation import sample

        module, meta = sample.load(export_dir)
        latent_dim = int(module.latent_dim.numpy())
        for i in range(self.c.num_samples):
            z = sample.latents(SAMPLE_SEED, i, 1, latent_dim)
            yield sample.generate(module, z)[0].astype(np.float32)

    # ---- the whole study ---------------------------------------------------------------
    def run(self, break_lock: bool = False) -> dict:
        self.c.validate()
        os.makedirs(self.dir, exist_ok=True)
        with dirlock.DirLock(self.dir, "`study_dir`", break_lock, self.log):
            new_settings = self.check_settings()
            if not new_settings and report_lib.is_current(self):
                self.log(f"study: {self.dir} is complete and its report current; nothing to do "
                         f"({os.path.join(self.dir, report_lib.HTML)})")
                return report_lib.read(self.dir)
            self.check_arms()  # before study.json: a refused arm leaves no settings behind
            if new_settings:
                self.write_settings()
            meter = Meter(self.c, _window(self.c.real_records))
            self.measure("real", meter.real_volumes(self.c.real_records), meter,
                         _record_count(self.c.real_records))
            steps = self.c.eval_steps()
            for seed in self.c.seeds:
                for arm in self.c.arms:
                    self.train(arm, seed)
                    for step in steps:
                        name = f"{unit_name(arm.name, seed)}-step-{step}"
                        if os.path.exists(self.measure_path(name)):
                            continue
                        export = self.export(arm.name, seed, step)
                        meter.slices25d = step == self.c.train_steps
                        self.measure(name, self.generated_volumes(export), meter,
                                     self.c.num_samples)
            self.log("study: analysing (bootstrap and permutation tests)")
            return report_lib.write(self)


class Meter:
    """Per-volume measurements of a set of [-1, 1] volumes (the same for real and
    generated): 3D features, 2.5D slice features (when `slices25d`), anatomy statistics,
    MS-SSIM of disjoint pairs and the mid-slices of the first GRID_VOLUMES volumes."""

    def __init__(self, config: StudyConfig, window):
        from crfgan_tf.evaluation import features as features_lib

        self.c = config
        self.window = tuple(window)  # the real records': every set is read in it
        self.extractor = features_lib.load_extractor(config.fid_weights or None,
                                                     config.allow_random_features,
                                                     max_side=config.feature_side)
        self.slices25d = True
        self._extractor25d = None

    def extractor25d(self):
        """The 2.5D FID's network, built on first use (the last step's sets only)."""
        from crfgan_tf.evaluation import fid25d

        if self._extractor25d is None:
            self._extractor25d = fid25d.load_extractor(
                self.c.fid25d_weights or None, self.c.allow_random_features,
                window=self.window)
        return self._extractor25d

    def real_volumes(self, pattern: str):
        from crfgan_tf.data import records

        for i, r in enumerate(records.read_volumes(pattern)):
            if i >= MAX_REAL_VOLUMES:
                break
            if r.volume.shape != (self.c.img_size,) * 3:
                raise StudyError(f"`real_records` hold {r.volume.shape} volumes, "
                                 f"`img_size={self.c.img_size}`")
            yield r.volume.astype(np.float32)

    def measure(self, volumes, progress: Optional[Progress] = None) -> dict:
        from crfgan_tf.core import intensity
        from crfgan_tf.evaluation import fid25d, metrics, quality

        feats, rows, slices, planes25d, pairs, pending = [], [], [], [], [], None
        last = time.time()
        for volume in volumes:
            feats.append(self.extractor(volume[None])[0])
            rows.append(quality.statistics(intensity.from_unit(volume, self.window)))
            if len(slices) < GRID_VOLUMES:
                s = volume.shape[0] // 2
                slices.append(np.stack([volume[s], volume[:, s], volume[:, :, s]]))
            if self.slices25d:
                planes25d.append(self.extractor25d()(volume))
            if pending is None:
                pending = volume
            else:
                pairs.append(metrics.ms_ssim_3d(pending, volume))
                pending = None
            if progress is not None:
                progress.done += 1
                if progress.clock() - last >= PROGRESS_EVERY_S:
                    progress.report(progress.done)
                    last = progress.clock()
        out = {"features3d": np.stack(feats).astype(np.float32),
               "anatomy": np.array(json.dumps(rows)),
               "ms_ssim_pairs": np.array(pairs, np.float64),
               "mid_slices": np.stack(slices).astype(np.float16),
               "count": np.array(len(feats)), "window": np.array(self.window, np.float64),
               "extractor": np.array(self.extractor.name),
               "pretrained": np.array(self.extractor.pretrained)}
        if planes25d:
            out["features25d"] = fid25d.as_array(fid25d.stack(planes25d))
            out["extractor25d"] = np.array(self.extractor25d().name)
            out["pretrained25d"] = np.array(self.extractor25d().pretrained)
        return out


def _window(pattern: str) -> tuple:
    """The intensity window of the real records (their first record's): the HU scale of
    every volume the study measures."""
    from crfgan_tf.data import records

    for r in records.read_volumes(pattern):
        return tuple(r.window)
    raise StudyError(f"`real_records` {pattern!r} hold no record")


def _record_count(pattern: str) -> int:
    """Records matching `pattern` by the manifests (capped at MAX_REAL_VOLUMES): the
    progress line's total only."""
    from crfgan_tf.data import manifest, record_files

    total = 0
    for f in record_files.list_record_files(pattern):
        total += manifest.shard_records(f) or 0
    return min(total, MAX_REAL_VOLUMES) or MAX_REAL_VOLUMES


def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return "(no log)"


def _training_speed(run_dir: str) -> Optional[float]:
    """Seconds per iteration: the median over the TensorBoard windows (every `log_every`
    steps; the first window of each start, with the graph's tracing, left out unless no
    other window exists: a run of a few steps)."""
    import tensorflow as tf

    rates, firsts = [], []
    for path in sorted(glob.glob(os.path.join(run_dir, "**", "events.out.tfevents.*"),
                                 recursive=True)):
        first = True
        try:
            for raw in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(raw.numpy())
                for value in event.summary.value:
                    if value.tag == "iterations_per_sec":
                        rate = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
                            else value.simple_value
                        if rate > 0:
                            (firsts if first else rates).append(rate)
                        first = False
        except tf.errors.DataLossError:  # a file cut short by a kill: what it holds counts
            pass
    rates = rates or firsts
    return round(1.0 / float(np.median(rates)), 4) if rates else None


def _parameters(run_dir: str) -> Optional[dict]:
    """Learnable parameters of the run's model: {"total", "modules": {network: count}}
    (models.params.count_parameters, at the run's size, width and latent size)."""
    from crfgan_tf.models import params
    from crfgan_tf.run import rundir

    c = rundir.read_config(run_dir)
    if c is None:
        return None
    counted = params.count_parameters(c.model, c.img_size, c.latent_dim, c.width,
                                      c.num_classes, c.embedding_factor)
    return {"total": counted["total"], "modules": counted["modules"]}
