r"""Analyses the answers of the 2AFC reader study built by tools.make_2afc.

  python -m tools.analyze_2afc --key=results/study/key/key.json --answers='answers/*.csv' \
      --plot=difficulty.png [--json]

Reports section-1 accuracy (and its test against chance), the difficulty distribution with
a bar chart like the paper's Figure 3, section-2 votes per model, mean and standard
deviation of votes per pair, and the chi-square test of preference with its p-value (which
test and why: printed under the table, and in docs/evaluation.md).
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.analyze_2afc: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.analyze_2afc").run())

import glob
import json
import os
import textwrap

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.studies.reader_study import analyze, StudyError
from crfgan_tf.utils import fileio

FLAGS = flags.FLAGS
flags.DEFINE_string("key", None, "key/key.json written by tools.make_2afc.")
flags.DEFINE_list("answers", None, "Answer CSV files or globs (one per reader).")
flags.DEFINE_string("plot", "difficulty.png", "Bar chart of section-1 difficulty ('' for none).")
flags.DEFINE_bool("json", False, "Print one JSON object.")
flags.mark_flags_as_required(["key", "answers"])


def _fmt_test(t):
    if not t or "chi_square" not in t:
        return "n/a"
    c = t["chi_square"]
    return (f"chi-square {c['statistic']:.2f} (dof 1), p = {c['p_value']:.3g}; exact binomial "
            f"p = {t['binomial_p_value']:.3g}")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Input": "key answers",
    "Output": "plot json",
}
EXAMPLE = ("crfgan-analyze-2afc --key=results/study/key/key.json --answers='answers/*.csv' "
           "--plot=difficulty.png")


@common.command()
def main(argv):
    del argv
    paths = sorted({p for pattern in FLAGS.answers for p in glob.glob(pattern)})
    if not paths:
        raise StudyError(f"--answers: no files match {FLAGS.answers}")
    if FLAGS.plot:
        fileio.ensure_output_file(FLAGS.plot, "--plot")
    key = analyze.read_key(FLAGS.key)
    result = analyze.analyze(key, analyze.read_answers(paths, key))
    if FLAGS.plot and "section1" in result:
        analyze.plot_difficulty(result, FLAGS.plot)
        result["plot"] = os.path.abspath(FLAGS.plot)
    if FLAGS.json:
        print(json.dumps(result))
        return 0
    print(f"study {result['study_id']}: {len(result['readers'])} readers "
          f"({len(result['complete_readers'])} complete), {result['answers']} answers")
    if "section1" in result:
        s1 = result["section1"]
        print(f"section 1 (real vs generated): {s1['correct']}/{s1['answers']} correct, "
              f"accuracy {100 * s1['accuracy']:.1f} %; vs chance: {_fmt_test(s1['vs_chance'])}")
        for d, label in s1["difficulty_labels"].items():
            print(f"  difficulty {d} {label:20s} {s1['difficulty_counts'][d]:4d}  "
                  f"{s1['difficulty_percent'][d]:5.1f} %")
        if "plot" in result:
            print(f"  chart: {result['plot']}")
    if "section2" in result:
        s2 = result["section2"]
        a, b = s2["model_a"], s2["model_b"]
        print(f"section 2 ({a} vs {b}):")
        for m in (a, b):
            std = s2["std_votes_per_pair"][m]
            print(f"  {m:12s} votes {s2['votes'][m]:5d}   per pair mean "
                  f"{s2['mean_votes_per_pair'][m]:.2f}, std {'n/a' if std is None else f'{std:.2f}'}")
        print(f"  preference: {_fmt_test(s2['preference'])}")
        ind = s2["preference"].get("per_pair_independence")
        if ind:
            print(f"  per-pair independence: chi-square {ind['statistic']:.2f} "
                  f"(dof {ind['dof']}), p = {ind['p_value']:.3g}")
    print(textwrap.fill(result["test_note"], 92))
    return 0


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main, load_tensorflow=False)
