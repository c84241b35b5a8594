"""A PyTorch transcription of the reference networks and of one reference training iteration,
written for these tests from the published architecture and training loop (REFERENCE.md),
with the reference's module and tensor names so that its state_dicts have the reference's
checkpoint format. Only the tests that need PyTorch import this module.

Networks: CRF-GAN (64/128/256) and HA-GAN (128/256), unconditional, latent 1024, the
reference's widths. Crop positions are per example (a (batch,) tensor) so that a batch
with equal positions is the reference's single crop_idx.
"""

import torch
import torch.nn.functional as F
from torch import nn


class _SpectralNorm:
    """BigGAN-style SN: buffer u0 (1, out), one power step per training forward."""

    def _init_sn(self, out):
        self.register_buffer("u0", torch.randn(1, out))
        self.register_buffer("sv0", torch.ones(1))

    def normalized_weight(self):
        w = self.weight.view(self.weight.shape[0], -1)
        with torch.no_grad():
            v = F.normalize(self.u0 @ w, eps=1e-12)
            u = F.normalize(v @ w.t(), eps=1e-12)
            if self.training:
                self.u0[:] = u
        sigma = (v @ w.t() @ u.t()).squeeze()
        if self.training:
            with torch.no_grad():
                self.sv0[:] = sigma
        return self.weight / sigma


class SNConv3d(nn.Conv3d, _SpectralNorm):
    def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
        nn.Conv3d.__init__(self, cin, cout, kernel_size, stride, padding)
        self._init_sn(cout)

    def forward(self, x):
        return F.conv3d(x, self.normalized_weight(), self.bias, self.stride, self.padding)


class SNLinear(nn.Linear, _SpectralNorm):
    def __init__(self, cin, cout):
        nn.Linear.__init__(self, cin, cout)
        self._init_sn(cout)

    def forward(self, x):
        return F.linear(x, self.normalized_weight(), self.bias)


def _up(x):
    return F.interpolate(x, scale_factor=2)


class SubGenerator(nn.Module):  # HA-GAN's G^L
    def __init__(self):
        super().__init__()
        self.tp_conv1 = nn.Conv3d(64, 32, 3, 1, 1)
        self.bn1 = nn.GroupNorm(8, 32)
        self.tp_conv2 = nn.Conv3d(32, 16, 3, 1, 1)
        self.bn2 = nn.GroupNorm(8, 16)
        self.tp_conv3 = nn.Conv3d(16, 1, 3, 1, 1)

    def forward(self, h):
        h = F.relu(self.bn1(self.tp_conv1(h)))
        h = F.relu(self.bn2(self.tp_conv2(h)))
        return torch.tanh(self.tp_conv3(h))


