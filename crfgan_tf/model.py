"""CRF-GAN and its HA-GAN baseline: keras.Models owning the networks and `train_step`."""

from __future__ import annotations

import keras
import tensorflow as tf

from crfgan_tf import augment as augment_lib
from crfgan_tf import losses
from crfgan_tf.config import CRF_SAMPLES, LOW_RES_MODES
from crfgan_tf.networks import (SliceCRF, build_discriminator, build_encoder, build_head,
                                build_trunk)
from crfgan_tf.networks.hagan import (build_low_discriminator, build_low_generator,
                                      build_sub_encoder)

REPLICA_INVARIANT = ("crf_weight",)  # reduce with MEAN, not SUM, across replicas


class SubVolumeGAN(keras.Model):
    """What CRF-GAN and HA-GAN share: trunk G1, head G2, sub-volume discriminator D,
    half-encoder hE, the per-phase optimizers and the hE reconstruction phase.

    Subclasses set PHASES (phase names, in train_step order), LEARNING_RATES (phase ->
    TrainConfig field) and LOSS_PHASE (loss name -> phase description), build their extra
    networks and implement train_step.

    Args:
      img_size: S (64, 128, 256).
      latent_dim: size of z.
      width: channel multiplier (1.0 = the reference).
      global_batch_size: batch over all replicas (the losses divide by it).
      num_classes: > 0 for the references' class-conditional mode (an auxiliary-classifier
        GAN): G1 takes z with the one-hot label, D has a class head, D's loss adds the
        cross-entropy of the real crop's class and G's adds lambda_class times that of the
        generated crop's class. train_step then needs `label` (the real volumes') and
        `fake_label` (the generated ones') in its data.
      lambda_class: weight of G's class loss (the references' --lambda-class, 0.1).
      augment: transforms of crfgan_tf.augment applied to every volume D sees (real and
        generated, in every phase); () = none (the paper's setting).
      augment_p: their probability per example (a checkpointed variable `augment_p`,
        which ADA adjusts from outside).
      augment_window: the intensity window of the volumes (HU for CT).
      seed: mixed into the augmentation's stateless randomness.
    """

    PHASES: tuple = ()
    LEARNING_RATES: dict = {}
    LOSS_PHASE: dict = {}

    def __init__(self, img_size=256, latent_dim=1024, width=1.0, global_batch_size=2,
                 num_classes=0, lambda_class=0.1, augment=(), augment_p=0.5,
                 augment_window=(-1024.0, 600.0), seed=0, **kwargs):
        super().__init__(**kwargs)
        self.img_size = img_size
        self.latent_dim = latent_dim
        self.width = width
        self.global_batch_size = global_batch_size
        self.num_classes = num_classes
        self.lambda_class = lambda_class
        self.trunk = build_trunk(img_size, latent_dim, width, num_classes=num_classes)
        self.head = build_head(img_size, width)
        self.discriminator = build_discriminator(img_size, width, num_classes=num_classes)
        self.encoder = build_encoder(img_size, width)
        self.step_counter = self.add_weight(name="step", shape=(), dtype="int64",
                                            initializer="zeros", trainable=False,
                                            aggregation="only_first_replica")
        self.augment = tuple(augment)
        self.augment_window = tuple(float(v) for v in augment_window)
        self.seed = int(seed)
        self.augment_p = None
        if self.augment:
            self.augment_p = self.add_weight(
                name="augment_p", shape=(), initializer=keras.initializers.Constant(augment_p),
                trainable=False, aggregation="only_first_replica")

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
                "discriminator": self.discriminator, "encoder": self.encoder}

    def slab(self, embedding, position):
        """Per-example embedding slab [r/4, r/4 + S/32) along depth; r = position (batch,)."""
        start = tf.cast(position, tf.int32) // 4
        idx = start[:, None] + tf.range(self.slab_depth)[None, :]
        return tf.gather(embedding, idx, axis=1, batch_dims=1)

    def normalized_position(self, position):
        """r / (7S/8) as the (batch, 1) float32 input of D."""
        return tf.cast(position, tf.float32)[:, None] / (7.0 * self.img_size / 8.0)

    def trunk_input(self, z, label=None):
        """G1's input: z, or z concatenated with the one-hot label when conditional."""
        if not self.num_classes:
            return z
        if label is None:
            raise ValueError(f"this model is conditional ({self.num_classes} classes): "
                             "give a label for every z")
        onehot = tf.one_hot(tf.cast(tf.reshape(label, [-1]), tf.int32), self.num_classes,
                            dtype=z.dtype)
        return tf.concat([z, onehot], axis=-1)

    def embed(self, z, label=None, training=False):
        """G1's embedding of z (and label, when conditional)."""
        return self.trunk(self.trunk_input(z, label), training=training)

    def split_logits(self, outputs):
        """(real/fake logits, class logits or None) of a discriminator's output."""
        if self.num_classes:
            return outputs[0], outputs[1]
        return outputs, None

    def class_loss(self, class_logits, labels):
        return losses.class_loss(class_logits, labels, self.global_batch_size)

    def d_view(self, volume, site: int):
        """What D sees of `volume`: itself, or with augmentation its augmented copy, drawn
        from (seed, step, call site, replica) so that every call differs and a resumed run
        repeats it."""
        if not self.augment:
            return volume
        ctx = tf.distribute.get_replica_context()
        replica = tf.cast(ctx.replica_id_in_sync_group, tf.int64) if ctx is not None else 0
        seed = tf.stack([tf.cast(self.step_counter, tf.int64) + (self.seed << 32),
                         tf.constant(site, tf.int64) + 256 * replica])
        return augment_lib.augment(volume, self.augment, self.augment_p, seed,
                                   self.augment_window)

    def generate(self, z, label=None, training=False):
        """Whole volumes: G2 on the whole G1 embedding -> (batch, S, S, S, 1)."""
        return self.head(self.embed(z, label, training=training), training=training)

    def call(self, z, training=False):
        return self.generate(z, training=training)

    # ---- optimizers --------------------------------------------------------------------
    def compile(self, optimizers: dict, **kwargs):
        """Takes one optimizer per phase, {phase: optimizer} (wrap each in
        LossScaleOptimizer under mixed_float16: compile() only wraps its own)."""
        super().compile(**kwargs)
        missing = set(self.PHASES) - set(optimizers)
        if missing:
            raise ValueError(f"no optimizer for phases {sorted(missing)}")
        self._phase_optimizers = dict(optimizers)

    def phase_optimizers(self) -> dict:
        return dict(self._phase_optimizers)

    def phase_weights(self) -> dict:
        """Phase -> the trainable weights it updates."""
        raise NotImplementedError

    def build_optimizers(self):
        """Creates every optimizer slot now (checkpoints restore into them)."""
        weights = self.phase_weights()
        for phase, opt in self._phase_optimizers.items():
            opt.build(weights[phase])

    def checkpoint_items(self) -> dict:
        """Everything a checkpoint holds: networks, optimizers (with their state), step."""
        items = dict(self.modules())
        items.update({f"{p}_optimizer": o for p, o in self._phase_optimizers.items()})
        items["step"] = self.step_counter
        if self.augment_p is not None:  # only then: older checkpoints restore unchanged
            items["augment_p"] = self.augment_p
        return items

    def _minimize(self, phase, tape, scaled_loss):
        """Applies the gradients of a loss scaled inside `tape` by the phase optimizer's
        scale_loss (LossScaleOptimizer multiplies by its scale, any other optimizer
        returns the loss unchanged); LossScaleOptimizer.apply unscales and skips
        non-finite steps."""
        variables = self.phase_weights()[phase]
        self._phase_optimizers[phase].apply(tape.gradient(scaled_loss, variables), variables)

    def _scale(self, phase, loss):
        return self._phase_optimizers[phase].scale_loss(loss)

    def _discriminator_update(self, real_logits_fn, fake_logits_fn, real_label=None):
        """The "d" phase: D called on the real examples, then on the fake ones (two calls,
        as in the reference: each training call advances the spectral-norm u once). Each
        fn returns (logits, class logits or None); when conditional the loss adds the
        cross-entropy of the real examples' class (not the fake ones', as in the
        references)."""
        with tf.GradientTape() as tape:
            real_logits, real_class = real_logits_fn()
            fake_logits, _ = fake_logits_fn()
            loss = losses.discriminator_loss(real_logits, fake_logits, self.global_batch_size)
            if self.num_classes:
                class_loss = self.class_loss(real_class, real_label)
                loss += class_loss
            scaled = self._scale("d", loss)
        self._minimize("d", tape, scaled)
        share = lambda t: losses.per_replica_mean(tf.sigmoid(t), self.global_batch_size)
        positive = losses.per_replica_mean(tf.cast(real_logits > 0, tf.float32),
                                           self.global_batch_size)
        # r_t: the share of real logits above 0, ADA's overfitting heuristic
        out = {"d_loss": loss, "d_real": share(real_logits), "d_fake": share(fake_logits),
               "r_t": positive}
        if self.num_classes:
            out["d_class_loss"] = class_loss
        return out

    def rec_step(self, crop):
        """hE reconstruction: update hE so that G2(hE(x_crop)) reconstructs x_crop."""
        with tf.GradientTape() as tape:
            rec = self.head(self.encoder(crop, training=True), training=True)
            loss = losses.reconstruction_loss(rec, crop, self.global_batch_size)
            scaled = self._scale("rec", loss)
        self._minimize("rec", tape, scaled)
        return {"rec_loss": loss}


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
    """

    PHASES = ("d", "g", "crf", "rec")
    LEARNING_RATES = {"d": "lr_d", "g": "lr_g", "crf": "lr_crf", "rec": "lr_e"}
    LOSS_PHASE = {"d_loss": "discriminator (phase 1)", "g_loss": "generator (phase 2)",
                  "crf_loss": "CRF (phase 3)", "rec_loss": "reconstruction (phase 4)"}

    def __init__(self, img_size=256, latent_dim=1024, width=1.0, crf_iterations=10,
                 crf_nodes="slices", crf_weight_start=0.5, crf_weight_decay_steps=60000,
                 global_batch_size=2, crf_sample="fresh", num_classes=0, lambda_class=0.1,
                 **kwargs):
        super().__init__(img_size, latent_dim, width, global_batch_size,
                         num_classes=num_classes, lambda_class=lambda_class, **kwargs)
        if crf_sample not in CRF_SAMPLES:
            raise ValueError(f"crf_sample must be one of {CRF_SAMPLES}, got {crf_sample!r}")
        self.crf_sample = crf_sample
        self.crf_iterations = crf_iterations
        self.crf_nodes = crf_nodes
        self.crf_weight_start = crf_weight_start
        self.crf_weight_decay_steps = crf_weight_decay_steps
        self.crf = SliceCRF(img_size // 4, crf_iterations, crf_nodes, name="crf")
        self.crf.build()

    def modules(self) -> dict:
        return dict(super().modules(), crf=self.crf)

    def generator_weights(self):
        return self.trunk.trainable_weights + self.head.trainable_weights

    def phase_weights(self) -> dict:
        return {"d": self.discriminator.trainable_weights, "g": self.generator_weights(),
                "crf": self.crf.trainable_weights, "rec": self.encoder.trainable_weights}

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
            lambda: self.split_logits(self.discriminator([self.d_view(crop, 1), pos],
                                                         training=True)),
            lambda: self.split_logits(self.discriminator([self.d_view(fake, 2), pos],
                                                         training=True)), label)

    def g_step(self, position, z_g, fake_label=None):
        """Phase 2: update G1 and G2 through D and the CRF (and D's class head: + lambda
        x the cross-entropy of the generated crop's class, when conditional)."""
        pos = self.normalized_position(position)
        weight = self.crf_weight()
        out = {}
        with tf.GradientTape() as tape:
            embedding = self.embed(z_g, fake_label, training=True)
            fake = self.head(self.slab(embedding, position), training=True)
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

    def crf_step(self, volume, crop, position, fake_embedding, fake_logits):
        """Phase 3: update W to tell hE(x) embeddings from G1(z) embeddings.

        fake_embedding, fake_logits: from fake_for_crf (fresh) or phase 2 (reuse)."""
        pos = self.normalized_position(position)
        real_embedding = tf.stop_gradient(self.encoder(volume, training=True))
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
          data: dict with `volume` (batch, S, S, S, 1), `crop` (batch, S/8, S, S, 1),
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
        volume = tf.cast(data["volume"], self.compute_dtype)
        crop = tf.cast(data["crop"], self.compute_dtype)
        position = data["position"]
        label, fake_label = data.get("label"), data.get("fake_label")
        out = self.d_step(crop, position, data["z_d"], label, fake_label)
        g = self.g_step(position, data["z_g"], fake_label)
        fake = (g.pop("fake_embedding"), g.pop("fake_logits"))
        if self.crf_sample == "fresh":
            fake = self.fake_for_crf(position, data["z_c"], fake_label)
        out.update(self.crf_step(volume, crop, position, *fake))
        out.update(g)
        out.update(self.rec_step(crop))
        self.step_counter.assign_add(1)
        return out

    def get_config(self):
        return dict(img_size=self.img_size, latent_dim=self.latent_dim, width=self.width,
                    crf_iterations=self.crf_iterations, crf_nodes=self.crf_nodes,
                    crf_weight_start=self.crf_weight_start,
                    crf_weight_decay_steps=self.crf_weight_decay_steps,
                    global_batch_size=self.global_batch_size, crf_sample=self.crf_sample,
                    num_classes=self.num_classes, lambda_class=self.lambda_class)


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

    PHASES = ("d", "g", "rec", "sub_rec")
    LEARNING_RATES = {"d": "lr_d", "g": "lr_g", "rec": "lr_e", "sub_rec": "lr_e"}
    LOSS_PHASE = {"d_loss": "discriminator (phase 1)", "g_loss": "generator (phase 2)",
                  "rec_loss": "reconstruction (phase 3)",
                  "sub_rec_loss": "sub-encoder reconstruction (phase 4)"}

    def __init__(self, img_size=256, latent_dim=1024, width=1.0, global_batch_size=2,
                 low_res="nearest", num_classes=0, lambda_class=0.1, **kwargs):
        if low_res not in LOW_RES_MODES:
            raise ValueError(f"low_res must be one of {LOW_RES_MODES}, got {low_res!r}")
        if img_size not in (128, 256):
            raise ValueError(f"HA-GAN is defined at 128 and 256 (the reference has no 64^3 "
                             f"variant), got img_size={img_size}")
        super().__init__(img_size, latent_dim, width, global_batch_size,
                         num_classes=num_classes, lambda_class=lambda_class, **kwargs)
        self.low_res = low_res
        self.low_generator = build_low_generator(img_size, width)
        self.low_discriminator = build_low_discriminator(img_size, width,
                                                         num_classes=num_classes)
        self.sub_encoder = build_sub_encoder(img_size, latent_dim, width)

    def modules(self) -> dict:
        return {"generator_trunk": self.trunk, "generator_head": self.head,
                "low_generator": self.low_generator, "discriminator": self.discriminator,
                "low_discriminator": self.low_discriminator, "encoder": self.encoder,
                "sub_encoder": self.sub_encoder}

    def phase_weights(self) -> dict:
        return {"d": self.discriminator.trainable_weights
                + self.low_discriminator.trainable_weights,
                "g": self.trunk.trainable_weights + self.head.trainable_weights
                + self.low_generator.trainable_weights,
                "rec": self.encoder.trainable_weights,
                "sub_rec": self.sub_encoder.trainable_weights}

    def low_resolution(self, volume):
        """(batch, S, S, S, 1) -> (batch, S/4, S/4, S/4, 1) float32: every 4th voxel
        (nearest) or the 4^3 average (there is no float16 AvgPool3D kernel on CPU)."""
        volume = tf.cast(volume, tf.float32)
        if self.low_res == "nearest":
            return volume[:, ::4, ::4, ::4]
        return tf.nn.avg_pool3d(volume, 4, 4, "VALID")

    def crop_embeddings(self, volume):
        """hE of the eight S/8 crops of `volume`, concatenated along depth: the whole
        (batch, S/4, S/4, S/4, C) embedding as HA-GAN's sub-encoder phase builds it."""
        d = self.crop_depth
        return tf.concat([self.encoder(volume[:, i:i + d], training=True)
                          for i in range(0, self.img_size, d)], axis=1)

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
        return self._discriminator_update(lambda: self.joint_logits(crop, low, pos, 1),
                                          lambda: self.joint_logits(fake, fake_low, pos, 2),
                                          label)

    def g_step(self, position, z_g, fake_label=None):
        pos = self.normalized_position(position)
        out = {}
        with tf.GradientTape() as tape:
            embedding = self.embed(z_g, fake_label, training=True)
            fake = self.head(self.slab(embedding, position), training=True)
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
            embedding = self.embed(self.sub_encoder(real_embedding, training=True), label,
                                   training=True)
            rec = self.head(self.slab(embedding, position), training=True)
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
        volume = tf.cast(data["volume"], self.compute_dtype)
        crop = tf.cast(data["crop"], self.compute_dtype)
        low = tf.cast(self.low_resolution(data["volume"]), self.compute_dtype)
        position = data["position"]
        label, fake_label = data.get("label"), data.get("fake_label")
        out = self.d_step(crop, low, position, data["z_d"], label, fake_label)
        out.update(self.g_step(position, data["z_g"], fake_label))
        out.update(self.rec_step(crop))
        out.update(self.sub_rec_step(volume, crop, low, position, label))
        self.step_counter.assign_add(1)
        return out

    def get_config(self):
        return dict(img_size=self.img_size, latent_dim=self.latent_dim, width=self.width,
                    global_batch_size=self.global_batch_size, low_res=self.low_res,
                    num_classes=self.num_classes, lambda_class=self.lambda_class)


MODEL_CLASSES = {"crfgan": CRFGAN, "hagan": HAGAN}
