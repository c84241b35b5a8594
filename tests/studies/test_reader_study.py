"""2AFC reader study: building from tiny volumes, the readers' page, simulated answers
analysed and checked against scipy.stats on the same counts."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import tensorflow as tf
from scipy import stats

from crfgan_tf.core import intensity
from crfgan_tf.studies import reader_study
from crfgan_tf.studies.reader_study import analyze, build
from conftest import REPO

N1, N2 = 4, 6


def _volumes(seed, n=3, shape=(20, 24, 28)):
    rng = np.random.default_rng(seed)
    return [rng.integers(-1024, 400, shape).astype(np.int16) for _ in range(n)]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("study"))
    vols = {"real": _volumes(1), "model_a": _volumes(2), "model_b": _volumes(3)}
    key = build.make_study(vols, out, N1, N2, ("CRF-GAN", "HA-GAN"), seed=5,
                                  log=lambda m: None)
    return out, key, vols


def _page_data(out):
    page = open(os.path.join(out, "readers", "study.html")).read()
    data = json.loads(re.search(r"const STUDY = (\{.*\});\n", page).group(1).replace("<\\/", "</"))
    return page, data


def test_key_layout_and_randomisation(study):
    out, key, vols = study
    assert os.path.exists(os.path.join(out, "key", "key.json"))
    assert os.listdir(os.path.join(out, "readers")) == ["study.html"]  # key kept apart
    qs = key["questions"]
    assert [q["section"] for q in qs] == [1] * N1 + [2] * N2
    assert [q["id"] for q in qs] == [f"q{i:02d}" for i in range(1, N1 + N2 + 1)]
    for q in qs:
        sources = {q["left"]["source"], q["right"]["source"]}
        assert sources == ({"real", "model_a"} if q["section"] == 1 else {"model_a", "model_b"})
        n = build.plane_length((20, 24, 28), q["plane"])
        assert int(0.3 * n) <= q["slice_index"] <= int(0.7 * n)
    # both sides and several planes occur; a seed gives the same study, another seed not
    assert {q["left"]["source"] for q in qs} >= {"real", "model_a"}
    again = build.make_study(vols, out + "-again", N1, N2, ("CRF-GAN", "HA-GAN"),
                                    seed=5, log=lambda m: None)
    assert again["questions"] == qs and again["study_id"] == key["study_id"]
    other = build.make_study(vols, out + "-other", N1, N2, seed=6, log=lambda m: None)
    assert other["questions"] != qs


def test_section_one_only_needs_no_model_b(tmp_path):
    key = build.make_study({"real": _volumes(1, n=1), "model_a": _volumes(2, n=1)},
                                  str(tmp_path), 3, 0, seed=0, log=lambda m: None)
    assert [q["section"] for q in key["questions"]] == [1, 1, 1]
    with pytest.raises(reader_study.StudyError, match="section 2 needs"):
        build.make_study({"real": _volumes(1, n=1), "model_a": _volumes(2, n=1)},
                                str(tmp_path), 3, 2, log=lambda m: None)


def test_readers_page_is_self_contained_and_matches_the_key(study):
    out, key, vols = study
    page, data = _page_data(out)
    assert not re.search(r"(src|href)=\"?https?:", page) and "http://" not in page
    assert "CRF-GAN" not in page and "HA-GAN" not in page and "model_a" not in page
    assert data["studyId"] == key["study_id"] and data["columns"] == list(reader_study.ANSWER_COLUMNS)
    assert set(data["questions"][0]) == {"id", "section", "left", "right"}
    for item, q in zip(data["questions"], key["questions"]):
        for side in ("left", "right"):
            png = tf.io.decode_base64(item[side].split(",", 1)[1].replace("+", "-")
                                      .replace("/", "_")).numpy()
            shown = tf.io.decode_png(png).numpy()[..., 0]
            s = q[side]
            hu = intensity.slice_at(vols[s["source"]][s["volume"]], q["plane"], q["slice_index"])
            expected = np.round(np.clip((hu + 1350.0) / 1500.0, 0, 1) * 255).astype(np.uint8)
            np.testing.assert_array_equal(shown, expected)


def test_csv_writer_in_the_page_round_trips_with_python_csv(study, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed: the page's JavaScript is not executed")
    page, _ = _page_data(study[0])
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    lib, main = scripts[0], scripts[1]
    rows = [{"study_id": "abc", "reader": 'Dr "X", R1', "question": "q01", "section": 1,
             "choice": "left", "difficulty": 3, "response_ms": 1200},
            {"study_id": "abc", "reader": "r2", "question": "q05", "section": 2,
             "choice": "right", "difficulty": "", "response_ms": 800}]
    prog = tmp_path / "t.js"
    prog.write_text(lib + f"\nprocess.stdout.write(toCsv({json.dumps(list(reader_study.ANSWER_COLUMNS))}"
                    f", {json.dumps(rows)}));\n")
    res = subprocess.run([node, str(prog)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    parsed = list(csv.DictReader(res.stdout.splitlines()))
    assert parsed[0]["reader"] == 'Dr "X", R1' and parsed[1]["difficulty"] == ""
    assert [r["question"] for r in parsed] == ["q01", "q05"]
    (tmp_path / "main.js").write_text(main)
    assert subprocess.run([node, "--check", str(tmp_path / "main.js")]).returncode == 0


def _simulate(key, readers, p_real, p_a, seed):
    """Answers as the page writes them, and the true counts kept by the simulator."""
    rng = np.random.default_rng(seed)
    files, truth = [], {"correct": 0, "s1": 0, "diff": [0] * 5, "a": {}, "b": {}}
    for r in range(readers):
        rows = []
        for q in key["questions"]:
            if q["section"] == 1:
                want = "real" if rng.random() < p_real else "model_a"
                d = int(rng.integers(1, 6))
                truth["s1"] += 1
                truth["correct"] += want == "real"
                truth["diff"][d - 1] += 1
            else:
                want = "model_a" if rng.random() < p_a else "model_b"
                d = ""
                slot = "a" if want == "model_a" else "b"
                truth[slot][q["id"]] = truth[slot].get(q["id"], 0) + 1
            side = "left" if q["left"]["source"] == want else "right"
            rows.append([key["study_id"], f"reader{r}", q["id"], q["section"], side, d,
                         int(rng.integers(500, 5000))])
        files.append(rows)
    return files, truth


def _write_answers(tmp_path, files):
    paths = []
    for i, rows in enumerate(files):
        path = tmp_path / f"answers_{i}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(reader_study.ANSWER_COLUMNS)
            w.writerows(rows)
        paths.append(str(path))
    return paths


def test_analysis_of_simulated_answers_matches_scipy(study, tmp_path):
    _, key, _ = study
    files, truth = _simulate(key, readers=7, p_real=0.8, p_a=0.7, seed=11)
    paths = _write_answers(tmp_path, files)
    result = analyze.analyze(key, analyze.read_answers(paths, key))
    s1, s2 = result["section1"], result["section2"]
    assert s1["answers"] == 7 * N1 and s1["correct"] == truth["correct"]
    assert s1["accuracy"] == pytest.approx(truth["correct"] / (7 * N1))
    assert [s1["difficulty_counts"][str(d)] for d in range(1, 6)] == truth["diff"]
    assert sum(s1["difficulty_percent"].values()) == pytest.approx(100.0)

    pairs = [q["id"] for q in key["questions"] if q["section"] == 2]
    va = np.array([truth["a"].get(q, 0) for q in pairs])
    vb = np.array([truth["b"].get(q, 0) for q in pairs])
    assert s2["votes"] == {"CRF-GAN": int(va.sum()), "HA-GAN": int(vb.sum())}
    assert [p["votes_a"] for p in s2["per_pair"]] == va.tolist()
    assert s2["mean_votes_per_pair"]["CRF-GAN"] == pytest.approx(va.mean())
    assert s2["std_votes_per_pair"]["HA-GAN"] == pytest.approx(np.std(vb, ddof=1))
    pref = s2["preference"]
    gof = stats.chisquare([va.sum(), vb.sum()])
    assert pref["chi_square"]["statistic"] == pytest.approx(gof.statistic)
    assert pref["chi_square"]["p_value"] == pytest.approx(gof.pvalue)
    assert pref["binomial_p_value"] == pytest.approx(
        stats.binomtest(int(va.sum()), int(va.sum() + vb.sum())).pvalue)
    chi2, p, dof, _ = stats.chi2_contingency(np.stack([va, vb], 1), correction=False)
    assert pref["per_pair_independence"] == pytest.approx({"statistic": chi2, "dof": dof,
                                                           "p_value": p})
    assert result["complete_readers"] == [f"reader{r}" for r in range(7)]


def test_preference_tests_on_the_papers_totals():
    # Table 2: 215 vs 145 votes over 30 pairs. Goodness of fit: 2 * 35^2 / 180 = 13.611.
    a = np.array([8] * 5 + [7] * 25)
    b = 12 - a
    assert (a.sum(), b.sum()) == (215, 145)
    t = analyze.preference_tests(a, b)
    assert t["chi_square"]["statistic"] == pytest.approx(2 * 35 ** 2 / 180)
    assert t["chi_square"]["p_value"] == pytest.approx(2.2485e-4, rel=1e-3)
    assert t["per_pair_independence"]["dof"] == 29
    # the paper's 71.42 with 29 dof gives its p-value
    assert stats.chi2.sf(71.42, 29) == pytest.approx(1.93e-5, rel=2e-3)
    assert analyze.preference_tests([3, 4], [0, 0])["per_pair_independence"] is None


def test_answers_from_another_study_or_twice_are_rejected(study, tmp_path):
    _, key, _ = study
    files, _ = _simulate(key, readers=1, p_real=1, p_a=1, seed=0)
    files[0][0][0] = "0000"
    with pytest.raises(reader_study.StudyError, match=r"answers_0.csv:2: answers to study"):
        analyze.read_answers(_write_answers(tmp_path, files), key)
    files, _ = _simulate(key, readers=1, p_real=1, p_a=1, seed=0)
    files[0].append(files[0][0])
    with pytest.raises(reader_study.StudyError, match="answered q01 twice"):
        analyze.read_answers(_write_answers(tmp_path, files), key)
    files, _ = _simulate(key, readers=1, p_real=1, p_a=1, seed=0)
    files[0][0][5] = "9"
    with pytest.raises(reader_study.StudyError, match="difficulty must be 1-5"):
        analyze.read_answers(_write_answers(tmp_path, files), key)


def _run(tool, *args):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_make_and_analyze_clis(tmp_path):
    dirs = {}
    for k, name in enumerate(("real", "a", "b")):
        d = tmp_path / name
        d.mkdir()
        for i, v in enumerate(_volumes(10 + k, n=2, shape=(16, 16, 16))):
            sitk.WriteImage(sitk.GetImageFromArray(v), str(d / f"v{i}.nii.gz"))
        dirs[name] = str(d)
    out = str(tmp_path / "study")
    res = _run("tools.make_2afc", f"--real={dirs['real']}", f"--model_a={dirs['a']}",
               f"--model_b={dirs['b']}", "--model_a_name=CRF-GAN", "--model_b_name=HA-GAN",
               f"--output_dir={out}", "--section1_pairs=3", "--section2_pairs=5")
    assert res.returncode == 0, res.stderr
    key = analyze.read_key(os.path.join(out, "key", "key.json"))
    assert len(key["questions"]) == 8 and key["sources"]["real"] == dirs["real"]
    files, truth = _simulate(key, readers=3, p_real=0.9, p_a=0.6, seed=2)
    _write_answers(tmp_path, files)
    plot = str(tmp_path / "difficulty.png")
    res = _run("tools.analyze_2afc", f"--key={out}/key/key.json",
               f"--answers={tmp_path}/answers_*.csv", f"--plot={plot}", "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["section1"]["correct"] == truth["correct"] and os.path.getsize(plot) > 1000
    text = _run("tools.analyze_2afc", f"--key={out}/key/key.json",
                f"--answers={tmp_path}/answers_*.csv", "--plot=")
    assert "chi-square" in text.stdout and "CRF-GAN" in text.stdout
    missing = _run("tools.make_2afc", f"--model_a={dirs['a']}", f"--output_dir={out}2")
    assert missing.returncode == 2 and "--real is required" in missing.stderr


def test_answers_saved_by_excel_with_a_bom_are_read(study, tmp_path):
    _, key, _ = study
    files, truth = _simulate(key, readers=1, p_real=1, p_a=1, seed=4)
    (path,) = _write_answers(tmp_path, files)
    text = open(path, encoding="utf-8").read()
    open(path, "w", encoding="utf-8-sig", newline="").write(text)  # Excel's "CSV UTF-8"
    assert open(path, "rb").read(3) == b"\xef\xbb\xbf"
    rows = analyze.read_answers([path], key)
    assert len(rows) == len(key["questions"])


def test_a_second_study_into_the_same_directory_needs_overwrite(study, tmp_path):
    out, key, vols = study
    before = open(os.path.join(out, "key", "key.json")).read()
    with pytest.raises(reader_study.StudyError, match=f"already holds a study "
                       rf"\({key['study_id']}\).*`overwrite`"):
        build.make_study(vols, out, 1, 1, seed=9, log=lambda m: None)
    assert open(os.path.join(out, "key", "key.json")).read() == before
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    new = build.make_study(vols, str(copy), 1, 1, seed=9, log=lambda m: None,
                                  overwrite=True)
    assert analyze.read_key(str(copy / "key" / "key.json"))["study_id"] == new["study_id"]


@pytest.mark.slow
def test_make_2afc_cli_refuses_before_generating_anything(tmp_path):
    """Section 2 without --model_b is refused before any source is opened (the sources
    here do not even exist), and an existing study is kept without --overwrite."""
    res = _run("tools.make_2afc", f"--real={tmp_path}/nothing", f"--model_a={tmp_path}/none",
               "--section1_pairs=1", "--section2_pairs=2", f"--output_dir={tmp_path}/s")
    assert res.returncode == 2 and "--model_b is required" in res.stderr
    (tmp_path / "s" / "key").mkdir(parents=True)
    (tmp_path / "s" / "key" / "key.json").write_text('{"study_id": "abc"}')
    res = _run("tools.make_2afc", f"--real={tmp_path}/nothing", f"--model_a={tmp_path}/none",
               "--section2_pairs=0", f"--output_dir={tmp_path}/s")
    assert res.returncode == 2 and "already holds a study (abc)" in res.stderr
    assert "--overwrite" in res.stderr and "Traceback" not in res.stderr


def test_analyze_2afc_unwritable_plot_is_one_line(study, tmp_path):
    out, key, _ = study
    files, _ = _simulate(key, readers=1, p_real=1, p_a=1, seed=0)
    _write_answers(tmp_path, files)
    (tmp_path / "afile").write_text("")
    res = _run("tools.analyze_2afc", f"--key={out}/key/key.json",
               f"--answers={tmp_path}/answers_*.csv", f"--plot={tmp_path}/afile/plot.png")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"--plot: cannot write '{tmp_path}/afile'" in res.stderr
    assert "a file is in the way" in res.stderr


@pytest.mark.slow
def test_one_model_the_refusal_names_section2_pairs_0_and_the_page_omits_section_2(tmp_path):
    """crfgan-make-2afc with --model_a alone: the refusal says how to ask for section 1
    alone; asked that way, the readers' page does not describe a section 2."""
    dirs = {}
    for k, name in enumerate(("real", "a")):
        d = tmp_path / name
        d.mkdir()
        for i, v in enumerate(_volumes(20 + k, n=2, shape=(16, 16, 16))):
            sitk.WriteImage(sitk.GetImageFromArray(v), str(d / f"v{i}.nii.gz"))
        dirs[name] = str(d)
    out = tmp_path / "study"
    res = _run("tools.make_2afc", f"--real={dirs['real']}", f"--model_a={dirs['a']}",
               f"--output_dir={out}", "--section1_pairs=3")
    assert res.returncode == 2 and "--model_b is required" in res.stderr
    assert "--section2_pairs=0" in res.stderr, res.stderr[-1000:]
    res = _run("tools.make_2afc", f"--real={dirs['real']}", f"--model_a={dirs['a']}",
               f"--output_dir={out}", "--section1_pairs=3", "--section2_pairs=0")
    assert res.returncode == 0, res.stderr
    page = (out / "readers" / "study.html").read_text()
    assert "Section 2" not in page and "pick the real one" in page
