"""MedicalNet ResNet-50 in Keras: shapes, parameter count, loading, and (where PyTorch is
installed: `pip install torch`) numeric equality with a PyTorch model of the same definition
fed through the converter, from a checkpoint in MedicalNet's format."""

import os
import subprocess
import sys

import numpy as np
import pytest

from crfgan_tf.evaluation import medicalnet
from conftest import REPO



@pytest.fixture(scope="module")
def resnet():
    return medicalnet.build_resnet50()


def _hand_count():
    """Learnable parameters of MedicalNet's resnet50 trunk, from its definition."""
    total, inplanes = 64 * 7 ** 3 + 2 * 64, 64
    for planes, blocks, stride, _ in medicalnet.STAGES:
        for b in range(blocks):
            total += inplanes * planes + planes * planes * 27 + planes * planes * 4
            total += 2 * (planes + planes + 4 * planes)
            if b == 0 and (stride != 1 or inplanes != planes * 4):
                total += inplanes * planes * 4 + 2 * planes * 4
            inplanes = planes * 4
    return total


def test_resnet50_shapes_and_parameter_count(resnet):
    stats = sum(int(np.prod(w.shape)) for w in resnet.non_trainable_weights)
    assert _hand_count() == 46_155_072
    assert resnet.count_params() - stats == 46_155_072
    assert stats == 53_120  # BN running mean and variance of 26,560 channels
    assert len(medicalnet.expected_state_keys(resnet)) == 53 + 53 * 4
    out = resnet(np.zeros((2, 16, 24, 32, 1), np.float32), training=False)
    assert out.shape == (2, 2048)
    layer4 = resnet.get_layer("layer4_2_conv3")
    assert layer4.output.shape[-1] == 2048 and layer4.dilation_rate == (1, 1, 1)
    assert resnet.get_layer("layer4_0_conv2").dilation_rate == (4, 4, 4)


def test_random_state_is_fixed_by_seed_and_loads(resnet):
    a, b = medicalnet.random_state(resnet, 0), medicalnet.random_state(resnet, 0)
    assert medicalnet.state_sha256(a) == medicalnet.state_sha256(b)
    assert medicalnet.state_sha256(a) != medicalnet.state_sha256(medicalnet.random_state(resnet, 1))
    medicalnet.set_weights(resnet, a)
    np.testing.assert_array_equal(resnet.get_layer("conv1").kernel.numpy(),
                                  a["conv1.weight"].transpose(2, 3, 4, 1, 0))
    assert resnet.get_layer("layer1_0_downsample_1").moving_variance.numpy()[0] == 1.0


def test_set_weights_names_missing_and_unexpected_keys(resnet, tmp_path):
    state = medicalnet.random_state(resnet, 0)
    del state["layer2.1.bn2.running_var"]
    state["fc.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"missing \['layer2.1.bn2.running_var'\].*fc.weight"):
        medicalnet.set_weights(resnet, state)
    state = medicalnet.random_state(resnet, 0)
    state["conv1.weight"] = state["conv1.weight"][:, :, :5]
    with pytest.raises(ValueError, match="conv1: weight shape"):
        medicalnet.set_weights(resnet, state)


def test_clean_state_dict_strips_dataparallel_prefix_counters_and_head():
    state = {"module.conv1.weight": np.ones((2, 1, 7, 7, 7)),
             "module.bn1.num_batches_tracked": np.array(3),
             "module.conv_seg.1.weight": np.ones(1)}
    clean = medicalnet.clean_state_dict(state)
    assert list(clean) == ["conv1.weight"] and clean["conv1.weight"].dtype == np.float32


def test_save_load_state_roundtrip_keeps_checksum(resnet, tmp_path):
    state = medicalnet.random_state(resnet, 3)
    path = str(tmp_path / "w.npz")
    medicalnet.save_state(state, path)
    assert medicalnet.state_sha256(medicalnet.load_state(path)) == medicalnet.state_sha256(state)


# ---- equivalence with PyTorch (optional dependency) ----------------------------------

def _torch_resnet50(torch):
    """MedicalNet's ResNet-50 (shortcut B) trunk + pooling, written from the paper's and
    MedicalNet's description, to check the converter against."""
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, inplanes, planes, stride, dilation, downsample):
            super().__init__()
            self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm3d(planes)
            self.conv2 = nn.Conv3d(planes, planes, 3, stride=stride, dilation=dilation,
                                   padding=dilation, bias=False)
            self.bn2 = nn.BatchNorm3d(planes)
            self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm3d(planes * 4)
            self.downsample = downsample

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = torch.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return torch.relu(out + (self.downsample(x) if self.downsample is not None else x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv3d(1, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm3d(64)
            self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
            inplanes = 64
            for i, (planes, blocks, stride, dilation) in enumerate(medicalnet.STAGES, 1):
                layers = []
                for b in range(blocks):
                    down = None
                    if b == 0 and (stride != 1 or inplanes != planes * 4):
                        down = nn.Sequential(nn.Conv3d(inplanes, planes * 4, 1, stride=stride,
                                                       bias=False), nn.BatchNorm3d(planes * 4))
                    layers.append(Bottleneck(inplanes, planes, stride if b == 0 else 1,
                                             dilation, down))
                    inplanes = planes * 4
                setattr(self, f"layer{i}", nn.Sequential(*layers))
            self.conv_seg = nn.Conv3d(2048, 2, 1)  # present in the checkpoint, dropped

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            for i in range(1, 5):
                x = getattr(self, f"layer{i}")(x)
            return x.mean(dim=(2, 3, 4))

    return ResNet()


def test_converted_checkpoint_gives_pytorch_features(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = _torch_resnet50(torch)
    with torch.no_grad():  # non-trivial BN statistics so that every tensor is exercised
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 2.0)
    net.eval()
    # MedicalNet's release format: {"state_dict": DataParallel keys}, BN counters included
    ckpt = str(tmp_path / "resnet_50.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    out = str(tmp_path / "medicalnet.npz")
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    res = subprocess.run([sys.executable, "-m", "tools.import_medicalnet", f"--checkpoint={ckpt}",
                          f"--output={out}"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert "sha256" in res.stdout

    x = np.random.default_rng(0).uniform(-1, 1, (2, 24, 32, 40)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x[:, None])).numpy()
    model = medicalnet.build_resnet50()
    medicalnet.set_weights(model, medicalnet.load_state(out))
    got = model(x[..., None], training=False).numpy()
    assert got.shape == (2, 2048)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
