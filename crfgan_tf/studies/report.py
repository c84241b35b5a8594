"""The study's analysis and its three reports (crfgan-study): report.json holds every
number of the page, report.md the tables, report.html the tables and the figures, embedded
(PNG data URIs; no script, no network access).

Per arm, at the last step, seeds pooled: FD (3D features), MMD^2 and the 2.5D FID, each
with its bootstrap 95 % interval, and each seed's value with their mean and sd; k-NN
precision, recall, density and coverage; the anatomy statistics' spread against the
real volumes'; MS-SSIM; the quality gate's pass rate (ranges from the real volumes);
the collapse alarms. Per pair of arms: each distance's difference with its interval and a
permutation test's p-value (the 2.5D FID: the interval only, docs/evaluation.md). Per
step: FD, MMD and coverage of each arm. Training: parameters, peak RSS and seconds per
iteration, measured in this study's runs on this machine.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import platform
import time
from typing import Optional

import numpy as np

from crfgan_tf.utils import fileio

JSON, MD, HTML = "report.json", "report.md", "report.html"
FIGURES = "figures"
FORMAT = "crfgan-tf-study-report/1"
ALPHA = 0.05
RESAMPLES_25D_DIVISOR = 20   # the 2.5D FID's resamples: resamples / this (at least 10)
# The paper's figures (LUNA16; Tables 1, 3, 4 and section 3.3.1's speeds, batch 2, GPU)
PAPER = {
    "table1_luna16_256": {"hagan": {"fid": 0.061021, "mmd": 0.086461},
                          "crfgan": {"fid": 0.047062, "mmd": 0.084015}},
    "table3_parameters_millions": {64: {"crfgan": 57.07, "hagan": 78.7},
                                   128: {"crfgan": 57.20, "hagan": 79.58},
                                   256: {"crfgan": 57.24, "hagan": 79.74}},
    "table4_memory_mb_batch2": {128: {"crfgan": 2622, "hagan": 2812},
                                256: {"crfgan": 7494, "hagan": 7710}},
    "iterations_per_second_batch2": {128: {"crfgan": 4.236, "hagan": 3.845},
                                     256: {"crfgan": 1.394, "hagan": 1.216}},
}
LUNG_WINDOW = (-1350.0, 150.0)       # level -600, width 1500 HU
SOFT_TISSUE_WINDOW = (-160.0, 240.0)  # level 40, width 400 HU


# ---- the measurements -------------------------------------------------------------------
def unit_name(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


def load_measure(path: str) -> dict:
    with np.load(path, allow_pickle=False) as f:
        out = {k: f[k] for k in f.files}
    out["anatomy"] = json.loads(str(out["anatomy"]))
    return out


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None



# ---- analysis ---------------------------------------------------------------------------
def _inputs(study) -> list:
    """The measurement files the report is computed from (their names and sizes)."""
    names = ["real"] + [f"{unit_name(a.name, s)}-step-{t}" for s in study.c.seeds
                        for a in study.c.arms for t in study.c.eval_steps()]
    return [study.measure_path(n) for n in names]


def _fingerprint(study) -> str:
    parts = []
    for path in _inputs(study):
        if not os.path.exists(path):
            return ""
        parts.append(f"{os.path.basename(path)}:{os.path.getsize(path)}:{os.path.getmtime(path)}")
    parts.append(f"resamples={study.c.resamples},permutations={study.c.permutations}")
    return "|".join(parts)


def is_current(study) -> bool:
    """Whether report.json exists and was computed from today's measurements and
    analysis settings (then a rerun has nothing to do)."""
    report = read(study.dir)
    return bool(report) and report.get("inputs") == _fingerprint(study) != ""


def read(study_dir: str) -> Optional[dict]:
    try:
        with open(os.path.join(study_dir, JSON), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _interval(stat, real, fake, resamples, seed):
    from crfgan_tf.evaluation import statistics

    return statistics.bootstrap_interval(stat, real, fake, resamples, seed)


def analyse(study) -> dict:
    # evaluation loads TensorFlow: not at import (a refused flag of crfgan-study costs none)
    from crfgan_tf.evaluation import fid25d, metrics, quality, statistics

    c = study.c
    real = load_measure(study.measure_path("real"))
    final = c.train_steps
    sets = {}
    for arm in c.arms:
        for seed in c.seeds:
            for step in c.eval_steps():
                sets[arm.name, seed, step] = load_measure(
                    study.measure_path(f"{unit_name(arm.name, seed)}-step-{step}"))
    pooled = {arm.name: {step: {k: np.concatenate([sets[arm.name, s, step][k] for s in c.seeds])
                                for k in ("features3d",) + (("features25d",) if step == final
                                                            and "features25d" in real else ())}
                         for step in c.eval_steps()} for arm in c.arms}
    # one kernel width for every MMD of the study: the median pairwise distance of the real
    # and all last-step generated features (a width per comparison would make the values
    # incomparable)
    sigma = metrics.median_pairwise_distance(np.concatenate(
        [real["features3d"]] + [pooled[a.name][final]["features3d"] for a in c.arms]))
    fd = metrics.fid_from_features
    mmd = lambda r, f: metrics.mmd(r, f, sigma=sigma or None)  # noqa: E731
    r25 = max(10, c.resamples // RESAMPLES_25D_DIVISOR)
    limits = quality.ranges_from(real["anatomy"])
    real_spread = statistics.anatomy_spread(real["anatomy"], real["anatomy"])
    out = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "settings": c.settings() | {"resamples": c.resamples,
                                       "permutations": c.permutations},
           "machine": machine(), "alpha": ALPHA,
           "extractor": {"features3d": str(real["extractor"]),
                         "pretrained3d": bool(real["pretrained"]),
                         "features25d": str(real.get("extractor25d", "")),
                         "pretrained25d": bool(real.get("pretrained25d", False)),
                         "mmd_sigma": sigma, "resamples25d": r25},
           "real": {"count": int(real["count"]),
                    "ms_ssim": _mean(real["ms_ssim_pairs"]),
                    "anatomy": {k: {"mean": v["real_mean"], "sd": v["real_sd"]}
                                for k, v in real_spread.items()}},
           "arms": {}, "pairs": []}
    for i, arm in enumerate(c.arms):
        seed_rows = {}
        for seed in c.seeds:
            s = sets[arm.name, seed, final]
            row = {"fd": fd(real["features3d"], s["features3d"]),
                   "mmd": mmd(real["features3d"], s["features3d"]),
                   "coverage": statistics.knn_coverage(real["features3d"], s["features3d"])[
                       "coverage"],
                   "ms_ssim": _mean(s["ms_ssim_pairs"])}
            if "features25d" in s:
                row["fid25d"] = fid25d.mean_statistic(real["features25d"], s["features25d"])
            seed_rows[seed] = row
        p = pooled[arm.name][final]
        anatomy = [r for seed in c.seeds for r in sets[arm.name, seed, final]["anatomy"]]
        spread = statistics.anatomy_spread(real["anatomy"], anatomy)
        coverage = statistics.knn_coverage(real["features3d"], p["features3d"])
        passed = sum(not quality.failed(r, limits) for r in anatomy)
        summary = {
            "fd": _interval(fd, real["features3d"], p["features3d"], c.resamples, i),
            "mmd": _interval(mmd, real["features3d"], p["features3d"], c.resamples, i),
            "coverage": coverage, "anatomy": spread,
            "ms_ssim": _mean(np.concatenate([sets[arm.name, s, final]["ms_ssim_pairs"]
                                             for s in c.seeds])),
            "quality_pass_rate": passed / max(len(anatomy), 1),
            "alarms": statistics.collapse_alarms(coverage, spread),
            "n_generated": int(p["features3d"].shape[0]),
            "seeds": {k: statistics.mean_sd([seed_rows[s].get(k) for s in c.seeds])
                      for k in ("fd", "mmd", "fid25d", "coverage", "ms_ssim")},
            "per_seed": {str(s): seed_rows[s] for s in c.seeds}}
        if "features25d" in p:
            summary["fid25d"] = _interval(fid25d.mean_statistic, real["features25d"],
                                          p["features25d"], r25, i)
            summary["fid25d_planes"] = fid25d.fid25d(_planes(real["features25d"]),
                                                     _planes(p["features25d"]))
        steps = []
        for step in c.eval_steps():
            f = pooled[arm.name][step]["features3d"]
            knn = statistics.knn_coverage(real["features3d"], f)
            steps.append({"step": step,
                          "fd": _interval(fd, real["features3d"], f, c.resamples, i),
                          "mmd": _interval(mmd, real["features3d"], f, c.resamples, i),
                          "coverage": knn["coverage"], "recall": knn["recall"],
                          "ms_ssim": _mean(np.concatenate(
                              [sets[arm.name, s, step]["ms_ssim_pairs"] for s in c.seeds]))})
        train = [read_json(os.path.join(study.run_dir(arm.name, s), "study_train.json")) or {}
                 for s in c.seeds]
        out["arms"][arm.name] = {
            "model": arm.model, "flagfile": arm.flagfile, "final": summary, "steps": steps,
            "training": {
                "seconds_per_iteration": statistics.mean_sd(
                    [t.get("seconds_per_iteration") for t in train]),
                "peak_rss_mib": statistics.mean_sd(
                    [t["peak_rss_bytes"] / 2 ** 20 for t in train if t.get("peak_rss_bytes")]),
                "parameters": (train[0].get("parameters") or {}).get("total")}}
    names = [a.name for a in c.arms]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = pooled[a][final], pooled[b][final]
            pair = {"a": a, "b": b,
                    "fd": statistics.difference(fd, real["features3d"], pa["features3d"],
                                                pb["features3d"], c.resamples, c.permutations),
                    "mmd": statistics.difference(mmd, real["features3d"], pa["features3d"],
                                                 pb["features3d"], c.resamples, c.permutations)}
            if "features25d" in pa:
                rng = np.random.default_rng(7)
                draws = [fid25d.mean_statistic(_rs(rng, real["features25d"]),
                                               _rs(rng, pa["features25d"]))
                         - fid25d.mean_statistic(_rs(rng, real["features25d"]),
                                                 _rs(rng, pb["features25d"]))
                         for _ in range(r25)]
                pair["fid25d"] = dict(statistics.summary(
                    out["arms"][a]["final"]["fid25d"]["value"]
                    - out["arms"][b]["final"]["fid25d"]["value"], np.array(draws)),
                    resamples=r25, p_value=None)
            out["pairs"].append(pair)
    out["paper"] = paper_columns(study)
    out["inputs"] = _fingerprint(study)
    return out


def _rs(rng, x):
    return x[rng.integers(0, x.shape[0], x.shape[0])]


def _planes(array: np.ndarray) -> dict:
    from crfgan_tf.evaluation import fid25d

    return {p: array[:, i] for i, p in enumerate(fid25d.PLANES)}


def _mean(values) -> Optional[float]:
    values = np.asarray(values, np.float64)
    return float(values.mean()) if values.size else None


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def dataset_of(records: str) -> Optional[str]:
    """The manifest's dataset kind beside the first record file, if any."""
    import glob

    from crfgan_tf.data import manifest

    files = sorted(glob.glob(records.split(",")[0]))
    if not files:
        return None
    return manifest.of_file(files[0]).get("settings", {}).get("dataset")


