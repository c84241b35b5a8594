"""What CRF-GAN and HA-GAN share: the networks of both, the per-phase optimizers, the
discriminator update and the hE reconstruction phase (SubVolumeGAN)."""

from __future__ import annotations

import contextlib
import threading

import keras
import tensorflow as tf

from crfgan_tf.core import geometry, intensity
from crfgan_tf.models import augment as augment_lib
from crfgan_tf.models import losses
from crfgan_tf.networks import build_discriminator, build_encoder, build_head, build_trunk
from crfgan_tf.networks.layers import initialize_like_pytorch
from crfgan_tf.models import options

REPLICA_INVARIANT = ("crf_weight",)  # reduce with MEAN, not SUM, across replicas
# the model's attribute of each network whose checkpoint key is not its attribute name
_ATTRIBUTES = {options.TRUNK_KEY: "trunk", options.HEAD_KEY: "head"}


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
      augment: transforms of crfgan_tf.models.augment applied to every volume D sees (real and
        generated, in every phase); () = none (the paper's setting).
      augment_p: their probability per example (a checkpointed variable `augment_p`,
        which ADA adjusts from outside).
      augment_window: the intensity window of the volumes (HU for CT).
      seed: mixed into the augmentation's stateless randomness.
      remat: run G1, G2 and hE under tf.recompute_grad in the phases that differentiate
        through them (G1 and G2 in the generator phase, hE and G2 in the reconstruction
        phase; HA-GAN's sub-encoder phase too): their activations are recomputed in the
        backward pass instead of kept, for a lower peak and more time. The results are the
        same. D is not: its spectral norm advances u on every training call, so a
        recomputed call would see another u.
      embedding_factor: volume voxels per embedding voxel (geometry; 4, or 8 for CRF-GAN
        at 512: G1's embedding S/8, one more stage in G2 and hE); 0: the size's default
        (geometry.default_factor: 8 for CRF-GAN at 512).
    """

    MODEL = ""  # the --model name
    PHASES: tuple = ()
    LEARNING_RATES: dict = {}
    LOSS_PHASE: dict = {}

    def __init__(self, img_size=256, latent_dim=1024, width=1.0, global_batch_size=2,
                 num_classes=0, lambda_class=0.1, augment=(), augment_p=0.5,
                 augment_window=intensity.CT_WINDOW, seed=0,
                 embedding_factor=0, remat=False, weight_init="pytorch", r1_gamma=0.0,
                 ema_decay=0.0, d_width=0.0, d_minibatch_std=False, rec_trains_head=False,
                 head_width=0.0, **kwargs):
        super().__init__(**kwargs)
        if weight_init not in options.WEIGHT_INITS:
            raise ValueError(f"weight_init must be one of {options.WEIGHT_INITS}, "
                             f"got {weight_init!r}")
        if r1_gamma < 0 or not 0 <= ema_decay < 1:
            raise ValueError(f"need r1_gamma >= 0 and 0 <= ema_decay < 1, got {r1_gamma}, "
                             f"{ema_decay}")
        self.weight_init = weight_init
        self.d_width = float(d_width)
        self.head_width = float(head_width)
        self.d_minibatch_std = bool(d_minibatch_std)
        self.rec_trains_head = bool(rec_trains_head)
        self.r1_gamma = float(r1_gamma)
        self.ema_decay = float(ema_decay)
        self.remat = bool(remat)
        embedding_factor = geometry.resolve_factor(img_size, embedding_factor, self.MODEL)
        geometry.check_factor(img_size, embedding_factor, self.MODEL)
        self.img_size = img_size
        self.embedding_factor = embedding_factor
        self.latent_dim = latent_dim
        self.width = width
        self.global_batch_size = global_batch_size
        self.num_classes = num_classes
        self.lambda_class = lambda_class
        builders = self.network_builders(img_size, latent_dim, width, num_classes,
                                         embedding_factor, d_width, d_minibatch_std,
                                         head_width)
        for key, build in builders.items():
            setattr(self, _ATTRIBUTES.get(key, key), build())
        if weight_init == "pytorch":
            for key in builders:
                initialize_like_pytorch(getattr(self, _ATTRIBUTES.get(key, key)))
        self.trunk_ema = self.head_ema = None
        if self.ema_decay:
            self.trunk_ema = builders[options.TRUNK_KEY]()
            self.head_ema = builders[options.HEAD_KEY]()
            self.trunk_ema.trainable = self.head_ema.trainable = False
            self.reset_ema()
        self.step_counter = self.add_weight(name="step", shape=(), dtype="int64",
                                            initializer="zeros", trainable=False,
                                            aggregation="only_first_replica")
        # the last applied phase's gradients, per replica thread (phase_in_order)
        object.__setattr__(self, "_order", threading.local())
        self.augment = tuple(augment)
        self.augment_window = tuple(float(v) for v in augment_window)
        self.seed = int(seed)
        self.augment_p_start = float(augment_p)
        self.augment_p = None
        if self.augment:
            self.augment_p = self.add_weight(
                name="augment_p", shape=(), initializer=keras.initializers.Constant(augment_p),
                trainable=False, aggregation="only_first_replica")

    # ---- networks and shapes ---------------------------------------------------------
    @classmethod
    def network_builders(cls, img_size: int, latent_dim: int, width: float, num_classes: int,
                         embedding_factor: int, d_width: float = 0.0,
                         d_minibatch_std: bool = False, head_width: float = 0.0) -> dict:
        """{checkpoint key: a function that builds that network}, in the order the model
        builds them (which decides the initial weights of a seed): the one description of
        a model's networks, used by the model itself and by whatever restores some of
        them (crfgan_tf.run.factory.build_networks: export, the reference import).
        d_width: the discriminators' channel multiplier (0: `width`); d_minibatch_std:
        D's minibatch standard deviation feature (networks.discriminator.MinibatchStd);
        head_width: G2's hidden channel multiplier (0: `width`)."""
        factor = embedding_factor
        d_width = d_width or width
        return {
            options.TRUNK_KEY: lambda: build_trunk(img_size, latent_dim, width,
                                                   num_classes=num_classes, factor=factor),
            options.HEAD_KEY: lambda: build_head(img_size, width, factor=factor,
                                                 hidden_width=head_width),
            "discriminator": lambda: build_discriminator(img_size, d_width,
                                                         num_classes=num_classes,
                                                         minibatch_std=d_minibatch_std),
            options.ENCODER_KEY: lambda: build_encoder(img_size, width, factor=factor),
        }

    @property
    def slab_depth(self) -> int:
        """Embedding slices per training sub-volume: S/(8f) (S/32 at f = 4)."""
        return geometry.slab_depth(self.img_size, self.embedding_factor)

    @property
    def crop_depth(self) -> int:
        """Axial slices per training sub-volume: S/8."""
        return geometry.crop_depth(self.img_size)

    def modules(self) -> dict:
        """name -> network, in the order of the reference's parameter table."""
        return {options.TRUNK_KEY: self.trunk, options.HEAD_KEY: self.head,
                "discriminator": self.discriminator, options.ENCODER_KEY: self.encoder}

    def slab(self, embedding, position):
        """Per-example embedding slab [r/f, r/f + S/(8f)) along depth; r = position (batch,)."""
        start = tf.cast(position, tf.int32) // self.embedding_factor
        idx = start[:, None] + tf.range(self.slab_depth)[None, :]
        return tf.gather(embedding, idx, axis=1, batch_dims=1)

    def real_volume(self, volume, dtype=None):
        """A batch's whole real volume in `dtype` (default: the compute dtype) and [-1, 1]:
        int16 as the input stream hands it over (dequantised in float32, as
        records.decode_volume does, then cast), or already float."""
        if volume.dtype.is_integer:
            volume = intensity.dequantize(tf.cast(volume, tf.float32))
        return tf.cast(volume, dtype or self.compute_dtype)

    def normalized_position(self, position):
        """r / (7S/8) as the (batch, 1) float32 input of D."""
        return geometry.normalized_position(tf.cast(position, tf.float32)[:, None],
                                            self.img_size)

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

    def train_call(self, net, x):
        """net(x, training=True) where a phase differentiates through it: with remat,
        under tf.recompute_grad, so that the backward pass recomputes net's activations
        instead of keeping them from the forward pass."""
        if not self.remat:
            return net(x, training=True)
        return tf.recompute_grad(lambda t: net(t, training=True))(x)

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

    def training_config(self) -> dict:
        """get_config's entries of SubVolumeGAN's own arguments past the size, latent and
        width: the embedding factor, remat, the augmentation (its starting probability),
        the seed and the stabilisers; from_config(get_config()) rebuilds the same model."""
        return dict(embedding_factor=self.embedding_factor, remat=self.remat,
                    augment=list(self.augment), augment_p=self.augment_p_start,
                    augment_window=list(self.augment_window), seed=self.seed,
                    weight_init=self.weight_init, r1_gamma=self.r1_gamma,
                    ema_decay=self.ema_decay, d_width=self.d_width,
                    d_minibatch_std=self.d_minibatch_std, rec_trains_head=self.rec_trains_head,
                    head_width=self.head_width)

    # ---- the moving average of G (ema_decay) ----------------------------------------------
    def ema_pairs(self) -> list:
        """(average network, trained network) pairs; [] without EMA."""
        if not self.ema_decay:
            return []
        return [(self.trunk_ema, self.trunk), (self.head_ema, self.head)]

    def reset_ema(self) -> None:
        """The averages := the trained weights (at the start, and after `init_from`)."""
        for ema, net in self.ema_pairs():
            for e, w in zip(ema.weights, net.weights):
                e.assign(w)

    def update_ema(self):
        """One EMA step: e <- d e + (1 - d) w, d = min(ema_decay, (1 + t) / (10 + t)) at
        step t (the step counter after the training step). Runs in the cross-replica
        context (the training loop calls it between steps), so every replica's copy of
        the averages gets the same update."""
        step = tf.cast(self.step_counter, tf.float32)
        decay = tf.minimum(self.ema_decay, (1.0 + step) / (10.0 + step))
        for ema, net in self.ema_pairs():
            for e, w in zip(ema.weights, net.weights):
                e.assign(decay * e + (1.0 - decay) * tf.cast(w, e.dtype))
        return decay

    def generation_networks(self) -> tuple:
        """(G1, G2) that generation uses: the moving averages with `ema_decay`, else the
        trained networks."""
        if self.ema_decay:
            return self.trunk_ema, self.head_ema
        return self.trunk, self.head

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
        """Everything a checkpoint holds: networks (and G's moving averages, under their
        keys + options.EMA_SUFFIX), optimizers (with their state), step."""
        items = dict(self.modules())
        if self.ema_decay:
            items[options.TRUNK_KEY + options.EMA_SUFFIX] = self.trunk_ema
            items[options.HEAD_KEY + options.EMA_SUFFIX] = self.head_ema
        items.update({f"{p}_optimizer": o for p, o in self._phase_optimizers.items()})
        items["step"] = self.step_counter
        if self.augment_p is not None:  # only then: older checkpoints restore unchanged
            items["augment_p"] = self.augment_p
        return items

    def _minimize(self, phase, tape, scaled_loss):
        """Applies the gradients of a loss scaled inside `tape` by the phase optimizer's
        scale_loss (LossScaleOptimizer multiplies by its scale, any other optimizer
        returns the loss unchanged); LossScaleOptimizer.apply unscales and skips
        non-finite steps. The next phase_in_order() waits for these gradients."""
        variables = self.phase_weights()[phase]
        gradients = tape.gradient(scaled_loss, variables)
        self._phase_optimizers[phase].apply(gradients, variables)
        self._order.gradients = [g.values if isinstance(g, tf.IndexedSlices) else g
                                 for g in gradients if g is not None]

    def start_step(self):
        """Forgets the previous step's phases (train_step calls it first)."""
        self._order.gradients = []

    @contextlib.contextmanager
    def phase_in_order(self):
        """Ops created inside run only once the previous phase's gradients exist.

        Inside tf.function TensorFlow orders a phase after an earlier one only where it
        reads a variable the earlier one wrote; everything else, such as CRF-GAN's hE pass
        over the whole volume or the next phase's generator pass, is free to run while the
        earlier phase's backward pass still holds its activations, and did, depending on
        the machine's load (one 512^3 CRF-GAN step held 9.5 to 12.8 GiB on one CPU). This
        makes the step run its phases in program order, as the reference does, so that one
        phase's activations are gone before the next phase's exist and the peak is the same
        from run to run (what crfgan_tf.training.memory_plan replays); the results are the same.
        """
        gradients = getattr(self._order, "gradients", None)
        if gradients and not tf.executing_eagerly():
            with tf.control_dependencies(gradients):
                yield
        else:
            yield

    def _scale(self, phase, loss):
        return self._phase_optimizers[phase].scale_loss(loss)

    def _discriminator_update(self, real_logits_fn, fake_logits_fn, real_label=None,
                              real_inputs=()):
        """The "d" phase: D called on the real examples, then on the fake ones (two calls,
        as in the reference: each training call advances the spectral-norm u once).
        real_logits_fn(*real_inputs) and fake_logits_fn() return (logits, class logits or
        None); when conditional the loss adds the cross-entropy of the real examples'
        class (not the fake ones', as in the references). With r1_gamma the loss adds
        losses.r1_penalty of the real logits' gradient with respect to `real_inputs`
        (reported as r1_penalty; d_loss is the total)."""
        with tf.GradientTape() as tape:
            r1 = None
            if self.r1_gamma:
                with tf.GradientTape() as inner:
                    inner.watch(real_inputs)
                    real_logits, real_class = real_logits_fn(*real_inputs)
                    summed = tf.reduce_sum(tf.cast(real_logits, tf.float32))
                r1 = losses.r1_penalty(inner.gradient(summed, real_inputs), self.r1_gamma,
                                       self.global_batch_size)
            else:
                real_logits, real_class = real_logits_fn(*real_inputs)
            fake_logits, _ = fake_logits_fn()
            loss = losses.discriminator_loss(real_logits, fake_logits, self.global_batch_size)
            if r1 is not None:
                loss += r1
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
        if r1 is not None:
            out["r1_penalty"] = r1
        if self.num_classes:
            out["d_class_loss"] = class_loss
        return out

    def rec_weights(self) -> list:
        """What the reconstruction phase updates: hE, and G2 with rec_trains_head."""
        extra = self.head.trainable_weights if self.rec_trains_head else []
        return self.encoder.trainable_weights + extra

    def rec_step(self, crop):
        """hE reconstruction: update hE (and G2, rec_trains_head) so that G2(hE(x_crop))
        reconstructs x_crop."""
        with tf.GradientTape() as tape:
            rec = self.train_call(self.head, self.train_call(self.encoder, crop))
            loss = losses.reconstruction_loss(rec, crop, self.global_batch_size)
            scaled = self._scale("rec", loss)
        self._minimize("rec", tape, scaled)
        return {"rec_loss": loss}
