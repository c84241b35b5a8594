"""The package's architecture (docs/architecture.md), held by tests: the layers import
downwards only, no module imports itself back through others, importing the package
changes nothing (tests/test_api.py holds the public API)."""

import ast
import os
import subprocess
import sys

from conftest import REPO

# The layers, lowest first. A module imports only from its own subpackage or from a
# layer below its own (docs/architecture.md argues the order). Same-rank subpackages
# do not import each other.
LAYERS = {
    "core": 0, "utils": 0,
    "data": 1,
    "networks": 2,
    "models": 3,
    "run": 4,
    "generation": 5,
    "evaluation": 6,
    "training": 7,
    "reference": 8, "studies": 8,
    "bench": 9,
    "cli": 10,
}
# crfgan_tf/{train,export,sample}.py are the `python -m` shims of three commands
TOP_LEVEL = {"train": "cli", "export": "cli", "sample": "cli"}
PACKAGE = os.path.join(REPO, "crfgan_tf")


def _modules():
    """{dotted module name: path} of every module of crfgan_tf."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), REPO)[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = \
                    os.path.join(folder, name)
    return out


def _imports(name, path, known):
    """The crfgan_tf modules `name` imports anywhere in its file (deferred imports inside
    functions too: they are dependencies all the same)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    is_package = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("crfgan_tf")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[:len(name.split(".")) - node.level + is_package]
                base = ".".join(parts + ([node.module] if node.module else []))
            if not base.startswith("crfgan_tf"):
                continue
            for alias in node.names:  # `from pkg import module` names a module
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return found - {name}


def _graph():
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _layer(module):
    parts = module.split(".")
    if len(parts) == 1 or parts[1].startswith("_"):
        return None  # crfgan_tf itself (the lazy public API) and its private helpers
    top = parts[1]
    top = TOP_LEVEL.get(top, top)
    assert top in LAYERS, f"{module}: a subpackage in no layer (add it to LAYERS and " \
                          "docs/architecture.md)"
    return top


def _upward(graph):
    problems = []
    for module, imported in sorted(graph.items()):
        mine = _layer(module)
        for other in sorted(imported):
            theirs = _layer(other)
            if mine is None or theirs is None or theirs == mine:
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                problems.append(f"{module} ({mine}) imports {other} ({theirs})")
    return problems


def _cycles(graph):
    """One cycle per strongly connected component of more than one module."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_imports_only_its_own_layer_or_below():
    assert _upward(_graph()) == []


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph = _graph()
    assert "crfgan_tf.run.config" in graph["crfgan_tf.training.loop"]
    graph["crfgan_tf.core.geometry"] = {"crfgan_tf.training.loop"}
    assert _upward(graph) == ["crfgan_tf.core.geometry (core) imports "
                              "crfgan_tf.training.loop (training)"]
    graph = _graph()
    assert "crfgan_tf.run.config" in graph["crfgan_tf.run.rundir"]
    graph["crfgan_tf.run.config"] = graph["crfgan_tf.run.config"] | {"crfgan_tf.run.rundir"}
    assert _cycles(graph) == [["crfgan_tf.run.config", "crfgan_tf.run.rundir"]]


def test_every_subpackage_has_a_layer_and_says_what_lives_there():
    for entry in sorted(os.listdir(PACKAGE)):
        path = os.path.join(PACKAGE, entry)
        if os.path.isdir(path) and not entry.startswith("__"):
            assert entry in LAYERS, entry
            init = os.path.join(path, "__init__.py")
            assert ast.get_docstring(ast.parse(open(init, encoding="utf-8").read())), init
    architecture = open(os.path.join(REPO, "docs", "architecture.md"), encoding="utf-8").read()
    for name in LAYERS:
        assert f"crfgan_tf/{name}/" in architecture, name


def _python(code, env=None):
    full = dict(os.environ, **(env or {}))
    for key in ("TF_ENABLE_ONEDNN_OPTS", "TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "CRFGAN_LEAN_CPU_MEMORY"):
        if key not in (env or {}):
            full.pop(key, None)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=full, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def test_importing_the_package_changes_nothing_configure_does():
    code = ("import os, crfgan_tf, crfgan_tf.training.loop; before = dict(os.environ); "
            "from crfgan_tf.utils import runtime; runtime.configure(load_tensorflow=False); "
            "print(before.get('TF_ENABLE_ONEDNN_OPTS'), os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    assert _python(code) == "None 1"
    # an explicit choice wins
    assert _python(code, {"TF_ENABLE_ONEDNN_OPTS": "0"}) == "0 0"


def test_the_tests_run_tensorflow_as_the_commands_do():
    """Every command calls runtime.configure() before TensorFlow loads (oneDNN kernels);
    the in-process tests must run the same kernels, not TensorFlow's default Eigen ones
    (which no user runs, 1.5-3x slower here): conftest configures the test process."""
    import tensorflow  # noqa: F401  (loaded as the tests load it)
    from tensorflow.python.util import _pywrap_util_port

    assert os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1"
    assert _pywrap_util_port.IsMklEnabled()
