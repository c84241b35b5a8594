"""crfgan_tf.cli.registry is the one list of commands: the cli modules, the console
scripts setup.py installs, the `python -m` shims (their exact text), the --help header and
the command table of docs/installation.md all derive from it."""

import os
import re
import runpy
import sys

from conftest import REPO

from crfgan_tf.cli import registry

NOT_COMMANDS = {"__init__", "common", "helptext", "registry"}


def test_the_commands_are_the_cli_modules():
    modules = {f[:-3] for f in os.listdir(os.path.join(REPO, "crfgan_tf", "cli"))
               if f.endswith(".py")} - NOT_COMMANDS
    assert sorted(registry.COMMANDS) == sorted(modules)
    assert len(registry.COMMANDS) == 26


def test_every_shim_is_the_registrys_text_and_there_is_no_other():
    for name in registry.COMMANDS:
        with open(os.path.join(REPO, registry.shim_path(name)), encoding="utf-8") as f:
            assert f.read() == registry.shim_source(name), name
    shims = {f"{d}/{f}" for d in ("tools", "data_prep")
             for f in os.listdir(os.path.join(REPO, d)) if f.endswith(".py") and f != "__init__.py"}
    shims |= {f"crfgan_tf/{n}.py" for n in ("train", "export", "sample")}
    assert shims == {registry.shim_path(n) for n in registry.COMMANDS}


def test_setup_installs_a_console_script_per_command():
    """setup.py's entry points are the registry's (read the way setup.py reads it), and the
    installed scripts are there."""
    scripts = runpy.run_path(os.path.join(REPO, "crfgan_tf", "cli", "registry.py"))
    assert scripts["entry_points"]() == registry.entry_points()
    assert "crfgan-fid-mmd = crfgan_tf.cli.fid_mmd:run" in registry.entry_points()
    setup = open(os.path.join(REPO, "setup.py"), encoding="utf-8").read()
    assert 'REGISTRY["entry_points"]()' in setup
    bin_dir = os.path.dirname(sys.executable)
    for name in registry.COMMANDS:
        assert os.path.exists(os.path.join(bin_dir, registry.console_script(name))), name


def test_the_installation_page_lists_every_command():
    text = open(os.path.join(REPO, "docs", "installation.md"), encoding="utf-8").read()
    table = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(crfgan-[\w-]+)`", table))
    assert listed == {registry.console_script(n) for n in registry.COMMANDS}


def test_every_command_module_runs_as_its_own_module():
    """`python -m crfgan_tf.cli.<name>` runs the command: the registry's guard follows the
    module's docstring (before any flag is defined); the --help test runs it."""
    import ast

    for name in registry.COMMANDS:
        path = os.path.join(REPO, "crfgan_tf", "cli", f"{name}.py")
        source = open(path).read()
        tree = ast.parse(source)
        after = tree.body[1:]
        if after and isinstance(after[0], ast.ImportFrom) and after[0].module == "__future__":
            after = after[1:]
        guard = after[0]
        assert isinstance(guard, ast.If) and ast.unparse(guard.test) == "__name__ == '__main__'", name
        start = source.splitlines(keepends=True)
        text = "".join(start[guard.lineno - 1:guard.end_lineno])
        assert text == registry.main_guard(name), (name, text)
