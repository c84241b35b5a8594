"""CRF-GAN: the paper's four training phases on SubVolumeGAN's networks and a CRF."""

from __future__ import annotations

import tensorflow as tf

from crfgan_tf.core import geometry
from crfgan_tf.models import losses
from crfgan_tf.models.base import SubVolumeGAN
from crfgan_tf.networks import SliceCRF
from crfgan_tf.networks.encoder import encode_by_slabs
from crfgan_tf.models.options import CRF_SAMPLES


class CRFGAN(SubVolumeGAN):
    """CRF-GAN (trunk G1, head G2, discriminator D, half-encoder hE, CRF).

    One `train_step` runs the paper's four phases in order, each differentiating an
    explicit list of weights and applying its own optimizer:

    1. D:   BCE(D(x_crop, r), 1) + BCE(D(G2(G1(z_d)[r/4 : r/4 + S/32]), r), 0)
    2. G:   y = w * CRF(G1(z_g), D(fake)) + (1 - w) * D(fake); BCE(y, 1) -> G1, G2
    3. CRF: BCE(CRF(G1(z_c), D(fake_c)), 0) + BCE(CRF(hE(x), D(x_crop)), 1) -> W
    4. hE:  L1(G2(hE(x_crop)), x_crop) -> hE

    As in the reference, D is called once per sub-volume batch (phase 1: real, then fake;
    phase 3: fake, then real), each call advancing its spectral-norm u, and phase 3 draws
    a fresh z_c. With crf_sample="reuse" phase 3 instead takes phase 2's embedding and D
    logit (z_g; stopped gradients): one G and one D forward less, a different estimate.

    Args (besides SubVolumeGAN's):
      crf_iterations, crf_nodes: see SliceCRF.
      crf_weight_start, crf_weight_decay_steps: the schedule of w.
      crf_sample: "fresh" (the reference) or "reuse".
      encoder_slab: 0: phase 3 encodes the whole real volume in one pass (the
        reference); N > 0: N embedding slices at a time (encode_by_slabs: the same
        embedding up to float rounding, in memory bounded by the slab, for two more
        passes of hE's first convolution and one more of its second).
    """

    MODEL = "crfgan"
    PHASES = ("d", "g", "crf", "rec")
    LEARNING_RATES = {"d": "lr_d", "g": "lr_g", "crf": "lr_crf", "rec": "lr_e"}
    LOSS_PHASE = {"d_loss": "discriminator (phase 1)", "g_loss": "generator (phase 2)",
                  "crf_loss": "CRF (phase 3)", "rec_loss": "reconstruction (phase 4)"}

    def __init__(self, img_size=256, latent_dim=1024, width=1.0, crf_iterations=10,
                 crf_nodes="slices", crf_weight_start=0.5, crf_weight_decay_steps=60000,
                 global_batch_size=2, crf_sample="fresh", num_classes=0, lambda_class=0.1,
                 encoder_slab=0, **kwargs):
        super().__init__(img_size, latent_dim, width, global_batch_size,
                         num_classes=num_classes, lambda_class=lambda_class, **kwargs)
        if crf_sample not in CRF_SAMPLES:
            raise ValueError(f"crf_sample must be one of {CRF_SAMPLES}, got {crf_sample!r}")
        if encoder_slab < 0:
            raise ValueError(f"encoder_slab must be >= 0, got {encoder_slab}")
        self.crf_sample = crf_sample
        self.encoder_slab = encoder_slab
        self.crf_iterations = crf_iterations
        self.crf_nodes = crf_nodes
        self.crf_weight_start = crf_weight_start
        self.crf_weight_decay_steps = crf_weight_decay_steps
        self.crf = SliceCRF(geometry.embedding_side(img_size, self.embedding_factor),
                            crf_iterations, crf_nodes, name="crf")
        self.crf.build()

    def modules(self) -> dict:
        return dict(super().modules(), crf=self.crf)

    def generator_weights(self):
        return self.trunk.trainable_weights + self.head.trainable_weights

    def phase_weights(self) -> dict:
        return {"d": self.discriminator.trainable_weights, "g": self.generator_weights(),
                "crf": self.crf.trainable_weights, "rec": self.rec_weights()}

    def crf_weight(self):
        return losses.crf_weight(self.step_counter, self.crf_weight_start,
                                 self.crf_weight_decay_steps)

    # ---- the four phases -----------------------------------------------------------------
    def d_step(self, crop, position, z_d, label=None, fake_label=None):
        """Phase 1: update D on a real and a generated sub-volume at the same position."""
        pos = self.normalized_position(position)
        fake = self.head(self.slab(self.embed(z_d, fake_label, training=True), position),
                         training=True)
        fake = tf.stop_gradient(tf.cast(fake, crop.dtype))
        return self._discriminator_update(
            lambda real: self.split_logits(self.discriminator([self.d_view(real, 1), pos],
                                                              training=True)),
            lambda: self.split_logits(self.discriminator([self.d_view(fake, 2), pos],
                                                         training=True)), label, (crop,))

    def g_step(self, position, z_g, fake_label=None):
        """Phase 2: update G1 and G2 through D and the CRF (and D's class head: + lambda
        x the cross-entropy of the generated crop's class, when conditional)."""
        pos = self.normalized_position(position)
        weight = self.crf_weight()
        out = {}
        with tf.GradientTape() as tape:
            embedding = self.train_call(self.trunk, self.trunk_input(z_g, fake_label))
            fake = self.train_call(self.head, self.slab(embedding, position))
            fake_logits, fake_class = self.split_logits(
                self.discriminator([self.d_view(fake, 3), pos], training=True))
            crf_logits = self.crf(embedding, fake_logits)
            loss = losses.generator_loss(fake_logits, crf_logits, weight, self.global_batch_size)
            if self.num_classes:
                out["g_class_loss"] = self.class_loss(fake_class, fake_label)
                loss += self.lambda_class * out["g_class_loss"]
            scaled = self._scale("g", loss)
        self._minimize("g", tape, scaled)
        out.update({"g_loss": loss, "crf_weight": weight,
                    "fake_embedding": tf.stop_gradient(embedding),
                    "fake_logits": tf.stop_gradient(fake_logits)})
        return out

    def fake_for_crf(self, position, z_c, fake_label=None):
        """Phase 3's fake side (no gradients): G1's embedding of z_c (and fake_label) and
        D's logit of the generated sub-volume at `position`."""
        pos = self.normalized_position(position)
        embedding = self.embed(z_c, fake_label, training=True)
        fake = self.head(self.slab(embedding, position), training=True)
        logits, _ = self.split_logits(self.discriminator([self.d_view(fake, 4), pos],
                                                         training=True))
        return tf.stop_gradient(embedding), tf.stop_gradient(logits)

    def encode_volume(self, volume):
        """hE's embedding of whole real volumes (as stored: int16 or float), converted to
        the compute dtype only here (phase 3 is their one reader), slab by slab with
        encoder_slab."""
        if self.encoder_slab:
            return encode_by_slabs(self.encoder, volume, self.encoder_slab, self.real_volume)
        return self.encoder(self.real_volume(volume), training=True)

    def crf_step(self, volume, crop, position, fake_embedding, fake_logits):
        """Phase 3: update W to tell hE(x) embeddings from G1(z) embeddings.

        volume: the whole real volumes as stored (encode_volume).
        fake_embedding, fake_logits: from fake_for_crf (fresh) or phase 2 (reuse)."""
        pos = self.normalized_position(position)
        real_embedding = tf.stop_gradient(self.encode_volume(volume))
        real_logits = tf.stop_gradient(
            self.split_logits(self.discriminator([self.d_view(crop, 5), pos], training=True))[0])
        with tf.GradientTape() as tape:
            loss = losses.crf_loss(self.crf(fake_embedding, fake_logits),
                                   self.crf(real_embedding, real_logits), self.global_batch_size)
            scaled = self._scale("crf", loss)
        self._minimize("crf", tape, scaled)
        return {"crf_loss": loss}

    def train_step(self, data):
        """One iteration of all four phases.

        Args:
          data: dict with `volume` (batch, S, S, S, 1) float, or int16 as stored
            (real_volume), `crop` (batch, S/8, S, S, 1),
            `position` (batch,) int32 crop start r (a multiple of 4), `z_d`, `z_g` and
            `z_c` (batch, latent_dim; z_c is used with crf_sample="fresh"); when
          conditional also `label` and `fake_label` (batch,) int32 (fake_label conditions
          z_d, z_g and z_c alike).

        Returns:
          dict of this replica's float32 scalars: d_loss, g_loss, crf_loss, rec_loss,
          d_real and d_fake (mean D probabilities) as per-replica shares of global-batch
          means (sum them over replicas), and crf_weight (the same on every replica;
          listed in REPLICA_INVARIANT).
        """
        self.start_step()
        crop = tf.cast(data["crop"], self.compute_dtype)
        position = data["position"]
        label, fake_label = data.get("label"), data.get("fake_label")
        out = self.d_step(crop, position, data["z_d"], label, fake_label)
        with self.phase_in_order():
            g = self.g_step(position, data["z_g"], fake_label)
        fake = (g.pop("fake_embedding"), g.pop("fake_logits"))
        with self.phase_in_order():
            if self.crf_sample == "fresh":
                fake = self.fake_for_crf(position, data["z_c"], fake_label)
            out.update(self.crf_step(data["volume"], crop, position, *fake))
        out.update(g)
        with self.phase_in_order():
            out.update(self.rec_step(crop))
        self.step_counter.assign_add(1)
        return out

    def get_config(self):
        return dict(img_size=self.img_size, latent_dim=self.latent_dim, width=self.width,
                    crf_iterations=self.crf_iterations, crf_nodes=self.crf_nodes,
                    crf_weight_start=self.crf_weight_start,
                    crf_weight_decay_steps=self.crf_weight_decay_steps,
                    global_batch_size=self.global_batch_size, crf_sample=self.crf_sample,
                    num_classes=self.num_classes, lambda_class=self.lambda_class,
                    encoder_slab=self.encoder_slab, **self.training_config())
