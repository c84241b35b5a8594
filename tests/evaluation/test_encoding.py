"""The export's `encode` / `reconstruct` signatures and crfgan-encode (issue #21)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from crfgan_tf.core import intensity
from crfgan_tf.data import records
from crfgan_tf.generation import export as export_lib
from crfgan_tf.generation import sample as sample_lib

ENV = dict(os.environ, PYTHONPATH=REPO)


def _first_volumes(records_64, n=2):
    read = list(records.read_volumes(os.path.join(records_64, "*.tfrecord")))
    return read, np.stack([r.volume for r in read[:n]]).astype(np.float32)


def test_encode_is_the_models_encoder_and_reconstruct_its_head(exported, trained_run, records_64):
    module, _ = sample_lib.load(exported[0])
    model = trained_run[1]
    _, volumes = _first_volumes(records_64)
    out = {k: v.numpy() for k, v in module.encode(volume=tf.constant(volumes)).items()}
    expected = model.encoder(volumes[..., None], training=False).numpy()
    assert out["embedding"].shape == (2, 16, 16, 16, 8) and "latent" not in out
    # float32 noise of the SavedModel's graph against eager (relative 2e-5 on embeddings
    # of about 0.7 from PyTorch-ranged initial weights)
    np.testing.assert_allclose(out["embedding"], expected, rtol=1e-4, atol=1e-5)
    flat = expected.reshape(2, -1, 8)
    np.testing.assert_allclose(out["features"],
                               np.concatenate([flat.mean(1), flat.std(1)], axis=1),
                               rtol=1e-4, atol=1e-5)
    recon = module.reconstruct(volume=tf.constant(volumes))["volume"].numpy()
    np.testing.assert_allclose(recon, model.head(expected, training=False).numpy()[..., 0],
                               atol=1e-4)


def test_hagan_encode_has_the_sub_encoders_latent():
    from crfgan_tf.networks import build_encoder, build_head, build_trunk
    from crfgan_tf.networks.hagan import build_sub_encoder

    enc, sub = build_encoder(128, 0.0625), build_sub_encoder(128, 16, 0.0625)
    module = export_lib.GeneratorModule(
        build_trunk(128, 16, 0.0625), build_head(128, 0.0625), 16, 128, 8,
        {"window": [-1024.0, 600.0], "output_spacing": [1.0, 1.0, 1.0]}, 0, enc, sub)
    x = tf.random.stateless_uniform([1, 128, 128, 128], seed=[1, 2], minval=-1.0, maxval=1.0)
    out = module.encode(x)
    assert out["embedding"].shape == (1, 32, 32, 32, 8) and out["features"].shape == (1, 16)
    np.testing.assert_allclose(out["latent"].numpy(), sub(enc(x[..., None])).numpy(), atol=1e-5)


def test_encode_cli_writes_features_keyed_by_case_id(exported, records_64, tmp_path):
    output = str(tmp_path / "features.npz")
    res = subprocess.run([sys.executable, "-m", "tools.encode", f"--saved_model={exported[0]}",
                          f"--records={os.path.join(records_64, '*.tfrecord')}",
                          f"--output={output}", "--batch_size=2", "--json"],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "encode: 5/5" in res.stderr
    info = json.loads(res.stdout)
    read, volumes = _first_volumes(records_64, 5)
    with np.load(output) as data:
        assert list(data["case_ids"]) == [r.case_id for r in read]
        assert data["features"].shape == (5, 16) and data["labels"].tolist() == [-1] * 5
        module, meta = sample_lib.load(exported[0])
        recon = module.reconstruct(volume=tf.constant(volumes))["volume"].numpy()
        hu = intensity.from_unit(recon, meta["window"]) - intensity.from_unit(volumes, meta["window"])
        np.testing.assert_allclose(data["reconstruction_mae"], np.abs(hu).mean(axis=(1, 2, 3)),
                                   rtol=1e-4)
        assert info["cases"] == 5 and info["reconstruction_units"] == "HU"
        assert info["reconstruction_mae_mean"] == pytest.approx(float(data["reconstruction_mae"].mean()))


def test_encode_cli_errors_are_named(exported, tmp_path):
    base = [sys.executable, "-m", "tools.encode", f"--saved_model={exported[0]}"]
    res = subprocess.run(base + ["--output=x.npz"], cwd=REPO, env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0 and "exactly one of --records and --scans" in res.stderr
    res = subprocess.run(base + [f"--scans={tmp_path}", f"--output={tmp_path / 'f.npz'}"],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--scans:" in res.stderr and "matches no volume file" in res.stderr


def test_encode_cli_reads_scan_files_at_any_size(exported, tiny_archive, records_64, tmp_path):
    """--scans: a scan not at the model's size is preprocessed as the conversion does (equal
    to its record), a volume file at the model's size is read as it is."""
    read, _ = _first_volumes(records_64, 5)
    scan = tiny_archive[1][0]  # a 48 x 48 x 32 MetaImage scan
    record = next(r for r in read if r.case_id == os.path.basename(scan)[:-4])
    np.save(tmp_path / "as_is.npy", record.volume)
    os.symlink(scan, tmp_path / os.path.basename(scan))
    os.symlink(scan[:-4] + ".raw", tmp_path / (os.path.basename(scan)[:-4] + ".raw"))
    output = str(tmp_path / "f.npz")
    res = subprocess.run([sys.executable, "-m", "tools.encode", f"--saved_model={exported[0]}",
                          f"--scans={tmp_path}", f"--output={output}"],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "encode: 2 cases ->" in res.stdout
    with np.load(output) as data:
        ids = list(data["case_ids"])
        assert sorted(ids) == sorted(["as_is", record.case_id])
        # the preprocessed scan equals its record (int16 storage: within 1/2 quantum)
        np.testing.assert_allclose(data["features"][ids.index("as_is")],
                                   data["features"][ids.index(record.case_id)], atol=1e-3)
