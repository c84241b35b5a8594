"""The models' choices and checkpoint keys, without TensorFlow: the training config and the
commands' flags read them before TensorFlow loads. Each is owned here and imported by the
model code that implements it."""

# --model: the model classes of crfgan_tf.models.MODEL_CLASSES
MODELS = ("crfgan", "hagan")
# where Adam's epsilon goes (crfgan_tf.models.optimizers): "pytorch" (the reference) or "keras"
ADAM_VARIANTS = ("pytorch", "keras")
# CRF-GAN's CRF phase (crfgan_tf.models.crfgan): a "fresh" z (the reference) or "reuse" phase 2's
CRF_SAMPLES = ("fresh", "reuse")
# CRF-GAN's CRF nodes: axial slices (the paper) or channel groups (the reference code)
CRF_NODES = ("slices", "channels")
# HA-GAN's S/4 real volume (crfgan_tf.models.hagan): "nearest" (the reference) or "average"
LOW_RES_MODES = ("nearest", "average")
# the labels of generated samples of a conditional model: the real batch's, or uniform
FAKE_LABELS = ("batch", "uniform")
# initial weights (crfgan_tf.networks.layers.initialize_like_pytorch): the reference's
# PyTorch defaults, or Keras' (glorot-uniform kernels, zero biases)
WEIGHT_INITS = ("pytorch", "keras")
# D-side differentiable augmentation (crfgan_tf.models.augment); no flips (chest anatomy
# is asymmetric)
AUGMENT_TRANSFORMS = ("translation", "cutout", "intensity")

# Checkpoint keys of the networks (the run directory's checkpoints, the exported
# SavedModel's restore): G1 and G2 are all that generation restores; hE and HA-GAN's
# sub-encoder are what export's `encode` restores.
TRUNK_KEY = "generator_trunk"
HEAD_KEY = "generator_head"
ENCODER_KEY = "encoder"
SUB_ENCODER_KEY = "sub_encoder"
# the exponential moving average of G1 and G2 (`ema_decay`) is checkpointed under their
# keys with this suffix
EMA_SUFFIX = "_ema"

# `init_networks`: the groups of networks a new run may take from another's weights
# (crfgan_tf.training.initialize); keys a model does not have are skipped. "all" is every
# network the source holds (an export or weights package holds G1, G2 and the encoders).
INIT_GROUPS = {
    "generator": (TRUNK_KEY, HEAD_KEY, "low_generator"),
    "encoder": (ENCODER_KEY, SUB_ENCODER_KEY),
    "discriminator": ("discriminator", "low_discriminator"),
    "crf": ("crf",),
}
