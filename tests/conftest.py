import ast
import functools
import os
import re
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# This process is set up as every command sets itself up (runtime.configure: oneDNN
# kernels, before TensorFlow loads). Without it the in-process tests ran TensorFlow's
# default Eigen kernels, which no user runs, 1.5-3x slower (tests/test_architecture.py).
from crfgan_tf.utils import runtime  # noqa: E402

runtime.configure(load_tensorflow=False)

# the checkout: commands run from here (tests/ mirrors the package: tests/data/ for
# crfgan_tf/data/, tests/evaluation/ for crfgan_tf/evaluation/, ...)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import pytest

from crfgan_tf.data import phantom

TINY = phantom.PhantomSpec(in_plane=48, num_slices=32, spacing_zyx=(2.5, 3.0, 3.0),
                           blank_slices=2, noise_hu=10.0)


from crfgan_tf.cli import registry  # noqa: E402

COMMANDS = tuple(registry.COMMANDS)


@functools.lru_cache(maxsize=None)
def command_flags(name):
    """The flags crfgan_tf/cli/<name>.py defines, read from its source (tests/cli/test_helptext.py
    checks that --help shows exactly these)."""
    tree = ast.parse(open(os.path.join(REPO, "crfgan_tf", "cli", f"{name}.py")).read())
    return sorted(n.args[0].value for n in ast.walk(tree) if isinstance(n, ast.Call)
                  and getattr(n.func, "attr", "").startswith("DEFINE_"))


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory):
    """A LUNA16-like archive of 5 tiny phantom scans."""
    root = tmp_path_factory.mktemp("archive")
    paths = phantom.make_luna_archive(str(root), 5, TINY, seed=10)
    return str(root), paths


@pytest.fixture(scope="session")
def dicom_export(tmp_path_factory):
    """A hospital export as DICOM with a series for every rule and patient data everywhere
    (tests/support/dicom_series.py)."""
    from support import dicom_series

    return dicom_series.make_export(str(tmp_path_factory.mktemp("hospital_export")))


@pytest.fixture(scope="session")
def dicom_converted(dicom_export, tmp_path_factory):
    """That export through the conversion command at 64^3, as a user runs it:
    (output dir, completed process)."""
    out = str(tmp_path_factory.mktemp("dicom_records"))
    res = subprocess.run(
        [sys.executable, "-m", "data_prep.convert", "--dataset=dicom",
         f"--input_dir={dicom_export}", f"--output_dir={out}", "--size=64", "--num_shards=2",
         "--val_fraction=0", "--workers=2"], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True, text=True, timeout=600)
    return out, res


def _convert_archive(tiny_archive, out, size, num_shards, val_fraction):
    from crfgan_tf.data import convert

    convert.run_conversion(convert.ConvertConfig(
        dataset="luna16", input_dir=tiny_archive[0], output_dir=out, size=size,
        num_shards=num_shards, val_fraction=val_fraction, workers=1, seed=3), log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def records_64(tmp_path_factory, tiny_archive):
    """TFRecords of the tiny archive at 64^3 (4 train, 1 val)."""
    return _convert_archive(tiny_archive, str(tmp_path_factory.mktemp("records64")), 64, 2, 0.2)


def tiny_config(model_dir, records="", **kw):
    """A 64^3 CRF-GAN at 1/16 width: a training step takes about a second on CPU."""
    from crfgan_tf.run.config import TrainConfig

    base = dict(model_dir=str(model_dir), train_records=records, img_size=64, batch_size=2,
                train_steps=2, latent_dim=16, width=0.0625, log_every=1, checkpoint_every=2,
                image_every=100, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def tiny_batch(img_size=64, batch=2, latent_dim=16, seed=0):
    from crfgan_tf.data import pipeline

    return pipeline.synthetic_batch(img_size, batch, latent_dim, seed)


@pytest.fixture(scope="session")
def records_128(tmp_path_factory, tiny_archive):
    """TFRecords of the tiny archive at 128^3 (HA-GAN has no 64^3 variant)."""
    return _convert_archive(tiny_archive, str(tmp_path_factory.mktemp("records128")), 128, 1, 0.0)


@pytest.fixture(scope="session")
def trained_run(records_64, tmp_path_factory):
    """A tiny CRF-GAN trained for one step: (model_dir, in-memory model)."""
    from crfgan_tf.training import loop as train_lib

    run = tmp_path_factory.mktemp("run")
    out = train_lib.train(tiny_config(run, os.path.join(records_64, "train-*.tfrecord"),
                                      train_steps=1, checkpoint_every=1))
    return str(run), out["model"]


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory):
    """That run exported as a SavedModel: (path, metadata)."""
    from crfgan_tf.generation import export as export_lib

    sm = str(tmp_path_factory.mktemp("export") / "sm")
    return sm, export_lib.export(trained_run[0], sm, log=lambda m: None)


# The training command on the tiny model, for the tests of what a real process does
# (signals, locks, file-size limits): tests/utils/test_preemption.py, test_dirlock.py,
# test_full_disk.py.
STEPS = 6


def train_args(records, model_dir, *extra):
    """The tiny 64^3 CRF-GAN of conftest.tiny_config as command-line flags; no scheduled
    checkpoint before the end, so every checkpoint before it comes from a signal."""
    return ["--model_dir=" + str(model_dir),
            "--train_records=" + os.path.join(records, "train-*.tfrecord"),
            "--img_size=64", "--batch_size=2", f"--train_steps={STEPS}", "--latent_dim=16",
            "--width=0.0625", "--log_every=1", "--checkpoint_every=100",
            "--image_every=100", "--seed=1", "--keep_checkpoints=10", *extra]


def start_train(args, **popen):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, "-m", "crfgan_tf.train", *args], cwd=REPO,
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, **popen)


