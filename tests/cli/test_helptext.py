"""Every command's --help: its own flags with their help and defaults, by group, ending
with an example; the same from the console script and from the `python -m` shim."""

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
    from crfgan_tf.cli import registry

    script, module = registry.console_script(name), registry.python_m(name)
    bin_dir = os.path.dirname(sys.executable)
    by_script = _run([os.path.join(bin_dir, script), "--help"])
    by_module = _run([sys.executable, "-m", module, "-h"])
    assert by_script == by_module
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
