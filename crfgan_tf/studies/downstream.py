"""What synthetic volumes are worth to a downstream model: a scan-level classification
study, and linear probes of volume features.

The study trains one small 3D CNN (CLASSIFIER) per *arm* and seed. The arms differ only in
their training data, all tested on the same held-out real scans:
  - `real`: the real training scans;
  - `real+<k>x`: those plus k x as many synthetic volumes (k in `synthetic_ratios`);
  - `synthetic`: only synthetic volumes (as many as the largest ratio's), tested on real;
  - `real@<p>%`: a class-stratified p % of the real scans (`real_fractions` below 100 %),
    the *real-data curve*: AUC against the number of real training scans, on which every
    other arm gets its *real-data equivalent* (the number of real scans that reach its AUC,
    interpolated linearly).
Every arm of a seed starts from the same initial weights and runs the same steps, batch
size, learning rate and augmentation; nested subsets and synthetic pools share their
first members. The target is binary: label == `positive_class` against the rest.

Synthetic volumes come from a SavedModel: a conditional one generates the classes in turn
(positive, then a negative class, ...), so every prefix of the pool is class-balanced; an
unconditional one is labelled by a rule (`real_classifier`: the `real` arm's classifier of
the same seed). The test scans must be unseen by the generator: they are checked against
the generator's training cases (the export's case digests, or `generator_train_records`)
and the study refuses any overlap.

AUC is the Mann-Whitney statistic (ties count half) with a percentile bootstrap 95 % CI over
the test scans; balanced accuracy is at probability 0.5.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from crfgan_tf.core import geometry
from crfgan_tf.data import manifest
from crfgan_tf.evaluation.sources import EvaluationError, record_case_ids, record_cases
from crfgan_tf.core.geometry import FEATURE_SIDE, MIN_FEATURE_SIDE
from crfgan_tf.utils import fileio

FORMAT = "crfgan-tf-downstream/1"
LABEL_RULES = ("class", "real_classifier")
CLASSIFIER = ("input (s, s, s, 1) -> [Conv3D 3^3 'same' + ReLU -> MaxPool 2^3] with 8, then "
              "16 channels -> Conv3D 3^3 32 + ReLU -> global max pool (a finding anywhere) -> "
              "Dense 1 (logit); Adam (constant learning rate), binary cross-entropy")
AUGMENTATION = ("per volume: a left-right flip with probability 1/2 and a circular shift of "
                "-2..2 voxels along each axis")


@dataclasses.dataclass
class StudyConfig:
    """The settings of run_study (the flags of crfgan-downstream)."""

    train_records: str
    test_records: str
    output_dir: str
    saved_model: str = ""
    features: str = ""
    labels_csv: str = ""
    positive_class: int = 1
    synthetic_ratios: Sequence[float] = (0.5, 1.0, 2.0, 5.0)
    real_fractions: Sequence[float] = (0.25, 0.5)
    seeds: int = 3
    steps: int = 400
    batch_size: int = 8
    learning_rate: float = 1e-3
    input_size: int = 64
    sample_seed: int = 0
    synthetic_labels: str = "class"
    generator_train_records: str = ""
    bootstrap: int = 1000
    weights: str = ""
    allow_random_features: bool = False
    feature_side: int = FEATURE_SIDE
    probe_l2: float = 1.0
    generate_batch_size: int = 1

    def validate(self) -> None:
        if not self.saved_model and not self.features:
            raise EvaluationError("give `saved_model` (the classification study), `features` "
                                  "(the linear probe) or both")
        if any(not (r > 0) for r in self.synthetic_ratios):
            raise EvaluationError(f"`synthetic_ratios` must be positive, got "
                                  f"{list(self.synthetic_ratios)}")
        if any(not 0 < f < 1 for f in self.real_fractions):
            raise EvaluationError(f"`real_fractions` must be in (0, 1) (100 % is the 'real' "
                                  f"arm), got {list(self.real_fractions)}")
        for name, low in (("seeds", 1), ("steps", 1), ("batch_size", 1), ("input_size", 4),
                          ("bootstrap", 100), ("generate_batch_size", 1),
                          ("feature_side", MIN_FEATURE_SIDE)):
            if getattr(self, name) < low:
                raise EvaluationError(f"`{name}` must be >= {low}, got {getattr(self, name)}")
        if self.synthetic_labels not in LABEL_RULES:
            raise EvaluationError(f"`synthetic_labels` must be one of {LABEL_RULES}, got "
                                  f"{self.synthetic_labels!r}")


# ---- metrics -------------------------------------------------------------------------------
def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties 1/2."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise ValueError("AUC needs both classes")
    ranks = rankdata(score)
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def auc_ci(y: np.ndarray, score: np.ndarray, resamples: int = 1000, seed: int = 0) -> list:
    """Percentile bootstrap 95 % CI of the AUC over the test cases (resamples with one class
    only are drawn again)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y).astype(bool)
    values = []
    while len(values) < resamples:
        idx = rng.integers(0, len(y), len(y))
        if y[idx].all() or not y[idx].any():
            continue
        values.append(auc(y[idx], score[idx]))
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def balanced_accuracy(y: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> float:
    y = np.asarray(y).astype(bool)
    pred = np.asarray(prob) >= threshold
    return float(((pred[y]).mean() + (~pred[~y]).mean()) / 2.0)


def real_data_equivalent(curve: List[tuple], value: float) -> dict:
    """The number of real training scans whose (interpolated) AUC equals `value`, on the
    curve [(real scans, AUC), ...] sorted by scans: {"real_scans": n} or, off the curve,
    {"real_scans": None, "note": ...}."""
    xs = [c[0] for c in curve]
    ys = [c[1] for c in curve]
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if min(y0, y1) <= value <= max(y0, y1) and y1 != y0:
            return {"real_scans": round(x0 + (value - y0) * (x1 - x0) / (y1 - y0), 1)}
    if value >= max(ys):
        return {"real_scans": None, "note": f"above the curve: more than its best point "
                                            f"({xs[int(np.argmax(ys))]} real scans)"}
    return {"real_scans": None, "note": f"below the curve: less than {xs[0]} real scans"}


# ---- volumes -------------------------------------------------------------------------------
def downsample(volume: np.ndarray, size: int) -> np.ndarray:
    """(S, S, S) -> (size, size, size) by the mean over (S/size)^3 blocks (S a multiple)."""
    n = volume.shape[0]
    if n % size:
        raise EvaluationError(f"`input_size` {size} must divide the volume size {n}")
    return geometry.block_mean(volume, n // size)


@dataclasses.dataclass
class RealSet:
    case_ids: List[str]
    labels: np.ndarray  # the records' (or CSV's) class
    x: np.ndarray  # (n, s, s, s) float32
    size: int  # the records' volume size

    def target(self, positive: int) -> np.ndarray:
        return (self.labels == positive).astype(np.float32)


def load_real(pattern: str, flag: str, input_size: int, label_table: Optional[dict],
              log=print) -> RealSet:
    """Every labelled record of `pattern`, downsampled; unlabelled ones are left out, with
    their count logged."""
    ids, labels, xs, size, unlabelled = [], [], [], 0, 0
    for case in record_cases(pattern, flag):
        label = label_table.get(case.case_id) if label_table is not None else case.label
        if label is None or label < 0:
            unlabelled += 1
            continue
        size = case.volume.shape[0]
        ids.append(case.case_id)
        labels.append(int(label))
        xs.append(downsample(case.volume, input_size))
    if unlabelled:
        log(f"downstream: {flag}: {unlabelled} record(s) without a label left out")
    if not ids:
        raise EvaluationError(f"{flag} {pattern!r}: no labelled record (convert with "
                              "`labels_csv`, or pass `labels_csv` here)")
    return RealSet(ids, np.array(labels, np.int64), np.stack(xs), size)


def generator_training_cases(meta: dict, generator_train_records: str) -> Optional[set]:
    """The digests (manifest.case_digest) of the cases the generator was trained on: from
    `generator_train_records` when given, else from the export's metadata (exports of runs
    started before it was recorded have none: None)."""
    if generator_train_records:
        return {manifest.case_digest(c) for c in
                record_case_ids(generator_train_records, "`generator_train_records`")}
    return manifest.training_case_digests(meta)


def check_unseen(test: RealSet, train: RealSet, generator_cases: Optional[set]) -> None:
    """Refuses test cases that a model of the study has seen."""
    leaked = sorted(set(test.case_ids) & set(train.case_ids))
    if leaked:
        raise EvaluationError(f"`test_records` and `train_records` share {len(leaked)} case(s) "
                              f"(e.g. {leaked[0]}); test on held-out scans")
    if generator_cases is None:
        raise EvaluationError(
            "the SavedModel does not say which cases its generator was trained on (exported "
            "from a run that started before that was recorded); pass its training records "
            "as `generator_train_records` so that the test scans can be checked")
    seen = manifest.cases_among(test.case_ids, generator_cases)
    if seen:
        raise EvaluationError(
            f"{len(seen)} of the {len(test.case_ids)} `test_records` case(s) were in the "
            f"generator's training data (e.g. {seen[0]}): a generator that has seen the test "
            "scans can leak them into the synthetic training data; test on scans it never saw "
            "(the records' val split, with the generator trained on train-*)")


def synthetic_pool(module, meta: dict, count: int, positive: int, input_size: int, seed: int,
                   batch_size: int, log=print) -> tuple:
    """`count` generated volumes, downsampled: (x, classes or None). A conditional model's
    sample i has class order[i % len(order)], order = positive, then the other classes."""
    from crfgan_tf.generation import sample as sample_lib
    from crfgan_tf.utils.progress import Progress

    classes = int(meta.get("num_classes", 0))
    order = [positive] + [k for k in range(classes) if k != positive] if classes else []
    latent_dim = int(module.latent_dim.numpy())
    xs, labels = [], []
    progress = Progress(count, log, "downstream: generating", "volumes")
    for first in range(0, count, batch_size):
        n = min(batch_size, count - first)
        batch_labels = [order[i % len(order)] for i in range(first, first + n)] if order \
            else None
        volumes = sample_lib.generate(module, sample_lib.latents(seed, first, n, latent_dim),
                                      batch_labels)
        xs += [downsample(v.astype(np.float32), input_size) for v in volumes]
        labels += batch_labels or []
        if (first + n) % max(batch_size, 10) < batch_size or first + n == count:
            progress.report(first + n)
    return np.stack(xs), (np.array(labels, np.int64) if order else None)


# ---- the classifier ------------------------------------------------------------------------
def build_classifier(input_size: int):
    import keras

    x_in = keras.Input((input_size, input_size, input_size, 1), name="volume")
    x = x_in
    for i, channels in enumerate((8, 16)):
        x = keras.layers.Conv3D(channels, 3, padding="same", activation="relu",
                                name=f"conv{i + 1}")(x)
        x = keras.layers.MaxPooling3D(2, name=f"pool{i + 1}")(x)
    x = keras.layers.Conv3D(32, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.GlobalMaxPooling3D(name="global_max")(x)
    return keras.Model(x_in, keras.layers.Dense(1, name="logit")(x), name="classifier")


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(batch)
    for i, v in enumerate(batch):
        if rng.random() < 0.5:
            v = v[:, :, ::-1]
        out[i] = np.roll(v, tuple(rng.integers(-2, 3, 3)), axis=(0, 1, 2))
    return out


def train_and_predict(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, config: StudyConfig,
                      seed: int) -> np.ndarray:
    """Trains a fresh classifier (initial weights from `seed` alone) for config.steps on
    (x, y) and returns its probabilities on x_test."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    model = build_classifier(config.input_size)
    optimizer = keras.optimizers.Adam(config.learning_rate)
    loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)

    @tf.function(reduce_retracing=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_weights),
                                      model.trainable_weights))
        return loss

    rng = np.random.default_rng([seed, 1])  # the same batch draws in every arm of a seed
    for _ in range(config.steps):
        idx = rng.integers(0, len(x), config.batch_size)
        step(tf.constant(augment(x[idx], rng)[..., None]), tf.constant(y[idx, None]))
    logits = np.concatenate([model(x_test[i:i + 32, ..., None], training=False).numpy()
                             for i in range(0, len(x_test), 32)])[:, 0]
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def stratified_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a class-stratified `fraction` of the cases (at least one per class),
    the first members of one permutation per class, so smaller subsets nest."""
    rng = np.random.default_rng([seed, 2])
    keep = []
    for value in (0.0, 1.0):
        members = np.flatnonzero(y == value)
        keep += rng.permutation(members)[:max(1, math.ceil(fraction * len(members)))].tolist()
    return np.array(sorted(keep))


def _score(y_test, prob, config, seed) -> dict:
    return {"seed": seed, "auc": auc(y_test, prob),
            "auc_ci": auc_ci(y_test, prob, config.bootstrap, seed),
            "balanced_accuracy": balanced_accuracy(y_test, prob)}


def _summarise(arm: dict) -> dict:
    aucs = [r["auc"] for r in arm["runs"]]
    arm.update(auc_mean=float(np.mean(aucs)),
               auc_sd=float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0,
               balanced_accuracy_mean=float(np.mean([r["balanced_accuracy"]
                                                     for r in arm["runs"]])))
    return arm


def ratio_name(k: float) -> str:
    return f"real+{k:g}x"


def run_classification(config: StudyConfig, train: RealSet, test: RealSet, module, meta: dict,
                       log=print) -> dict:
    """The arms x seeds of the study (see the module docstring)."""
    positive = config.positive_class
    y, y_test = train.target(positive), test.target(positive)
    n_real = len(y)
    ratios = sorted(float(k) for k in config.synthetic_ratios)
    pool_size = max(1, math.ceil(ratios[-1] * n_real))
    conditional = int(meta.get("num_classes", 0)) > 0
    if conditional and config.synthetic_labels != "class":
        raise EvaluationError("`synthetic_labels=real_classifier` is for unconditional models; "
                              "this SavedModel is conditional (it generates each class)")
    if not conditional and config.synthetic_labels == "class":
        raise EvaluationError("the SavedModel is unconditional: its volumes have no class; "
                              "pass `synthetic_labels=real_classifier` to label them with the "
                              "real-only classifier, or use a conditional model")
    if conditional and positive >= int(meta["num_classes"]):
        raise EvaluationError(f"`positive_class={positive}`: the model has "
                              f"{meta['num_classes']} classes")
    log(f"downstream: generating a pool of {pool_size} synthetic volumes "
        f"({ratios[-1]:g} x {n_real} real) from `sample_seed={config.sample_seed}`")
    pool_x, pool_classes = synthetic_pool(module, meta, pool_size, positive, config.input_size,
                                          config.sample_seed, config.generate_batch_size, log)
    arms: Dict[str, dict] = {}

    def add(name, real_count, synthetic_count, seed, x, yy, t0):
        prob = train_and_predict(x, yy, test.x, config, seed)
        run = _score(y_test, prob, config, seed)
        run["train_positives"] = int(yy.sum())
        arm = arms.setdefault(name, {"name": name, "real": real_count,
                                     "synthetic": synthetic_count, "runs": []})
        arm["runs"].append(run)
        log(f"downstream: {name:<12} seed {seed}: real {real_count}, synthetic "
            f"{synthetic_count}: AUC {run['auc']:.3f} [{run['auc_ci'][0]:.3f}, "
            f"{run['auc_ci'][1]:.3f}], balanced accuracy {run['balanced_accuracy']:.3f} "
            f"({time.time() - t0:.1f} s)")
        return prob

    for seed in range(config.seeds):
        add("real", n_real, 0, seed, train.x, y, time.time())
        if pool_classes is not None:
            pool_y = (pool_classes == positive).astype(np.float32)
        else:  # the rule: the real-only classifier of this seed labels the pool
            t0 = time.time()
            pool_y = (train_and_predict(train.x, y, pool_x, config, seed) >= 0.5) \
                .astype(np.float32)
            arms.setdefault("_pool_labels", {"runs": []})["runs"].append(
                {"seed": seed, "positives": int(pool_y.sum()), "seconds": time.time() - t0})
        for k in ratios:
            m = max(1, math.ceil(k * n_real))
            add(ratio_name(k), n_real, m, seed, np.concatenate([train.x, pool_x[:m]]),
                np.concatenate([y, pool_y[:m]]), time.time())
        if pool_y.min() == pool_y.max():
            log(f"downstream: seed {seed}: the synthetic pool has one class only; the "
                "synthetic-only arm still runs (its AUC is chance or worse)")
        add("synthetic", 0, pool_size, seed, pool_x, pool_y, time.time())
        for f in sorted(config.real_fractions):
            idx = stratified_subset(y, f, seed)
            add(f"real@{f * 100:g}%", len(idx), 0, seed, train.x[idx], y[idx], time.time())
    pool_info = arms.pop("_pool_labels", None)
    arms = {name: _summarise(arm) for name, arm in arms.items()}
    curve = sorted((arm["real"], arm["auc_mean"]) for name, arm in arms.items()
                   if name == "real" or name.startswith("real@"))
    equivalents = {name: real_data_equivalent(curve, arm["auc_mean"])
                   for name, arm in arms.items()
                   if arm["synthetic"] > 0}
    generator = {"saved_model": config.saved_model, "model": meta.get("model"),
                 "conditional": conditional, "synthetic_labels": config.synthetic_labels,
                 "pool": pool_size, "sample_seed": config.sample_seed,
                 "pool_positives": int((pool_classes == positive).sum())
                 if pool_classes is not None else None}
    if pool_info:
        generator["pool_labels_by_real_classifier"] = pool_info["runs"]
    return {"arms": list(arms.values()),
            "real_data_curve": [{"real": n, "auc_mean": a} for n, a in curve],
            "real_data_equivalent": equivalents, "generator": generator}


# ---- the linear probe ----------------------------------------------------------------------
def logistic_probe(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, l2: float) -> np.ndarray:
    """L2-regularised logistic regression (sum of log-losses + l2/2 |w|^2, the bias not
    penalised) on features standardised with the training mean and SD, fitted with scipy's
    L-BFGS; returns the test probabilities."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    mean, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    a, b = (x - mean) / sd, (x_test - mean) / sd
    a1 = np.concatenate([a, np.ones((len(a), 1))], axis=1).astype(np.float64)
    sign = 2.0 * y - 1.0

    def loss(w):
        z = sign * (a1 @ w)
        p = expit(-z)
        value = -log_expit(z).sum() + 0.5 * l2 * (w[:-1] ** 2).sum()
        grad = -(a1 * (sign * p)[:, None]).sum(0)
        grad[:-1] += l2 * w[:-1]
        return value, grad

    w = minimize(loss, np.zeros(a1.shape[1]), jac=True, method="L-BFGS-B",
                 options={"maxiter": 1000}).x
    return expit(np.concatenate([b, np.ones((len(b), 1))], axis=1) @ w)


def run_probe(config: StudyConfig, train: RealSet, test: RealSet, log=print) -> dict:
    """The logistic-regression probe on --features (crfgan-encode) against one on the
    MedicalNet features of the same scans, same label, same split."""
    from crfgan_tf.evaluation import encoding, features, sources

    data = encoding.read_features(config.features)
    index = {c: i for i, c in enumerate(data["case_ids"])}
    missing = [c for c in train.case_ids + test.case_ids if c not in index]
    if missing:
        raise EvaluationError(f"`features` {config.features!r} has no row for {len(missing)} "
                              f"case(s) of the study (e.g. {missing[0]}); encode both "
                              "`train_records` and `test_records`")
    y, y_test = train.target(config.positive_class), test.target(config.positive_class)
    rows = lambda ids: data["features"][[index[c] for c in ids]].astype(np.float64)
    out = {"features": config.features, "definition": data["meta"].get("features"),
           "l2": config.probe_l2, "probes": []}
    sets = [(f"encoder ({data['meta'].get('model', '?')} hE, pooled)", rows(train.case_ids),
             rows(test.case_ids))]
    extractor = features.load_extractor(config.weights or None, config.allow_random_features,
                                        max_side=config.feature_side)
    medicalnet = []
    for split, pattern, real in (("train", config.train_records, train),
                                 ("test", config.test_records, test)):
        feats, shape = features.extract_features(sources.open_source(pattern), extractor, 1,
                                                 f"{split} ({extractor.name})", log)
        wanted = set(real.case_ids)  # the labelled records, in the order load_real kept them
        keep = [i for i, c in enumerate(sources.record_case_ids(pattern, f"`{split}_records`"))
                if c in wanted]
        medicalnet.append(feats[keep].astype(np.float64))
    sets.append((extractor.name, *medicalnet))
    for name, a, b in sets:
        prob = logistic_probe(a, y, b, config.probe_l2)
        result = {"features": name, "dimensions": int(a.shape[1]), "auc": auc(y_test, prob),
                  "auc_ci": auc_ci(y_test, prob, config.bootstrap, 0),
                  "balanced_accuracy": balanced_accuracy(y_test, prob)}
        out["probes"].append(result)
        log(f"downstream: probe on {name} ({a.shape[1]} features): AUC {result['auc']:.3f} "
            f"[{result['auc_ci'][0]:.3f}, {result['auc_ci'][1]:.3f}], balanced accuracy "
            f"{result['balanced_accuracy']:.3f}")
    out["pretrained_medicalnet"] = extractor.pretrained
    out["medicalnet_feature_side"] = extractor.input_side(max(shape))
    return out


# ---- the study -----------------------------------------------------------------------------
def run_study(config: StudyConfig, log=print) -> dict:
    """The classification study (with `saved_model`) and the probe (with `features`);
    writes downstream.json and downstream.png into config.output_dir; returns the result."""
    config.validate()
    fileio.ensure_output_dir(config.output_dir, "`output_dir`")
    table = None
    if config.labels_csv:
        from crfgan_tf.data import labels

        try:
            table = labels.read_labels_csv(config.labels_csv).labels
        except (ValueError, OSError) as err:
            raise EvaluationError(f"`labels_csv`: {err}") from None
    train = load_real(config.train_records, "`train_records`", config.input_size, table, log)
    test = load_real(config.test_records, "`test_records`", config.input_size, table, log)
    for name, real in (("`train_records`", train), ("`test_records`", test)):
        y = real.target(config.positive_class)
        if y.min() == y.max():
            raise EvaluationError(
                f"{name}: every labelled case is {'' if y[0] else 'not '}of class "
                f"{config.positive_class} (labels present: {sorted(set(real.labels.tolist()))}); "
                "the study needs both positives and negatives")
    result = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "task": {"positive_class": config.positive_class,
                       "labels": config.labels_csv or "the records' label feature",
                       "train": {"records": config.train_records, "cases": len(train.case_ids),
                                 "positives": int(train.target(config.positive_class).sum())},
                       "test": {"records": config.test_records, "cases": len(test.case_ids),
                                "positives": int(test.target(config.positive_class).sum())}}}
    log(f"downstream: {len(train.case_ids)} real training scans "
        f"({result['task']['train']['positives']} positive), {len(test.case_ids)} test scans "
        f"({result['task']['test']['positives']} positive)")
    if config.saved_model:
        from crfgan_tf.generation import sample as sample_lib

        try:
            module, meta = sample_lib.load(config.saved_model)
        except sample_lib.SavedModelError as err:
            raise EvaluationError(f"`saved_model`: {err}") from None
        if int(meta["img_size"]) != train.size:
            raise EvaluationError(f"`saved_model` generates {meta['img_size']}^3 volumes, the "
                                  f"records hold {train.size}^3")
        generator_cases = generator_training_cases(meta, config.generator_train_records)
        check_unseen(test, train, generator_cases)
        result["test_unseen_by_generator"] = {"generator_training_cases": len(generator_cases),
                                              "overlap": 0}
        model = build_classifier(config.input_size)
        result["classifier"] = {"architecture": CLASSIFIER, "parameters": model.count_params(),
                                "input_size": config.input_size, "steps": config.steps,
                                "batch_size": config.batch_size,
                                "learning_rate": config.learning_rate,
                                "augmentation": AUGMENTATION, "seeds": config.seeds,
                                "bootstrap": config.bootstrap,
                                "downsampling": "mean over blocks"}
        log(f"downstream: classifier input {config.input_size}^3, {config.steps} steps, "
            f"{config.seeds} seed(s)")
        result.update(run_classification(config, train, test, module, meta, log))
    if config.features:
        result["probe"] = run_probe(config, train, test, log)
    path = os.path.join(config.output_dir, "downstream.json")
    fileio.atomic_write(path, json.dumps(result, indent=2))
    if "arms" in result:
        plot(result, os.path.join(config.output_dir, "downstream.png"))
    log(f"downstream: wrote {path}")
    return result


def plot(result: dict, path: str) -> None:
    """Left: AUC of every arm (each seed's point with its bootstrap CI, the mean as a bar);
    right: the real-data curve with the synthetic arms' mean AUCs as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = result["arms"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, arm in enumerate(arms):
        left.bar(i, arm["auc_mean"], color="#c8d7e8", width=0.7)
        for j, run in enumerate(arm["runs"]):
            x = i + (j - (len(arm["runs"]) - 1) / 2) * 0.15
            left.errorbar(x, run["auc"], yerr=[[run["auc"] - run["auc_ci"][0]],
                                               [run["auc_ci"][1] - run["auc"]]],
                          fmt="o", color="#1f4e79", markersize=3, capsize=2)
    left.axhline(0.5, color="grey", lw=0.8, ls=":")
    left.set_xticks(range(len(arms)), [a["name"] for a in arms], rotation=30, ha="right")
    left.set_ylabel("test AUC (bootstrap 95 % CI per seed)")
    left.set_ylim(0, 1.02)
    curve = result["real_data_curve"]
    right.plot([c["real"] for c in curve], [c["auc_mean"] for c in curve], "o-", color="k",
               label="real only")
    mixed = [a for a in arms if a["synthetic"] and a["real"]]
    for k, arm in enumerate(mixed):
        right.axhline(arm["auc_mean"], lw=1, ls="--", label=arm["name"],
                      color=plt.cm.viridis(k / max(len(mixed) - 1, 1)))
    for arm in arms:
        if arm["synthetic"] and not arm["real"]:
            right.axhline(arm["auc_mean"], lw=1.2, ls=":", color="#b22222", label=arm["name"])
    right.set_xlabel("real training scans")
    right.set_ylabel("mean test AUC")
    right.set_title("real-data equivalent")
    right.legend(fontsize=7)
    fig.tight_layout()
    with fileio.atomic_output(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
