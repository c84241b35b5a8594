"""Side by side with a PyTorch transcription of the reference (tests/support/torch_reference.py):
same weights, same spectral-norm u, same inputs. Skipped where PyTorch is not installed
(`make test` does not install it); the checks of the mapping itself that need no PyTorch
are in tests/reference/test_mapping.py."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

torch = pytest.importorskip("torch")

from support import torch_reference as R  # noqa: E402

from crfgan_tf.run import factory
from crfgan_tf import reference
from crfgan_tf.generation import export as export_lib
from crfgan_tf.run import config as config_lib
from crfgan_tf.training import loop as train_lib
from crfgan_tf.training import checkpointing  # noqa: E402
from conftest import REPO

# float32 rounding: relative L2 distances of two float32 implementations of the same
# function (oneDNN vs PyTorch kernels, fused vs separate up-sampling) measured here are
# 1e-6..3e-5; a wrong mapping or formula gives 1e-2 and more.
TOL = 1e-4
LR = {"G": 1e-4, "D": 4e-4, "E": 1e-4, "crf": 4e-4, "Sub_E": 1e-4}


def _config(model, size, model_dir="/nonexistent", **kw):
    return config_lib.TrainConfig(model_dir=str(model_dir), model=model, img_size=size,
                                  batch_size=2, crf_nodes="channels", **kw)


def _numpy_state(net):
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _load(model, nets):
    """Our model with the torch networks' weights and u vectors (the library's mapping)."""
    return _assign(model, {f: _numpy_state(net) for f, net in nets.items()})


def _assign(model, states):
    """Our model with reference state_dicts {file prefix: {key: array}}."""
    tensors = reference.layout(model)
    for f, state in states.items():
        reference.apply_state(model, f, reference.FILES[model.name][f], tensors[f],
                              {"model": state, "optimizer": None}, log=lambda m: None)
    return tensors


def _rel(a, b, label=None):
    """Relative L2 distance of a from b; printed with `label` (pytest -s shows the figures
    docs/benchmarks.md records)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    value = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    if label:
        print(f"side-by-side {label}: relative L2 {value:.2e}")
    return value