def paper_columns(study) -> dict:
    """The paper's values that compare with this study: Table 1 only for LUNA16 at 256^3
    (full width); Tables 3 and 4 and the speeds at the paper's sizes and full width."""
    c = study.c
    full = c.width == 1.0
    out = {}
    if full and c.img_size == 256 and dataset_of(c.train_records) == "luna16":
        out["table1"] = PAPER["table1_luna16_256"]
    if full:
        for key in ("table3_parameters_millions", "table4_memory_mb_batch2",
                    "iterations_per_second_batch2"):
            if c.img_size in PAPER[key] and (key.startswith("table3") or c.batch_size == 2):
                out[key] = PAPER[key][c.img_size]
    return out


# ---- figures ----------------------------------------------------------------------------
def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def figures(study, report: dict) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crfgan_tf.core import intensity

    c = study.c
    real = load_measure(study.measure_path("real"))
    window = tuple(real["window"])
    rows = [("real", real["mid_slices"])]
    for arm in c.arms:
        for seed in c.seeds:  # every seed: one seed's samples can mislead (docs/study.md)
            m = load_measure(study.measure_path(f"{unit_name(arm.name, seed)}-step-"
                                                f"{c.train_steps}"))
            rows.append((f"{arm.name}, seed {seed}", m["mid_slices"]))
    out = {}
    for key, (low, high) in (("grid_lung", LUNG_WINDOW), ("grid_soft_tissue", SOFT_TISSUE_WINDOW)):
        cols = max(r[1].shape[0] for r in rows) * 3
        fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 1.1, len(rows) * 1.2),
                                 squeeze=False)
        for r, (label, slices) in enumerate(rows):
            for j in range(cols):
                ax = axes[r][j]
                ax.axis("off")
                v, plane = divmod(j, 3)
                if v < slices.shape[0]:
                    hu = intensity.from_unit(slices[v, plane].astype(np.float32), window)
                    ax.imshow(np.flipud(hu) if plane else hu, cmap="gray", vmin=low,
                              vmax=high)
            axes[r][0].text(-0.1, 0.5, label, transform=axes[r][0].transAxes, ha="right",
                            va="center", fontsize=8)
        fig.suptitle(f"mid-slices (axial, coronal, sagittal) of {rows[0][1].shape[0]} volumes "
                     f"per set, window {low:g}..{high:g} HU", fontsize=9)
        out[key] = _png(fig)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for name, arm in report["arms"].items():
        steps = [s["step"] for s in arm["steps"]]
        for ax, key in zip(axes[:2], ("fd", "mmd")):
            values = [s[key]["value"] for s in arm["steps"]]
            lo = [s[key]["ci95"][0] for s in arm["steps"]]
            hi = [s[key]["ci95"][1] for s in arm["steps"]]
            ax.plot(steps, values, marker="o", label=name)
            ax.fill_between(steps, lo, hi, alpha=0.2)
        axes[2].plot(steps, [s["coverage"] for s in arm["steps"]], marker="o", label=f"{name} coverage")
        axes[2].plot(steps, [s["recall"] for s in arm["steps"]], marker="x", linestyle="--",
                     label=f"{name} recall")
    if all(s["fd"]["ci95"][0] > 0 for arm in report["arms"].values() for s in arm["steps"]):
        axes[0].set_yscale("log")  # early steps are orders of magnitude away
    for ax, title in zip(axes, ("FD (3D features), 95 % CI", "MMD² (3D features), 95 % CI",
                                "k-NN coverage and recall")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.legend(fontsize=7)
    axes[2].set_ylim(-0.05, 1.05)
    out["curves"] = _png(fig)
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    ax.scatter([r["body_fraction"] for r in real["anatomy"]],
               [r["lung_fraction"] for r in real["anatomy"]], label="real", marker="s", c="k")
    for arm in c.arms:
        pts = [r for s in c.seeds for r in load_measure(study.measure_path(
            f"{unit_name(arm.name, s)}-step-{c.train_steps}"))["anatomy"]]
        ax.scatter([r["body_fraction"] for r in pts], [r["lung_fraction"] for r in pts],
                   label=arm.name, alpha=0.6)
    ax.set_xlabel("body fraction (body / volume)")
    ax.set_ylabel("lung fraction (lungs / body)")
    ax.set_title("anatomy of each volume", fontsize=9)
    ax.legend(fontsize=7)
    out["anatomy"] = _png(fig)
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    names = list(report["arms"])
    for ax, key, label in ((axes[0], "seconds_per_iteration", "s/it"),
                           (axes[1], "peak_rss_mib", "peak RSS, MiB")):
        vals = [report["arms"][n]["training"][key]["mean"] or 0 for n in names]
        errs = [report["arms"][n]["training"][key]["sd"] or 0 for n in names]
        ax.bar(names, vals, yerr=errs, color=["C0", "C1", "C2", "C3"][:len(names)])
        ax.set_title(f"training {label} (mean ± sd over seeds)", fontsize=9)
    out["training"] = _png(fig)
    return out


# ---- text -------------------------------------------------------------------------------
def _ci(entry: Optional[dict], digits: int = 4) -> str:
    if not entry:
        return "—"
    lo, hi = entry["ci95"]
    return f"{entry['value']:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"


def _ms(entry: dict, digits: int = 4) -> str:
    if not entry or entry["mean"] is None:
        return "—"
    sd = "" if entry["sd"] is None else f" ± {entry['sd']:.{digits}g}"
    return f"{entry['mean']:.{digits}g}{sd}"


def _p(value) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" + (" (significant)" if value < ALPHA else "")


def tables(report: dict) -> list:
    """[(title, header, rows, note)] shared by the markdown and the HTML."""
    arms = report["arms"]
    paper = report["paper"]
    feat = report["extractor"]
    random3d = "" if feat["pretrained3d"] else " (RANDOM features: FD, not FID)"
    random25 = "" if feat["pretrained25d"] else " (random 2D features)"
    t1 = [[n, _ci(a["final"]["fd"]), _ci(a["final"]["mmd"]), _ci(a["final"].get("fid25d")),
           _ms(a["final"]["seeds"]["fd"]), _ms(a["final"]["seeds"]["mmd"]),
           (f"{paper['table1'][a['model']]['fid']} / {paper['table1'][a['model']]['mmd']}"
            if "table1" in paper and a["model"] in paper["table1"] else "—")]
          for n, a in arms.items()]
    out = [(f"Table 1: distances to the real volumes{random3d}",
            ["arm", "FD [95 % CI]", "MMD² [95 % CI]", f"2.5D FID [95 % CI]{random25}",
             "FD over seeds", "MMD² over seeds", "paper FID / MMD (LUNA16 256³)"], t1,
            "Seeds pooled for the value and its bootstrap interval; 'over seeds' is the mean "
            "± sd of each seed's own value.")]
    rows = [[f"{p['a']} − {p['b']}", _ci(p["fd"]), _p(p["fd"]["p_value"]), _ci(p["mmd"]),
             _p(p["mmd"]["p_value"]), _ci(p.get("fid25d"))] for p in report["pairs"]]
    out.append(("Between arms (negative: the first is closer to the real volumes)",
                ["pair", "ΔFD [95 % CI]", "p (permutation)", "ΔMMD² [95 % CI]",
                 "p (permutation)", "Δ2.5D FID [95 % CI]"], rows,
                f"Significant: p < {ALPHA}. The 2.5D FID has an interval but no permutation "
                "test (docs/evaluation.md)."))
    real = report["real"]
    rows = [["real", str(real["count"]), "—", "—", "—",
             _msd(real["anatomy"].get("body_fraction")), _msd(real["anatomy"].get("lung_fraction")),
             f"{real['ms_ssim']:.3f}" if real["ms_ssim"] is not None else "—", "—", "—"]]
    for n, a in arms.items():
        f = a["final"]
        cov = f["coverage"]
        rows.append([n, str(f["n_generated"]), f"{cov['precision']:.2f}", f"{cov['recall']:.2f}",
                     f"{cov['coverage']:.2f} (density {cov['density']:.2f})",
                     _spread(f["anatomy"].get("body_fraction")),
                     _spread(f["anatomy"].get("lung_fraction")),
                     f"{f['ms_ssim']:.3f}" if f["ms_ssim"] is not None else "—",
                     f"{f['quality_pass_rate']:.0%}",
                     "; ".join(f["alarms"]) or "none"])
    out.append(("Fidelity and diversity", ["set", "volumes", "precision", "recall", "coverage",
                                           "body fraction mean ± sd (sd ratio, W1)",
                                           "lung fraction mean ± sd (sd ratio, W1)",
                                           "MS-SSIM", "quality gate", "collapse alarms"], rows,
                f"k-NN manifolds with k = {next(iter(arms.values()))['final']['coverage']['k']}; "
                "sd ratio = generated sd / real sd (1 matches the real spread). The quality "
                "gate's ranges come from the real volumes here."))
    rows = []
    for n, a in arms.items():
        t = a["training"]
        params = t["parameters"]
        paper3 = paper.get("table3_parameters_millions", {}).get(a["model"])
        paper4 = paper.get("table4_memory_mb_batch2", {}).get(a["model"])
        speed = paper.get("iterations_per_second_batch2", {}).get(a["model"])
        rows.append([n, f"{params:,}" if params else "—", "—" if paper3 is None else f"{paper3} M",
                     _ms(t["peak_rss_mib"], 5), "—" if paper4 is None else f"{paper4} MB (GPU)",
                     _ms(t["seconds_per_iteration"], 3),
                     "—" if speed is None else f"{1 / speed:.3f} (GPU)"])
    out.append(("Tables 3 and 4: parameters, training memory and speed (this machine)",
                ["arm", "parameters", "paper", "peak RSS, MiB", "paper (Table 4)",
                 "s/it", "paper s/it"], rows,
                f"Measured in this study's training runs on {report['machine']['cpu']} "
                f"({report['machine']['cores']} cores): peak RSS of the training process, "
                "median seconds per iteration over its logging windows."))
    return out


def _msd(entry) -> str:
    return "—" if not entry else f"{entry['mean']:.3f} ± {entry['sd']:.3f}"


def _spread(entry) -> str:
    if not entry:
        return "—"
    ratio = "—" if entry["sd_ratio"] is None else f"{entry['sd_ratio']:.2f}"
    return f"{entry['fake_mean']:.3f} ± {entry['fake_sd']:.3f} ({ratio}, {entry['w1']:.3f})"


def markdown(report: dict) -> str:
    lines = [f"# Study report ({report['created']})", "",
             f"Arms {', '.join(report['arms'])}; seeds {report['settings']['seeds']}; "
             f"{report['settings']['train_steps']} steps at {report['settings']['img_size']}³, "
             f"width {report['settings']['width']:g}, batch {report['settings']['batch_size']}; "
             f"{report['settings']['num_samples']} generated volumes per arm and seed against "
             f"{report['real']['count']} real ones; "
             f"{report['settings']['resamples']} bootstrap resamples, "
             f"{report['settings']['permutations']} permutations.", ""]
    for title, header, rows, note in tables(report):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += ["", note, ""]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0 .3em}td,th{border:1px solid #ccc;
padding:.25em .5em;font-size:.9em;text-align:left}th{background:#f0f0f0}.note{color:#555;
font-size:.85em;margin-bottom:1.5em}img{max-width:100%}.alarm{color:#a00}"""


def to_html(report: dict, figs: dict) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<title>crfgan-study report</title>", f"<style>{CSS}</style></head><body>",
             "<h1>CRF-GAN study report</h1>",
             f"<p>{e(markdown(report).splitlines()[2])}</p>"]
    alarms = [f"{n}: {a}" for n, arm in report["arms"].items() for a in arm["final"]["alarms"]]
    if alarms:
        parts.append("<p class='alarm'><b>Collapse alarms:</b> " + "<br>".join(map(e, alarms))
                     + "</p>")
    for title, header, rows, note in tables(report):
        parts.append(f"<h2>{e(title)}</h2><table><tr>"
                     + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append(f"</table><p class='note'>{e(note)}</p>")
    captions = {"grid_lung": "Real and generated volumes, lung window",
                "grid_soft_tissue": "The same volumes, soft-tissue window",
                "curves": "Distances and coverage against the training step",
                "anatomy": "Body and lung fraction of every volume: spread against the real",
                "training": "Training speed and memory"}
    for key, caption in captions.items():
        if key in figs:
            parts.append(f"<h2>{e(caption)}</h2><img alt='{e(caption)}' src='{figs[key]}'>")
    parts.append("<p class='note'>Every number of this page is in report.json; what each "
                 "statistic resamples and assumes: docs/evaluation.md.</p></body></html>")
    return "\n".join(parts)


def write(study) -> dict:
    report = analyse(study)
    figs = figures(study, report)
    folder = os.path.join(study.dir, FIGURES)  # the same figures as files, for papers
    os.makedirs(folder, exist_ok=True)
    for key, uri in figs.items():
        fileio.atomic_write_bytes(os.path.join(folder, f"{key}.png"),
                                  base64.b64decode(uri.split(",", 1)[1]))
    fileio.atomic_write(os.path.join(study.dir, JSON), json.dumps(report, indent=1) + "\n")
    fileio.atomic_write(os.path.join(study.dir, MD), markdown(report) + "\n")
    fileio.atomic_write(os.path.join(study.dir, HTML), to_html(report, figs) + "\n")
    study.log(f"study: wrote {os.path.join(study.dir, HTML)}, {JSON}, {MD} and {FIGURES}/")
    return report
