"""Analysis of a 2AFC reader study: the answer CSVs checked against the key, accuracy and
difficulty per section, preference tests, and the difficulty plot."""

from __future__ import annotations

import csv
import json

import numpy as np
from scipy import stats

from crfgan_tf.studies.reader_study import ANSWER_COLUMNS, DIFFICULTY, StudyError
from crfgan_tf.utils import fileio


def read_key(path: str) -> dict:
    try:
        with open(path) as f:
            key = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise StudyError(f"`key` {path!r}: {err}") from None
    if "study_id" not in key or "questions" not in key:
        raise StudyError(f"`key` {path!r} is not a 2AFC key (no study_id / questions)")
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
