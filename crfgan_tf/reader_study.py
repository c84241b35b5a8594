"""The two-alternative forced-choice (2AFC) reader study of the paper (section 2.3.2).

make_study builds it: section 1, pairs of a real and a generated slice at the same position
and plane, "which is real?" plus a 1-5 difficulty rating; section 2, pairs of slices from
model A and model B, "which is more realistic?". Readers get one self-contained HTML file
(images embedded, no network, no pause/resume, answers exported as CSV); the key that says
which side is what is written to a separate folder. analyze reads the key and the answer
CSVs (tools/analyze_2afc.py is the CLI).
"""

from __future__ import annotations

import base64
import csv
import datetime
import hashlib
import html
import json
import os
from typing import Optional

import numpy as np
from scipy import stats

from crfgan_tf import evaluation, fileio, sample_lib

PLANES = fileio.PLANES
DIFFICULTY = {1: "Extremely subtle", 2: "Moderately subtle", 3: "Fairly subtle",
              4: "Moderately obvious", 5: "Obvious"}
ANSWER_COLUMNS = ("study_id", "reader", "question", "section", "choice", "difficulty",
                  "response_ms")
PROMPTS = {1: "One image is from a real CT scan, the other was generated. Which one is real?",
           2: "Both images were generated. Which one looks more like a real CT?"}


class StudyError(Exception):
    """Bad study input, or answers that do not belong to the study."""


# ---- building ------------------------------------------------------------------------

def plane_length(shape, plane: str) -> int:
    return shape[PLANES.index(plane)]


def render_png(hu_slice: np.ndarray, window=sample_lib.LUNG_WINDOW) -> bytes:
    """A slice in HU -> 8-bit grey PNG at `window` (default lung window W1500 L-600)."""
    import tensorflow as tf

    low, high = window
    grey = np.round(np.clip((hu_slice.astype(np.float32) - low) / (high - low), 0, 1) * 255)
    return tf.io.encode_png(grey.astype(np.uint8)[..., None]).numpy()


def load_hu_volumes(source: evaluation.Source, count: int, window, label: str, log=print) -> list:
    """The first `count` volumes of `source` as int16 in the window's units (HU for CT)."""
    out = []
    for volume in source.volumes():
        out.append(sample_lib.to_intensity(volume, window))
        log(f"2afc: {label} volume {len(out)}/{count}")
        if len(out) == count:
            break
    if not out:
        raise StudyError(f"{source.spec}: no volumes")
    return out


def _pick(rng, n: int, count: int) -> list:
    """`count` indices into n items: without repetition while they last, then again."""
    picks = []
    while len(picks) < count:
        picks += list(rng.permutation(n))
    return [int(i) for i in picks[:count]]


def check_output_dir(output_dir: str, overwrite: bool = False) -> None:
    """Refuses an `output_dir` that holds a study already (its collected answers are only
    analysable with its own key) unless `overwrite`, and one that cannot be written.

    Raises:
      StudyError: naming --output_dir and, for an existing study, its id and --overwrite.
      fileio.OutputError: the directory cannot be written.
    """
    key = os.path.join(output_dir, "key", "key.json")
    page = os.path.join(output_dir, "readers", "study.html")
    if not overwrite and (os.path.exists(key) or os.path.exists(page)):
        try:
            with open(key) as f:
                study_id = json.load(f).get("study_id", "?")
        except (OSError, ValueError):
            study_id = "?"
        raise StudyError(
            f"--output_dir {output_dir!r} already holds a study ({study_id}); answers collected "
            "for it can only be analysed with its key. Use another --output_dir, or pass "
            "--overwrite to replace it")
    fileio.ensure_output_dir(output_dir, "--output_dir")


