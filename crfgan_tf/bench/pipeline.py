"""Benchmarks (not tests) of the pipeline around training: conversion speed against the
reference pipeline's approach, input throughput, generation and feature memory.

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

from crfgan_tf.bench.runner import run_fresh
from crfgan_tf.core import intensity
from crfgan_tf.data import phantom, preprocess
from crfgan_tf.models import options


def reference_like(path: str, size: int) -> np.ndarray:
    """The reference approach on one scan: read, window, skimage resize of the whole array."""
    from skimage.transform import resize  # optional: pip install -e '.[bench]'

    array, _, _, _ = preprocess.read_canonical(path)
    unit = intensity.to_unit(array, intensity.CT_WINDOW)
    return resize(unit, (size, size, size), order=1, mode="constant", cval=-1,
                  anti_aliasing=True).astype(np.float32)


def convert_speed(in_plane: int = 512, num_slices: int = 300, size: int = 256,
                  repeats: int = 3, with_reference: bool = True, log=print,
                  dicom_compressions=()) -> dict:
    """Seconds per scan (median of `repeats`) of process_scan vs the reference approach;
    with `dicom_compressions` ("" for uncompressed, "jpeg", "jpeg2000") also the same scan
    as a DICOM series: finding and deciding it (headers) and converting it. The variants
    take turns within each repetition, so that a noisy machine affects them alike; the
    ratios to the .mhd time are per repetition, then the median."""
    from crfgan_tf.data import dicom, dicom_write

    with tempfile.TemporaryDirectory() as tmp:
        spec = phantom.PhantomSpec(in_plane=in_plane, num_slices=num_slices)
        volume = phantom.make_phantom(0, spec)
        path = phantom.write_scan(volume, os.path.join(tmp, "s.mhd"), spec.spacing_zyx)
        folders = {c: os.path.join(tmp, f"dicom_{c or 'raw'}") for c in dicom_compressions}
        for c, folder in folders.items():
            dicom_write.write_series(volume, folder, spec.spacing_zyx, compression=c)
        del volume
        opts = preprocess.PreprocessOptions(size=size)
        times = {key: [] for key in ["mhd", "reference"] + [f"{c}:{part}" for c in folders
                                                             for part in ("find", "convert")]}

        def timed(key, fn, *args):
            t = time.perf_counter()
            out = fn(*args)
            times[key].append(time.perf_counter() - t)
            return out

        for _ in range(repeats):
            timed("mhd", preprocess.process_scan, path, opts)
            line = f"process_scan (.mhd): {times['mhd'][-1]:.2f} s"
            if with_reference:
                timed("reference", reference_like, path, size)
                line += f"; reference (skimage resize): {times['reference'][-1]:.2f} s"
            for c, folder in folders.items():
                (series,) = timed(f"{c}:find", dicom.find_series, folder, dicom.SeriesOptions())
                timed(f"{c}:convert", dicom.process_series, series, opts)
                line += (f"; DICOM {c or 'raw'}: find {times[f'{c}:find'][-1]:.2f} s, convert "
                         f"{times[f'{c}:convert'][-1]:.2f} s")
            log(line)
        median = lambda key: round(statistics.median(times[key]), 3)  # noqa: E731
        row = {"scan": f"{in_plane}x{in_plane}x{num_slices} int16", "size": size,
               "ours_s": median("mhd")}
        if with_reference:
            row["reference_s"] = median("reference")
            row["speedup"] = round(row["reference_s"] / row["ours_s"], 2)
        if folders:
            row["dicom"] = []
        for c, folder in folders.items():
            totals = [f + v for f, v in zip(times[f"{c}:find"], times[f"{c}:convert"])]
            ratios = [t / m for t, m in zip(totals, times["mhd"])]
            row["dicom"].append({
                "encoding": c or "raw", "files": num_slices, "find_s": median(f"{c}:find"),
                "convert_s": median(f"{c}:convert"),
                "total_s": round(statistics.median(totals), 3),
                "vs_mhd": round(statistics.median(ratios), 2)})
    return row


def child_generate(saved_model: str) -> dict:
    """In a fresh process: load the SavedModel, generate one volume, report peak RSS."""
    import resource

    import tensorflow as tf

    module = tf.saved_model.load(saved_model)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gpu = bool(tf.config.list_physical_devices("GPU"))
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    t = time.perf_counter()
    z = tf.random.stateless_normal([1, int(module.latent_dim.numpy())], seed=[0, 0])
    volume = module.generate(z=z)["volume"].numpy()
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"shape": list(volume.shape), "seconds": round(seconds, 2),
            "rss_after_load_bytes": before, "peak_rss_bytes": peak,
            # the GPU allocator's peak while generating (weights loaded before the reset)
            "gpu_peak_bytes": (int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
                               if gpu else None)}


def generate_memory(img_size: int = 256, slabs=(8, 64), work_dir: str = None,
                    width: float = 1.0, embedding_factor: int = 0, log=print) -> list:
    """Peak CPU memory of generating one volume from an export, per slab size.

    A model with random weights (full width unless `width`) is checkpointed as training
    does (G1, G2 and hE, which every export carries) and exported once per slab size
    (weights do not change memory); each generation runs in a fresh process. A slab of
    img_size / 4 embedding slices is the whole embedding: one-shot G2.
    """
    import tensorflow as tf

    from crfgan_tf.generation import export as export_lib
    from crfgan_tf.models import CRFGAN
    from crfgan_tf.run import config as config_lib
    from crfgan_tf.run import rundir

    work = work_dir or tempfile.mkdtemp(prefix="crfgan_genmem_")
    run = os.path.join(work, "run")
    config = config_lib.TrainConfig(model_dir=run, img_size=img_size, width=width,
                                    embedding_factor=embedding_factor)  # 0: the default
    rundir.record_config(config, None, {}, log)
    embedding_factor = config.embedding_factor
    model = CRFGAN(img_size=img_size, width=width, embedding_factor=embedding_factor)
    checkpoint = tf.train.Checkpoint(**{options.TRUNK_KEY: model.trunk, options.HEAD_KEY: model.head,
                                        options.ENCODER_KEY: model.encoder})
    tf.train.CheckpointManager(checkpoint, os.path.join(run, rundir.CHECKPOINT_DIR), 1).save(1)
    rows = []
    for slab in slabs:
        sm = os.path.join(work, f"export_slab{slab}")
        export_lib.export(run, sm, slab=slab, log=log)
        child = run_fresh("crfgan_tf.bench.pipeline:child_generate", sm)
        row, reason = child.value, child.failure
        if reason:
            log(f"generate {img_size}^3 slab {slab}: FAILED ({reason})")
            rows.append({"img_size": img_size, "slab": slab, "failed": reason})
            continue
        row.update(img_size=img_size, slab=slab, embedding_factor=embedding_factor)
        log(f"generate {img_size}^3 slab {slab}: peak RSS {row['peak_rss_bytes'] / 2**20:,.0f} MiB "
            f"(after load {row['rss_after_load_bytes'] / 2**20:,.0f} MiB), {row['seconds']} s")
        rows.append(row)
    return rows


def child_features(img_size: int, batch_size: int, repeats: int) -> dict:
    """In a fresh process: MedicalNet ResNet-50 features of random [-1, 1] volumes; peak RSS
    and seconds per volume (median of `repeats` batches after one warm-up batch)."""
    import resource

    from crfgan_tf.evaluation import features

    extractor = features.load_extractor(None, allow_random=True)
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
            child = run_fresh("crfgan_tf.bench.pipeline:child_features", size, batch, repeats)
            result, reason = child.value, child.failure
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
    import tensorflow as tf

    from crfgan_tf.data import manifest, records

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = {}
    for k in range(num_shards):
        name = f"train-{k:05d}-of-{num_shards:05d}.tfrecord"
        path = os.path.join(directory, name)
        members = range(k, num_records, num_shards)
        with tf.io.TFRecordWriter(path) as writer:
            for i in members:
                q = int(intensity.VOLUME_SCALE)
                volume = rng.integers(-q, q, (img_size,) * 3, dtype=np.int16)
                writer.write(records.serialize_result(preprocess.ScanResult(
                    case_id=f"synthetic{i}", source="", volume=volume, modality="ct",
                    original_size=volume.shape, original_spacing=(1.0,) * 3,
                    output_spacing=(1.0,) * 3, output_origin=(0.0,) * 3,
                    window=intensity.CT_WINDOW)))
        shards[name] = {"num_records": len(members), "bytes": os.path.getsize(path),
                        "split": "train", "status": "complete"}
    manifest.write(directory, {"settings": {"size": img_size}, "shards": shards})
    return os.path.join(directory, "train-*.tfrecord")


def input_throughput(pattern: str, img_size: int, batch_size: int = 2, batches: int = 30,
                     warmup: int = 3, latent_dim: int = 1024, start_step: int = 0) -> dict:
    """Batches/s of the training input stream alone (data.make_train_dataset), after
    `warmup` batches; also the seconds to the first batch (including a resume's skip)."""
    from crfgan_tf.data import pipeline

    t0 = time.time()
    iterator = iter(pipeline.make_train_dataset(pattern, img_size, batch_size, latent_dim,
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
