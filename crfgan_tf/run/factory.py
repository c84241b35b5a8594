"""The one factory from a training config to a model: what training, export, the
reference import, the memory planner and the benchmarks all build.

  set_precision(policy)           the Keras dtype policy the networks are built under
  build_model(config)             the whole model with its per-phase optimizers
  build_networks(config, keys)    some of its networks alone, built as the model builds
                                  them (export restores G1 and G2 from a checkpoint)
"""

from __future__ import annotations

from typing import Sequence

from crfgan_tf.core import intensity
from crfgan_tf.models import options
from crfgan_tf.run import config as config_lib

# what generation restores; ENCODING_KEYS: what export's `encode` restores besides
GENERATION_KEYS = (options.TRUNK_KEY, options.HEAD_KEY)
ENCODING_KEYS = (options.ENCODER_KEY, options.SUB_ENCODER_KEY)


def set_precision(policy: str) -> None:
    """Sets the global Keras dtype policy (config.mixed_precision), before any layer is
    built: it decides the dtypes of the networks build_model and build_networks make."""
    import keras

    keras.mixed_precision.set_global_policy(policy)


def make_optimizer(learning_rate: float, config: config_lib.TrainConfig, name: str):
    """One phase's Adam (config.adam's variant), wrapped in a LossScaleOptimizer under
    mixed_float16: compile() only wraps its own optimizer; a GAN with several must wrap
    each."""
    import keras

    from crfgan_tf.models import optimizers

    opt = optimizers.make_adam(config.adam, learning_rate, config.beta_1, config.beta_2,
                               config.adam_epsilon, name)
    if config.mixed_precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt, name=f"{name}_loss_scale")
    return opt


def build_model(config: config_lib.TrainConfig, window=intensity.CT_WINDOW):
    """The model of `config.model` with one optimizer per phase, all slots built (call
    inside strategy.scope() when distributing).

    Args:
      config: the training config (its architecture, optimisation and augmentation
        fields are used; `model_dir` is not).
      window: the records' intensity window (the intensity augmentation's range).

    Returns:
      A compiled crfgan_tf.models.SubVolumeGAN (CRFGAN or HAGAN).
    """
    from crfgan_tf.models import MODEL_CLASSES

    common = dict(img_size=config.img_size, embedding_factor=config.embedding_factor,
                  latent_dim=config.latent_dim, width=config.width,
                  global_batch_size=config.batch_size, name=config.model,
                  num_classes=config.num_classes, lambda_class=config.lambda_class,
                  augment=config.augment_transforms(), augment_p=config.augment_p,
                  augment_window=window, seed=config.seed, remat=config.remat,
                  weight_init=config.weight_init, r1_gamma=config.r1_gamma,
                  ema_decay=config.ema_decay, d_width=config.d_width,
                  d_minibatch_std=config.d_minibatch_std,
                  rec_trains_head=config.rec_trains_head, head_width=config.head_width)
    if config.model == "crfgan":
        common.update(crf_iterations=config.crf_iterations, crf_nodes=config.crf_nodes,
                      crf_weight_start=config.crf_weight_start,
                      crf_weight_decay_steps=config.crf_decay_steps(),
                      crf_sample=config.crf_sample, encoder_slab=config.crf_encoder_slab)
    else:
        common.update(low_res=config.hagan_low_res)
    cls = MODEL_CLASSES[config.model]
    model = cls(**common)
    model.compile({phase: make_optimizer(getattr(config, field), config, f"adam_{phase}")
                   for phase, field in cls.LEARNING_RATES.items()})
    model.build_optimizers()
    return model


def build_networks(config: config_lib.TrainConfig,
                   keys: Sequence[str] = GENERATION_KEYS) -> dict:
    """{checkpoint key: network} of the networks of `config`'s model named by `keys` (keys
    the model does not have, such as HA-GAN's sub-encoder for CRF-GAN, are skipped),
    built exactly as the model builds them (SubVolumeGAN.network_builders), without the
    other networks and optimizers."""
    from crfgan_tf.models import MODEL_CLASSES

    builders = MODEL_CLASSES[config.model].network_builders(
        config.img_size, config.latent_dim, config.width, config.num_classes,
        config.embedding_factor, config.d_width, config.d_minibatch_std, config.head_width)
    return {key: builders[key]() for key in keys if key in builders}