def make_study(volumes: dict, output_dir: str, section1_pairs: int = 10,
               section2_pairs: int = 30, model_names=("model A", "model B"), seed: int = 0,
               planes=PLANES, position_range=(0.3, 0.7), display_window=sample_lib.LUNG_WINDOW,
               sources: Optional[dict] = None, log=print, overwrite: bool = False) -> dict:
    """Builds the study from HU volumes and writes `output_dir`/readers/study.html and
    `output_dir`/key/key.json. Returns the key.

    Args:
      volumes: {"real": [...], "model_a": [...], "model_b": [...]} lists of (z, y, x) HU
        arrays, all of one shape; "model_b" may be missing when section2_pairs is 0.
      position_range: slice positions are drawn uniformly in this fraction of the axis
        (the central part, where the lungs are).
      overwrite: replace a study already in `output_dir` (see check_output_dir).
    """
    if section1_pairs < 0 or section2_pairs < 0 or section1_pairs + section2_pairs == 0:
        raise StudyError("need at least one pair (section1_pairs, section2_pairs >= 0)")
    if section1_pairs and not (volumes.get("real") and volumes.get("model_a")):
        raise StudyError("section 1 needs real volumes and model A volumes")
    if section2_pairs and not (volumes.get("model_a") and volumes.get("model_b")):
        raise StudyError("section 2 needs model A and model B volumes")
    bad = [p for p in planes if p not in PLANES]
    if bad or not planes:
        raise StudyError(f"planes must be among {PLANES}, got {list(planes)}")
    if not 0.0 <= position_range[0] < position_range[1] <= 1.0:
        raise StudyError(f"position range must satisfy 0 <= low < high <= 1, got {position_range}")
    shapes = {name: {v.shape for v in vols} for name, vols in volumes.items() if vols}
    all_shapes = set().union(*shapes.values())
    if len(all_shapes) != 1:
        raise StudyError(f"all volumes must have one shape to compare slices at the same "
                         f"position, got {shapes}")
    shape = all_shapes.pop()
    check_output_dir(output_dir, overwrite)
    rng = np.random.default_rng(seed)

    def pairs(section, first, second, n):
        if n == 0:
            return []
        picks = (_pick(rng, len(volumes[first]), n), _pick(rng, len(volumes[second]), n))
        out = []
        for i, j in zip(*picks):
            plane = str(rng.choice(list(planes)))
            fraction = float(rng.uniform(*position_range))
            index = min(int(fraction * plane_length(shape, plane)), plane_length(shape, plane) - 1)
            sides = [{"source": first, "volume": i}, {"source": second, "volume": j}]
            if rng.random() < 0.5:
                sides.reverse()
            out.append({"section": section, "plane": plane, "slice_index": index,
                        "left": sides[0], "right": sides[1]})
        return out

    questions = pairs(1, "real", "model_a", section1_pairs) + \
        pairs(2, "model_a", "model_b", section2_pairs)
    reader_items, digest = [], hashlib.sha256()
    for n, q in enumerate(questions, start=1):
        q["id"] = f"q{n:02d}"
        item = {"id": q["id"], "section": q["section"]}
        for side in ("left", "right"):
            s = q[side]
            png = render_png(fileio.slice_at(volumes[s["source"]][s["volume"]], q["plane"],
                                      q["slice_index"]), display_window)
            digest.update(png)
            item[side] = "data:image/png;base64," + base64.b64encode(png).decode()
        reader_items.append(item)
    study_id = digest.hexdigest()[:16]

    readers_dir = os.path.join(output_dir, "readers")
    key_dir = os.path.join(output_dir, "key")
    os.makedirs(readers_dir, exist_ok=True)
    os.makedirs(key_dir, exist_ok=True)
    page = render_html(study_id, reader_items)
    fileio.atomic_write(os.path.join(readers_dir, "study.html"), page)
    key = {"study_id": study_id, "created": datetime.datetime.now(datetime.timezone.utc)
           .isoformat(timespec="seconds"), "seed": seed,
           "model_a": model_names[0], "model_b": model_names[1],
           "sources": sources or {}, "volume_shape": list(shape),
           "display_window": list(display_window), "position_range": list(position_range),
           "section1_pairs": section1_pairs, "section2_pairs": section2_pairs,
           "questions": questions}
    fileio.atomic_write(os.path.join(key_dir, "key.json"), json.dumps(key, indent=1))
    fileio.atomic_write(os.path.join(key_dir, "README.txt"),
                        "The answer key of the 2AFC study: which image of each pair is real or "
                        "from which model.\nDo not give this folder to readers; give them "
                        "readers/study.html only.\n")
    log(f"2afc: study {study_id}: {section1_pairs} + {section2_pairs} pairs -> "
        f"{os.path.join(readers_dir, 'study.html')} (key: {key_dir})")
    return key


def render_html(study_id: str, items: list) -> str:
    """The readers' page: one question at a time, answers kept in memory only, CSV export."""
    data = json.dumps({"studyId": study_id, "columns": list(ANSWER_COLUMNS),
                       "prompts": {str(k): v for k, v in PROMPTS.items()},
                       "difficulty": {str(k): v for k, v in DIFFICULTY.items()},
                       "questions": items})
    return (_HTML.replace("__CSV_LIB__", _CSV_JS).replace("__STUDY__", data.replace("</", "<\\/"))
            .replace("__TITLE__", html.escape(f"Chest CT reader study {study_id}")))


