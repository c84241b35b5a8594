"""Every command's --help: its own flags with their help and defaults, by group, ending
with an example; the same from the console script, the `python -m` shim and
`python -m crfgan_tf.cli.<name>`."""

import glob
import os
import re
import subprocess
import sys

import pytest

from conftest import COMMANDS, REPO, command_flags


def _run(argv, status=0):
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert res.returncode == status, res.stderr[-2000:]
    return res.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_help_lists_the_commands_own_flags_by_group_and_ends_with_an_example(name):
    """... and every command line it shows passes check_examples."""
    from crfgan_tf.cli import registry

    script, module = registry.console_script(name), registry.python_m(name)
    bin_dir = os.path.dirname(sys.executable)
    by_script = _run([os.path.join(bin_dir, script), "--help"])
    by_module = _run([sys.executable, "-m", module, "-h"])
    by_cli_module = _run([sys.executable, "-m", f"crfgan_tf.cli.{name}", "--help"])
    assert by_script == by_module == by_cli_module
    assert by_script.startswith(f"usage: {script} [--flag=value ...]\n"
                                f"   or: python -m {module} [--flag=value ...]\n"
                                f"\n{script}: {registry.COMMANDS[name][1]}\n")
    shown = sorted(re.findall(r"^  --(?:\[no\])?(\w+)  \(", by_script, re.M))
    assert shown == command_flags(name)
    assert re.search(r"^[A-Z][\w ]+:\n  --", by_script, re.M)  # a group title, then flags
    last = by_script.rstrip("\n").splitlines()
    assert last[-2] == "Example:" and last[-1].startswith(f"  {script} --")
    # the example's flags are the command's own (or absl's --flagfile)
    used = re.findall(r"--(?:no)?(\w+)", last[-1])
    assert set(used) <= set(command_flags(name)) | {"flagfile"}, used
    check_examples(by_script)


def test_help_shows_defaults_required_flags_and_enum_choices():
    out = _run([sys.executable, "-m", "crfgan_tf.train", "--help"])
    assert "  --model_dir  (required)\n" in out
    assert "  --img_size  (default: 256)\n" in out
    assert "  --[no]jit_compile  (default: false)\n" in out
    assert "  --model  (default: 'crfgan')\n      <crfgan|hagan>: " in out
    training = out.split("Optimisation:\n", 1)[1].split("\n\n", 1)[0]
    assert "--per_replica_batch_size" in training and "--batch_size" in training
    # absl's own stays available (and exits with absl's status 1)
    full = _run([sys.executable, "-m", "crfgan_tf.train", "--helpfull"], status=1)
    assert "--flagfile" in full and "--per_replica_batch_size" in full


def test_a_flag_in_no_group_is_a_bug_the_help_names():
    code = ("import types, sys; from absl import flags; from crfgan_tf.cli import helptext\n"
            "m = types.ModuleType('fake_cmd'); sys.modules['fake_cmd'] = m\n"
            "m.__doc__ = 'x'; m.HELP_GROUPS = {'Input': 'a'}; m.EXAMPLE = 'crfgan-x --a=1'\n"
            "exec(\"from absl import flags\\nflags.DEFINE_string('a', '', 'h')\\n"
            "flags.DEFINE_string('b', '', 'h')\", m.__dict__)\n"
            "helptext.render(m)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0
    assert "fake_cmd.HELP_GROUPS: flags in no group: ['b']" in res.stderr


# Flags whose value is a path a command reads, and those whose value it writes
READS = {"input_dir", "train_records", "test_records", "records", "real", "fake", "saved_model",
         "model_a", "model_b", "model_dir", "weights", "features", "checkpoint",
         "checkpoint_dir", "annotations", "labels_csv", "scans", "key", "answers", "flagfile",
         "study_dir", "eval_records", "fid_weights"}
WRITES = {"output_dir", "export_dir", "model_dir", "output", "cache_dir", "study_dir"}


def _help_commands(text):
    """The help's command lines (its docstring's usage lines and its example) as a fenced
    block, continuations kept, for support.doc_commands."""
    lines = [line.strip() for line in text.splitlines()
             if re.match(r"\s+(crfgan-|python -m |pip )", line) or
             (line.startswith("      --") and text.splitlines()[
                 text.splitlines().index(line) - 1].rstrip().endswith("\\"))]
    return "```bash\n" + "\n".join(lines) + "\n```\n"


def _documented_paths():
    """({what the documented steps write: every --output_dir, --export_dir, --model_dir and
    --output value of the docs' command lines, and the demo's directory}, {(flag, value)
    of every path the docs give a command to read: a file the user brings, such as
    MedicalNet's resnet_50.pth})."""
    from support.doc_commands import invocations, page_text
    from test_docs import PAGES

    made, read = {"demo_run"}, set()
    for page in PAGES:
        for _, args, _ in invocations(page_text(page), inline=False):
            for arg in args:
                flag, _, value = arg[2:].partition("=")
                value = value.strip("'\"").rstrip("/")
                if arg.startswith("--") and value:
                    if flag in WRITES:
                        made.add(value)
                    if flag in READS:
                        read.add((flag, value))
    return made, read


def check_examples(text):
    """Each command line in a --help (usage lines and the example): flags the command has;
    each path it reads exists in the checkout, is outside it (/data/...: the user's), or
    is made by a documented step (a documented --output_dir/--export_dir/--model_dir/
    --output, the README's data/ directories among them); and a continued line is
    shown as continued, not collapsed into a run of spaces. A file the user brings is
    named as the docs name it."""
    from test_docs import command_problems

    block = _help_commands(text)
    assert command_problems(block) == []
    for line in text.splitlines():
        assert not re.search(r"\S {3,}--", line), f"a collapsed continuation: {line!r}"
    produced, documented = _documented_paths()
    from support.doc_commands import invocations
    commands = invocations(block, inline=False)
    produced |= {a[2:].partition("=")[2].strip("'\"") for _, args, _ in commands for a in args
                 if a.startswith("--") and a[2:].partition("=")[0] in WRITES}
    for _, args, line in commands:
        for arg in args:
            flag, _, value = arg[2:].partition("=")
            value = value.strip("'\"")
            if not arg.startswith("--") or flag not in READS or not value:
                continue
            if value.startswith("/") or "$" in value:
                continue  # the user's own data
            first = value.split(",")[0]
            if glob.glob(os.path.join(REPO, first)) or (flag, value) in documented:
                continue
            assert any(first == p or first.startswith(p.rstrip("*") + "/") or
                       first.startswith(os.path.dirname(p) + "/") and "*" in first
                       for p in produced), \
                f"--{flag}={value} is neither in the checkout nor made by a documented step: {line}"
