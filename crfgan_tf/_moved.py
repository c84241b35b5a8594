"""The module paths of release 0.2, before the package was grouped by concern (0.3), kept
working for one minor release: `import crfgan_tf.train_lib` still imports the module that
is now `crfgan_tf.training.loop` (the same module object, not a copy) and warns once per
old path with a MovedModuleWarning that names the new one. Removed in 0.4.

MOVED is the one table of the moves (CHANGELOG.md lists the same); a path under a moved
package moves with it (`crfgan_tf.model.crfgan` -> `crfgan_tf.models.crfgan`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "crfgan_tf.geometry": "crfgan_tf.core.geometry",
    "crfgan_tf.intensity": "crfgan_tf.core.intensity",
    "crfgan_tf.runtime": "crfgan_tf.utils.runtime",
    "crfgan_tf.fileio": "crfgan_tf.utils.fileio",
    "crfgan_tf.dirlock": "crfgan_tf.utils.dirlock",
    "crfgan_tf.preemption": "crfgan_tf.utils.preemption",
    "crfgan_tf.progress": "crfgan_tf.utils.progress",
    "crfgan_tf.helptext": "crfgan_tf.cli.helptext",
    "crfgan_tf.model": "crfgan_tf.models",
    "crfgan_tf.losses": "crfgan_tf.models.losses",
    "crfgan_tf.optimizers": "crfgan_tf.models.optimizers",
    "crfgan_tf.augment": "crfgan_tf.models.augment",
    "crfgan_tf.params": "crfgan_tf.models.params",
    "crfgan_tf.config": "crfgan_tf.run.config",
    "crfgan_tf.rundir": "crfgan_tf.run.rundir",
    "crfgan_tf.train_lib": "crfgan_tf.training.loop",
    "crfgan_tf.distribute": "crfgan_tf.training.distribute",
    "crfgan_tf.checkpointing": "crfgan_tf.training.checkpointing",
    "crfgan_tf.summaries": "crfgan_tf.training.summaries",
    "crfgan_tf.memory_plan": "crfgan_tf.training.memory_plan",
    "crfgan_tf.evaluation.monitor": "crfgan_tf.training.monitor",
    "crfgan_tf.export_lib": "crfgan_tf.generation.export",
    "crfgan_tf.sample_lib": "crfgan_tf.generation.sample",
    "crfgan_tf.evaluation.downstream": "crfgan_tf.studies.downstream",
    "crfgan_tf.evaluation.memorization": "crfgan_tf.studies.memorization",
    "crfgan_tf.reader_study": "crfgan_tf.studies.reader_study",
    "crfgan_tf.reference_files": "crfgan_tf.reference.files",
}


class MovedModuleWarning(FutureWarning):
    """An old module path of crfgan_tf was imported; the message names the new one."""


_warned: set = set()


def new_name(name: str):
    """The new dotted path of an old one (or of a module under an old package), else None."""
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def create_module(self, spec):
        module = importlib.import_module(self.new)  # the module itself, under its old name too
        self.spec = module.__spec__  # importlib sets the alias's spec on it next
        return module

    def exec_module(self, module):
        module.__spec__ = self.spec  # its own again: importlib.resources and reload need it


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname)
        if new is None:
            return None
        old_top = next(o for o in MOVED if fullname == o or fullname.startswith(o + "."))
        if old_top not in _warned:
            _warned.add(old_top)
            warnings.warn(f"{old_top} moved to {MOVED[old_top]} in crfgan-tf 0.3; the old "
                          "path works until 0.4 (CHANGELOG.md lists every move)",
                          MovedModuleWarning, stacklevel=2)  # warnings skips importlib's frames
        return importlib.util.spec_from_loader(fullname, _Alias(fullname, new))


def install() -> None:
    """Puts the finder first on sys.meta_path (once); it answers only MOVED's paths."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
