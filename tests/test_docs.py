"""Docs that cannot rot: every command line in README.md, CONTRIBUTING.md and docs/*.md
names an existing command with flags it has, every `crfgan-train` line passes its
--dry_run, and every repository path and link they mention exists."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import COMMANDS, REPO, command_flags
from support.converted import checkout_view, converted
from support.doc_commands import code_lines, invocations, page_text

PAGES = sorted(["README.md", "CONTRIBUTING.md", "CHANGELOG.md"]
               + [os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md"))])
ABSL_FLAGS = {"flagfile", "help", "helpshort", "helpfull", "verbosity", "v", "logtostderr"}
TOP_LEVEL = ("crfgan_tf/", "tests/", "tools/", "data_prep/", "configs/", "docs/", ".ci/")
TOP_FILES = ("setup.py", "Makefile", "README.md", "CHANGELOG.md", "CONTRIBUTING.md",
             "pytest.ini")
MAKE_TARGETS = set(re.findall(r"^([\w-]+):", open(os.path.join(REPO, "Makefile"),
                                                  encoding="utf-8").read(), re.M))


def command_problems(text):
    problems = [f"no make target {target!r}" for line in code_lines(text, inline=False)
                for target in re.findall(r"^make ([\w-]+)", line)
                if target not in MAKE_TARGETS]
    for name, args, line in invocations(text):
        if name not in COMMANDS:
            problems.append(f"no command {name!r}: {line}")
            continue
        own = set(command_flags(name)) | ABSL_FLAGS
        for arg in args:
            if not arg.startswith("--") or "$" in arg:
                continue
            flag = arg[2:].split("=", 1)[0]
            if flag not in own and not (flag.startswith("no") and flag[2:] in own):
                problems.append(f"crfgan-{name.replace('_', '-')} has no flag --{flag}: {line}")
    return problems


def _slug(heading):
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path):
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def path_problems(text, page):
    """Repository paths in code spans and blocks, and relative links (with anchors)."""
    problems = []
    here = os.path.dirname(os.path.join(REPO, page))
    candidates = set(re.findall(r"[`\s='(\[]((?:%s)[\w./*\-]*|(?:%s))(?=[`\s'),:\]]|::)"
                                % ("|".join(re.escape(t) for t in TOP_LEVEL),
                                   "|".join(re.escape(f) for f in TOP_FILES)), text))
    for path in sorted(candidates):
        path = path.rstrip(".")
        if not glob.glob(os.path.join(REPO, path)):
            problems.append(f"{page}: no such path in the repository: {path}")
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", text, flags=re.S)):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(here, file)) if file else os.path.join(REPO, page)
        if not os.path.exists(full):
            problems.append(f"{page}: link to a missing file: {target}")
        elif anchor and full.endswith(".md") and anchor not in _anchors(full):
            problems.append(f"{page}: link to a missing section: {target}")
    return problems


@pytest.mark.parametrize("page", PAGES)
def test_every_command_flag_and_path_in_the_docs_exists(page):
    text = page_text(page)
    assert command_problems(text) + path_problems(text, page) == []


def test_the_docs_show_the_main_commands():
    """The checker sees the commands (a parser that found none would pass everything)."""
    seen = {name for page in PAGES for name, _, _ in invocations(page_text(page))}
    assert {"convert", "train", "export", "sample", "fid_mmd", "make_2afc", "analyze_2afc",
            "downstream", "memorization", "encode", "import_reference",
            "import_medicalnet", "lidc_labels", "luna16_labels"} <= seen


def test_a_renamed_flag_or_path_is_caught():
    readme = page_text("README.md")
    assert "--output_dir=samples/luna256" in readme and "docs/training.md" in readme
    renamed = readme.replace("--output_dir=samples/luna256", "--out_dir=samples/luna256")
    assert command_problems(renamed) == [
        "crfgan-sample has no flag --out_dir: crfgan-sample --saved_model=exports/luna256 "
        "--num_samples=16 --out_dir=samples/luna256"]
    moved = readme.replace("(docs/training.md)", "(docs/train.md)")
    assert "README.md: link to a missing file: docs/train.md" in path_problems(moved, "README.md")
    gone = page_text("docs/training.md").replace("configs/luna.flags", "configs/luna16.flags")
    assert "docs/training.md: no such path in the repository: configs/luna16.flags" in \
        path_problems(gone, "docs/training.md")
    unknown = "```bash\ncrfgan-trian --flagfile=configs/luna.flags\nmake tests\n```\n"
    assert command_problems(unknown) == [
        "no make target 'tests'", "no command 'trian': crfgan-trian --flagfile=configs/luna.flags"]


def test_every_documented_training_command_passes_its_dry_run(tmp_path):
    """Flag values too: each crfgan-train / python -m crfgan_tf.train line of the docs,
    with --dry_run (validates every flag and flagfile and the records, builds nothing), run
    where the documented conversion has written the records it names (its message says
    which, and at which size)."""
    lines = {}
    for page in PAGES:
        for name, args, line in invocations(page_text(page), inline=False):
            made_earlier = [a for a in args if a.startswith("--flagfile=")
                            and not a.startswith("--flagfile=configs/")]  # a run's flags.txt
            if name == "train" and not made_earlier and not any("$" in a for a in args):
                lines[" ".join(args)] = (page, args)
    assert len(lines) >= 8
    checkout_view(tmp_path, REPO)
    converted(tmp_path, "data/luna16_256/*", 256)  # the README's step 1
    missing = re.compile(r"no TFRecord files match '([^']+)'\. Convert the scans first: "
                         r"crfgan-convert .* --size=(\d+)")
    for page, args in lines.values():
        extra = [] if any(a.startswith(("--model_dir", "--flagfile")) for a in args) \
            else ["--model_dir=runs/doc_check"]
        for arg in args:  # the run or export a fine-tuning line starts from: made earlier
            if arg.startswith("--init_from="):
                os.makedirs(tmp_path / arg.split("=", 1)[1].split("@")[0], exist_ok=True)
        for attempt in range(2):
            res = subprocess.run([sys.executable, "-m", "crfgan_tf.train", *args, *extra,
                                  "--dry_run"], cwd=tmp_path, capture_output=True, text=True,
                                 timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
            found = missing.search(res.stderr)
            if res.returncode == 0 or not found or attempt:
                break
            converted(tmp_path, found.group(1), int(found.group(2)))
        assert res.returncode == 0, (page, args, res.stderr[-1500:])
