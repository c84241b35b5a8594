import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from crfgan_tf.data import manifest as manifest_lib
from crfgan_tf.data import convert, phantom, preprocess, records
from conftest import REPO




def _config(input_dir, output_dir, **kw):
    base = dict(dataset="luna16", input_dir=input_dir, output_dir=output_dir, size=16,
                num_shards=2, val_fraction=0.2, workers=1, seed=3)
    base.update(kw)
    return convert.ConvertConfig(**base)


def test_split_is_deterministic_disjoint_and_seeded():
    ids = [f"case{i}" for i in range(50)]
    a = convert.split_cases(ids, 0.1, seed=0)
    assert a == convert.split_cases(list(reversed(ids)), 0.1, seed=0)
    assert sum(v == "val" for v in a.values()) == 5
    assert a != convert.split_cases(ids, 0.1, seed=1)
    assert all(v == "train" for v in convert.split_cases(ids, 0.0, 0).values())
    assert sum(v == "val" for v in convert.split_cases(ids[:3], 0.1, 0).values()) == 1


def test_convert_round_trip(tiny_archive, tmp_path):
    root, paths = tiny_archive
    out = str(tmp_path / "rec")
    summary = convert.run_conversion(_config(root, out), log=lambda m: None)
    assert (summary["train"], summary["val"], summary["failed"]) == (4, 1, 0)
    files = sorted(os.listdir(out))
    assert files == ["manifest.json", "train-00000-of-00002.tfrecord",
                     "train-00001-of-00002.tfrecord", "val-00000-of-00001.tfrecord"]
    recs = list(records.read_volumes(os.path.join(out, "*.tfrecord")))
    ids = sorted(r.case_id for r in recs)
    assert ids == sorted(preprocess.case_id_from_path(p) for p in paths)
    direct = preprocess.process_scan(paths[0], preprocess.PreprocessOptions(size=16))
    rec = next(r for r in recs if r.case_id == direct.case_id)
    assert rec.volume.shape == (16, 16, 16) and rec.volume.dtype == np.float32
    np.testing.assert_allclose(rec.volume, direct.volume, atol=1.0 / 32767 + 1e-7)
    assert rec.window == (-1024.0, 600.0) and rec.modality == "ct"
    np.testing.assert_allclose(rec.output_spacing, direct.output_spacing, rtol=1e-6)
    assert rec.trimmed_slices == (2, 2)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    entry = manifest["cases"][direct.case_id]
    assert entry["status"] == "ok" and "air_shift" in entry["corrections"]
    train = {c for c, e in manifest["cases"].items() if e["split"] == "train"}
    val = {c for c, e in manifest["cases"].items() if e["split"] == "val"}
    assert not train & val and len(train | val) == 5
    assert manifest_lib.records_in(out, "train") == 4


def test_gzip_compression(tiny_archive, tmp_path):
    root, _ = tiny_archive
    out = str(tmp_path / "gz")
    convert.run_conversion(_config(root, out, compression="gzip", val_fraction=0.0,
                                   num_shards=1), log=lambda m: None)
    assert os.listdir(out).count("train-00000-of-00001.tfrecord.gz") == 1
    assert len(list(records.read_volumes(os.path.join(out, "*.gz")))) == 5


def test_corrupt_scan_reported_by_name_others_converted(tiny_archive, tmp_path):
    root, paths = tiny_archive
    src = str(tmp_path / "src")
    shutil.copytree(root, src)
    bad_id = preprocess.case_id_from_path(paths[1])
    raw = next(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs
               if f == bad_id + ".raw")
    with open(raw, "r+b") as f:
        f.truncate(100)
    logs = []
    summary = convert.run_conversion(_config(src, str(tmp_path / "o")), log=logs.append)
    assert summary["failed"] == 1 and summary["train"] + summary["val"] == 4
    assert summary["failures"][0]["case_id"] == bad_id
    assert any("FAILED" in m and bad_id in m for m in logs)
    ids = {r.case_id for r in records.read_volumes(str(tmp_path / "o" / "*.tfrecord"))}
    assert bad_id not in ids and len(ids) == 4


