"""Every entry point: a user's mistake is one line on stderr and a nonzero exit, never a
traceback; TensorFlow's start-up notices are silenced unless asked for."""

import os
import subprocess
import sys

import pytest
from conftest import REPO


def _run(module, *args, env_drop=("TF_CPP_MIN_LOG_LEVEL",), **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env.update(PYTHONPATH=REPO, **env_extra)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def _one_line_error(res, *needles):
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def blocker(tmp_path):
    """A regular file where the user's output directory would have to be."""
    path = tmp_path / "afile"
    path.write_text("not a directory")
    return path


def test_convert_output_under_a_file(tiny_archive, blocker):
    res = _run("data_prep.convert", "--dataset=luna16", f"--input_dir={tiny_archive[0]}",
               f"--output_dir={blocker}/records", "--size=64", "--workers=1")
    _one_line_error(res, "--output_dir", f"{blocker}/records", "a file is in the way")


def test_train_model_dir_under_a_file(records_64, blocker):
    res = _run("crfgan_tf.train", f"--model_dir={blocker}/run",
               f"--train_records={records_64}/train-*.tfrecord", "--img_size=64",
               "--latent_dim=16", "--width=0.0625", "--train_steps=1")
    _one_line_error(res, "--model_dir", f"{blocker}/run", "a file is in the way")


def test_export_dir_under_a_file(trained_run, blocker):
    res = _run("crfgan_tf.export", f"--model_dir={trained_run[0]}",
               f"--export_dir={blocker}/sub/export")
    _one_line_error(res, "--export_dir", f"{blocker}/sub", "a file is in the way")


def test_sample_output_under_a_file(exported, blocker):
    res = _run("crfgan_tf.sample", f"--saved_model={exported[0]}",
               f"--output_dir={blocker}/samples")
    _one_line_error(res, "--output_dir", f"{blocker}/samples", "a file is in the way")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_sample_read_only_output(exported, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = _run("crfgan_tf.sample", f"--saved_model={exported[0]}", f"--output_dir={ro}")
        _one_line_error(res, "--output_dir", "permission denied")
    finally:
        ro.chmod(0o755)


def test_tensorflow_start_up_notices_are_silenced_unless_asked_for(tmp_path):
    """Without TF_CPP_MIN_LOG_LEVEL the whole stderr of a failing export is its one line
    (no 'oneDNN custom operations', 'cuda drivers', 'cuInit'); with it set, TensorFlow's
    own lines come through unchanged."""
    res = _run("crfgan_tf.export", f"--model_dir={tmp_path}/none", f"--export_dir={tmp_path}/x")
    _one_line_error(res, "has no config.json")
    loud = _run("crfgan_tf.export", f"--model_dir={tmp_path}/none",
                f"--export_dir={tmp_path}/x", TF_CPP_MIN_LOG_LEVEL="0")
    assert loud.returncode == 2
    assert len([line for line in loud.stderr.splitlines() if line.strip()]) > 1, loud.stderr


def test_runtime_passes_other_import_output_through(capfd):
    from crfgan_tf.utils import runtime

    assert runtime._NOISE.match("I0000 00:00:1795604817.107955   17895 port.cc:153] oneDNN")
    assert runtime._NOISE.match("E0000 00:00:1795604016.931391   12792 cuda_platform.cc:52] "
                                "failed call to cuInit: INTERNAL")
    assert runtime._NOISE.match("WARNING: All log messages before absl::InitializeLog() is "
                                "called are written to STDERR")
    assert not runtime._NOISE.match("Traceback (most recent call last):")
    assert not runtime._NOISE.match("ImportError: libcudart.so.12: cannot open shared object")
    # TensorFlow is loaded in this process already: nothing to silence
    assert runtime.quiet_tensorflow(environ={}, argv=[]) is False
    assert runtime.user_wants_tensorflow_logs(environ={}, argv=["--verbosity=1"])
    assert not runtime.user_wants_tensorflow_logs(environ={}, argv=["--model_dir=x"])


def test_the_library_names_fields_and_the_command_names_flags():
    """The library's message names the field (`lr_g`); the command prints the flag."""
    from crfgan_tf.run.config import TrainConfig

    with pytest.raises(ValueError, match=r"^`lr_g` must be > 0, got 0.0$"):
        TrainConfig(model_dir="x", lr_g=0.0).validate()
    res = _run("crfgan_tf.train", "--model_dir=x", "--lr_g=0", "--dry_run")
    _one_line_error(res)
    assert res.stderr.strip() == "error: --lr_g must be > 0, got 0.0"


def test_flagged_turns_backticked_flags_into_flags_and_leaves_other_names():
    from absl import flags

    from crfgan_tf.cli import common

    fv = flags.FlagValues()
    flags.DEFINE_integer("img_size_x", 1, "", flag_values=fv)
    original, common.FLAGS = common.FLAGS, fv
    try:
        assert common.flagged("`img_size_x` must be one of 64, got 96; `img_size_x=64` works, "
                              "`encode` is a signature") == (
            "--img_size_x must be one of 64, got 96; --img_size_x=64 works, `encode` is a "
            "signature")
    finally:
        common.FLAGS = original


def test_one_error_handling_for_every_command():
    """No command writes its own error-to-exit code: each main is wrapped by
    common.command, and none prints "error:" or catches an exception to return a status."""
    import ast

    from crfgan_tf.cli import registry

    for name in registry.COMMANDS:
        path = os.path.join(REPO, "crfgan_tf", "cli", f"{name}.py")
        source = open(path, encoding="utf-8").read()
        tree = ast.parse(source)
        [main] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        assert [ast.unparse(d) for d in main.decorator_list][0].startswith("common.command("), name
        assert 'print(f"error' not in source and 'print("error' not in source, name
        for node in ast.walk(tree):
            # a stop by signal is control flow (crfgan-train's exit status 128 + N)
            if isinstance(node, ast.ExceptHandler) and "Interrupted" not in ast.unparse(node.type):
                assert not any(isinstance(b, ast.Return) for b in node.body), \
                    f"{name}: an except that returns an exit status"


def test_positional_arguments_and_a_bad_step_are_one_line(tmp_path):
    """Refused before any work (the run directory is not even looked at)."""
    res = _run("crfgan_tf.export", "stray", f"--model_dir={tmp_path}/run",
               f"--export_dir={tmp_path}/e")
    _one_line_error(res, "unexpected arguments ['stray'] (flags need --name=value)")
    res = _run("crfgan_tf.export", f"--model_dir={tmp_path}/run", f"--export_dir={tmp_path}/e",
               "--step=last")
    _one_line_error(res, "--step must be an integer, 'best' or 'latest', got 'last'")


def test_a_value_the_library_refuses_is_the_users_a_value_error_deep_in_numpy_is_a_bug():
    import numpy as np

    from crfgan_tf.cli import common
    from crfgan_tf.run.config import TrainConfig

    try:
        TrainConfig(model_dir="x", lr_g=0.0).validate()
    except ValueError as err:
        assert common.error_status(err) == (2, "`lr_g` must be > 0, got 0.0")
    try:
        np.zeros(3).reshape(2)
    except ValueError as err:
        assert common.error_status(err) is None  # raised outside crfgan_tf: the traceback stays
    missing = FileNotFoundError(2, "No such file or directory", "/no/such/file")
    assert common.error_status(missing)[0] == 2 and "/no/such/file" in common.error_status(missing)[1]
    assert common.error_status(RuntimeError("a bug")) is None
    assert common.error_status(RuntimeError("torch"), errors=(RuntimeError,)) == (2, "torch")



@pytest.mark.parametrize("module,args,needles", [
    ("crfgan_tf.train", ["--model_dir=/nonexistent/run", "--img_sise=64", "--dry_run"],
     ["--img_sise", "crfgan-train --help"]),
    ("crfgan_tf.train", ["--model_dir=/nonexistent/run", "--model=gan", "--dry_run"],
     ["--model", "crfgan", "hagan"]),
    ("crfgan_tf.train", ["--model_dir=/nonexistent/run", "--img_size=100", "--dry_run"],
     ["--img_size must be one of"]),
    ("crfgan_tf.export", ["--model_dir=/nonexistent/run"], ["--export_dir"]),
    ("tools.count_params", ["--width=abc"], ["--width"]),
])
def test_flag_errors_exit_2_in_one_line_naming_the_flag(module, args, needles):
    """A misspelt flag, a value outside a flag's choices, a validator's refusal or a missing
    required flag: status 2 (every --help says so), one line, before any work; absl's own
    handling exits 1 with several lines."""
    res = _run(module, *args)
    _one_line_error(res, *needles)