class Generator(nn.Module):
    def __init__(self, img_size, hagan=False, latent_dim=1024):
        super().__init__()
        self.img_size = img_size
        self.num_up = {64: 2, 128: 3, 256: 4}[img_size]
        self.fc1 = nn.Linear(latent_dim, 4 * 4 * 4 * 512)
        chans = [512, 512, 512, 256, 128, 64]
        for i in range(5):
            setattr(self, f"tp_conv{i + 1}", nn.Conv3d(chans[i], chans[i + 1], 3, 1, 1))
            setattr(self, f"bn{i + 1}", nn.GroupNorm(8, chans[i + 1]))
        self.tp_conv6 = nn.Conv3d(64, 32, 3, 1, 1)
        self.bn6 = nn.GroupNorm(8, 32)
        self.tp_conv7 = nn.Conv3d(32, 1, 3, 1, 1)
        if hagan:
            self.sub_G = SubGenerator()

    def trunk(self, z):
        h = self.fc1(z).view(-1, 512, 4, 4, 4)
        for i in range(5):
            if 1 <= i <= self.num_up:
                h = _up(h)
            h = F.relu(getattr(self, f"bn{i + 1}")(getattr(self, f"tp_conv{i + 1}")(h)))
        return h

    def head(self, h):
        h = F.relu(self.bn6(self.tp_conv6(_up(h))))
        return torch.tanh(self.tp_conv7(_up(h)))

    def slab(self, h, positions):
        d = self.img_size // 32
        return torch.stack([h[i, :, int(p) // 4:int(p) // 4 + d] for i, p in enumerate(positions)])

    def forward(self, z):  # eval mode: the whole volume
        return self.head(self.trunk(z))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv3d(1, 32, 4, 2, 1)
        self.bn1 = nn.GroupNorm(8, 32)
        self.conv2 = nn.Conv3d(32, 32, 3, 1, 1)
        self.bn2 = nn.GroupNorm(8, 32)
        self.conv3 = nn.Conv3d(32, 64, 4, 2, 1)
        self.bn3 = nn.GroupNorm(8, 64)

    def forward(self, x):
        for i in range(1, 4):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return x


class CRF(nn.Module):
    """The reference CRF: nodes are channel groups ((C, D, H, W) flattened as is)."""

    def __init__(self, num_nodes, iterations=10):
        super().__init__()
        self.num_nodes, self.iterations = num_nodes, iterations
        self.W = nn.Parameter(torch.zeros(1, num_nodes, num_nodes))

    def forward(self, embedding, logits):
        b = embedding.shape[0]
        feats = embedding[:, :, :self.num_nodes].reshape(b, self.num_nodes, -1)
        logits = logits.unsqueeze(1).expand(-1, self.num_nodes, -1)
        norms = feats.norm(dim=2, keepdim=True)
        sim = (feats @ feats.transpose(1, 2)) / (norms @ norms.transpose(1, 2) + 1e-6)
        psi = sim * (self.W + self.W.transpose(1, 2)) / 2.0
        unary = logits.clone()
        for _ in range(self.iterations):
            p = logits.sigmoid().transpose(1, 2)
            logits = unary + (p * psi - (1 - p) * psi).sum(dim=2, keepdim=True)
        return logits.mean(dim=1)


_D_LAYERS = [(1, 16, 4, 2, 1), (16, 32, 4, 2, 1), (32, 64, 4, 2, 1),
             (64, 128, (2, 4, 4), 2, (0, 1, 1)), (128, 256, (2, 4, 4), 2, (0, 1, 1)),
             (256, 512, (1, 4, 4), (1, 2, 2), (0, 1, 1)), (512, 128, (1, 4, 4), 1, 0)]


class SubDiscriminator(nn.Module):  # HA-GAN's D^L
    def __init__(self, img_size):
        super().__init__()
        self.first = {256: 1, 128: 2}[img_size]
        chans = [1, 32, 64, 128, 256]
        for k in range(self.first, 5):
            cin = 1 if k == self.first else chans[k - 1]
            setattr(self, f"conv{k}", SNConv3d(cin, chans[k], 4, 2, 1))
        self.conv5 = SNConv3d(256, 1, 4, 1, 0)

    def forward(self, h):
        for k in range(self.first, 5):
            h = F.leaky_relu(getattr(self, f"conv{k}")(h), 0.2)
        return self.conv5(h).view(-1, 1)


class Discriminator(nn.Module):
    def __init__(self, img_size, hagan=False):
        super().__init__()
        self.img_size = img_size
        self.first = {256: 1, 128: 2, 64: 3}[img_size]
        for k in range(self.first, 8):
            cin, cout, ks, st, pad = _D_LAYERS[k - 1]
            setattr(self, f"conv{k}", SNConv3d(1 if k == self.first else cin, cout, ks, st, pad))
        self.fc1 = SNLinear(129, 64)
        self.fc2 = SNLinear(64, 1)
        if hagan:
            self.sub_D = SubDiscriminator(img_size)

    def forward(self, h, positions, h_small=None):
        for k in range(self.first, 8):
            h = F.leaky_relu(getattr(self, f"conv{k}")(h), 0.2)
        pos = positions.float().view(-1, 1) / (7 * self.img_size / 8)
        h = F.leaky_relu(self.fc1(torch.cat([h.flatten(1), pos], 1)), 0.2)
        logit = self.fc2(h)
        if h_small is None:
            return logit
        return (logit + self.sub_D(h_small)) / 2.0


class SubEncoder(nn.Module):
    def __init__(self, img_size, latent_dim=1024):
        super().__init__()
        self.first = {256: 1, 128: 2}[img_size]
        outs = [None, 32, 64, 128, 256]  # at 128^3 conv2 takes the 64-channel embedding
        for k in range(self.first, 5):
            cin = 64 if k == self.first else outs[k - 1]
            setattr(self, f"conv{k}", nn.Conv3d(cin, outs[k], 4, 2, 1))
            setattr(self, f"bn{k}", nn.GroupNorm(8, outs[k]))
        self.conv5 = nn.Conv3d(256, latent_dim, 4, 1, 0)

    def forward(self, h):
        for k in range(self.first, 5):
            h = F.relu(getattr(self, f"bn{k}")(getattr(self, f"conv{k}")(h)))
        return self.conv5(h).flatten(1)


def build(model, img_size, seed=0):
    """{file prefix: network} as the reference's checkpoint files hold them."""
    torch.manual_seed(seed)
    hagan = model == "hagan"
    nets = {"G": Generator(img_size, hagan), "D": Discriminator(img_size, hagan), "E": Encoder()}
    if hagan:
        nets["Sub_E"] = SubEncoder(img_size)
    else:
        nets["crf"] = CRF(img_size // 4)
    return nets


def optimizers(nets, lr):
    """The reference's Adam per network; lr: {file prefix: learning rate}."""
    return {k: torch.optim.Adam(n.parameters(), lr=lr[k], betas=(0.0, 0.999), eps=1e-8)
            for k, n in nets.items()}


def _step(opt, loss):
    opt.zero_grad()
    loss.backward()
    opt.step()


def _snapshot(nets, into):
    if into is not None:
        into.update({f: {k: v.detach().numpy().copy() for k, v in n.state_dict().items()}
                     for f, n in nets.items()})


def crfgan_iteration(nets, opts, volume, positions, z_d, z_g, z_c, iteration,
                     crf_weight_start=0.5, crf_weight_decay_steps=60000, before_crf=None):
    """The four phases of the reference's train.py (one g_iter), losses as floats;
    `before_crf` (a dict) receives every network's state as phase 3 starts."""
    G, D, E, crf = nets["G"], nets["D"], nets["E"], nets["crf"]
    bce, l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()
    crop = torch.stack([volume[i, :, int(p):int(p) + volume.shape[2] // 8]
                        for i, p in enumerate(positions)])
    ones, zeros = torch.ones(len(positions), 1), torch.zeros(len(positions), 1)
    with torch.no_grad():
        fake = G.head(G.slab(G.trunk(z_d), positions))
    d_loss = bce(D(crop, positions), ones) + bce(D(fake, positions), zeros)
    _step(opts["D"], d_loss)

    emb = G.trunk(z_g)
    logit = D(G.head(G.slab(emb, positions)), positions)
    w = max(crf_weight_start - crf_weight_start / crf_weight_decay_steps * iteration, 0)
    g_loss = bce(crf(emb, logit) * w + (1 - w) * logit, ones)
    _step(opts["G"], g_loss)
    opts["D"].zero_grad()

    _snapshot(nets, before_crf)
    with torch.no_grad():
        emb_c = G.trunk(z_c)
        fake_logit = D(G.head(G.slab(emb_c, positions)), positions)
        real_emb = E(volume)
        real_logit = D(crop, positions)
    crf_loss = bce(crf(emb_c, fake_logit), zeros) + bce(crf(real_emb, real_logit), ones)
    _step(opts["crf"], crf_loss)

    e_loss = l1(G.head(E(crop)), crop)
    _step(opts["E"], e_loss)
    opts["G"].zero_grad()
    return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), "crf_loss": crf_loss.item(),
            "rec_loss": e_loss.item()}


def hagan_iteration(nets, opts, volume, positions, z_d, z_g, before_sub_e=None):
    """The four phases of HA-GAN's train.py, losses as floats; `before_sub_e` (a dict)
    receives every network's state as phase 4 starts."""
    G, D, E, sub_e = nets["G"], nets["D"], nets["E"], nets["Sub_E"]
    bce, l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()
    s = volume.shape[2]
    crop = torch.stack([volume[i, :, int(p):int(p) + s // 8] for i, p in enumerate(positions)])
    small = F.interpolate(volume, scale_factor=0.25)
    ones, zeros = torch.ones(len(positions), 1), torch.zeros(len(positions), 1)
    with torch.no_grad():
        emb = G.trunk(z_d)
        fake, fake_small = G.head(G.slab(emb, positions)), G.sub_G(emb)
    d_loss = bce(D(crop, positions, small), ones) + bce(D(fake, positions, fake_small), zeros)
    _step(opts["D"], d_loss)

    emb = G.trunk(z_g)
    g_loss = bce(D(G.head(G.slab(emb, positions)), positions, G.sub_G(emb)), ones)
    _step(opts["G"], g_loss)
    opts["D"].zero_grad()

    e_loss = l1(G.head(E(crop)), crop)
    _step(opts["E"], e_loss)
    opts["G"].zero_grad()

    _snapshot(nets, before_sub_e)
    with torch.no_grad():
        z_hat = torch.cat([E(volume[:, :, i:i + s // 8]) for i in range(0, s, s // 8)], dim=2)
    emb = G.trunk(sub_e(z_hat))
    sub_loss = (l1(G.head(G.slab(emb, positions)), crop) + l1(G.sub_G(emb), small)) / 2.0
    _step(opts["Sub_E"], sub_loss)
    opts["G"].zero_grad()
    return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), "rec_loss": e_loss.item(),
            "sub_rec_loss": sub_loss.item()}


def save_reference_checkpoint(nets, opts, directory, iteration, data_parallel=False):
    """Writes {prefix}_iter{iteration}.pth as the reference does."""
    import os

    os.makedirs(directory, exist_ok=True)
    for prefix, net in nets.items():
        state = net.state_dict()
        if data_parallel:
            state = {f"module.{k}": v for k, v in state.items()}
        torch.save({"model": state, "optimizer": opts[prefix].state_dict() if opts else {}},
                   os.path.join(directory, f"{prefix}_iter{iteration}.pth"))
