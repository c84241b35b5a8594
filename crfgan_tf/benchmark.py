"""Benchmarks (not tests): conversion speed against the reference pipeline's approach.

The reference (HA-GAN / CRF-GAN PyTorch code) preprocesses by loading the whole scan
and calling `skimage.transform.resize(volume, (S, S, S))` on the full array, with
skimage's default linear interpolation and Gaussian anti-aliasing.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np

from crfgan_tf import phantom, preprocess


def reference_like(path: str, size: int) -> np.ndarray:
    """The reference approach on one scan: read, window, skimage resize of the whole array."""
    from skimage.transform import resize  # optional: pip install -e '.[bench]'

    array, _, _, _ = preprocess.read_canonical(path)
    hu = np.clip(array.astype(np.float32), -1024, 600)
    unit = (hu + 1024) / 1624 * 2 - 1
    return resize(unit, (size, size, size), order=1, mode="constant", cval=-1,
                  anti_aliasing=True).astype(np.float32)


def convert_speed(in_plane: int = 512, num_slices: int = 300, size: int = 256,
                  repeats: int = 3, with_reference: bool = True, log=print) -> dict:
    """Seconds per scan (median of `repeats`) of process_scan vs the reference approach."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = phantom.PhantomSpec(in_plane=in_plane, num_slices=num_slices)
        path = phantom.write_scan(phantom.make_phantom(0, spec), os.path.join(tmp, "s.mhd"),
                                  spec.spacing_zyx)
        opts = preprocess.PreprocessOptions(size=size)
        ours = []
        for _ in range(repeats):
            t = time.perf_counter()
            preprocess.process_scan(path, opts)
            ours.append(time.perf_counter() - t)
            log(f"crfgan-tf process_scan: {ours[-1]:.2f} s")
        row = {"scan": f"{in_plane}x{in_plane}x{num_slices} int16", "size": size,
               "ours_s": round(statistics.median(ours), 3)}
        if with_reference:
            ref = []
            for _ in range(repeats):
                t = time.perf_counter()
                reference_like(path, size)
                ref.append(time.perf_counter() - t)
                log(f"reference (skimage resize): {ref[-1]:.2f} s")
            row["reference_s"] = round(statistics.median(ref), 3)
            row["speedup"] = round(row["reference_s"] / row["ours_s"], 2)
    return row


def _run_child(function: str, *args):
    """Runs benchmark.<function>(*args) in a fresh Python process (so peak RSS is its own);
    returns (its dict, None) or (None, why it failed: "out of memory" or the last error)."""
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "import json, sys; from crfgan_tf import benchmark; "
         f"print(json.dumps(benchmark.{function}(*json.loads(sys.argv[1]))))", json.dumps(args)],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        oom = "bad_alloc" in proc.stderr or proc.returncode in (-9, 137)
        return None, "out of memory" if oom else (lines[-1][:300] if lines else
                                                  f"exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def _child_generate(saved_model: str) -> dict:
    """In a fresh process: load the SavedModel, generate one volume, report peak RSS."""
    import resource

    import tensorflow as tf

    module = tf.saved_model.load(saved_model)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    z = tf.random.stateless_normal([1, int(module.latent_dim.numpy())], seed=[0, 0])
    volume = module.generate(z=z)["volume"].numpy()
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"shape": list(volume.shape), "seconds": round(seconds, 2),
            "rss_after_load_bytes": before, "peak_rss_bytes": peak}


