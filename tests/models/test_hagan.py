import json
import os

import numpy as np
import pytest
import tensorflow as tf

from crfgan_tf.run import factory
from crfgan_tf.generation import export as export_lib
from crfgan_tf.models import params
from crfgan_tf.networks.generator import embedding_channels
from crfgan_tf.training import loop as train_lib
from crfgan_tf.training import distribute
from crfgan_tf.networks.hagan import (build_low_discriminator, build_low_generator,
                                      build_sub_encoder)

from conftest import tiny_batch, tiny_config

W = 0.0625


@pytest.mark.parametrize("size", [128, 256, 512])
def test_hagan_network_shapes(size):
    n, c = size // 4, embedding_channels(W)
    emb = tf.zeros((1, n, n, n, c))
    assert build_low_generator(size, W)(emb).shape == (1, n, n, n, 1)
    assert build_low_discriminator(size, W)(tf.zeros((1, n, n, n, 1))).shape == (1, 1)
    assert build_sub_encoder(size, 16, W)(emb).shape == (1, 16)


@pytest.mark.parametrize("size,total,low_d,sub_e", [
    (128, 79_583_972, 2_642_369, 19_663_168), (256, 79_744_884, 2_771_425, 19_663_264)])
def test_hagan_parameter_counts_equal_reference(size, total, low_d, sub_e):
    result = params.count_parameters("hagan", size)
    m = result["modules"]
    assert result["total"] == total == result["reference"]
    assert m["generator"] == 52_518_210 and m["low_generator"] == 69_697
    assert m["low_discriminator"] == low_d and m["sub_encoder"] == sub_e
    assert m["encoder"] == 161_152
    # CRF-GAN = HA-GAN - G^L - D^L - sub-encoder + the CRF matrix
    crf = params.count_parameters("crfgan", size)
    assert crf["total"] == total - m["low_generator"] - low_d - sub_e + (size // 4) ** 2


def test_hagan_parameter_counts_at_512_follow_the_growth_rule():
    """HA-GAN at 512^3 against 256^3, by hand: D^L's new first layer (4^3 SN conv 1 -> 16)
    and its next layer's input from 1 to 16 channels; the sub-encoder's first conv is
    64 -> 16 (+ GroupNorm) followed by a new 16 -> 32, where 256^3 has one 64 -> 32; G^L
    unchanged; G1, D and the shared networks as in CRF-GAN."""
    at256, at512 = (params.count_parameters("hagan", s)["modules"] for s in (256, 512))
    assert at512["low_discriminator"] - at256["low_discriminator"] == \
        (64 * 16 + 16) + 64 * (16 - 1) * 32
    conv_gn = lambda cin, cout: 64 * cin * cout + cout + 2 * cout
    assert at512["sub_encoder"] - at256["sub_encoder"] == \
        conv_gn(64, 16) + conv_gn(16, 32) - conv_gn(64, 32)
    assert at512["low_generator"] == at256["low_generator"] == 69_697
    assert params.count_parameters("hagan", 512)["total"] == 79_862_396


def test_hagan_refuses_64():
    with pytest.raises(ValueError, match="no 64"):
        params.count_parameters("hagan", 64)
    with pytest.raises(ValueError, match="`model=hagan`"):
        tiny_config("/tmp/x", model="hagan", img_size=64).validate()


def _tiny_hagan(tmp_path, **kw):
    return factory.build_model(tiny_config(tmp_path, model="hagan", img_size=128, **kw))


def test_hagan_each_phase_changes_exactly_its_variables(tmp_path):
    model = _tiny_hagan(tmp_path)
    batch = tiny_batch(img_size=128)
    crop, pos, vol = batch["crop"], batch["position"], batch["volume"]
    low = model.low_resolution(vol)
    assert low.shape == (2, 32, 32, 32, 1)
    np.testing.assert_array_equal(low, vol[:, ::4, ::4, ::4])  # F.interpolate(x, 0.25)
    ids = lambda vs: {id(v) for v in vs}
    weights = model.phase_weights()

    def changed(fn):
        before = {id(v): v.numpy().copy() for v in model.trainable_weights}
        out = fn()
        return out, {id(v) for v in model.trainable_weights
                     if not np.array_equal(v.numpy(), before[id(v)])}

    out, moved = changed(lambda: model.d_step(crop, low, pos, batch["z_d"]))
    assert moved == ids(weights["d"])
    out, moved = changed(lambda: model.g_step(pos, batch["z_g"]))
    assert moved == ids(weights["g"])
    out, moved = changed(lambda: model.rec_step(crop))
    assert moved == ids(weights["rec"])
    out, moved = changed(lambda: model.sub_rec_step(vol, crop, low, pos))
    assert moved == ids(weights["sub_rec"]) and np.isfinite(float(out["sub_rec_loss"]))
    assert set().union(*(ids(v) for v in weights.values())) == ids(model.trainable_weights)


@pytest.mark.slow  # float16 convolutions are emulated on CPU: about a minute
def test_hagan_one_step_mixed_float16(tmp_path):
    factory.set_precision("mixed_float16")
    try:
        model = _tiny_hagan(tmp_path, mixed_precision="mixed_float16")
        out = distribute.trace_step(model.train_step)(tiny_batch(img_size=128))
        assert set(out) == {"d_loss", "g_loss", "rec_loss", "sub_rec_loss", "d_real", "d_fake", "r_t"}
        assert all(np.isfinite(float(v)) for v in out.values())
    finally:
        factory.set_precision("float32")


@pytest.mark.slow
def test_hagan_train_resume_and_export(records_128, tmp_path):
    pattern = os.path.join(records_128, "train-*.tfrecord")
    cfg = lambda steps: tiny_config(tmp_path / "run", pattern, model="hagan", img_size=128,
                                    train_steps=steps, checkpoint_every=1)
    first = train_lib.train(cfg(1))
    assert "sub_rec_loss" in first["metrics"]
    logs = []
    second = train_lib.train(cfg(2), log=logs.append)
    assert any("resumed from" in m and "ckpt-1" in m for m in logs)
    assert json.load(open(tmp_path / "run" / "trainer_state.json"))["step"] == 2
    export_lib.export(str(tmp_path / "run"), str(tmp_path / "sm"), slab=8, log=lambda m: None)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    z = tf.random.stateless_normal((1, 16), seed=[1, 1])
    got = loaded.signatures["generate"](z=z)["volume"].numpy()
    np.testing.assert_allclose(got, second["model"].generate(z)[..., 0].numpy(), atol=5e-5)
    # the encoder path of the checkpoint: hE, then the sub-encoder's z
    x = tiny_batch(img_size=128, batch=1)["volume"]
    encoded = loaded.signatures["encode"](volume=x[..., 0])
    model = second["model"]
    embedding = model.encoder(x, training=False)
    np.testing.assert_allclose(encoded["embedding"].numpy(), embedding.numpy(), atol=1e-5)
    np.testing.assert_allclose(encoded["latent"].numpy(),
                               model.sub_encoder(embedding, training=False).numpy(), atol=1e-4)


def test_hagan_low_resolution_average_on_request(tmp_path):
    model = _tiny_hagan(tmp_path, hagan_low_res="average")
    vol = tiny_batch(img_size=128)["volume"]
    low = model.low_resolution(vol)
    np.testing.assert_allclose(low[0, 1, 2, 3, 0], tf.reduce_mean(vol[0, 4:8, 8:12, 12:16]),
                               rtol=1e-5)


def test_hagan_sub_encoder_input_is_per_crop_embeddings(tmp_path):
    # HA-GAN's train.py: hE of each S/8 crop on its own, concatenated along depth. hE's
    # GroupNorm statistics then come from one crop, so this differs from hE(whole volume).
    model = _tiny_hagan(tmp_path)
    vol = tiny_batch(img_size=128)["volume"]
    emb = model.crop_embeddings(vol)
    assert emb.shape == (2, 32, 32, 32, model.encoder.output_shape[-1])
    np.testing.assert_allclose(emb[:, 12:16], model.encoder(vol[:, 48:64]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(emb, model.encoder(vol), atol=1e-3)
