"""CRFGAN: the keras.Model that owns the networks and the four-phase `train_step`."""

from __future__ import annotations

import keras
import tensorflow as tf

from crfgan_tf import losses
from crfgan_tf.networks import (SliceCRF, build_discriminator, build_encoder, build_head,
                                build_trunk)

PHASES = ("d", "g", "crf", "rec")
REPLICA_INVARIANT = ("crf_weight",)  # reduce with MEAN, not SUM, across replicas
LOSS_PHASE = {"d_loss": "discriminator (phase 1)", "g_loss": "generator (phase 2)",
              "crf_loss": "CRF (phase 3)", "rec_loss": "reconstruction (phase 4)"}


class CRFGAN(keras.Model):
    """CRF-GAN (trunk G1, head G2, discriminator D, half-encoder hE, CRF).

    One `train_step` runs the paper's four phases in order, each differentiating an
    explicit list of weights and applying its own optimizer:

    1. D:   BCE(D(x_crop, r), 1) + BCE(D(G2(G1(z_d)[r/4 : r/4 + S/32]), r), 0)
    2. G:   y = w * CRF(G1(z_g), D(fake)) + (1 - w) * D(fake); BCE(y, 1) -> G1, G2
    3. CRF: BCE(CRF(G1(z_g), D(fake)), 0) + BCE(CRF(hE(x), D(x_crop)), 1) -> W
    4. hE:  L1(G2(hE(x_crop)), x_crop) -> hE

    Phase 3 reuses phase 2's fake embedding and fake logit (the same z_g; stopped
    gradients) rather than recomputing G1 and D on it.

    Args:
      img_size: S (64, 128, 256).
      latent_dim: size of z.
      width: channel multiplier (1.0 = the reference).
      crf_iterations, crf_nodes: see SliceCRF.
      crf_weight_start, crf_weight_decay_steps: the schedule of w.
      global_batch_size: batch over all replicas (the losses divide by it).
    """

    def __init__(self, img_size=256, latent_dim=1024, width=1.0, crf_iterations=10,
                 crf_nodes="slices", crf_weight_start=0.5, crf_weight_decay_steps=60000,
                 global_batch_size=2, **kwargs):
        super().__init__(**kwargs)
        self.img_size = img_size
        self.latent_dim = latent_dim
        self.width = width
        self.crf_iterations = crf_iterations
        self.crf_nodes = crf_nodes
        self.crf_weight_start = crf_weight_start
        self.crf_weight_decay_steps = crf_weight_decay_steps
        self.global_batch_size = global_batch_size
        self.trunk = build_trunk(img_size, latent_dim, width)
        self.head = build_head(img_size, width)
        self.discriminator = build_discriminator(img_size, width)
        self.encoder = build_encoder(img_size, width)
        self.crf = SliceCRF(img_size // 4, crf_iterations, crf_nodes, name="crf")
        self.crf.build()
        self.step_counter = self.add_weight(name="step", shape=(), dtype="int64",
                                            initializer="zeros", trainable=False,
                                            aggregation="only_first_replica")

    # ---- networks and shapes ---------------------------------------------------------
    @property
    def slab_depth(self) -> int:
        """Embedding slices per training sub-volume: S/32."""
        return self.img_size // 32

    @property
    def crop_depth(self) -> int:
        """Axial slices per training sub-volume: S/8."""
        return self.img_size // 8

    def modules(self) -> dict:
        """name -> network, in the order of the reference's parameter table."""
        return {"generator_trunk": self.trunk, "generator_head": self.head,
                "discriminator": self.discriminator, "encoder": self.encoder, "crf": self.crf}

    def generator_weights(self):
        return self.trunk.trainable_weights + self.head.trainable_weights

    def slab(self, embedding, position):
        """Per-example embedding slab [r/4, r/4 + S/32) along depth; r = position (batch,)."""
        start = tf.cast(position, tf.int32) // 4
        idx = start[:, None] + tf.range(self.slab_depth)[None, :]
        return tf.gather(embedding, idx, axis=1, batch_dims=1)

    def normalized_position(self, position):
        """r / (7S/8) as the (batch, 1) float32 input of D."""
        return tf.cast(position, tf.float32)[:, None] / (7.0 * self.img_size / 8.0)

    def generate(self, z, training=False):
        """Whole volumes: G2 on the whole G1 embedding -> (batch, S, S, S, 1)."""
        return self.head(self.trunk(z, training=training), training=training)

    def crf_weight(self):
        return losses.crf_weight(self.step_counter, self.crf_weight_start,
                                 self.crf_weight_decay_steps)

    def call(self, z, training=False):
        return self.generate(z, training=training)

    # ---- optimizers --------------------------------------------------------------------
    def compile(self, d_optimizer, g_optimizer, crf_optimizer, e_optimizer, **kwargs):
        """Takes one optimizer per phase (wrap each in LossScaleOptimizer for float16)."""
        super().compile(**kwargs)
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.crf_optimizer = crf_optimizer
        self.e_optimizer = e_optimizer

    def phase_weights(self) -> dict:
        """Phase -> the trainable weights it updates."""
        return {"d": self.discriminator.trainable_weights, "g": self.generator_weights(),
                "crf": self.crf.trainable_weights, "rec": self.encoder.trainable_weights}

    def phase_optimizers(self) -> dict:
        return {"d": self.d_optimizer, "g": self.g_optimizer, "crf": self.crf_optimizer,
                "rec": self.e_optimizer}

    def build_optimizers(self):
        """Creates every optimizer slot now (checkpoints restore into them)."""
        for phase, opt in self.phase_optimizers().items():
            opt.build(self.phase_weights()[phase])

    @staticmethod
    def _minimize(optimizer, tape, scaled_loss, variables):
        """Applies the gradients of a loss scaled inside `tape` by `optimizer.scale_loss`
        (LossScaleOptimizer multiplies by its scale, any other optimizer returns the loss
        unchanged); LossScaleOptimizer.apply unscales and skips non-finite steps."""
        optimizer.apply(tape.gradient(scaled_loss, variables), variables)

    # ---- the four phases -----------------------------------------------------------------
    def d_step(self, crop, position, z_d):
        """Phase 1: update D on a real and a generated sub-volume at the same position."""
        pos = self.normalized_position(position)
        fake = self.head(self.slab(self.trunk(z_d, training=True), position), training=True)
        fake = tf.stop_gradient(tf.cast(fake, crop.dtype))
        with tf.GradientTape() as tape:
            # One D call on real and fake together: the same per-example logits as two calls.
            logits = self.discriminator([tf.concat([crop, fake], 0), tf.concat([pos, pos], 0)],
                                        training=True)
            real_logits, fake_logits = tf.split(logits, 2, axis=0)
            loss = losses.discriminator_loss(real_logits, fake_logits, self.global_batch_size)
            scaled = self.d_optimizer.scale_loss(loss)
        self._minimize(self.d_optimizer, tape, scaled, self.discriminator.trainable_weights)
        share = lambda t: losses.per_replica_mean(tf.sigmoid(t), self.global_batch_size)
        return {"d_loss": loss, "d_real": share(real_logits), "d_fake": share(fake_logits)}

    def g_step(self, position, z_g):
        """Phase 2: update G1 and G2 through D and the CRF."""
        pos = self.normalized_position(position)
        variables = self.generator_weights()
        weight = self.crf_weight()
        with tf.GradientTape() as tape:
            embedding = self.trunk(z_g, training=True)
            fake = self.head(self.slab(embedding, position), training=True)
            fake_logits = self.discriminator([fake, pos], training=True)
            crf_logits = self.crf(embedding, fake_logits)
            loss = losses.generator_loss(fake_logits, crf_logits, weight, self.global_batch_size)
            scaled = self.g_optimizer.scale_loss(loss)
        self._minimize(self.g_optimizer, tape, scaled, variables)
        return {"g_loss": loss, "crf_weight": weight,
                "fake_embedding": tf.stop_gradient(embedding),
                "fake_logits": tf.stop_gradient(fake_logits)}

    def crf_step(self, volume, crop, position, fake_embedding, fake_logits):
        """Phase 3: update W to tell hE(x) embeddings from G1(z) embeddings."""
        pos = self.normalized_position(position)
        real_embedding = tf.stop_gradient(self.encoder(volume, training=True))
        real_logits = tf.stop_gradient(self.discriminator([crop, pos], training=True))
        with tf.GradientTape() as tape:
            loss = losses.crf_loss(self.crf(fake_embedding, fake_logits),
                                   self.crf(real_embedding, real_logits), self.global_batch_size)
            scaled = self.crf_optimizer.scale_loss(loss)
        self._minimize(self.crf_optimizer, tape, scaled, self.crf.trainable_weights)
        return {"crf_loss": loss}

    def rec_step(self, crop):
        """Phase 4: update hE so that G2(hE(x_crop)) reconstructs x_crop."""
        with tf.GradientTape() as tape:
            rec = self.head(self.encoder(crop, training=True), training=True)
            loss = losses.reconstruction_loss(rec, crop, self.global_batch_size)
            scaled = self.e_optimizer.scale_loss(loss)
        self._minimize(self.e_optimizer, tape, scaled, self.encoder.trainable_weights)
        return {"rec_loss": loss}

    def train_step(self, data):
        """One iteration of all four phases.

        Args:
          data: dict with `volume` (batch, S, S, S, 1), `crop` (batch, S/8, S, S, 1),
            `position` (batch,) int32 crop start r (a multiple of 4), `z_d` and `z_g`
            (batch, latent_dim).

        Returns:
          dict of this replica's float32 scalars: d_loss, g_loss, crf_loss, rec_loss,
          d_real and d_fake (mean D probabilities) as per-replica shares of global-batch
          means (sum them over replicas), and crf_weight (the same on every replica;
          listed in REPLICA_INVARIANT).
        """
        volume = tf.cast(data["volume"], self.compute_dtype)
        crop = tf.cast(data["crop"], self.compute_dtype)
        position = data["position"]
        out = self.d_step(crop, position, data["z_d"])
        g = self.g_step(position, data["z_g"])
        out.update(self.crf_step(volume, crop, position, g.pop("fake_embedding"),
                                 g.pop("fake_logits")))
        out.update(g)
        out.update(self.rec_step(crop))
        self.step_counter.assign_add(1)
        return out

    def get_config(self):
        return dict(img_size=self.img_size, latent_dim=self.latent_dim, width=self.width,
                    crf_iterations=self.crf_iterations, crf_nodes=self.crf_nodes,
                    crf_weight_start=self.crf_weight_start,
                    crf_weight_decay_steps=self.crf_weight_decay_steps,
                    global_batch_size=self.global_batch_size)
