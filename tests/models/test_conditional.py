"""Class-conditional generation (the references' --num-class mode): labels from the CSV
through conversion, records, the training batch, the networks and losses, export and
sampling."""

import csv
import glob
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import tensorflow as tf

from crfgan_tf.run import factory
from crfgan_tf.core import intensity
from crfgan_tf.data import convert, labels, phantom, pipeline, records
from crfgan_tf.evaluation import sources
from crfgan_tf.generation import export as export_lib
from crfgan_tf.generation import sample as sample_lib
from crfgan_tf.models import CRFGAN, HAGAN, losses, params
from crfgan_tf.run import rundir
from crfgan_tf.training import loop as train_lib

from conftest import TINY, labelled_phantoms, tiny_batch, tiny_config
from conftest import REPO

ENV = dict(os.environ, PYTHONPATH=REPO)

# Unconditional reference counts (REFERENCE.md) and what a class adds in the reference's
# code: G1's first Linear grows by 4^3 x 512 weights per class, D gets SNLinear(64, N)
# (`fc2_class`), HA-GAN's D^L's last 4^3 conv from 256 channels gets N more outputs.
UNCONDITIONAL = {("crfgan", 64): 57_079_938, ("crfgan", 128): 57_209_762,
                 ("crfgan", 256): 57_244_594, ("hagan", 128): 79_583_972,
                 ("hagan", 256): 79_744_884}
PER_CLASS = {"crfgan": 4 * 4 * 4 * 512 + 64 + 1, "hagan": 4 * 4 * 4 * 512 + 64 + 1 + 256 * 64 + 1}
# measured from the official code with num_class=N (issue #12)
MEASURED = {("crfgan", 64, 2): 57_145_604, ("crfgan", 128, 3): 57_308_261,
            ("crfgan", 256, 2): 57_310_260, ("hagan", 128, 2): 79_682_408,
            ("hagan", 256, 3): 79_892_538}


@pytest.mark.parametrize("model,size", sorted(UNCONDITIONAL))
@pytest.mark.parametrize("classes", [2, 3])
def test_conditional_parameter_counts_equal_reference(model, size, classes):
    result = params.count_parameters(model, size, num_classes=classes)
    expected = UNCONDITIONAL[(model, size)] + classes * PER_CLASS[model]
    assert result["total"] == expected
    if (model, size, classes) in MEASURED:
        assert result["total"] == MEASURED[(model, size, classes)] == result["reference"]
    assert result["modules"]["generator_trunk"] == \
        params.count_parameters(model, size)["modules"]["generator_trunk"] + classes * 32768


def test_count_params_cli_num_classes():
    res = subprocess.run([sys.executable, "-m", "tools.count_params", "--model=crfgan",
                          "--img_size=64", "--num_classes=2", "--json"], cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["total"] == 57_145_604 == out["reference"] and out["num_classes"] == 2


def test_class_loss_hand_computed():
    logits = tf.constant([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    got = float(losses.class_loss(logits, tf.constant([0, 1, 1]), global_batch_size=4))
    want = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)) + math.log(2)) / 4
    assert got == pytest.approx(want, rel=1e-6)


def conditional_batch(batch=1, label=(1,), fake_label=(0,), **kw):
    out = tiny_batch(batch=batch, **kw)
    out["label"] = tf.constant(label, tf.int32)
    out["fake_label"] = tf.constant(fake_label, tf.int32)
    return out


def _compiled(cls, lambda_class, **kw):
    tf.keras.utils.set_random_seed(3)
    model = cls(latent_dim=16, width=0.0625, global_batch_size=1, num_classes=2,
                lambda_class=lambda_class, **kw)
    model.compile({p: tf.keras.optimizers.SGD(0.01) for p in cls.PHASES})
    return model


@pytest.mark.parametrize("cls,size", [(CRFGAN, 64),
                                      pytest.param(HAGAN, 128, marks=pytest.mark.slow)])
def test_class_losses_enter_d_and_g_as_the_references_define_them(cls, size):
    """D: BCE(real, 1) + BCE(fake, 0) + CE(real class); G: its BCE + lambda * CE(fake
    class). At batch 1 the BCE terms follow from D's probabilities; lambda changes g_loss by
    exactly lambda * g_class_loss (D's update before it does not depend on lambda)."""
    batch = conditional_batch(img_size=size)
    outs = [{k: float(v) for k, v in _compiled(cls, lam, img_size=size).train_step(batch).items()}
            for lam in (0.0, 1.0)]
    for out in outs:
        bce = -math.log(out["d_real"]) - math.log(1.0 - out["d_fake"])
        assert out["d_loss"] == pytest.approx(bce + out["d_class_loss"], rel=1e-5)
        assert out["d_class_loss"] > 0 and out["g_class_loss"] > 0
    assert outs[0]["d_loss"] == pytest.approx(outs[1]["d_loss"], rel=1e-6)
    assert outs[1]["g_loss"] - outs[0]["g_loss"] == pytest.approx(outs[1]["g_class_loss"],
                                                                  rel=1e-4)


