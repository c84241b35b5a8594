"""HA-GAN (Sun et al. 2022), the paper's baseline, on SubVolumeGAN's networks."""

from __future__ import annotations

import tensorflow as tf

from crfgan_tf.core import geometry
from crfgan_tf.models import losses
from crfgan_tf.models.base import SubVolumeGAN
from crfgan_tf.models.options import LOW_RES_MODES
from crfgan_tf.networks.hagan import (build_low_discriminator, build_low_generator,
                                      build_sub_encoder)
from crfgan_tf.models import options


class HAGAN(SubVolumeGAN):
    """HA-GAN (Sun et al. 2022), the baseline of the paper, on the same trunk, head, D and
    hE: a low-resolution generator G^L on the whole embedding, a low-resolution
    discriminator D^L on the S/4 volume (D's logit is the mean of D^H's and D^L's), and a
    sub-encoder trained to reconstruct through G. Phases, in order:

    1. D:      BCE(D(x_crop, x_low), 1) + BCE(D(G2(slab), G^L(G1(z_d))), 0) -> D^H, D^L
    2. G:      BCE(D(G2(slab), G^L(G1(z_g))), 1) -> G1, G2, G^L
    3. hE:     L1(G2(hE(x_crop)), x_crop) -> hE
    4. sub-E:  z' = SubE(hE(x)); (L1(G2(G1(z')[slab]), x_crop) + L1(G^L(G1(z')), x_low)) / 2
               -> SubE

    As in HA-GAN's train.py: D is called on the real pair, then on the fake pair; the
    sub-encoder's input hE(x) is hE of the eight S/8 crops of x taken one at a time and
    concatenated along depth (hE's GroupNorm sees one crop, as in its own training); x_low
    is every 4th voxel of x (low_res="nearest", `F.interpolate(scale_factor=0.25)`) or,
    with low_res="average", the 4^3 average (anti-aliased).
    """

    MODEL = "hagan"
    PHASES = ("d", "g", "rec", "sub_rec")
    LEARNING_RATES = {"d": "lr_d", "g": "lr_g", "rec": "lr_e", "sub_rec": "lr_e"}
    LOSS_PHASE = {"d_loss": "discriminator (phase 1)", "g_loss": "generator (phase 2)",
                  "rec_loss": "reconstruction (phase 3)",
                  "sub_rec_loss": "sub-encoder reconstruction (phase 4)"}

    def __init__(self, img_size=256, latent_dim=1024, width=1.0, global_batch_size=2,
                 low_res="nearest", num_classes=0, lambda_class=0.1, **kwargs):
        if low_res not in LOW_RES_MODES:
            raise ValueError(f"low_res must be one of {LOW_RES_MODES}, got {low_res!r}")
        geometry.check_size(img_size, "hagan")
        super().__init__(img_size, latent_dim, width, global_batch_size,
                         num_classes=num_classes, lambda_class=lambda_class, **kwargs)
        self.low_res = low_res

    @classmethod
    def network_builders(cls, img_size, latent_dim, width, num_classes, embedding_factor,
                         d_width=0.0, d_minibatch_std=False, head_width=0.0):
        builders = super().network_builders(img_size, latent_dim, width, num_classes,
                                            embedding_factor, d_width, d_minibatch_std,
                                            head_width)
        builders.update({
            "low_generator": lambda: build_low_generator(img_size, width),
            "low_discriminator": lambda: build_low_discriminator(img_size, d_width or width,
                                                                 num_classes=num_classes),
            options.SUB_ENCODER_KEY: lambda: build_sub_encoder(img_size, latent_dim, width),
        })
        return builders

    def modules(self) -> dict:
        return {options.TRUNK_KEY: self.trunk, options.HEAD_KEY: self.head,
                "low_generator": self.low_generator, "discriminator": self.discriminator,
                "low_discriminator": self.low_discriminator, options.ENCODER_KEY: self.encoder,
                options.SUB_ENCODER_KEY: self.sub_encoder}

    def phase_weights(self) -> dict:
        return {"d": self.discriminator.trainable_weights
                + self.low_discriminator.trainable_weights,
                "g": self.trunk.trainable_weights + self.head.trainable_weights
                + self.low_generator.trainable_weights,
                "rec": self.rec_weights(),
                "sub_rec": self.sub_encoder.trainable_weights}

    def low_resolution(self, volume):
        """(batch, S, S, S, 1) -> (batch, S/4, S/4, S/4, 1) float32: every 4th voxel
        (nearest) or the 4^3 average (there is no float16 AvgPool3D kernel on CPU).
        `volume`: float in [-1, 1], or int16 as stored (real_volume; "nearest" then
        dequantises only the voxels it keeps, the same values)."""
        if self.low_res == "nearest":
            return self.real_volume(volume[:, ::4, ::4, ::4], tf.float32)
        return tf.nn.avg_pool3d(self.real_volume(volume, tf.float32), 4, 4, "VALID")

    def crop_embeddings(self, volume):
        """hE of the eight S/8 crops of `volume`, concatenated along depth: the whole
        (batch, S/4, S/4, S/4, C) embedding as HA-GAN's sub-encoder phase builds it."""
        d = self.crop_depth
        return tf.concat([self.encoder(volume[:, i:i + d], training=True)
                          for i in geometry.crop_starts(self.img_size)], axis=1)

    def joint_logits(self, crop, low, pos, site: int = 0):
        """D's (logits, class logits or None): the means of the high- and low-resolution
        discriminators' outputs (each input through d_view at `site`)."""
        high, high_class = self.split_logits(
            self.discriminator([self.d_view(crop, site), pos], training=True))
        low, low_class = self.split_logits(
            self.low_discriminator(self.d_view(low, site + 32), training=True))
        joint_class = 0.5 * (high_class + low_class) if self.num_classes else None
        return 0.5 * (high + low), joint_class

    def d_step(self, crop, low, position, z_d, label=None, fake_label=None):
        pos = self.normalized_position(position)
        embedding = self.embed(z_d, fake_label, training=True)
        fake = tf.stop_gradient(tf.cast(self.head(self.slab(embedding, position), training=True),
                                        crop.dtype))
        fake_low = tf.stop_gradient(tf.cast(self.low_generator(embedding, training=True),
                                            low.dtype))
        return self._discriminator_update(lambda c, l: self.joint_logits(c, l, pos, 1),
                                          lambda: self.joint_logits(fake, fake_low, pos, 2),
                                          label, (crop, low))

    def g_step(self, position, z_g, fake_label=None):
        pos = self.normalized_position(position)
        out = {}
        with tf.GradientTape() as tape:
            embedding = self.train_call(self.trunk, self.trunk_input(z_g, fake_label))
            fake = self.train_call(self.head, self.slab(embedding, position))
            logits, fake_class = self.joint_logits(
                fake, self.low_generator(embedding, training=True), pos, 3)
            loss = losses.per_replica_mean(losses.bce_with_logits(logits, 1.0),
                                           self.global_batch_size)
            if self.num_classes:
                out["g_class_loss"] = self.class_loss(fake_class, fake_label)
                loss += self.lambda_class * out["g_class_loss"]
            scaled = self._scale("g", loss)
        self._minimize("g", tape, scaled)
        out["g_loss"] = loss
        return out

    def sub_rec_step(self, volume, crop, low, position, label=None):
        """The sub-encoder phase; a conditional G1 gets the real volumes' labels with z'
        (as in HA-GAN's train.py)."""
        real_embedding = tf.stop_gradient(self.crop_embeddings(volume))
        with tf.GradientTape() as tape:
            embedding = self.train_call(self.trunk, self.trunk_input(
                self.train_call(self.sub_encoder, real_embedding), label))
            rec = self.train_call(self.head, self.slab(embedding, position))
            rec_low = self.low_generator(embedding, training=True)
            loss = 0.5 * (losses.reconstruction_loss(rec, crop, self.global_batch_size)
                          + losses.reconstruction_loss(rec_low, low, self.global_batch_size))
            scaled = self._scale("sub_rec", loss)
        self._minimize("sub_rec", tape, scaled)
        return {"sub_rec_loss": loss}

    def train_step(self, data):
        """One iteration of the four HA-GAN phases; `data` as for CRFGAN.train_step.

        Returns:
          d_loss, g_loss, rec_loss, sub_rec_loss, d_real, d_fake: per-replica shares of
          global-batch means (sum them over replicas).
        """
        self.start_step()
        crop = tf.cast(data["crop"], self.compute_dtype)
        low = tf.cast(self.low_resolution(data["volume"]), self.compute_dtype)
        position = data["position"]
        label, fake_label = data.get("label"), data.get("fake_label")
        out = self.d_step(crop, low, position, data["z_d"], label, fake_label)
        with self.phase_in_order():
            out.update(self.g_step(position, data["z_g"], fake_label))
        with self.phase_in_order():
            out.update(self.rec_step(crop))
        with self.phase_in_order():
            # the whole volume again (from the int16 batch) only now, for its one reader:
            # a float copy kept from the first phase would live through all four
            volume = self.real_volume(data["volume"])
            out.update(self.sub_rec_step(volume, crop, low, position, label))
        self.step_counter.assign_add(1)
        return out

    def get_config(self):
        return dict(img_size=self.img_size, latent_dim=self.latent_dim, width=self.width,
                    global_batch_size=self.global_batch_size, low_res=self.low_res,
                    num_classes=self.num_classes, lambda_class=self.lambda_class,
                    **self.training_config())
