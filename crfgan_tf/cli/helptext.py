"""`--help` of every command: what the command does (its line in the registry, then its
module's docstring), its own flags with their help text and defaults, grouped as the
module's HELP_GROUPS says (data, model, training, output, ...), and one example command
line (its EXAMPLE) at the end.

absl's own `--help` lists only the flags of `__main__` (none, for a console script or a
`python -m` shim) and says "Try --helpfull"; cli.common.run_command answers --help, -h,
-? and --helpshort here instead, before anything heavy is imported. --helpfull stays
absl's (every flag, absl's own included).
"""

from __future__ import annotations

import sys
import textwrap
from types import ModuleType

from absl import flags

from crfgan_tf.cli import registry

HELP_ARGS = ("--help", "-h", "-?", "--helpshort")
_REQUIRED = "must have a value other than None"
_WIDTH = 88


def wants_help(argv: list) -> bool:
    """Whether the command line asks for the command's help."""
    return any(arg in HELP_ARGS for arg in argv[1:])


def command_names(module: ModuleType) -> tuple:
    """(console script, `python -m` form) of a crfgan_tf.cli module."""
    name = module.__name__.rsplit(".", 1)[-1]
    python_m = registry.python_m(name) if name in registry.COMMANDS else f"tools.{name}"
    return registry.console_script(name), f"python -m {python_m}"


def _groups(module: ModuleType, own: dict) -> list:
    """[(title, [flag names])] from HELP_GROUPS, which must list each of the module's
    flags exactly once (a flag added without a group is a bug: its help would hide it)."""
    groups = [(title, names.split()) for title, names in module.HELP_GROUPS.items()]
    listed = [n for _, names in groups for n in names]
    problems = []
    if sorted(set(own) - set(listed)):
        problems.append(f"flags in no group: {sorted(set(own) - set(listed))}")
    if sorted(set(listed) - set(own)):
        problems.append(f"grouped flags it does not define: {sorted(set(listed) - set(own))}")
    if len(listed) != len(set(listed)):
        problems.append("a flag listed twice")
    if problems:
        raise RuntimeError(f"{module.__name__}.HELP_GROUPS: {'; '.join(problems)}")
    return groups


def _describe(flag) -> list:
    """Lines for one flag: `--name=default` (or required) and its help, indented."""
    if any(_REQUIRED in getattr(v, "message", "") for v in flag.validators):
        head = f"  --{flag.name}  (required)"
    elif flag.boolean:
        head = f"  --[no]{flag.name}  (default: {'true' if flag.default else 'false'})"
    elif flag.default in (None, "", []):
        head = f"  --{flag.name}  (default: none)"
    elif isinstance(flag.default, str):
        head = f"  --{flag.name}  (default: {flag.default_as_str})"
    elif isinstance(flag.default, (list, tuple)):
        head = f"  --{flag.name}  (default: {','.join(map(str, flag.default))})"
    else:
        head = f"  --{flag.name}  (default: {flag.default})"
    body = textwrap.wrap(flag.help, _WIDTH - 6, initial_indent="      ",
                         subsequent_indent="      ")
    return [head, *body]


def render(module: ModuleType) -> str:
    """The help text of the command whose flags and main are in `module`."""
    own = {f.name: f for f in flags.FLAGS.flags_by_module_dict().get(module.__name__, [])}
    script, python_m = command_names(module)
    summary = registry.COMMANDS.get(module.__name__.rsplit(".", 1)[-1], ("", "(not registered)"))[1]
    lines = [f"usage: {script} [--flag=value ...]", f"   or: {python_m} [--flag=value ...]",
             "", f"{script}: {summary}", "",
             textwrap.dedent((module.__doc__ or "").strip("\n")).rstrip(), ""]
    for title, names in _groups(module, own):
        lines.append(f"{title}:")
        for name in names:
            lines.extend(_describe(own[name]))
        lines.append("")
    lines += textwrap.wrap("Every command also takes --flagfile=FILE (flags read from a "
                           "file, one per line; flags after it override it), "
                           "--nogpu_memory_growth (TensorFlow then reserves nearly all of "
                           "every GPU at its first operation; by default it takes memory as "
                           "it needs it) and --helpfull (absl's own flags too).", _WIDTH)
    lines += ["", "Example:", f"  {module.EXAMPLE}"]
    return "\n".join(lines) + "\n"


def print_help_and_exit(module: ModuleType) -> None:
    sys.stdout.write(render(module))
    sys.exit(0)
