"""Docs that cannot rot: every command line in README.md, CONTRIBUTING.md and docs/*.md
names an existing command with flags it has, every `crfgan-train` line passes its
--dry_run, and every repository path and link they mention exists."""

import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import COMMANDS, REPO, command_flags

PAGES = sorted(["README.md", "CONTRIBUTING.md", "CHANGELOG.md"]
               + [os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md"))])
# Measurements keep the commands of their day; the benchmark page's current figures are
# checked like the rest, its history below "# Earlier measurements" is not.
HISTORY_MARK = "## Earlier measurements"
ABSL_FLAGS = {"flagfile", "help", "helpshort", "helpfull", "verbosity", "v", "logtostderr"}
PYTHON_M = {f"{pkg}.{name}": name for name in COMMANDS
            for pkg in ("crfgan_tf", "tools", "data_prep")}
TOP_LEVEL = ("crfgan_tf/", "tests/", "tools/", "data_prep/", "configs/", "docs/", ".ci/")
TOP_FILES = ("setup.py", "Makefile", "README.md", "CHANGELOG.md", "CONTRIBUTING.md",
             "pytest.ini")
SHELL_BREAKS = {"|", "||", "&", "&&", ";", ">", "2>&1"}


def _text(page):
    text = open(os.path.join(REPO, page), encoding="utf-8").read()
    return text.split(HISTORY_MARK)[0]


def _code_lines(text, inline=True):
    """Shell lines of the fenced blocks (not python, json, bibtex), continuations joined,
    comments dropped; and (`inline`) the code spans in prose that hold a command."""
    lines = []
    for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        if lang not in ("", "bash", "sh", "shell"):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                lines.append(line)
    if not inline:
        return lines
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += [span for span in re.findall(r"`([^`\n]+)`", prose)
              if re.match(r"(crfgan-[a-z0-9-]+|python -m [\w.]+) ", span + " ")]
    return lines


def _words(line):
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def invocations(text, inline=True):
    """(command name, [its --flags], the line) of every command line in `text` (with
    `inline`, also those in code spans of the prose)."""
    found = []
    for line in _code_lines(text, inline):
        words = _words(line)
        for i, word in enumerate(words):
            name = None
            if re.fullmatch(r"crfgan-[a-z0-9-]+", word):
                name = word[len("crfgan-"):].replace("-", "_")
            elif word == "-m" and i > 0 and words[i - 1].endswith("python") and i + 1 < len(words):
                module = words[i + 1]
                if module.split(".")[0] not in ("crfgan_tf", "tools", "data_prep"):
                    continue
                name = PYTHON_M.get(module, f"unknown module {module}")
                i += 1
            if name is None:
                continue
            args = []
            for arg in words[i + 1:]:
                if arg in SHELL_BREAKS:
                    break
                args.append(arg)
            found.append((name, args, line))
    return found


def _flag_name(arg):
    name = arg[2:].split("=", 1)[0]
    return name


def _make_targets():
    text = open(os.path.join(REPO, "Makefile"), encoding="utf-8").read()
    return set(re.findall(r"^([\w-]+):", text, re.M))


def command_problems(text):
    problems = [f"no make target {target!r}" for line in _code_lines(text, inline=False)
                for target in re.findall(r"^make ([\w-]+)", line)
                if target not in _make_targets()]
    for name, args, line in invocations(text):
        if name not in COMMANDS:
            problems.append(f"no command {name!r}: {line}")
            continue
        own = set(command_flags(name)) | ABSL_FLAGS
        for arg in args:
            if not arg.startswith("--") or "$" in arg:
                continue
            flag = _flag_name(arg)
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
    text = _text(page)
    assert command_problems(text) + path_problems(text, page) == []


def test_the_docs_show_the_main_commands():
    """The checker sees the commands (a parser that found none would pass everything)."""
    seen = {name for page in PAGES for name, _, _ in invocations(_text(page))}
    assert {"convert", "train", "export", "sample", "fid_mmd", "make_2afc", "analyze_2afc",
            "downstream", "memorization", "encode", "import_reference",
            "import_medicalnet", "lidc_labels", "luna16_labels"} <= seen


def test_a_renamed_flag_or_path_is_caught():
    readme = _text("README.md")
    assert "--output_dir=samples/luna256" in readme and "docs/training.md" in readme
    renamed = readme.replace("--output_dir=samples/luna256", "--out_dir=samples/luna256")
    assert command_problems(renamed) == [
        "crfgan-sample has no flag --out_dir: crfgan-sample --saved_model=exports/luna256 "
        "--num_samples=16 --out_dir=samples/luna256"]
    moved = readme.replace("(docs/training.md)", "(docs/train.md)")
    assert "README.md: link to a missing file: docs/train.md" in path_problems(moved, "README.md")
    gone = _text("docs/training.md").replace("configs/luna.flags", "configs/luna16.flags")
    assert "docs/training.md: no such path in the repository: configs/luna16.flags" in \
        path_problems(gone, "docs/training.md")
    unknown = "```bash\ncrfgan-trian --flagfile=configs/luna.flags\nmake tests\n```\n"
    assert command_problems(unknown) == [
        "no make target 'tests'", "no command 'trian': crfgan-trian --flagfile=configs/luna.flags"]


def test_every_documented_training_command_passes_its_dry_run():
    """Flag values too: each crfgan-train / python -m crfgan_tf.train line of the docs,
    with --dry_run (validates every flag and flagfile, builds nothing)."""
    lines = {}
    for page in PAGES:
        for name, args, line in invocations(_text(page), inline=False):
            made_earlier = [a for a in args if a.startswith("--flagfile=")
                            and not a.startswith("--flagfile=configs/")]  # a run's flags.txt
            if name == "train" and not made_earlier and not any("$" in a for a in args):
                lines[" ".join(args)] = (page, args)
    assert len(lines) >= 8
    for page, args in lines.values():
        extra = [] if any(a.startswith(("--model_dir", "--flagfile")) for a in args) \
            else ["--model_dir=runs/doc_check"]
        res = subprocess.run([sys.executable, "-m", "crfgan_tf.train", *args, *extra,
                              "--dry_run"], cwd=REPO, capture_output=True, text=True,
                             timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
        assert res.returncode == 0, (page, args, res.stderr[-1500:])