def generate_memory(img_size: int = 256, slabs=(8, 64), work_dir: str = None, log=print) -> list:
    """Peak CPU memory of generating one volume from an export, per slab size.

    A full-width model with random weights is checkpointed and exported once per slab
    size (weights do not change memory); each generation runs in a fresh process. A slab
    of img_size / 4 embedding slices is the whole embedding: one-shot G2.
    """
    from crfgan_tf import config as config_lib
    from crfgan_tf import export_lib
    from crfgan_tf.model import CRFGAN

    import tensorflow as tf

    work = work_dir or tempfile.mkdtemp(prefix="crfgan_genmem_")
    run = os.path.join(work, "run")
    os.makedirs(os.path.join(run, "checkpoints"), exist_ok=True)
    cfg = config_lib.TrainConfig(model_dir=run, img_size=img_size)
    with open(os.path.join(run, "config.json"), "w") as f:
        f.write(cfg.to_json())
    model = CRFGAN(img_size=img_size)
    tf.train.Checkpoint(generator_trunk=model.trunk, generator_head=model.head).write(
        os.path.join(run, "checkpoints", "ckpt-1"))
    with open(os.path.join(run, "checkpoints", "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\n')
    rows = []
    for slab in slabs:
        sm = os.path.join(work, f"export_slab{slab}")
        export_lib.export(run, sm, slab=slab, log=log)
        row, reason = _run_child("_child_generate", sm)
        if reason:
            log(f"generate {img_size}^3 slab {slab}: FAILED ({reason})")
            rows.append({"img_size": img_size, "slab": slab, "failed": reason})
            continue
        row.update(img_size=img_size, slab=slab)
        log(f"generate {img_size}^3 slab {slab}: peak RSS {row['peak_rss_bytes'] / 2**20:,.0f} MiB "
            f"(after load {row['rss_after_load_bytes'] / 2**20:,.0f} MiB), {row['seconds']} s")
        rows.append(row)
    return rows


def _child_features(img_size: int, batch_size: int, repeats: int) -> dict:
    """In a fresh process: MedicalNet ResNet-50 features of random [-1, 1] volumes; peak RSS
    and seconds per volume (median of `repeats` batches after one warm-up batch)."""
    import resource

    from crfgan_tf import evaluation

    extractor = evaluation.load_extractor(None, allow_random=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    batch = np.random.default_rng(0).uniform(
        -1, 1, (batch_size, img_size, img_size, img_size)).astype(np.float32)
    extractor(batch)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        features = extractor(batch)
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"features": list(features.shape), "sec_per_volume":
            round(statistics.median(times) / batch_size, 2),
            "rss_after_build_bytes": before, "peak_rss_bytes": peak}


def feature_memory(img_sizes=(128, 256), batch_sizes=(1,), repeats: int = 2, log=print) -> list:
    """Peak CPU memory and speed of FID feature extraction, each configuration in a fresh
    process (what tools.fid_mmd holds per batch, whatever the number of volumes)."""
    rows = []
    for size in img_sizes:
        for batch in batch_sizes:
            result, reason = _run_child("_child_features", size, batch, repeats)
            row = {"img_size": size, "batch_size": batch}
            if reason:
                row["failed"] = reason
                log(f"features {size}^3 batch {batch}: FAILED ({reason})")
            else:
                row.update(result)
                log(f"features {size}^3 batch {batch}: peak RSS "
                    f"{row['peak_rss_bytes'] / 2**20:,.0f} MiB, {row['sec_per_volume']} s/volume")
            rows.append(row)
    return rows


def write_synthetic_records(directory: str, img_size: int = 256, num_records: int = 24,
                            num_shards: int = 4, seed: int = 0) -> str:
    """Training records of random int16 volumes (reading cost does not depend on content)
    with a manifest, as data_prep.convert writes them; returns their glob."""
    import json

    import tensorflow as tf

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = {}
    for k in range(num_shards):
        name = f"train-{k:05d}-of-{num_shards:05d}.tfrecord"
        path = os.path.join(directory, name)
        members = range(k, num_records, num_shards)
        with tf.io.TFRecordWriter(path) as writer:
            for _ in members:
                volume = rng.integers(-32767, 32767, (img_size,) * 3, dtype=np.int16)
                feature = {
                    "volume": tf.train.Feature(bytes_list=tf.train.BytesList(
                        value=[volume.astype("<i2").tobytes()])),
                    "shape": tf.train.Feature(int64_list=tf.train.Int64List(
                        value=[img_size] * 3))}
                writer.write(tf.train.Example(features=tf.train.Features(
                    feature=feature)).SerializeToString())
        shards[name] = {"num_records": len(members), "bytes": os.path.getsize(path),
                        "split": "train", "status": "complete"}
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump({"settings": {"size": img_size}, "shards": shards}, f)
    return os.path.join(directory, "train-*.tfrecord")


def input_throughput(pattern: str, img_size: int, batch_size: int = 2, batches: int = 30,
                     warmup: int = 3, latent_dim: int = 1024, start_step: int = 0) -> dict:
    """Batches/s of the training input stream alone (data.make_train_dataset), after
    `warmup` batches; also the seconds to the first batch (including a resume's skip)."""
    from crfgan_tf import data

    t0 = time.time()
    iterator = iter(data.make_train_dataset(pattern, img_size, batch_size, latent_dim,
                                            seed=0, start_step=start_step))
    next(iterator)
    first = time.time() - t0
    for _ in range(warmup - 1):
        next(iterator)
    t1 = time.time()
    for _ in range(batches):
        next(iterator)
    seconds = time.time() - t1
    return {"img_size": img_size, "batch_size": batch_size, "batches": batches,
            "batches_per_sec": round(batches / seconds, 3),
            "MiB_per_sec": round(batches * batch_size * img_size ** 3 * 2 / seconds / 2 ** 20, 1),
            "first_batch_s": round(first, 3), "start_step": start_step}