def _batch(size, seed=0, position=None):
    rng = np.random.default_rng(seed)
    vol = rng.uniform(-1, 1, (2, size, size, size)).astype("float32")
    r = position if position is not None else 4 * int(rng.integers(0, 7 * size // 32 + 1))
    z = {k: rng.standard_normal((2, 1024)).astype("float32") for k in ("z_d", "z_g", "z_c")}
    keras_batch = dict(volume=tf.constant(vol[..., None]),
                       crop=tf.constant(vol[:, r:r + size // 8, ..., None]),
                       position=tf.constant([r, r], tf.int32),
                       **{k: tf.constant(v) for k, v in z.items()})
    torch_batch = dict(volume=torch.from_numpy(vol[:, None]), positions=torch.tensor([r, r]),
                       **{k: torch.from_numpy(v) for k, v in z.items()})
    return keras_batch, torch_batch


@pytest.fixture(autouse=True)
def _float32():
    factory.set_precision("float32")


@pytest.mark.parametrize("model_name,size", [("crfgan", 64), ("hagan", 128)])
def test_networks_equal_the_reference(model_name, size):
    nets = R.build(model_name, size, seed=1)
    model = factory.build_model(_config(model_name, size))
    with torch.no_grad():
        nets["crf" if model_name == "crfgan" else "Sub_E"].apply(
            lambda m: m.W.normal_(0, 0.3) if isinstance(m, R.CRF) else None)
    _load(model, nets)
    kb, tb = _batch(size, seed=2)
    for net in nets.values():
        net.train()
    with torch.no_grad():
        emb_ref = nets["G"].trunk(tb["z_d"])
        vol_ref = nets["G"].head(emb_ref)
        d_ref = nets["D"](vol_ref[:, :, :size // 8], tb["positions"],
                          nets["G"].sub_G(emb_ref) if model_name == "hagan" else None)
        e_ref = nets["E"](tb["volume"])
    emb = model.trunk(kb["z_d"])
    vol = model.generate(kb["z_d"])
    pos = model.normalized_position(kb["position"])
    if model_name == "hagan":
        d, _ = model.joint_logits(vol[:, :size // 8], model.low_generator(emb), pos)
    else:
        d = model.discriminator([vol[:, :size // 8], pos], training=True)
    tag = f"{model_name} {size}^3"
    assert _rel(tf.transpose(emb, (0, 4, 1, 2, 3)), emb_ref, f"{tag} G1 embedding") < TOL
    assert _rel(vol[..., 0], vol_ref[:, 0], f"{tag} G whole volume") < TOL
    # training-mode D: the same u step, the same sigma
    assert _rel(d, d_ref, f"{tag} D logits (training mode)") < TOL
    u = model.discriminator.get_layer("conv1").u.numpy()
    ref_first = getattr(nets["D"], f"conv{nets['D'].first}")
    assert _rel(u, ref_first.u0.numpy()[0], f"{tag} D first-layer u after the call") < 1e-5
    assert _rel(tf.transpose(model.encoder(kb["volume"]), (0, 4, 1, 2, 3)), e_ref,
                f"{tag} hE of the whole volume") < TOL
    if model_name == "crfgan":
        logits = tf.constant([[0.3], [-1.2]])
        with torch.no_grad():
            crf_ref = nets["crf"](emb_ref, torch.from_numpy(logits.numpy()))
        assert _rel(model.crf(emb, logits), crf_ref, f"{tag} CRF (channels)") < TOL
        assert _rel(crf_ref, logits) > 1e-2  # W matters: not just the unary passed through
    else:
        with torch.no_grad():
            z_ref = nets["Sub_E"](emb_ref)
        assert _rel(model.sub_encoder(emb), z_ref, f"{tag} sub-encoder") < TOL


def _step_differences(model, tensors, nets, opts, before, lr):
    """Per tensor (and per network, all its gradients together), after one iteration of
    both: the relative L2 distance of the gradients (Adam's first moment: beta_1 = 0), the
    fraction of elements whose update differs by
    more than 1 % of lr, and for u vectors their relative distance."""
    grads, steps, us = {}, {}, {}
    for f, ts in tensors.items():
        ours_g, ref_g = [], []
        after = _numpy_state(nets[f])
        state = opts[f].state_dict()["state"]
        opt = model.phase_optimizers()[reference.FILES[model.name][f]]
        params = [t for t in ts if t.param]
        for t in ts:
            ours = reference.to_reference(t.kind, t.variable.numpy())
            name = f"{f}.{t.key}"
            if not t.param:
                us[name] = _rel(ours, after[t.key])
                continue
            delta = (ours - before[f][t.key]) - (after[t.key] - before[f][t.key])
            steps[name] = (int(np.sum(np.abs(delta) > 0.01 * lr[f])), delta.size)
            m = opt._momentums[opt._get_variable_index(t.variable)].numpy()
            ours_g.append(reference.to_reference(t.kind, m).ravel())
            ref_g.append(state[params.index(t)]["exp_avg"].numpy().ravel())
            grads[name] = _rel(ours_g[-1], ref_g[-1])
        grads[f] = _rel(np.concatenate(ours_g), np.concatenate(ref_g))
    return grads, steps, us


@pytest.mark.parametrize("model_name,size", [("crfgan", 64), ("hagan", 128)])
def test_one_train_step_equals_the_reference(model_name, size):
    # Same weights, same u, same batch and latents: the losses, every weight update and
    # every spectral-norm u after one whole iteration of all four phases.
    nets = R.build(model_name, size, seed=3)
    opts = R.optimizers(nets, LR)
    model = factory.build_model(_config(model_name, size))
    tensors = _load(model, nets)
    before = {f: _numpy_state(n) for f, n in nets.items()}
    kb, tb = _batch(size, seed=4)
    for net in nets.values():
        net.train()
    mid = {}  # every network as the last phase starts
    if model_name == "crfgan":
        ref = R.crfgan_iteration(nets, opts, tb["volume"], tb["positions"], tb["z_d"],
                                 tb["z_g"], tb["z_c"], iteration=0, before_crf=mid)
    else:
        ref = R.hagan_iteration(nets, opts, tb["volume"], tb["positions"], tb["z_d"], tb["z_g"],
                                before_sub_e=mid)
    ours = {k: float(v) for k, v in model.train_step(kb).items()}
    print(f"side-by-side {model_name} {size}^3 losses ours {ours} reference {ref}")
    # d and g losses come before any update of the networks they use; the later phases run
    # G after its first Adam step, in which the elements with |g| near 0 (float32 noise)
    # may step the other way: 1.8e-4 in HA-GAN's sub-encoder loss, 1e-7 when both sides
    # are given the same updated G and hE.
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, rel=1e-4 if k in ("d_loss", "g_loss") else 1e-3), k
    grads, steps, us = _step_differences(model, tensors, nets, opts, before, LR)
    # Float32 noise here is amplified by (leaky) ReLU kinks and the L1 loss's sign: a 4e-6
    # relative change of D's input moves its first layer's gradient by 9e-4 in PyTorch
    # alone, and PyTorch float32 vs float64 differ by up to 1.5e-2 for a whole network (hE)
    # and 4.8e-2 for one tensor (the bias before a GroupNorm in HA-GAN's sub-encoder, whose
    # gradient nearly cancels). Adam's first step is about lr * sign(g), so the few
    # elements with |g| near 0 may step the other way (<= 0.8 % of any tensor here). The
    # old semantics were far off: D's gradients 0.53 apart (spectral norm), 33-45 % of the
    # elements stepping > 1 % of lr apart (Keras's epsilon).
    # Networks of the phases after G's update see that noise too (HA-GAN's sub-encoder
    # gradient: 6.9e-2); the last phase is compared on its own below.
    worst = lambda d: max(d.items(), key=lambda kv: kv[1])
    networks = {k: v for k, v in grads.items() if k in tensors}
    early = lambda d: {k: v for k, v in d.items() if k.startswith(("D.", "G."))}
    share = max(c / n for c, n in early(steps).values())
    print(f"side-by-side {model_name} {size}^3 gradient relative L2 per network {networks}; "
          f"worst tensor {worst(grads)}; worst u {worst(us)}; largest share of a D or G "
          f"tensor stepping > 1 % of lr apart {share:.4f}")
    assert max(networks["D"], networks["G"]) < 2e-2, networks
    assert worst(networks)[1] < 0.1, networks
    assert worst(early(grads))[1] < 0.25, worst(early(grads))
    # elements stepping > 1 % of lr apart: at most 2 % of a tensor + 4 (a 64-element bias
    # cannot resolve 2 %)
    excess = lambda d: {k: c - 0.02 * n - 4 for k, (c, n) in d.items()}
    assert worst(excess(early(steps)))[1] <= 0, worst(excess(early(steps)))
    # u's last steps use D's updated W, which carries that first-step noise (5.6e-4 here)
    assert worst(us)[1] < 2e-3, worst(us)

    # The phase whose semantics changed (CRF-GAN: CRF on a fresh sample; HA-GAN: the
    # sub-encoder on per-crop hE), alone: our phase from the reference's own weights and
    # u vectors as they stood when it started.
    again = factory.build_model(_config(model_name, size))
    last = "crf" if model_name == "crfgan" else "Sub_E"
    _assign(again, mid)
    if model_name == "crfgan":
        fake = again.fake_for_crf(kb["position"], kb["z_c"])
        loss = again.crf_step(kb["volume"], kb["crop"], kb["position"], *fake)["crf_loss"]
    else:
        low = again.low_resolution(kb["volume"])
        loss = again.sub_rec_step(kb["volume"], kb["crop"], low, kb["position"])["sub_rec_loss"]
    assert float(loss) == pytest.approx(ref["crf_loss" if last == "crf" else "sub_rec_loss"],
                                        rel=1e-5)
    phase = reference.FILES[model_name][last]
    grads, steps, _ = _step_differences(again, {last: reference.layout(again)[last]},
                                        {last: nets[last]}, {last: opts[last]},
                                        {last: mid[last]}, LR)
    assert grads[last] < 2e-2 and worst(excess(steps))[1] <= 0, (phase, grads, steps)


def _import_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "tools.import_reference", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


def _imported_generation(tmp_path, model_name, size, records=None):
    nets = R.build(model_name, size, seed=5)
    opts = R.optimizers(nets, LR)
    kb, tb = _batch(size, seed=6)
    for net in nets.values():
        net.train()
    if model_name == "crfgan":  # a real iteration, so that the Adam states are not empty
        R.crfgan_iteration(nets, opts, tb["volume"], tb["positions"], tb["z_d"], tb["z_g"],
                           tb["z_c"], iteration=0)
    else:
        R.hagan_iteration(nets, opts, tb["volume"], tb["positions"], tb["z_d"], tb["z_g"])
    ckpt_dir, run = tmp_path / "ref_ckpt", tmp_path / "run"
    R.save_reference_checkpoint(nets, opts, str(ckpt_dir), 40000,
                                data_parallel=model_name == "hagan")
    res = _import_cli(f"--model={model_name}", f"--checkpoint_dir={ckpt_dir}", "--iteration=40000",
                      f"--img_size={size}", f"--model_dir={run}",
                      *([f"--train_records={records}"] if records else []))
    assert res.returncode == 0, res.stderr
    export = str(tmp_path / "export")
    export_lib.export(str(run), export, log=lambda m: None)
    z = np.random.default_rng(7).standard_normal((1, 1024)).astype("float32")
    ours = tf.saved_model.load(export).signatures["generate"](z=tf.constant(z))["volume"]
    nets["G"].eval()
    with torch.no_grad():
        ref = nets["G"](torch.from_numpy(z))[:, 0]
    assert _rel(ours, ref, f"{model_name} {size}^3 imported, exported generate vs "
                           "reference eval-mode G") < 1e-4
    return run, nets, opts


@pytest.mark.parametrize("model_name", ["crfgan", "hagan"])
def test_imported_run_exports_the_reference_volume_and_resumes(tmp_path, records_128,
                                                               model_name):
    # the records given at import: a run resumes only with the settings it was written with
    records = os.path.join(records_128, "train-*.tfrecord")
    run, nets, opts = _imported_generation(tmp_path, model_name, 128, records)
    config = config_lib.TrainConfig.from_json((run / "config.json").read_text())
    assert (config.model, config.img_size, config.crf_nodes, config.lr_d) == \
        (model_name, 128, "channels", 4e-4)
    # the Adam state came along: moments of the imported step, step count 1
    model = factory.build_model(config)
    ckpt = checkpointing.make_checkpoint(model)
    ckpt.read(str(run / "checkpoints" / "ckpt-40000")).assert_existing_objects_matched()
    assert int(model.step_counter.numpy()) == 40000
    d_opt = model.phase_optimizers()["d"]
    assert int(d_opt.iterations.numpy()) == 1
    t = reference.layout(model)["D"][0]
    slot = opts["D"].state_dict()["state"][0]["exp_avg_sq"].numpy()
    np.testing.assert_allclose(
        reference.to_reference(t.kind, d_opt._velocities[d_opt._get_variable_index(t.variable)]
                               .numpy()), slot, rtol=1e-6)
    # continuing training: resumes at 40000, writes 40001
    assert config.train_records == records
    config.train_steps = 40001
    out = train_lib.train(config, log=lambda m: None)
    assert out["step"] == 40001 and (run / "checkpoints" / "ckpt-40001.index").exists()
    assert int(out["model"].phase_optimizers()["d"].iterations.numpy()) == 2


@pytest.mark.slow  # the 256^3 volume: about a minute each side
@pytest.mark.parametrize("model_name", ["crfgan", "hagan"])
def test_imported_256_run_exports_the_reference_volume(tmp_path, model_name):
    _imported_generation(tmp_path, model_name, 256)


def test_import_errors_name_the_tensor_and_the_flag(tmp_path):
    nets = R.build("crfgan", 128, seed=0)
    R.save_reference_checkpoint(nets, None, str(tmp_path / "c"), 5)
    res = _import_cli("--model=crfgan", f"--checkpoint_dir={tmp_path / 'c'}", "--iteration=5",
                      "--img_size=256", f"--model_dir={tmp_path / 'r'}")
    assert res.returncode == 1 and "--img_size" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()
    res = _import_cli("--model=crfgan", f"--checkpoint_dir={tmp_path / 'c'}", "--iteration=6",
                      "--img_size=128", f"--model_dir={tmp_path / 'r'}")
    assert res.returncode == 2 and "G_iter6.pth" in res.stderr and "[5]" in res.stderr
    res = _import_cli("--model=hagan", f"--checkpoint_dir={tmp_path / 'c'}", "--iteration=5",
                      "--img_size=128", f"--model_dir={tmp_path / 'r'}")
    assert res.returncode == 2 and "Sub_E_iter5.pth" in res.stderr
    # a conditional D (the references' fc2_class head)
    state = nets["D"].state_dict()
    state["fc2_class.weight"] = torch.zeros(3, 64)
    torch.save({"model": state, "optimizer": {}}, tmp_path / "c" / "D_iter5.pth")
    res = _import_cli("--model=crfgan", f"--checkpoint_dir={tmp_path / 'c'}", "--iteration=5",
                      "--img_size=128", f"--model_dir={tmp_path / 'r'}")
    assert res.returncode == 1 and "conditional" in res.stderr and "3 classes" in res.stderr
