"""Starting from a trained model, through the commands a user runs: `crfgan-train
--init_from` from a run directory, an export's weights package and a SavedModel gives
step-0 weights equal to the source's; an architecture mismatch names the flag; on resume
`--allow_change` accepts what it lists and logs it, and an architecture change stays
refused; samples from a package equal the SavedModel's; a tampered package is refused;
the model card's fields are pinned."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, checkpoint_values, train_args
from crfgan_tf.run import config as config_lib
from crfgan_tf.run import rundir


def _command(module, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                          text=True, timeout=timeout)


def _ok(res):
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stderr


def _error(res):
    assert res.returncode == 2, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    return lines[0]


# where a checkpoint stores each network's variables: a variable is written once, under
# the first path that reaches it, which for trainable ones is its phase optimizer's list
NETWORK_PATHS = {"generator": ("g_optimizer/_trainable_variables/",),
                 "discriminator": ("d_optimizer/_trainable_variables/", "discriminator/"),
                 "encoder": ("rec_optimizer/_trainable_variables/",),
                 "crf": ("crf/", "crf_optimizer/_trainable_variables/")}


def _network(values, group):
    return {n: v for n, v in values.items() if n.startswith(NETWORK_PATHS[group])}


# --- the rules, without TensorFlow --------------------------------------------------------

def _stored(tmp_path, **kw):
    """A run directory with its settings and a checkpoint (which makes them binding)."""
    config = config_lib.TrainConfig(model_dir=str(tmp_path), img_size=64, **kw)
    rundir.record_config(config, None, {}, lambda m: None)
    os.makedirs(tmp_path / rundir.CHECKPOINT_DIR, exist_ok=True)
    (tmp_path / rundir.CHECKPOINT_DIR / "ckpt-1.index").write_bytes(b"")
    return config


def test_a_refused_change_names_the_option_that_accepts_it(tmp_path):
    _stored(tmp_path, lr_d=4e-4, width=0.5)
    new = config_lib.TrainConfig(model_dir=str(tmp_path), img_size=64, lr_d=2e-4, width=0.5,
                                 mixed_precision="mixed_float16")
    with pytest.raises(rundir.RunDirError) as err:
        rundir.check_config(new)
    assert "`allow_change=lr_d,mixed_precision`" in str(err.value)
    assert "init_from" not in str(err.value)  # nothing here needs a new run
    assert rundir.check_config(new, ("lr_d", "mixed_precision")) == {
        "lr_d": (4e-4, 2e-4), "mixed_precision": ("float32", "mixed_float16")}


def test_architecture_and_data_stay_refused_and_point_to_init_from(tmp_path):
    _stored(tmp_path, width=0.5, train_records="a/*.tfrecord")
    new = config_lib.TrainConfig(model_dir=str(tmp_path), img_size=64, width=1.0,
                                 train_records="b/*.tfrecord", lr_g=1e-3)
    with pytest.raises(rundir.RunDirError) as err:
        rundir.check_config(new, ("lr_g",))
    text = str(err.value)
    assert "`width`: 0.5 -> 1.0" in text and "`train_records`" in text
    assert f"`init_from={tmp_path}`" in text and "allow_change" not in text.split("Either")[1] \
        .split(";")[0]
    with pytest.raises(ValueError, match="`allow_change`: width cannot change on resume"):
        rundir.parse_allow_change("lr_g,width")


def test_the_troubleshooting_table_proposes_only_what_resume_accepts():
    """Every `--allow_change=` the docs propose is accepted by the command's rule (the
    placeholder FIELD aside), and the table proposes it for a NaN stop."""
    text = "".join(open(os.path.join(REPO, "docs", page)).read()
                   for page in ("training.md", "fine-tuning.md"))
    proposed = [part.split("`")[0].split()[0].rstrip(",.)")
                for part in text.split("--allow_change=")[1:]]
    proposed = [p for p in proposed if "FIELD" not in p]
    assert len(proposed) >= 6, proposed
    for fields in proposed:
        rundir.parse_allow_change(fields)
    nan_row = [line for line in text.splitlines() if line.startswith("| a NaN/inf loss")][0]
    assert "--allow_change=lr_d" in nan_row and "refuses" not in nan_row


# --- through the commands -----------------------------------------------------------------

@pytest.fixture(scope="module")
def source(records_64, tmp_path_factory):
    """A tiny CRF-GAN trained 2 steps, exported with both formats and as a SavedModel
    alone: (run dir, export dir, SavedModel-only dir)."""
    root = tmp_path_factory.mktemp("init_source")
    run, export, sm = root / "run", root / "export", root / "sm"
    _ok(_command("crfgan_tf.train", *train_args(records_64, run), "--train_steps=2",
                 "--checkpoint_every=2", "--eval_every=2", "--eval_samples=2",
                 "--eval_feature_side=16", f"--eval_records={records_64}/train-*.tfrecord"))
    _ok(_command("crfgan_tf.export", f"--model_dir={run}", f"--export_dir={export}",
                 "--license=CC-BY-4.0"))
    _ok(_command("crfgan_tf.export", f"--model_dir={run}", f"--export_dir={sm}",
                 "--format=savedmodel"))
    return run, export, sm


@pytest.mark.slow
def test_init_from_a_run_an_export_and_a_savedmodel_gives_the_sources_weights(
        source, records_64, tmp_path):
    run, export, sm = source
    trained = checkpoint_values(os.path.join(run, "checkpoints", "ckpt-2"))
    export_networks = ("generator_trunk", "generator_head", "encoder")
    for name, spec, taken in (("from_run", f"{run}@2", export_networks + ("discriminator",
                                                                          "crf")),
                              ("from_package", str(export), export_networks),
                              ("from_savedmodel", str(sm), export_networks)):
        model_dir = tmp_path / name
        log = _ok(_command("crfgan_tf.train", *train_args(records_64, model_dir),
                           "--train_steps=0", f"--init_from={spec}", "--seed=7"))
        assert "optimizers fresh, step 0" in log, log
        start = checkpoint_values(os.path.join(model_dir, "checkpoints", "ckpt-0"))
        assert int(start["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 0
        for group in NETWORK_PATHS:
            a, b = _network(trained, group), _network(start, group)
            assert a.keys() == b.keys() and a, group
            same = all(np.array_equal(a[n], b[n]) for n in a)
            assert same == (group in " ".join(taken)), (name, group)
        # the optimizers start fresh: no step taken, Adam's moments zero
        state = {n: v for n, v in start.items() if "_optimizer/_variables/" in n
                 or "_optimizer/_iterations" in n}
        assert len(state) > 20 and not any(np.any(v) for v in state.values())
        stored = json.load(open(model_dir / "config.json"))
        assert stored["init_from"] == spec
        assert stored["init_source"]["kind"] == name.split("_", 1)[1]
        assert stored["init_source"]["step"] == 2
        assert stored["init_source"]["networks"] == list(taken)
    # the fine-tuned run's export names its source in the model card
    _ok(_command("crfgan_tf.export", f"--model_dir={tmp_path / 'from_package'}",
                 f"--export_dir={tmp_path / 'ft_export'}", "--format=weights"))
    card = json.load(open(tmp_path / "ft_export" / "model_card.json"))
    assert card["training"]["initialised_from"]["name"] == os.path.basename(str(export))
    assert str(export) not in json.dumps(card)  # no path of this machine in what is shared
    assert "initialised from | package" in open(tmp_path / "ft_export" / "MODEL_CARD.md").read()
    assert not (tmp_path / "ft_export" / "saved_model.pb").exists()


@pytest.mark.slow
def test_init_from_refuses_another_architecture_naming_the_flag(source, records_64, tmp_path):
    run, export, _ = source
    line = _error(_command("crfgan_tf.train", *train_args(records_64, tmp_path / "a"),
                           "--width=0.125", f"--init_from={run}"))
    assert "--width: 0.0625 there, 0.125 here" in line and "Set --width=0.0625" in line, line
    line = _error(_command("crfgan_tf.train", *train_args(records_64, tmp_path / "b"),
                           f"--init_from={export}", "--init_networks=generator,discriminator"))
    assert "holds no discriminator" in line, line
    assert not os.path.exists(tmp_path / "a" / "config.json")


@pytest.mark.slow
def test_allow_change_after_a_nan_resumes_and_logs_it(records_64, tmp_path):
    """Learning rates raised to 1e38 on resume (allowed, so they take effect: a Keras
    optimizer checkpoints its rate) blow the weights up and stop the run with a non-finite
    loss; it resumes from the last checkpoint with lower rates only when the change is
    allowed, and the change is logged with its step."""
    model_dir = tmp_path / "run"
    args = train_args(records_64, model_dir)
    _ok(_command("crfgan_tf.train", *args, "--train_steps=1", "--checkpoint_every=1"))
    res = _command("crfgan_tf.train", *args, "--train_steps=4", "--lr_d=1e38", "--lr_g=1e38",
                   "--allow_change=lr_d,lr_g")
    assert res.returncode == 3 and "error: non-finite" in res.stderr, res.stderr[-2000:]
    line = _error(_command("crfgan_tf.train", *args, "--train_steps=2"))
    assert "--lr_d: 1e+38 -> 0.0004" in line and "--allow_change=lr_d,lr_g" in line, line
    _ok(_command("crfgan_tf.train", *args, "--train_steps=2", "--lr_d=2e-4",
                 "--allow_change=lr_d,lr_g"))
    changes = rundir.read_changes(str(model_dir))
    assert changes[-1]["step"] == 1 and changes[-1]["changed"]["lr_d"] == [1e38, 2e-4], changes
    assert changes[-1]["changed"]["lr_g"] == [1e38, 1e-4]
    assert json.load(open(model_dir / "config.json"))["lr_d"] == 2e-4
    assert "--allow_change" not in open(model_dir / "flags.txt").read()
    values = checkpoint_values(os.path.join(model_dir, "checkpoints", "ckpt-2"))
    assert values["d_optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE"] == np.float32(2e-4)
    line = _error(_command("crfgan_tf.train", *args, "--train_steps=3", "--lr_d=2e-4",
                           "--width=0.125", "--allow_change=width"))
    assert "--allow_change: width cannot change on resume" in line, line
    # another precision wraps the optimizers in a loss scale: Adam's state carries over
    _ok(_command("crfgan_tf.train", *args, "--train_steps=3", "--lr_d=2e-4",
                 "--mixed_precision=mixed_float16", "--allow_change=mixed_precision"))
    values = checkpoint_values(os.path.join(model_dir, "checkpoints", "ckpt-3"))
    assert values["g_optimizer/inner_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == 3


@pytest.mark.slow
def test_package_samples_equal_the_savedmodels_and_a_tampered_one_is_refused(source, tmp_path):
    _, export, sm = source
    out = {}
    for name, path in (("package", export), ("savedmodel", sm)):
        _ok(_command("crfgan_tf.sample", f"--saved_model={path}", "--num_samples=2",
                     f"--output_dir={tmp_path / name}", "--format=npy", "--seed=3"))
        out[name] = [np.load(tmp_path / name / f"sample_seed3_0000{i}.npy") for i in range(2)]
    for a, b in zip(out["package"], out["savedmodel"]):
        assert a.shape == (64, 64, 64) and np.abs(a.astype(int) - b.astype(int)).max() <= 1
    tampered = tmp_path / "tampered"
    shutil.copytree(export, tampered)
    path = tampered / "generator_head.weights.h5"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    line = _error(_command("crfgan_tf.sample", f"--saved_model={tampered}", "--num_samples=1",
                           f"--output_dir={tmp_path / 't'}"))
    assert f"{path} does not match its checksum in package.json" in line, line
    line = _error(_command("crfgan_tf.train", "--model_dir=" + str(tmp_path / "ft"),
                           "--img_size=64", "--width=0.0625", "--latent_dim=16",
                           "--train_steps=0", f"--init_from={tampered}"))
    assert "does not match its checksum" in line, line


@pytest.mark.slow
def test_the_model_card_fields(source):
    run, export, _ = source
    card = json.load(open(export / "model_card.json"))
    assert card["format"] == "crfgan-tf-model-card/1" and card["id"].startswith("crfgan-")
    assert card["model"]["model"] == "crfgan" and card["model"]["img_size"] == 64
    assert card["model"]["parameters"] == {
        k: v["parameters"] for k, v in json.load(open(export / "package.json"))["networks"].items()}
    assert card["output"]["shape_zyx"] == [64, 64, 64] and card["output"]["units"] == "HU"
    train = card["training"]
    assert (train["dataset"], train["cases"], train["steps"], train["seed"]) == ("luna16", 4, 2, 1)
    assert len(train["case_digests"]) == 4 and train["initialised_from"] is None
    ev = card["evaluation"]["in_training"]
    assert ev["at_exported_step"]["step"] == 2 and ev["at_exported_step"]["fd"] is not None
    assert ev["at_exported_step"]["pretrained"] is False
    assert card["license"] == {"weights": "CC-BY-4.0", "code": "Apache-2.0"}
    # crfgan-export took the quality gate's ranges from the run's 4 training volumes
    assert card["quality_gate"]["volumes"] == 4
    assert json.load(open(export / "quality_ranges.json"))["ranges"] == card["quality_gate"]["ranges"]
    md = open(export / "MODEL_CARD.md").read()
    assert "not for diagnosis" in md and "random features (not FID)" in md
    assert "Weights: CC-BY-4.0." in md and card["id"] in md
