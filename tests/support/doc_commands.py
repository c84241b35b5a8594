"""Command lines in the Markdown docs: which command each runs and its arguments, as a
reader would copy them (tests/test_docs.py checks them; tests/training/test_distribute.py runs
the several-GPU one as written)."""

import os
import re
import shlex

from conftest import COMMANDS, REPO

PYTHON_M = {f"{pkg}.{name}": name for name in COMMANDS
            for pkg in ("crfgan_tf", "tools", "data_prep", "crfgan_tf.cli")}
SHELL_BREAKS = {"|", "||", "&", "&&", ";", ">", "2>&1"}


def page_text(page):
    """A page of the checkout (the dated notes of docs/benchmarks/ keep the commands of
    their day and are not checked)."""
    return open(os.path.join(REPO, page), encoding="utf-8").read()


def code_lines(text, inline=True):
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
    for line in code_lines(text, inline):
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
