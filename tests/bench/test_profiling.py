import json
import os
import subprocess
import sys

import pytest

from crfgan_tf.bench import training
from conftest import REPO



def test_comparison_and_plot(tmp_path):
    rows = [dict(model="crfgan", img_size=128, batch_size=2, peak_bytes=90 * 2**20,
                 iters_per_sec=1.2, peak_kind="process_max_rss", device="CPU"),
            dict(model="hagan", img_size=128, batch_size=2, peak_bytes=100 * 2**20,
                 iters_per_sec=1.0, peak_kind="process_max_rss", device="CPU"),
            dict(model="hagan", img_size=128, batch_size=6, oom=True, peak_bytes=None,
                 iters_per_sec=None)]
    lines = training.comparison(rows)
    assert lines == ["128^3 batch 2: CRF-GAN uses 10.0% less memory (0.900x HA-GAN's) and "
                     "runs 20.0% faster (1.200x HA-GAN's iterations/s)"]
    worse = [dict(rows[0], peak_bytes=110 * 2**20, iters_per_sec=0.8), rows[1]]
    assert training.comparison(worse) == [
        "128^3 batch 2: CRF-GAN uses 10.0% MORE memory (1.100x HA-GAN's) and "
        "runs 20.0% SLOWER (0.800x HA-GAN's iterations/s)"]
    path = training.plot(rows, str(tmp_path / "p.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # two fresh TensorFlow processes at 128^3: about a minute
def test_profile_memory_cli_json(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-m", "tools.profile_memory", "--models=crfgan,hagan",
                          "--img_size=128", "--batch_sizes=1", "--steps=1", "--warmup=1",
                          "--width=0.0625", "--json", f"--plot={tmp_path}/m.png",
                          "--live_at_peak=3"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["model"] for r in rows] == ["crfgan", "hagan"]
    for r in rows:
        assert set(r) >= {"model", "img_size", "batch_size", "peak_bytes", "iters_per_sec",
                          "params", "device", "precision"}
        assert r["peak_bytes"] > 100 * 2**20 and r["iters_per_sec"] > 0
        assert r["cpu_allocator"] == "default"
        # CPU: peak = RSS after the imports (TensorFlow alone: hundreds of MiB) + working
        assert r["rss_after_import_bytes"] > 100 * 2**20 and r["working_bytes"] > 0
        assert r["rss_after_import_bytes"] + r["working_bytes"] == r["peak_bytes"]
        # --live_at_peak: the profiled step's allocator peak, replayed from its events
        a = r["allocator_peak"]
        assert a["allocator"] == "mklcpu" and a["op_at_peak"]
        assert a["peak_bytes"] == a["before_bytes"] + a["live_bytes"]
        assert a["before_bytes"] > 4 * r["params"]  # the weights (and Adam's slots) at least
        assert len(a["live"]) == min(3, a["live_count"]) and a["live_count"] >= 3
        sizes = [t["bytes"] for t in a["live"]]
        assert sizes == sorted(sizes, reverse=True) and sum(sizes) <= a["live_bytes"]
        assert all(t["op"] and t["shape"].startswith("[") for t in a["live"])
    assert "allocator peak (mklcpu)" in res.stderr
    assert rows[0]["params"] < rows[1]["params"]
    assert os.path.exists(tmp_path / "m.png")


def _xspace(events):
    """An XSpace proto holding `events`: (kind, time_ns, {stat: value}) on one line."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    line = plane.lines.add(name="tf_Compute", timestamp_ns=1000)
    ids = {}

    def meta(table, name):
        if (table, name) not in ids:
            ids[table, name] = len(ids) + 1
            getattr(plane, table)[ids[table, name]].name = name
        return ids[table, name]

    for kind, t, stats in events:
        e = line.events.add(metadata_id=meta("event_metadata", kind), offset_ps=t * 1000)
        for k, v in stats.items():
            s = e.stats.add(metadata_id=meta("stat_metadata", k))
            if isinstance(v, str):
                s.ref_value = meta("stat_metadata", v)
            else:
                s.int64_value = v
    return space


def test_allocator_peak_replays_the_events_in_time_order():
    """bench.allocations on hand-made events (out of time order in the proto): 100 bytes
    held before; a (10) and b (20) made, a freed, c (5) made: the peak is 130 at b's op,
    with b and a alive, b first; another allocator's events are kept apart."""
    from crfgan_tf.bench import allocations

    def made(t, addr, size, in_use, op, allocator="mklcpu"):
        return ("MemoryAllocation", t, {"allocator_name": allocator, "addr": addr,
                                        "allocation_bytes": size, "bytes_allocated": in_use,
                                        "data_type": 1, "tf_op": op, "shape": f"[{size}]"})

    def freed(t, addr, size, in_use):
        return ("MemoryDeallocation", t, {"allocator_name": "mklcpu", "addr": addr,
                                          "allocation_bytes": size, "bytes_allocated": in_use})

    space = _xspace([made(30, 3, 5, 125, "c"), made(10, 1, 10, 110, "a"),
                     made(20, 2, 20, 130, "b"), freed(25, 1, 10, 120),
                     made(0, 9, 1, 1, "g", allocator="GPU_0_bfc")])
    rows = allocations.events(space)
    assert [r["time_ps"] for r in rows] == sorted(r["time_ps"] for r in rows)
    got = allocations.peak(rows, top=5)
    assert got == {"allocator": "mklcpu", "peak_bytes": 130, "before_bytes": 100,
                   "op_at_peak": "b", "live_bytes": 30, "live_count": 2,
                   "live": [{"op": "b", "shape": "[20]", "dtype": "float32", "bytes": 20},
                            {"op": "a", "shape": "[10]", "dtype": "float32", "bytes": 10}]}
    assert allocations.peak(rows, allocator="GPU_0_bfc")["live_bytes"] == 1
    assert allocations.peak([]) is None
    lines = allocations.describe(got)
    assert lines[0].startswith("allocator peak (mklcpu): 0 MiB in use at b:")
    assert len(lines) == 3


def _python(code, **env):
    env = dict(os.environ, PYTHONPATH=REPO, **env)
    env.pop("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.split()[-1]


def test_lean_cpu_memory_is_opt_in_and_applied_by_configure():
    """profile() runs its child with CRFGAN_LEAN_CPU_MEMORY=0/1; runtime.configure() (what
    every command and the benchmark child call) with 1 routes oneDNN through malloc, with
    0 leaves TensorFlow's allocator alone; importing crfgan_tf alone changes nothing."""
    probe = ("import os, crfgan_tf; from crfgan_tf.utils import runtime; {}"
             "print(os.environ.get('TF_ONEDNN_USE_SYSTEM_ALLOCATOR', '-'))")
    configure = probe.format("runtime.configure(load_tensorflow=False); ")
    assert _python(configure, CRFGAN_LEAN_CPU_MEMORY="0") == "-"
    assert _python(configure, CRFGAN_LEAN_CPU_MEMORY="1") == "1"
    assert _python(probe.format(""), CRFGAN_LEAN_CPU_MEMORY="1") == "-"
    # glibc accepts the fixed mmap threshold (this project's machines run glibc)
    assert _python("from crfgan_tf.utils import runtime; print(runtime.lean_cpu_memory())") == "True"


_MMAPPED_AFTER_A_FREE = """
import ctypes
from crfgan_tf.utils import runtime
{}
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(3 << 20))  # glibc's own rule: a freed mapped block raises its threshold
block = libc.malloc(3 << 20)
print(int(libc.mallinfo2().hblkhd >= 3 << 20))  # 1: the second 3 MiB block is mapped too
"""


def test_configure_fixes_glibc_mmap_threshold_unless_the_user_set_one():
    """configure() fixes glibc's mmap threshold (DEFAULT_MMAP_THRESHOLD): blocks of that
    size or more are mapped and unmapped, instead of glibc raising its threshold after each
    free and keeping freed blocks in its heap (less working memory: docs/benchmarks.md). A
    GLIBC_TUNABLES mmap_threshold of the user's wins."""
    configured = _MMAPPED_AFTER_A_FREE.format("runtime.configure(load_tensorflow=False)")
    assert _python(_MMAPPED_AFTER_A_FREE.format("")) == "0"  # glibc alone
    assert _python(configured, CRFGAN_LEAN_CPU_MEMORY="0") == "1"
    assert _python(configured, CRFGAN_LEAN_CPU_MEMORY="1") == "1"  # lean: 256 KiB
    assert _python(configured, CRFGAN_LEAN_CPU_MEMORY="0",
                   GLIBC_TUNABLES="glibc.malloc.mmap_threshold=8388608") == "0"


def test_lean_commands_start_again_with_glibc_huge_pages():
    """With CRFGAN_LEAN_CPU_MEMORY=1 a command starts itself again (the same process) with
    glibc.malloc.hugetlb=1 added to GLIBC_TUNABLES (glibc reads it only at start), once,
    keeping the user's other tunables and an explicit hugetlb setting; without it, not at
    all."""
    command = ("import os; from crfgan_tf.cli import common; common.run_command(lambda argv: "
               "print(os.environ.get('GLIBC_TUNABLES', '-'), os.getpid()), load_tensorflow=False)")

    def run(**env):
        env = {**{k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"},
               "PYTHONPATH": REPO, **env}
        proc = subprocess.Popen([sys.executable, "-c", command], env=env,
                                stdout=subprocess.PIPE, text=True)
        tunables, pid = proc.communicate(timeout=120)[0].split()
        assert proc.returncode == 0 and int(pid) == proc.pid  # exec'd in place, not a child
        return tunables

    assert run(CRFGAN_LEAN_CPU_MEMORY="0") == "-"
    assert run(CRFGAN_LEAN_CPU_MEMORY="1") == "glibc.malloc.hugetlb=1"
    assert run(CRFGAN_LEAN_CPU_MEMORY="1", GLIBC_TUNABLES="glibc.malloc.arena_max=2") == \
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert run(CRFGAN_LEAN_CPU_MEMORY="1", GLIBC_TUNABLES="glibc.malloc.hugetlb=0") == \
        "glibc.malloc.hugetlb=0"


def test_training_imports_no_simpleitk():
    """SimpleITK (conversion, sample writing) costs a training process ~90 MiB of RSS."""
    code = ("import sys, crfgan_tf.training.loop, crfgan_tf.bench.training; "
            "print('SimpleITK' in sys.modules)")
    assert _python(code) == "False"


@pytest.mark.slow
def test_generate_memory_exports_and_generates_in_a_fresh_process(tmp_path):
    """bench-generate checkpoints a model the way training does (the encoder too: every
    export has `encode`), exports it and generates one volume per slab size."""
    from crfgan_tf.bench import pipeline as bench_pipeline

    rows = bench_pipeline.generate_memory(64, slabs=(4, 16), work_dir=str(tmp_path),
                                          width=0.0625, log=lambda m: None)
    assert [(r["slab"], r["shape"]) for r in rows] == [(4, [1, 64, 64, 64]), (16, [1, 64, 64, 64])]
    for r in rows:
        assert r["peak_rss_bytes"] >= r["rss_after_load_bytes"] > 100 * 2**20
        assert r["seconds"] > 0 and "failed" not in r


@pytest.mark.slow
def test_bench_device_cli_on_cpu(tmp_path):
    """The GPU benchmark's whole path at the smallest size on CPU: a training row with
    the planner's prediction beside it, a generated volume, the JSON file and the table."""
    env = dict(os.environ, PYTHONPATH=REPO)
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "-m", "tools.bench_device",
                          "--configs=crfgan:64:1:float32", "--generate_sizes=64",
                          "--width=0.0625", "--latent_dim=16", "--steps=1", "--warmup=1",
                          f"--json_out={out}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    (row,) = result["training"]
    assert (row["model"], row["img_size"], row["batch_size"]) == ("crfgan", 64, 1)
    assert row["planned_kind"] == "cpu working memory"
    assert row["measured_bytes"] == row["working_bytes"] > 0 and row["planned_bytes"] > 0
    assert row["planned_over_measured"] == round(row["planned_bytes"] / row["measured_bytes"], 3)
    (gen,) = result["generate"]
    assert gen["shape"] == [1, 64, 64, 64] and gen["gpu_peak_bytes"] is None
    assert "| crfgan 64³ batch 1 float32 |" in res.stdout and "| 64³ |" in res.stdout


@pytest.mark.parametrize("config", ["crfgan:64:1", "gan:64:1:float32", "hagan:64:1:float32",
                                    "crfgan:64:0:float32", "crfgan:64:1:float16",
                                    "crfgan:64:1:float32:jit"])
def test_bench_device_refuses_bad_configs_before_any_work(config):
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-m", "tools.bench_device", f"--configs={config}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "--configs" in res.stderr and "training" not in res.stdout


def test_fresh_process_results_failures_and_out_of_memory():
    """bench.runner: a child's JSON result; its error line; running out of memory as a
    result, not a crash; two children started side by side (start_fresh/finish_fresh)."""
    from crfgan_tf.bench import runner

    ok = runner.run_fresh("json:dumps", [1, 2])
    assert (ok.value, ok.failure) == ("[1, 2]", None)
    bad = runner.run_fresh("operator:truediv", 1, 0)
    assert bad.value is None and not bad.oom and "ZeroDivisionError" in bad.failure
    oom = runner.run_fresh("builtins:bytearray", 10 ** 15)
    assert oom.oom and oom.failure == "out of memory"
    first, second = (runner.start_fresh("json:dumps", {"n": n}) for n in (1, 2))
    assert runner.finish_fresh(second).value == '{"n": 2}'
    assert runner.finish_fresh(first).value == '{"n": 1}'