_CSV_JS = """
function csvField(value) {
  const s = value === null || value === undefined ? "" : String(value);
  return /[",\\r\\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}
function toCsv(columns, rows) {
  const lines = [columns.join(",")];
  for (const row of rows) lines.push(columns.map(c => csvField(row[c])).join(","));
  return lines.join("\\r\\n") + "\\r\\n";
}
"""

_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { background: #111; color: #eee; font: 16px sans-serif; margin: 2em; }
.pair { display: flex; gap: 2em; justify-content: center; }
figure { margin: 0; text-align: center; }
img { width: 45vw; max-width: 512px; image-rendering: pixelated; border: 4px solid #111; }
img.chosen { border-color: #3a8; }
button { font-size: 16px; padding: .4em 1.2em; margin: .4em; }
button.chosen { background: #3a8; color: #fff; }
#difficulty label { margin-right: 1em; }
.note { color: #aaa; }
</style></head>
<body>
<div id="start">
 <h1>Chest CT reader study</h1>
 <p>You will see pairs of CT slices shown at a lung window, one pair at a time. Section 1:
 one image of each pair is from a real scan and one was generated; pick the real one and rate
 how difficult the choice was. Section 2: both images were generated; pick the one that looks
 more like a real CT.</p>
 <p class="note">Complete the study in one sitting: it cannot be paused, and answers cannot be
 changed after pressing Next. Closing or reloading the page loses the answers. At the end,
 download your answers as a CSV file and send it to the study organiser.</p>
 <p><label>Reader ID: <input id="reader" autocomplete="off"></label>
 <button id="begin" disabled>Begin</button></p>
</div>
<div id="question" hidden>
 <h2 id="progress"></h2>
 <p id="prompt"></p>
 <div class="pair">
  <figure><img id="img-left" alt="left image"><figcaption>
   <button id="choose-left">Left</button></figcaption></figure>
  <figure><img id="img-right" alt="right image"><figcaption>
   <button id="choose-right">Right</button></figcaption></figure>
 </div>
 <p id="difficulty"></p>
 <p><button id="next" disabled>Next</button></p>
</div>
<div id="done" hidden>
 <h2>Thank you</h2>
 <p><button id="download">Download answers (CSV)</button></p>
 <p class="note">If the download does not start, copy the text below into a file named
 answers_READER.csv.</p>
 <textarea id="csv" rows="8" cols="90" readonly></textarea>
</div>
<script>__CSV_LIB__</script>
<script>
"use strict";
const STUDY = __STUDY__;
const answers = [];
let current = -1, choice = null, difficulty = null, shownAt = 0, reader = "";
const $ = id => document.getElementById(id);

$("reader").addEventListener("input", () => { $("begin").disabled = !$("reader").value.trim(); });
$("begin").addEventListener("click", () => {
  reader = $("reader").value.trim();
  $("start").hidden = true; $("question").hidden = false;
  window.addEventListener("beforeunload", warn);
  show(0);
});
function warn(event) { event.preventDefault(); event.returnValue = ""; }

function show(i) {
  current = i; choice = null; difficulty = null;
  const q = STUDY.questions[i];
  $("progress").textContent = "Section " + q.section + " - question " + (i + 1) + " of " +
    STUDY.questions.length;
  $("prompt").textContent = STUDY.prompts[q.section];
  $("img-left").src = q.left; $("img-right").src = q.right;
  for (const side of ["left", "right"]) {
    $("choose-" + side).classList.remove("chosen"); $("img-" + side).classList.remove("chosen");
  }
  const box = $("difficulty");
  box.textContent = "";
  if (q.section === 1) {
    box.append("How difficult was this choice? ");
    for (const [value, label] of Object.entries(STUDY.difficulty)) {
      const l = document.createElement("label");
      const r = document.createElement("input");
      r.type = "radio"; r.name = "difficulty"; r.value = value;
      r.addEventListener("change", () => { difficulty = Number(value); update(); });
      l.append(r, " " + value + " (" + label + ")");
      box.append(l);
    }
  }
  update();
  shownAt = performance.now();
}
function pick(side) {
  choice = side;
  for (const s of ["left", "right"]) {
    $("choose-" + s).classList.toggle("chosen", s === side);
    $("img-" + s).classList.toggle("chosen", s === side);
  }
  update();
}
function update() {
  const q = STUDY.questions[current];
  $("next").disabled = !(choice && (q.section !== 1 || difficulty));
}
$("choose-left").addEventListener("click", () => pick("left"));
$("choose-right").addEventListener("click", () => pick("right"));
$("img-left").addEventListener("click", () => pick("left"));
$("img-right").addEventListener("click", () => pick("right"));
$("next").addEventListener("click", () => {
  const q = STUDY.questions[current];
  answers.push({study_id: STUDY.studyId, reader: reader, question: q.id, section: q.section,
                choice: choice, difficulty: q.section === 1 ? difficulty : "",
                response_ms: Math.round(performance.now() - shownAt)});
  if (current + 1 < STUDY.questions.length) { show(current + 1); return; }
  window.removeEventListener("beforeunload", warn);
  $("question").hidden = true; $("done").hidden = false;
  $("csv").value = toCsv(STUDY.columns, answers);
});
$("download").addEventListener("click", () => {
  const blob = new Blob([toCsv(STUDY.columns, answers)], {type: "text/csv"});
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "answers_" + reader.replace(/[^A-Za-z0-9_-]/g, "_") + ".csv";
  document.body.append(a); a.click(); a.remove();
});
</script>
</body></html>
"""


# ---- analysis ------------------------------------------------------------------------

def read_key(path: str) -> dict:
    try:
        with open(path) as f:
            key = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise StudyError(f"--key {path!r}: {err}") from None
    if "study_id" not in key or "questions" not in key:
        raise StudyError(f"--key {path!r} is not a 2AFC key (no study_id / questions)")
    return key


def read_answers(paths, key: dict) -> list:
    """Rows of every answer CSV, checked against the key; errors name the file and line."""
    by_id = {q["id"]: q for q in key["questions"]}
    rows, seen = [], set()
    for path in paths:
        # utf-8-sig: a CSV saved by Excel starts with a byte-order mark
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != ANSWER_COLUMNS:
                raise StudyError(f"{path}: columns {reader.fieldnames}, expected "
                                 f"{list(ANSWER_COLUMNS)}")
            for line, row in enumerate(reader, start=2):
                where = f"{path}:{line}"
                if row["study_id"] != key["study_id"]:
                    raise StudyError(f"{where}: answers to study {row['study_id']!r}, the key is "
                                     f"for {key['study_id']!r}")
                q = by_id.get(row["question"])
                if q is None:
                    raise StudyError(f"{where}: unknown question {row['question']!r}")
                if row["choice"] not in ("left", "right"):
                    raise StudyError(f"{where}: choice must be left or right, got "
                                     f"{row['choice']!r}")
                if (row["reader"], row["question"]) in seen:
                    raise StudyError(f"{where}: reader {row['reader']!r} answered "
                                     f"{row['question']} twice")
                seen.add((row["reader"], row["question"]))
                difficulty = None
                if q["section"] == 1:
                    try:
                        difficulty = int(row["difficulty"])
                    except ValueError:
                        difficulty = -1
                    if difficulty not in DIFFICULTY:
                        raise StudyError(f"{where}: difficulty must be 1-5, got "
                                         f"{row['difficulty']!r}")
                rows.append({"reader": row["reader"], "question": q["id"],
                             "section": q["section"], "chosen": q[row["choice"]]["source"],
                             "difficulty": difficulty})
    return rows


TEST_NOTE = (
    "Each answer is a binary forced choice, so under H0 (readers cannot tell / have no "
    "preference) each count is Binomial(n, 1/2). The test reported is Pearson's chi-square "
    "goodness-of-fit of the two counts against a 50/50 split (1 degree of freedom, "
    "scipy.stats.chisquare), the large-sample form of the two-sided binomial test; the exact "
    "binomial p-value (scipy.stats.binomtest) is given too and should be preferred when an "
    "expected count is below 5. Both treat answers as independent, which answers of one "
    "reader are not. `per_pair_independence` is the chi-square test of independence on the "
    "pairs x models table of votes (scipy.stats.chi2_contingency, no continuity correction): "
    "it asks whether the split differs between pairs, not whether one model is preferred; the "
    "paper's Table 2 figure (71.42, p = 1.93e-05) matches this test with 29 degrees of "
    "freedom (30 pairs), and it is reported for comparison.")


def preference_tests(counts_a, counts_b) -> dict:
    """Tests on per-question counts of two alternatives (see TEST_NOTE)."""
    counts_a, counts_b = np.asarray(counts_a, int), np.asarray(counts_b, int)
    a, b = int(counts_a.sum()), int(counts_b.sum())
    out = {"n": a + b}
    if a + b == 0:
        return out
    gof = stats.chisquare([a, b])
    out["chi_square"] = {"statistic": float(gof.statistic), "dof": 1, "p_value": float(gof.pvalue),
                         "test": "Pearson goodness-of-fit vs 50/50"}
    out["binomial_p_value"] = float(stats.binomtest(a, a + b, 0.5).pvalue)
    table = np.stack([counts_a, counts_b], axis=1)
    table = table[table.sum(axis=1) > 0]
    if table.shape[0] >= 2 and (table.sum(axis=0) > 0).all():
        chi2, p, dof, _ = stats.chi2_contingency(table, correction=False)
        out["per_pair_independence"] = {"statistic": float(chi2), "dof": int(dof),
                                        "p_value": float(p)}
    else:
        out["per_pair_independence"] = None  # undefined: one model got every vote
    return out


def analyze(key: dict, rows: list) -> dict:
    """Section 1 accuracy and difficulty, section 2 votes, and the tests."""
    readers = sorted({r["reader"] for r in rows})
    per_reader = {r: sum(1 for x in rows if x["reader"] == r) for r in readers}
    result = {"study_id": key["study_id"], "readers": readers,
              "complete_readers": [r for r in readers if per_reader[r] == len(key["questions"])],
              "answers": len(rows), "test_note": TEST_NOTE}
    s1 = [r for r in rows if r["section"] == 1]
    if s1:
        correct = [r["chosen"] == "real" for r in s1]
        counts = {d: sum(1 for r in s1 if r["difficulty"] == d) for d in DIFFICULTY}
        per_q = [q["id"] for q in key["questions"] if q["section"] == 1]
        right = [sum(1 for r in s1 if r["question"] == q and r["chosen"] == "real") for q in per_q]
        wrong = [sum(1 for r in s1 if r["question"] == q and r["chosen"] != "real") for q in per_q]
        result["section1"] = {
            "answers": len(s1), "correct": int(sum(correct)),
            "accuracy": float(np.mean(correct)),
            "accuracy_per_reader": {rd: float(np.mean([r["chosen"] == "real" for r in s1
                                                       if r["reader"] == rd])) for rd in readers
                                    if any(r["reader"] == rd for r in s1)},
            "difficulty_counts": {str(d): c for d, c in counts.items()},
            "difficulty_percent": {str(d): 100.0 * c / len(s1) for d, c in counts.items()},
            "difficulty_labels": {str(d): v for d, v in DIFFICULTY.items()},
            "vs_chance": preference_tests(right, wrong)}
    s2 = [r for r in rows if r["section"] == 2]
    if s2:
        pairs = [q for q in key["questions"] if q["section"] == 2]
        votes_a = np.array([sum(1 for r in s2 if r["question"] == q["id"] and
                                r["chosen"] == "model_a") for q in pairs])
        votes_b = np.array([sum(1 for r in s2 if r["question"] == q["id"] and
                                r["chosen"] == "model_b") for q in pairs])
        std = (lambda v: float(np.std(v, ddof=1))) if len(pairs) > 1 else (lambda v: None)
        result["section2"] = {
            "model_a": key["model_a"], "model_b": key["model_b"],
            "votes": {key["model_a"]: int(votes_a.sum()), key["model_b"]: int(votes_b.sum())},
            "share_a": float(votes_a.sum() / max(votes_a.sum() + votes_b.sum(), 1)),
            "mean_votes_per_pair": {key["model_a"]: float(votes_a.mean()),
                                    key["model_b"]: float(votes_b.mean())},
            "std_votes_per_pair": {key["model_a"]: std(votes_a), key["model_b"]: std(votes_b)},
            "per_pair": [{"question": q["id"], "plane": q["plane"], "votes_a": int(a),
                          "votes_b": int(b)} for q, a, b in zip(pairs, votes_a, votes_b)],
            "preference": preference_tests(votes_a, votes_b)}
    return result


def plot_difficulty(result: dict, path: str) -> None:
    """Bar chart of the section-1 difficulty ratings in percent (the paper's Figure 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s1 = result["section1"]
    keys = [str(d) for d in DIFFICULTY]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([f"{k}\n{s1['difficulty_labels'][k]}" for k in keys],
           [s1["difficulty_percent"][k] for k in keys], color="#3a8")
    ax.set_ylabel("responses (%)")
    ax.set_xlabel("difficulty of telling the real image")
    ax.set_title(f"2AFC section 1: {s1['answers']} answers, accuracy {100 * s1['accuracy']:.1f} %")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    with fileio.atomic_output(path, ".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