def test_conditional_model_needs_labels_and_a_label_changes_the_volume():
    model = _compiled(CRFGAN, 0.1, img_size=64)
    z = tf.random.stateless_normal([1, 16], seed=[0, 1])
    with pytest.raises(ValueError, match="give a label"):
        model.generate(z)
    v0, v1 = (model.generate(z, tf.constant([k])).numpy() for k in (0, 1))
    assert np.abs(v0 - v1).max() > 1e-4
    np.testing.assert_array_equal(v0, model.generate(z, tf.constant([0])).numpy())


# ---- labels: CSV, LUNA16 helper, conversion ------------------------------------------

def _write(path, text):
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return str(path)


def test_labels_csv_errors_are_named(tmp_path):
    bad = _write(tmp_path / "bad.csv", "\ufeffcase_id,label,name\na,0,no\nb,x,yes\na,1,yes\n"
                                       "c,5,yes\ne,1,yes\nd,1,other\n")
    with pytest.raises(labels.LabelsError) as err:
        labels.read_labels_csv(bad, num_classes=2)
    msg = str(err.value)
    assert "4 bad label row(s)" in msg
    for part in ("line 3 (b): label 'x' is not an integer", "line 4: duplicate case_id a",
                 "line 5 (c): label 5 out of range 0..1", "class 1 named 'other'"):
        assert part in msg
    good = labels.read_labels_csv(_write(tmp_path / "ok.csv", "case_id,label\na,0\nb,2\n"))
    assert good.labels == {"a": 0, "b": 2} and good.num_classes == 3 and good.counts() == [1, 0, 1]


def test_luna16_labels_from_annotations(tmp_path, tiny_archive):
    root, paths = tiny_archive
    uids = [os.path.basename(p)[:-4] for p in paths]
    ann = _write(tmp_path / "annotations.csv",
                 "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
                 f"{uids[0]},1,2,3,2.5\n{uids[1]},1,2,3,2.0\n{uids[1]},4,5,6,7.5\n"
                 f"{uids[2]},1,2,3,3.0\nnot.in.archive,0,0,0,9\n")
    out = tmp_path / "labels.csv"
    res = subprocess.run([sys.executable, "-m", "data_prep.luna16_labels", f"--annotations={ann}",
                          f"--input_dir={root}", f"--output={out}", "--min_diameter_mm=3"],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "5 scans: 2 with a nodule >= 3 mm" in res.stderr and "1 annotated series" in res.stderr
    with open(out) as fh:
        rows = {r["case_id"]: (int(r["label"]), r["name"]) for r in csv.DictReader(fh)}
    assert rows == {uids[0]: (0, "no_nodule"), uids[1]: (1, "nodule"), uids[2]: (1, "nodule"),
                    uids[3]: (0, "no_nodule"), uids[4]: (0, "no_nodule")}


def test_phantom_nodules_and_annotations(tmp_path):
    paths = phantom.make_luna_archive(str(tmp_path), 4, TINY, seed=10, nodules=True,
                                      nodule_diameter_mm=(12.0, 20.0))
    nodules = labels.read_luna_annotations(str(tmp_path / "annotations.csv"))
    uids = [os.path.basename(p)[:-4] for p in paths]
    assert set(nodules) == {uids[0], uids[1]}  # scans 0, 1 (then 4, 5, ...)
    plain = phantom.make_luna_archive(str(tmp_path / "plain"), 4, TINY, seed=10)
    for k, (p, q) in enumerate(zip(paths, plain)):
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(x)) for x in (p, q))
        changed = a != b
        assert changed.any() == (k < 2)  # the rest of the scan is the same phantom
        if k < 2:  # nodule voxels are soft tissue, at the annotated world position
            assert np.abs(a[changed] - phantom.NODULE_HU).max() <= 6 * TINY.noise_hu
            image = sitk.ReadImage(p)
            zz, yy, xx = np.nonzero(changed)
            centre = image.TransformContinuousIndexToPhysicalPoint(
                (float(xx.mean()), float(yy.mean()), float(zz.mean())))
            with open(tmp_path / "annotations.csv") as fh:
                rows = [r for r in csv.DictReader(fh) if r["seriesuid"] == uids[k]]
            if len(rows) == 1:
                got = [float(rows[0][c]) for c in ("coordX", "coordY", "coordZ")]
                np.testing.assert_allclose(got, centre, atol=3.0)


