"""crfgan_tf.utils.runtime's GPU settings: what the installation page promises about the
pinned TensorFlow's CUDA build, the `gpu` extra, and memory growth on by default."""

import os
import re
import subprocess
import sys

from conftest import REPO

from crfgan_tf.utils import runtime


def test_the_documented_cuda_minimums_are_the_installed_tensorflows():
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    assert build["is_cuda_build"]
    assert build["cuda_version"].startswith(runtime.CUDA_VERSION + ".")
    assert build["cudnn_version"] == runtime.CUDNN_MAJOR
    page = open(os.path.join(REPO, "docs", "installation.md"), encoding="utf-8").read()
    assert f"| CUDA, cuDNN | {runtime.CUDA_VERSION} and {runtime.CUDNN_MAJOR} " in page
    assert f"| NVIDIA driver | {runtime.MIN_DRIVER} or later" in page
    capabilities = {c.split("_")[1] for c in build["cuda_compute_capabilities"]}
    assert min(capabilities) == "60" and "compute capability 6.0 or later" in page


def test_the_gpu_extra_is_the_pinned_tensorflow_with_cuda_and_make_installs_it_in_the_venv():
    setup = open(os.path.join(REPO, "setup.py"), encoding="utf-8").read()
    pin = re.search(r'"tensorflow(>=[^"]+)"', setup).group(1)
    assert f'"gpu": ["tensorflow[and-cuda]{pin}"]' in setup
    dry = subprocess.run(["make", "-n", "install-gpu"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert ".venv/bin/python -m pip install --quiet -e '.[test,gpu]'" in dry.stdout


def test_memory_growth_is_on_unless_the_environment_or_the_flag_says_otherwise():
    env = {}
    runtime.configure(load_tensorflow=False, environ=env, argv=[])
    assert env[runtime.GPU_MEMORY_GROWTH_VARIABLE] == "true"
    env = {runtime.GPU_MEMORY_GROWTH_VARIABLE: "false"}
    runtime.configure(load_tensorflow=False, environ=env, argv=[])
    assert env[runtime.GPU_MEMORY_GROWTH_VARIABLE] == "false"
    code = ("import os, sys; from crfgan_tf.cli import common; from crfgan_tf.utils import "
            "runtime; runtime.configure(load_tensorflow=False); "
            "common.FLAGS(sys.argv); common._set_gpu_memory_growth(); "
            "print(os.environ['TF_FORCE_GPU_ALLOW_GROWTH'])")
    for args, expected in (([], "true"), (["--nogpu_memory_growth"], "false")):
        out = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, text=True,
                             capture_output=True, timeout=120,
                             env={k: v for k, v in os.environ.items()
                                  if k != runtime.GPU_MEMORY_GROWTH_VARIABLE})
        assert out.stdout.strip() == expected, out.stderr[-2000:]


def test_no_driver_no_warning_and_hidden_gpus_no_warning(tmp_path):
    assert runtime.unseen_gpu_warning({"PATH": str(tmp_path)}) is None or os.path.exists(
        runtime.NVIDIA_DRIVER_FILE)
    assert runtime.unseen_gpu_warning({"PATH": os.environ["PATH"],
                                       "CUDA_VISIBLE_DEVICES": "-1"}) is None
