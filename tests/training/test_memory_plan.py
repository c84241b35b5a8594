"""The memory planner (crfgan_tf/training/memory_plan.py, crfgan-plan-memory): the replay of a
graph's buffers on hand-counted graphs, the persistent terms of a real model counted by
hand, and the command. Its agreement with measured memory is a benchmark
(docs/benchmarks.md, "The memory planner against measurement"), not a test."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from conftest import REPO

from crfgan_tf.training import memory_plan as mp

N = 1000  # features per example of the hand-made graphs


def _graph(fn):
    return tf.function(fn).get_concrete_function(tf.TensorSpec((None, N), tf.float32)).graph


def test_replay_counts_forwarding_and_aliases():
    """a = [x, x] (8N bytes an example); s = sum(a) (4); t = tanh(a) writes into a (its last
    reader); t + s, reshaped (an alias), writes into t: 8N + 4 live at most. Without the
    forwarding t would be a second 8N."""
    def fn(x):
        a = tf.concat([x, x], axis=1)
        s = tf.reduce_sum(a, axis=1)
        t = tf.tanh(a)
        return t + tf.reshape(s, [-1, 1])

    step = mp.StepGraph(_graph(fn))
    assert step.input_per_example == 4 * N
    for batch in (1, 3):
        assert step.peak(batch)["transient_bytes"] == batch * (8 * N + 4)


def test_replay_keeps_what_a_later_op_reads():
    """a is read again after tanh, so tanh cannot write into it: 8N (a) + 8N (t) + 4."""
    def fn(x):
        a = tf.concat([x, x], axis=1)
        t = tf.tanh(a)
        return tf.reduce_sum(t, axis=1) + tf.reduce_sum(a, axis=1)

    step = mp.StepGraph(_graph(fn))
    assert step.peak(2)["transient_bytes"] == 2 * (16 * N + 4)


def test_fixed_size_tensors_do_not_scale_with_the_batch():
    w = tf.ones((N, 10))

    def fn(x):
        big = tf.tile(w, [4, 1])  # (4N, 10): 160N bytes whatever the batch
        return tf.matmul(x, big[:N]) + tf.reduce_sum(big)

    step = mp.StepGraph(_graph(fn))
    one, five = step.peak(1)["transient_bytes"], step.peak(5)["transient_bytes"]
    assert one >= 160 * N and five - one < 160 * N


@pytest.fixture(scope="module")
def tiny_step():
    req = mp.PlanRequest(model="crfgan", img_size=64, batch_size=1, width=0.125, latent_dim=16)
    return req, mp.trace(req)


def test_persistent_terms_of_a_real_model(tiny_step):
    """Weights, Adam slots and the input batch, counted by hand from the built model."""
    import keras
    import numpy as np

    from crfgan_tf.run import config as config_lib
    from crfgan_tf.run import factory

    req, step = tiny_step
    keras.backend.clear_session()
    model = factory.build_model(config_lib.TrainConfig(
        model_dir="/nonexistent", img_size=64, batch_size=1, width=0.125, latent_dim=16))
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert step.params == trainable
    every = sum(int(np.prod(v.shape)) * (8 if v.dtype == "int64" else 4) for v in model.variables)
    assert step.weight_bytes == every
    # Adam: m and v per trainable weight (4 bytes each), plus each optimizer's counters
    assert 8 * trainable <= step.optimizer_bytes <= 8 * trainable + 4 * 64
    p = mp.plan(dataclasses.replace(req, batch_size=3), step, mp.CPU_LEAN)
    # volume int16 64^3, crop float32 8 x 64^2, position int32, z_d, z_g, z_c float32 x 16
    assert p["input_bytes"] == 3 * (2 * 64 ** 3 + 4 * 8 * 64 * 64 + 4 + 3 * 4 * 16)
    persistent = p["weights_bytes"] + p["optimizer_bytes"] + p["input_bytes"]
    assert p["working_bytes"] == persistent + p["transient_bytes"] + mp.CPU_LEAN.runtime_bytes
    assert p["gpu_bytes"] == persistent + p["transient_bytes"] + mp.GPU_RESERVE_BYTES
    assert p["peak_phase"] in ("d", "g", "crf", "rec")
    assert set(p["phase_transient_bytes"]) == {"d", "g", "crf", "rec"}
    assert sum(p["peak_by_kind"].values()) == p["transient_bytes"]


def test_transient_grows_with_the_batch_and_largest_batch_fits(tiny_step):
    req, step = tiny_step
    plans = [mp.plan(dataclasses.replace(req, batch_size=b), step) for b in (1, 2, 3, 4)]
    transient = [p["transient_bytes"] for p in plans]
    assert transient == sorted(transient) and transient[3] > transient[0]
    assert mp.largest_batch(step, req, plans[2]["gpu_bytes"]) == 3
    assert mp.largest_batch(step, req, plans[2]["gpu_bytes"] - 1) == 2
    assert mp.largest_batch(step, req, plans[0]["gpu_bytes"] - 1) == 0
    # the bisection finds what a scan of every batch finds, at and beside each boundary
    need = [mp.plan(dataclasses.replace(req, batch_size=b), step)["gpu_bytes"]
            for b in range(1, 41)]
    for device in sorted({n + d for n in need[::3] + [need[-1]] for d in (-1, 0, 1)}):
        assert mp.largest_batch(step, req, device, limit=40) == sum(n <= device for n in need)


@pytest.mark.slow
def test_encoder_slabs_lower_the_crf_phase_peak():
    """The planner sees what --crf_encoder_slab saves: the CRF phase's peak (hE over the
    whole volume) falls, the other phases' peaks stay."""
    req = mp.PlanRequest(model="crfgan", img_size=64, batch_size=2, width=0.125,
                         latent_dim=16, crf_encoder_slab=0)
    whole = mp.plan(req, mp.trace(req))["phase_transient_bytes"]
    slabs = dataclasses.replace(req, crf_encoder_slab=2)
    by_slabs = mp.plan(slabs, mp.trace(slabs))["phase_transient_bytes"]
    assert by_slabs["crf"] < 0.6 * whole["crf"]
    assert {p: by_slabs[p] for p in ("d", "g", "rec")} == {p: whole[p] for p in ("d", "g", "rec")}