@pytest.fixture(scope="module")
def labelled_archive(tmp_path_factory):
    """A tiny archive with nodules in half of the scans and its LUNA16 labels, the last
    scan left out of the CSV: (archive, labels CSV, {case id: label}, paths)."""
    root = tmp_path_factory.mktemp("labelled")
    archive, paths, table = labelled_phantoms(str(root / "archive"), 6, seed=20)
    csv_path = str(root / "labels.csv")
    labels.write_labels_csv(csv_path, {c: v for c, v in table.items()
                                       if c != os.path.basename(paths[5])[:-4]},
                            labels.LUNA_CLASS_NAMES)  # the last scan left unlabelled
    return archive, csv_path, {c: v for c, v in table.items()
                               if c != os.path.basename(paths[5])[:-4]}, paths


@pytest.fixture(scope="module")
def labelled(labelled_archive, tmp_path_factory):
    """The labelled archive converted at 64^3 through the CLI: (records dir, labels)."""
    archive, csv_path, table, paths = labelled_archive
    out = str(tmp_path_factory.mktemp("records_labelled") / "records")
    res = subprocess.run([sys.executable, "-m", "data_prep.convert", "--dataset=luna16",
                          f"--input_dir={archive}", f"--output_dir={out}", "--size=64",
                          "--num_shards=2", "--val_fraction=0.2", "--workers=1",
                          f"--labels_csv={csv_path}"],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"{os.path.basename(paths[5])[:-4]} ({paths[5]}): no label in --labels_csv; not " \
           "converted" in res.stderr
    return out, table


def test_labels_survive_conversion_into_records_and_manifest(labelled):
    out, table = labelled
    read = list(records.read_volumes(os.path.join(out, "*.tfrecord")))
    assert {r.case_id: r.label for r in read} == table  # the unlabelled scan is not there
    with open(os.path.join(out, "manifest.json")) as fh:
        manifest = json.load(fh)
    classes = manifest["classes"]
    assert classes["num_classes"] == 2 and classes["names"] == ["no_nodule", "nodule"]
    counts = [a + b for a, b in zip(classes["counts"]["train"], classes["counts"]["val"])]
    assert counts == [list(table.values()).count(0), list(table.values()).count(1)] == [2, 3]
    files = records.list_record_files(os.path.join(out, "train-*.tfrecord"))
    by_index = records.record_labels(files)
    read_back = [r.label for r in records.read_volumes(",".join(files))]
    assert by_index.tolist() == read_back


def test_training_batch_carries_the_record_labels(labelled):
    out, table = labelled
    pattern = os.path.join(out, "train-*.tfrecord")
    volumes = {r.label: [] for r in records.read_volumes(pattern)}
    for r in records.read_volumes(pattern):
        volumes[r.label].append(r.volume)
    ds = pipeline.make_train_dataset(pattern, 64, 2, 8, seed=0, num_classes=2)
    for batch in ds.take(4):
        assert batch["label"].dtype == tf.int32
        np.testing.assert_array_equal(batch["fake_label"], batch["label"])  # "batch"
        stored = intensity.dequantize(batch["volume"].numpy()[..., 0].astype(np.float32))
        for vol, label in zip(stored, batch["label"].numpy()):
            assert any(np.array_equal(vol, v) for v in volumes[label])
    uniform = pipeline.make_train_dataset(pattern, 64, 2, 8, seed=0, num_classes=2,
                                      fake_labels="uniform")
    fakes = np.concatenate([b["fake_label"].numpy() for b in uniform.take(10)])
    assert set(fakes.tolist()) == {0, 1}


def test_balanced_sampler_draws_classes_equally():
    labels_ = np.array([0] * 9 + [1])
    draws = np.concatenate([pipeline.balanced_order(labels_, 0, e).numpy() for e in range(200)])
    share = (labels_[draws] == 1).mean()
    assert abs(share - 0.5) < 0.03  # 2000 draws: sd 0.011
    np.testing.assert_array_equal(pipeline.balanced_order(labels_, 0, 5), pipeline.balanced_order(labels_, 0, 5))


def test_training_refuses_unlabelled_records_and_too_few_classes(records_64, labelled, tmp_path):
    with pytest.raises(records.RecordsError, match="converted without labels; convert again "
                                                "with `labels_csv=FILE`"):
        train_lib.train(tiny_config(tmp_path / "a", os.path.join(records_64, "train-*.tfrecord"),
                                    num_classes=2))
    out, _ = labelled
    manifest_path = os.path.join(out, "manifest.json")
    with open(manifest_path) as fh:
        manifest = json.load(fh)
    copy = tmp_path / "three"
    copy.mkdir()
    for f in glob.glob(os.path.join(out, "train-*")):
        os.symlink(f, copy / os.path.basename(f))
    manifest["classes"]["counts"]["train"].append(1)
    manifest["classes"]["num_classes"] = 3
    with open(copy / "manifest.json", "w") as fh:
        json.dump(manifest, fh)
    with pytest.raises(records.RecordsError, match="hold labels up to 2 .* train with "
                                                "`num_classes=3`"):
        train_lib.train(tiny_config(tmp_path / "b", str(copy / "train-*.tfrecord"),
                                    num_classes=2))
    assert not os.path.exists(tmp_path / "a" / rundir.CONFIG_FILE)


@pytest.mark.slow
def test_conditional_train_export_sample_end_to_end(labelled, tmp_path):
    out, _ = labelled
    run = tmp_path / "run"
    result = train_lib.train(tiny_config(run, os.path.join(out, "train-*.tfrecord"),
                                         num_classes=2, balance_classes=True))
    assert result["step"] == 2 and result["metrics"]["d_class_loss"] > 0
    export_dir = str(tmp_path / "export")
    meta = export_lib.export(str(run), export_dir, log=lambda m: None)
    assert meta["num_classes"] == 2 and meta["class_names"] == ["no_nodule", "nodule"]
    module, _ = sample_lib.load(export_dir)
    z = sample_lib.latents(0, 0, 2, 16)
    got = module.generate(z=z, label=tf.constant([0, 1]))["volume"].numpy()
    model = result["model"]
    want = model.generate(z, tf.constant([0, 1]))[..., 0].numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.abs(got[0] - got[1]).max() > 1e-4  # same z, other class

    samples = tmp_path / "samples"
    res = subprocess.run([sys.executable, "-m", "crfgan_tf.sample", f"--saved_model={export_dir}",
                          "--labels=1,0", "--num_samples=3", f"--output_dir={samples}"],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    with open(samples / "samples.json") as fh:
        listing = json.load(fh)["samples"]
    assert [(s["class"], s["class_name"]) for s in listing] == \
        [(1, "nodule"), (0, "no_nodule"), (1, "nodule")]
    image = sitk.ReadImage(str(samples / listing[0]["file"]))
    assert image.GetMetaData("descrip") == "crfgan-tf class 1 (nodule)"
    for bad, msg in (([], "is conditional (2 classes"), (["--label=2"], "out of range 0..1")):
        res = subprocess.run([sys.executable, "-m", "crfgan_tf.sample",
                              f"--saved_model={export_dir}", f"--output_dir={samples}"] + bad,
                             cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
        assert res.returncode == 2 and msg in res.stderr, res.stderr

    # one class of generated volumes against the real volumes of that class
    real = sources.open_source(os.path.join(out, "*.tfrecord"), label=1)
    assert real.count == 3 and len(list(real.volumes())) == 3
    fake = sources.open_source(export_dir, num_samples=2, label=1)
    np.testing.assert_allclose(np.stack(list(fake.volumes())),
                               model.generate(z, tf.constant([1, 1]))[..., 0].numpy(), atol=2e-5)
    with pytest.raises(sources.EvaluationError, match="is conditional"):
        sources.open_source(export_dir, num_samples=2)

    res = subprocess.run([sys.executable, "-m", "tools.class_contrast", f"--saved_model={export_dir}",
                          f"--records={out}/*.tfrecord", "--num_samples=2", "--json"],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    contrast = json.loads(res.stdout.strip().splitlines()[-1])
    assert contrast["classes"] == ["no_nodule", "nodule"]
    assert contrast["real"]["1"]["dense_ml"]["n"] == 3 and contrast["generated"]["0"]["lung_fraction"]["n"] == 2
    assert set(contrast["paired"]["1"]["dense_ml"]) == {"n", "mean", "sd", "larger"}

    study = tmp_path / "study"
    res = subprocess.run([sys.executable, "-m", "tools.make_2afc", f"--real={out}/*.tfrecord",
                          f"--model_a={export_dir}", "--label=1", "--section1_pairs=2",
                          "--section2_pairs=0", "--volumes_per_source=2",
                          f"--output_dir={study}"],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    with open(study / "key" / "key.json") as fh:
        key = json.load(fh)
    assert "(class 1)" in json.dumps(key["sources"])


@pytest.mark.parametrize("name,size", [("crfgan", 64), ("hagan", 128)])
def test_reference_layout_of_a_conditional_run(name, size):
    """A conditional reference checkpoint maps onto the conditional networks: every
    variable once (fc2_class after fc2; HA-GAN's sub_D.conv5 with 1 + N outputs), and a
    state of those shapes passes the checks only when read with its number of classes."""
    from crfgan_tf import reference
    from crfgan_tf.run import config as config_lib

    factory.set_precision("float32")
    model = factory.build_model(config_lib.TrainConfig(
        model_dir="/x", model=name, img_size=size, crf_nodes="channels", num_classes=3))
    lay = reference.layout(model)
    tensors = [t for ts in lay.values() for t in ts]
    assert len({id(t.variable) for t in tensors}) == len(tensors)
    assert {id(t.variable) for t in tensors if t.param} == {id(v) for v in model.trainable_weights}
    assert sum(int(np.prod(t.variable.shape)) for t in tensors if t.param) == \
        params.count_parameters(name, size, num_classes=3)["total"]
    keys = [t.key for t in lay["D"] if t.param]
    assert keys.index("fc2_class.weight") == keys.index("fc2.bias") + 1
    states = {f: {t.key: reference.to_reference(t.kind, t.variable.numpy()) for t in ts}
              for f, ts in lay.items()}
    assert reference.classes_of(states["D"]) == 3
    for f, ts in lay.items():
        reference.check_state(f, states[f], ts, name, size, 1024, num_classes=3)
    with pytest.raises(reference.ReferenceMismatch, match="fc1.weight takes 1027 inputs.*"
                                                          "pass `latent_dim=1027`"):
        reference.check_state("G", states["G"], lay["G"], name, size, 1024)


@pytest.mark.slow
def test_conditional_hagan_trains_exports_and_samples(labelled_archive, tmp_path):
    archive, csv_path, table, _ = labelled_archive
    out = str(tmp_path / "records128")
    convert.run_conversion(convert.ConvertConfig(
        dataset="luna16", input_dir=archive, output_dir=out, size=128, num_shards=1,
        val_fraction=0.0, workers=1, labels_csv=csv_path), log=lambda m: None)
    run = tmp_path / "run"
    result = train_lib.train(tiny_config(run, os.path.join(out, "train-*.tfrecord"),
                                         model="hagan", img_size=128, batch_size=1,
                                         num_classes=2, fake_labels="uniform"))
    metrics = result["metrics"]
    assert result["step"] == 2 and metrics["d_class_loss"] > 0 and metrics["g_class_loss"] > 0
    export_dir = str(tmp_path / "export")
    export_lib.export(str(run), export_dir, log=lambda m: None)
    module, meta = sample_lib.load(export_dir)
    z = sample_lib.latents(0, 0, 1, 16)
    got = [sample_lib.generate(module, z, [k])[0] for k in (0, 1)]
    assert got[0].shape == (128, 128, 128) and np.abs(got[0] - got[1]).max() > 1e-4
    np.testing.assert_allclose(got[1], result["model"].generate(z, tf.constant([1]))[0, ..., 0],
                               atol=2e-5)


def test_lung_statistics_hand_computed():
    """A 40^3 volume of (2, 5, 5) mm voxels: air outside a 36^3 soft-tissue body holding
    two 5 x 10 x 8 lungs 12 voxels apart (60 mm: the 15 mm closing keeps them apart);
    then a 2^3 nodule inside the right lung."""
    from crfgan_tf.evaluation import physical

    hu = np.full((40, 40, 40), -1000.0, np.float32)
    hu[2:38, 2:38, 2:38] = 40.0
    hu[15:20, 10:20, 6:14] = -850.0   # right lung: 400 voxels
    hu[15:20, 10:20, 26:34] = -850.0  # left lung: 400 voxels
    spacing = (2.0, 5.0, 5.0)
    plain = physical.lung_statistics(hu, spacing)
    assert plain == {"lung_fraction": pytest.approx(800 / 36 ** 3), "dense_fraction": 0.0,
                     "dense_ml": 0.0}
    hu[16:18, 14:16, 9:11] = 40.0  # 8 voxels of 50 mm^3, surrounded by lung in-plane
    nodule = physical.lung_statistics(hu, spacing)
    assert nodule["dense_ml"] == pytest.approx(8 * 50.0 / 1000)
    assert nodule["dense_fraction"] == pytest.approx(8 / 800)
    assert nodule["lung_fraction"] == pytest.approx(792 / 36 ** 3)