def test_rerun_resumes_without_duplicates(tiny_archive, tmp_path):
    root, _ = tiny_archive
    out = str(tmp_path / "r")
    convert.run_conversion(_config(root, out), log=lambda m: None)
    before = {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)}
    # a killed run: one shard lost, a temporary left behind
    os.remove(os.path.join(out, "train-00001-of-00002.tfrecord"))
    open(os.path.join(out, ".train-00000-of-00002.tfrecord.tmp-999"), "w").write("partial")
    summary = convert.run_conversion(_config(root, out), log=lambda m: None)
    assert summary["processed"] == 2  # only the lost shard's cases
    assert not any(".tmp-" in f for f in os.listdir(out))
    assert os.path.getmtime(os.path.join(out, "val-00000-of-00001.tfrecord")) == \
        before["val-00000-of-00001.tfrecord"]
    ids = [r.case_id for r in records.read_volumes(os.path.join(out, "*.tfrecord"))]
    assert len(ids) == len(set(ids)) == 5
    assert convert.run_conversion(_config(root, out), log=lambda m: None)["processed"] == 0


def test_rerun_with_other_settings_is_refused(tiny_archive, tmp_path):
    root, _ = tiny_archive
    out = str(tmp_path / "s")
    convert.run_conversion(_config(root, out), log=lambda m: None)
    with pytest.raises(ValueError, match="other settings.*size"):
        convert.run_conversion(_config(root, out, size=32), log=lambda m: None)
    summary = convert.run_conversion(_config(root, out, size=32, overwrite=True),
                                     log=lambda m: None)
    assert summary["processed"] == 5
    assert next(records.read_volumes(os.path.join(out, "val*"))).volume.shape == (32, 32, 32)


def test_gsp_nifti_mri(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        vol = np.zeros((20, 24, 24), np.float32)
        vol[3:17, 4:20, 4:20] = rng.uniform(50, 400, (14, 16, 16))
        phantom.write_scan(vol, str(tmp_path / "in" / f"sub-{i:02d}_T1w.nii.gz"),
                           (1.2, 1.0, 1.0), flip_axes=(2,))
    out = str(tmp_path / "out")
    summary = convert.run_conversion(convert.ConvertConfig(
        dataset="gsp", input_dir=str(tmp_path / "in"), output_dir=out, size=16,
        num_shards=1, val_fraction=0.0, workers=1), log=lambda m: None)
    assert summary["train"] == 3
    rec = next(records.read_volumes(os.path.join(out, "*.tfrecord")))
    assert rec.modality == "mri" and rec.volume.min() == -1.0
    assert rec.trimmed_slices == (3, 3) and rec.window[1] > 300


@pytest.mark.parametrize("kw,match", [
    (dict(size=100), "`size`"), (dict(val_fraction=1.0), "`val_fraction`"),
    (dict(dataset="generic"), "`modality=ct`"), (dict(num_shards=0), "`num_shards`"),
    (dict(input_dir="/nonexistent"), "`input_dir`"), (dict(dataset="gsp", modality="ct"), "contradicts"),
])
def test_invalid_config(kw, match, tmp_path):
    base = dict(input_dir=str(tmp_path), output_dir=str(tmp_path / "o"))
    base.update(kw)
    cfg = _config(**base)
    with pytest.raises(ValueError, match=match):
        cfg.validate()


def _run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "data_prep.convert", *args], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_end_to_end_with_workers(tiny_archive, tmp_path):
    root, _ = tiny_archive
    out = str(tmp_path / "cli")
    res = _run_cli("--dataset=luna16", f"--input_dir={root}", f"--output_dir={out}",
                   "--size=64", "--num_shards=2", "--workers=2", "--seed=3")
    assert res.returncode == 0, res.stderr
    assert "5 scans found" in res.stderr and "scans/s" in res.stderr
    assert "4 train, 1 val, 0 failed" in res.stderr
    assert len(list(records.read_volumes(os.path.join(out, "*.tfrecord")))) == 5


def test_cli_rejects_bad_flag_before_work(tmp_path):
    res = _run_cli("--dataset=luna16", f"--input_dir={tmp_path}", f"--output_dir={tmp_path}/o",
                   "--size=100")
    assert res.returncode != 0 and "--size" in res.stderr
    assert not os.path.exists(tmp_path / "o")
    res = _run_cli("--dataset=luna16", f"--input_dir={tmp_path}", f"--output_dir={tmp_path}/o")
    assert res.returncode == 2 and "no .mhd/.mha scans" in res.stderr
