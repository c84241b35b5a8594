"""The reference-checkpoint mapping (crfgan_tf.reference) without PyTorch: every variable
is mapped once, the tensor conversions compute what the reference's layers compute, and
mismatched checkpoints are refused with the tensor and the flag named. The side-by-side
checks against a PyTorch transcription are in test_reference.py."""

import numpy as np
import pytest

from crfgan_tf import reference
from crfgan_tf.run import config as config_lib
from crfgan_tf.run import factory


def _model(name, size):
    factory.set_precision("float32")
    return factory.build_model(config_lib.TrainConfig(model_dir="/x", model=name,
                                                        img_size=size, crf_nodes="channels"))


@pytest.fixture(scope="module")
def crfgan64():
    return _model("crfgan", 64)


@pytest.fixture(scope="module")
def hagan128():
    return _model("hagan", 128)


@pytest.mark.parametrize("fixture", ["crfgan64", "hagan128"])
def test_layout_maps_every_variable_once(request, fixture):
    model = request.getfixturevalue(fixture)
    tensors = [t for ts in reference.layout(model).values() for t in ts]
    ids = [id(t.variable) for t in tensors]
    assert len(ids) == len(set(ids))
    expected = {id(v) for v in model.trainable_weights}
    expected |= {id(layer.u) for net in model.modules().values()
                 for layer in getattr(net, "layers", []) if hasattr(layer, "u")}
    assert set(ids) == expected
    # the parameter count of the reference files (REFERENCE.md)
    count = sum(int(np.prod(t.variable.shape)) for t in tensors if t.param)
    assert count == {"crfgan64": 57_079_938, "hagan128": 79_583_972}[fixture]


def test_g1_dense_units_follow_torch_view_order():
    # torch: y = W z, then view(C, 4, 4, 4); Keras: y = z K, then Reshape((4, 4, 4, C))
    rng = np.random.default_rng(0)
    c, latent = 8, 5
    w, b = rng.standard_normal((c * 64, latent)), rng.standard_normal(c * 64)
    z = rng.standard_normal(latent)
    torch_view = (w @ z + b).reshape(c, 4, 4, 4).transpose(1, 2, 3, 0)
    ours = (z @ reference.to_keras("dense_g1", w) + reference.to_keras("vector_g1", b))
    np.testing.assert_allclose(ours.reshape(4, 4, 4, c), torch_view, rtol=1e-5)
    np.testing.assert_array_equal(reference.to_reference("dense_g1", reference.to_keras(
        "dense_g1", w)), w.astype(np.float32))
    np.testing.assert_array_equal(reference.to_reference("vector_g1", reference.to_keras(
        "vector_g1", b)), b.astype(np.float32))


def test_conv_kernel_layout_is_torch_cross_correlation():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 2, 2, 3, 4)).astype("float32")  # [out, in, kd, kh, kw]
    x = rng.standard_normal((2, 4, 5, 6)).astype("float32")     # [in, d, h, w]
    out = np.zeros((3, 3, 3, 3))
    for d in range(3):
        for h in range(3):
            for v in range(3):
                out[:, d, h, v] = np.einsum("oijkl,ijkl->o", w, x[:, d:d + 2, h:h + 3, v:v + 4])
    ours = tf.nn.conv3d(x.transpose(1, 2, 3, 0)[None], reference.to_keras("conv", w),
                        (1, 1, 1, 1, 1), "VALID")[0].numpy()
    np.testing.assert_allclose(ours, out.transpose(1, 2, 3, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(reference.to_reference("conv", reference.to_keras("conv", w)), w)


def _reference_state(model, file):
    return {t.key: reference.to_reference(t.kind, t.variable.numpy())
            for t in reference.layout(model)[file]}


def test_check_state_names_tensor_and_flag(crfgan64, hagan128):
    d64 = _reference_state(crfgan64, "D")
    lay = reference.layout(crfgan64)
    reference.check_state("D", d64, lay["D"], "crfgan", 64, 1024)  # fits
    # a 64^3 D read as 128^3: conv2 is missing, every conv shape is off by one layer
    with pytest.raises(reference.ReferenceMismatch,
                       match=r"missing tensors \['conv2.*`img_size=128`"):
        reference.check_state("D", d64, reference.layout(hagan128)["D"], "crfgan", 128, 1024)
    with pytest.raises(reference.ReferenceMismatch, match="conditional.*3 classes"):
        reference.check_state("D", dict(d64, **{"fc2_class.weight": np.zeros((3, 64))}),
                              lay["D"], "crfgan", 64, 1024)
    g = _reference_state(hagan128, "G")
    with pytest.raises(reference.ReferenceMismatch, match="`latent_dim=1024`"):
        reference.check_state("G", g, lay["G"], "crfgan", 64, 512)
    with pytest.raises(reference.ReferenceMismatch, match="`model=hagan`"):
        reference.check_state("G", g, lay["G"], "crfgan", 64, 1024)
    conv = dict(d64, **{"conv3.weight": np.zeros((64, 2, 4, 4, 4))})
    shapes = r"conv3.weight has shape \(64, 2, 4, 4, 4\).*needs \(64, 1, 4, 4, 4\)"
    with pytest.raises(reference.ReferenceMismatch, match=shapes):
        reference.check_state("D", conv, lay["D"], "crfgan", 64, 1024)


def test_import_names_missing_files_and_present_iterations(tmp_path):
    for f in ("G", "D", "E", "crf"):
        (tmp_path / f"{f}_iter500.pth").write_bytes(b"")
    (tmp_path / "G_iter1000.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError,
                       match=r"D_iter1000.pth.*iterations with every file.*\[500\]"):
        reference.import_checkpoint("crfgan", str(tmp_path), 1000, 64, str(tmp_path / "run"),
                                    log=lambda m: None)
    with pytest.raises(FileNotFoundError, match="Sub_E_iter500.pth"):
        reference.import_checkpoint("hagan", str(tmp_path), 500, 128, str(tmp_path / "run"),
                                    log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_import_refuses_sizes_the_references_do_not_define(tmp_path):
    """512^3 networks are this implementation's own: there is nothing to import."""
    for f in ("G", "D", "E", "crf"):
        (tmp_path / f"{f}_iter5.pth").write_bytes(b"")
    with pytest.raises(ValueError, match=r"`img_size` must be one of \(64, 128, 256\)"):
        reference.import_checkpoint("crfgan", str(tmp_path), 5, 512, str(tmp_path / "run"),
                                    log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_import_never_replaces_an_existing_directory_without_overwrite(tmp_path):
    # a --model_dir that exists with anything in it (not only checkpoints) is refused before
    # any file is read, and left as it was
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for f in ("G", "D", "E", "crf"):
        (ckpts / f"{f}_iter5.pth").write_bytes(b"")
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="`overwrite`"):
        reference.import_checkpoint("crfgan", str(ckpts), 5, 64, str(target),
                                    log=lambda m: None)
    assert (target / "notes.txt").read_text() == "keep me"