@pytest.mark.parametrize("text, expected", [("24GB", 24 * 10 ** 9), ("24GiB", 24 * 2 ** 30),
                                            ("80g", 80 * 10 ** 9), ("16000MiB", 16000 * 2 ** 20),
                                            ("40", 40 * 10 ** 9)])
def test_parse_memory(text, expected):
    assert mp.parse_memory(text) == expected


@pytest.mark.parametrize("text", ["24TB", "GB", "-1GB", "lots"])
def test_parse_memory_refuses(text):
    with pytest.raises(ValueError, match="`gpu_memory`"):
        mp.parse_memory(text)


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "tools.plan_memory", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


def test_cli_json_and_gpu_verdict():
    res = _cli("--model=hagan", "--img_size=128", "--batch_size=2", "--width=0.125",
               "--latent_dim=16", "--nofits", "--gpu_memory=12GB", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    p = json.loads(res.stdout.strip().splitlines()[-1])
    assert (p["model"], p["img_size"], p["batch_size"]) == ("hagan", 128, 2)
    assert p["peak_phase"] in ("d", "g", "rec", "sub_rec")
    assert p["working_bytes"] > p["weights_bytes"] + p["optimizer_bytes"] > 0
    assert p["fits_gpu_memory"] is True and p["largest_batch_on_gpu_memory"] > 2
    assert "fits" not in p


@pytest.mark.slow
def test_cli_text_with_fits_table():
    res = _cli("--img_size=64", "--batch_size=1", "--width=0.125", "--latent_dim=16",
               "--fits_precisions=float32", "--fits_sizes=128,64")  # 64: the plan's own trace
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "CRF-GAN 64^3 batch 1, float32" in out and "transient peak of the step" in out
    assert "CPU working memory (cpu)" in out and "GPU memory" in out
    assert "--crf_encoder_slab" not in out  # the 64^3 peak is not the CRF phase's hE
    table = out[out.index("largest batch per card"):].splitlines()
    assert [line.split()[0] for line in table[2:4]] == ["64", "128"]  # --fits_sizes, in order
    assert table[4].startswith("  '-': not even batch 1")


@pytest.mark.parametrize("args, flag", [(["--gpu_memory=lots"], "--gpu_memory"),
                                        (["--model=hagan", "--img_size=64"], "--img_size"),
                                        (["--batch_size=0"], "--batch_size"),
                                        (["--crf_encoder_slab=-1"], "--crf_encoder_slab"),
                                        (["--embedding_factor=8"], "--embedding_factor"),
                                        (["--model=hagan", "--img_size=512",
                                          "--embedding_factor=8"], "--embedding_factor"),
                                        (["--fits_precisions=float64"], "--fits_precisions"),
                                        (["--fits_sizes=96"], "--fits_sizes"),
                                        (["--model=hagan", "--img_size=128", "--fits_sizes=64"],
                                         "--fits_sizes")])
def test_cli_refuses_bad_flags_before_any_work(args, flag):
    res = _cli(*args)
    assert res.returncode != 0 and flag in res.stderr and "tracing" not in res.stdout


@pytest.mark.parametrize("model, size, batch, point", [
    ("crfgan", 256, 2, (256, 2, "measured")), ("crfgan", 256, 4, (256, 4, "measured")),
    ("crfgan", 256, 3, (256, 4, "nearest measured batch")),
    ("crfgan", 256, 1, (256, 2, "nearest measured batch")),
    ("crfgan", 512, 1, (256, 2, "extrapolated from another size")),
    ("crfgan", 64, 8, (128, 6, "extrapolated from another size")),
    ("hagan", 128, 6, (128, 6, "measured"))])
def test_the_gpu_calibration_takes_the_nearest_of_the_papers_measurements(model, size, batch,
                                                                          point):
    assert mp.calibration_point(model, size, batch) == point


@pytest.mark.slow
def test_the_gpu_figure_agrees_with_the_papers_measurement():
    """At the paper's Table 4 points the calibrated GPU figure is the paper's; the
    allocator-level figure stays beside it as the lower bound; the largest batch on a
    card is the calibrated figure's."""
    res = _cli("--model=crfgan", "--img_size=256", "--batch_size=2", "--gpu_memory=12GB",
               "--nofits", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    p = json.loads(res.stdout.strip().splitlines()[-1])
    # the paper's allocation, plus the CUDA reserve its PyTorch figure does not count
    assert p["gpu_calibrated_bytes"] == 7_494_000_000 + mp.GPU_RESERVE_BYTES
    assert p["gpu_bytes"] < p["gpu_calibrated_bytes"]  # the lower bound
    assert p["calibration"]["kind"] == "measured" and "Table 4" in p["calibration"]["source"]
    # a 12 GB TITAN V ran batch 4 (9,010 MB) and not 6 in the paper (5 was not tried)
    assert p["largest_batch_on_gpu_memory"] == 5
    assert p["largest_batch_on_gpu_memory_lower_bound"] > 6
    res = _cli("--model=crfgan", "--img_size=256", "--batch_size=2", "--gpu_memory=12GB",
               "--nofits")
    assert "(8.6 GB)" in res.stdout and "Table 4" in res.stdout, res.stdout
