"""The public API (docs/api.md): exactly these names, loaded lazily (importing crfgan_tf
imports no TensorFlow), and the page's example runs as written; the 0.2 module paths
still import, as the same modules, with one warning each."""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

PUBLIC = [
    "CRFGAN", "ConvertConfig", "HAGAN", "PhantomSpec", "SubVolumeGAN", "TrainConfig",
    "build_model", "build_networks", "count_parameters", "export_generator",
    "extract_features", "fid_from_features", "fid_mmd", "frechet_distance",
    "generate_volumes", "latents", "load_extractor", "load_generator", "make_phantoms",
    "mmd", "ms_ssim_3d", "open_source", "read_config", "read_volumes", "run_conversion",
    "run_training", "sample_volumes", "synthetic_batch", "__version__"]


def _python(code, cwd=REPO, timeout=300):
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout, env=dict(os.environ, PYTHONPATH=REPO))
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_the_public_names_are_exactly_these_and_load_without_tensorflow():
    out = _python("import sys, crfgan_tf; print(sorted(crfgan_tf.__all__)); "
                  "print('tensorflow' in sys.modules); "
                  "crfgan_tf.TrainConfig; crfgan_tf.make_phantoms; "
                  "print('tensorflow' in sys.modules)")
    names, before, after = out.splitlines()
    assert eval(names) == sorted(PUBLIC)
    assert (before, after) == ("False", "False")  # a config and phantoms need no TensorFlow


def test_every_public_name_resolves_and_is_documented():
    import crfgan_tf

    page = open(os.path.join(REPO, "docs", "api.md"), encoding="utf-8").read()
    for name in PUBLIC:
        assert getattr(crfgan_tf, name) is not None
        if name != "__version__":
            assert re.search(rf"`{name}[`(]", page), f"docs/api.md does not document {name}"
    assert crfgan_tf.run_training.__module__ == "crfgan_tf.training.loop"
    assert crfgan_tf.build_model.__module__ == "crfgan_tf.run.factory"


# the page's whole example trains and exports (76 s on 2 cores); the fast tier keeps the
# names and the lazy loading above
@pytest.mark.slow
def test_the_api_pages_example_runs(tmp_path):
    page = open(os.path.join(REPO, "docs", "api.md"), encoding="utf-8").read()
    [example] = re.findall(r"```python\n(.*?)```", page, re.S)
    out = _python(example, cwd=str(tmp_path), timeout=900)
    assert "FD " in out and "(random features: a trend only)" in out
    assert sorted(os.listdir(tmp_path / "work" / "samples")) == [
        "sample_seed0_00000.nii.gz", "sample_seed0_00000.png",
        "sample_seed0_00001.nii.gz", "sample_seed0_00001.png", "samples.json"]


def test_the_old_module_paths_import_the_new_modules_with_one_warning_each():
    code = """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import crfgan_tf.train_lib as old
    from crfgan_tf import train_lib
    import crfgan_tf.model.crfgan as old_crfgan
    from crfgan_tf.model import CRFGAN
    from crfgan_tf.evaluation import monitor
    from crfgan_tf import reference_files, config
import crfgan_tf.training.loop, crfgan_tf.models.crfgan, crfgan_tf.training.monitor
import crfgan_tf.reference.files, crfgan_tf.run.config
assert old is train_lib is crfgan_tf.training.loop
assert old_crfgan is crfgan_tf.models.crfgan and CRFGAN is old_crfgan.CRFGAN
assert monitor is crfgan_tf.training.monitor and config is crfgan_tf.run.config
assert reference_files is crfgan_tf.reference.files
# the module keeps its own spec: package data and reload work after an old-path import
import importlib, importlib.resources
import crfgan_tf.reader_study
assert importlib.resources.files("crfgan_tf.studies.reader_study").joinpath("page.html").is_file()
assert crfgan_tf.training.loop.__spec__.name == "crfgan_tf.training.loop"
assert importlib.reload(crfgan_tf.run.config).__name__ == "crfgan_tf.run.config"
for w in caught:
    print(w.category.__name__, w.filename.endswith("<string>"), w.message)
"""
    lines = _python(code).splitlines()
    assert lines == [
        "MovedModuleWarning True crfgan_tf.train_lib moved to crfgan_tf.training.loop in "
        "crfgan-tf 0.3; the old path works until 0.4 (CHANGELOG.md lists every move)",
        "MovedModuleWarning True crfgan_tf.model moved to crfgan_tf.models in crfgan-tf 0.3; "
        "the old path works until 0.4 (CHANGELOG.md lists every move)",
        "MovedModuleWarning True crfgan_tf.evaluation.monitor moved to "
        "crfgan_tf.training.monitor in crfgan-tf 0.3; the old path works until 0.4 "
        "(CHANGELOG.md lists every move)",
        "MovedModuleWarning True crfgan_tf.reference_files moved to crfgan_tf.reference.files "
        "in crfgan-tf 0.3; the old path works until 0.4 (CHANGELOG.md lists every move)",
        "MovedModuleWarning True crfgan_tf.config moved to crfgan_tf.run.config in crfgan-tf "
        "0.3; the old path works until 0.4 (CHANGELOG.md lists every move)"]


def test_the_changelog_lists_every_move():
    from crfgan_tf import _moved

    changelog = open(os.path.join(REPO, "CHANGELOG.md"), encoding="utf-8").read()
    for old, new in _moved.MOVED.items():
        assert f"`{old}` → `{new}`" in changelog, old