def run_train(args, timeout=300, **popen):
    proc = start_train(args, **popen)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def wait_for_line(proc, pattern, timeout=240):
    """Reads the command's stderr until a line matches; returns the lines read."""
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    proc.kill()
    raise AssertionError(f"no line matching {pattern!r}:\n{''.join(lines)}")


def checkpoint_values(prefix):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    # save_counter counts saves, not training: a stopped run saved once more
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
            if "OBJECT_GRAPH" not in n and not n.startswith("save_counter")}


@pytest.fixture(scope="session")
def straight_run(records_64, tmp_path_factory):
    """The run never stopped, through the same command."""
    model_dir = tmp_path_factory.mktemp("straight")
    rc, err = run_train(train_args(records_64, model_dir))
    assert rc == 0, err
    return model_dir


def assert_bit_identical(model_dir, straight):
    import numpy as np

    a = checkpoint_values(os.path.join(model_dir, "checkpoints", f"ckpt-{STEPS}"))
    b = checkpoint_values(os.path.join(straight, "checkpoints", f"ckpt-{STEPS}"))
    assert a.keys() == b.keys() and len(a) > 100
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def labelled_phantoms(archive, num_scans, seed):
    """A tiny LUNA16-like archive with 12-20 mm nodules in about half of the scans, and
    their labels by the LUNA16 rule: (archive, scan paths, {case id: label})."""
    from crfgan_tf.data import labels

    paths = phantom.make_luna_archive(archive, num_scans, TINY, seed=seed, nodules=True,
                                      nodule_diameter_mm=(12.0, 20.0))
    table = labels.luna16_labels(labels.read_luna_annotations(
        os.path.join(archive, "annotations.csv")), [os.path.basename(p)[:-4] for p in paths])
    return archive, paths, table


# The evaluations of synthetic data (tests/studies/test_downstream.py,
# test_memorization.py): labelled scans with a val split, and a conditional model trained on
# the train split only.
@pytest.fixture(scope="session")
def study_records(tmp_path_factory):
    """16 tiny phantom scans, nodules in about half, labelled (LUNA16 rule) and converted at
    64^3 with a val split: (records dir, {case id: label})."""
    from crfgan_tf.data import convert, labels

    root = tmp_path_factory.mktemp("study")
    archive, paths, table = labelled_phantoms(str(root / "archive"), 16, seed=40)
    csv_path = str(root / "labels.csv")
    labels.write_labels_csv(csv_path, table, labels.LUNA_CLASS_NAMES)
    out = str(root / "records")
    convert.run_conversion(convert.ConvertConfig(
        dataset="luna16", input_dir=archive, output_dir=out, size=64, num_shards=2,
        val_fraction=0.4, workers=1, seed=3, labels_csv=csv_path), log=lambda m: None)
    return out, table


@pytest.fixture(scope="session")
def conditional_export(study_records, tmp_path_factory):
    """A tiny conditional CRF-GAN trained 1 step on study_records' train split, exported."""
    from crfgan_tf.generation import export as export_lib
    from crfgan_tf.training import loop as train_lib

    run = tmp_path_factory.mktemp("cond_run")
    train_lib.train(tiny_config(run, os.path.join(study_records[0], "train-*.tfrecord"),
                                train_steps=1, checkpoint_every=1, num_classes=2))
    sm = str(tmp_path_factory.mktemp("cond_export") / "sm")
    return sm, export_lib.export(str(run), sm, log=lambda m: None)
