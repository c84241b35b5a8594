"""The typed training configuration. Only `crfgan_tf/cli/train.py` reads flags; tests and
library users build a TrainConfig directly."""

from __future__ import annotations

import dataclasses
import json

from crfgan_tf.core import geometry
from crfgan_tf.core.geometry import FEATURE_SIDE, MIN_FEATURE_SIDE
from crfgan_tf.models.options import (ADAM_VARIANTS, AUGMENT_TRANSFORMS, CRF_NODES,
                                      CRF_SAMPLES, FAKE_LABELS, INIT_GROUPS, LOW_RES_MODES,
                                      MODELS, WEIGHT_INITS)
from crfgan_tf.utils import preemption

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker")
BEST_METRICS = ("coverage", "fd", "mmd", "hist_w1_hu", "profile_l1_hu")
# the BEST_METRICS where higher is better (the rest are distances)
HIGHER_IS_BETTER = ("coverage",)


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; saved as `config.json` in the model dir.

    Defaults are the reference code's training semantics (docs/fidelity.md, "Reference semantics and
    deviations"): learning rates G 1e-4, D 4e-4, CRF 4e-4 (the reference trains the CRF with
    lr_d; the paper states 1e-4), hE 1e-4; Adam with PyTorch's epsilon, betas (0, 0.999);
    a fresh sample for the CRF phase; HA-GAN's low-resolution real volume by nearest
    down-sampling. Each choice is one flag away.
    """

    model_dir: str
    train_records: str = ""
    model: str = "crfgan"
    img_size: int = 256
    # volume voxels per embedding voxel: 4 (the reference's) or, CRF-GAN at 512 only, 8
    # (a 64^3 embedding, one more G2 and hE stage; docs/resolution.md compares the two);
    # 0 (the default) becomes geometry.default_factor on construction: 8 for CRF-GAN at 512
    embedding_factor: int = 0
    batch_size: int = 2  # global, over all replicas
    # > 0: the global batch is this times the replicas (--batch_size is then not used)
    per_replica_batch_size: int = 0
    train_steps: int = 80000
    latent_dim: int = 1024
    width: float = 1.0
    d_width: float = 0.0  # D's (and HA-GAN's D^L's) channel multiplier; 0: `width`
    head_width: float = 0.0  # G2's hidden channel multiplier; 0: `width`
    # D's dense layers also see its features' standard deviation over the batch
    d_minibatch_std: bool = False
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    lr_crf: float = 4e-4
    lr_e: float = 1e-4
    beta_1: float = 0.0
    beta_2: float = 0.999
    adam_epsilon: float = 1e-8
    adam: str = "pytorch"  # where eps goes: "pytorch" (the reference) or "keras"
    crf_weight_start: float = 0.5
    crf_weight_decay_steps: int = 60000
    # > 0: w decays over this fraction of `train_steps` instead (the paper's 60k of 80k:
    # 0.75); resolved into crf_weight_decay_steps by crf_decay_steps()
    crf_decay_fraction: float = 0.0
    crf_iterations: int = 10
    crf_nodes: str = "slices"
    crf_sample: str = "fresh"  # CRF phase: "fresh" z (the reference) or "reuse" phase 2's
    # CRF phase's hE over the whole real volume: embedding slices per slab (0: one pass, as
    # the reference; less memory, more time: docs/resolution.md)
    crf_encoder_slab: int = 0
    # G1, G2 and hE recompute their activations in the backward pass (tf.recompute_grad):
    # a lower peak where their backward passes are it, for more time (docs/resolution.md)
    remat: bool = False
    # initial weights of G1, G2, hE and HA-GAN's other networks: "pytorch" (the reference's
    # PyTorch defaults, U(+-1/sqrt(fan_in)) for kernels and biases) or "keras" (glorot-uniform
    # kernels, zero biases: crfgan-tf before 0.3.0); D is PyTorch-ranged in both
    weight_init: str = "pytorch"
    # > 0: R1 penalty gamma/2 E||grad_x D(x)||^2 on real sub-volumes in D's phase (Mescheder
    # et al. 2018); 0: none (the paper)
    r1_gamma: float = 0.0
    # > 0: an exponential moving average of G1's and G2's weights with this decay (ramped
    # up over the first steps), used for evaluation, images, export and sampling; 0: none
    ema_decay: float = 0.0
    # the reconstruction phase also updates G2 (a direct signal for its intensities); False:
    # hE alone (the reference)
    rec_trains_head: bool = False
    hagan_low_res: str = "nearest"  # HA-GAN's S/4 real volume: "nearest" (ref.) or "average"
    num_classes: int = 0  # > 0: class-conditional (the references' --num-class)
    lambda_class: float = 0.1  # weight of the generator's auxiliary-classifier loss
    fake_labels: str = "batch"  # labels of generated samples: the real batch's, or uniform
    balance_classes: bool = False  # draw every class equally often (with replacement)
    mixed_precision: str = "float32"
    strategy: str = "default"
    cpu_devices: int = 1  # logical CPU devices (mirrored on a machine without GPUs)
    seed: int = 0
    shuffle_buffer: int = 8
    log_every: int = 10
    checkpoint_every: int = 500
    image_every: int = 500
    keep_checkpoints: int = 3
    profile_steps: str = ""  # "first,last", e.g. "10,12"
    jit_compile: bool = False
    eval_every: int = 0  # steps between in-training evaluations (0: off)
    eval_records: str = ""  # default: the val-* records beside the training records
    eval_samples: int = 16  # generated volumes per evaluation (fixed latents)
    fid_weights: str = ""  # MedicalNet .npz; without it, the labelled random-feature net
    eval_feature_side: int = FEATURE_SIDE  # MedicalNet's input side (FEATURE_SIDE_HELP)
    # the evaluation metric that picks the best checkpoint: "coverage" (k-NN coverage of the
    # real volumes, ties to the lower FD) or a distance
    best_metric: str = "fd"
    augment: str = ""  # D-side differentiable augmentation: "translation,cutout,intensity"
    augment_p: float = 0.5  # probability per example and transform (ADA: the start)
    ada_target: float = 0.0  # > 0: adapt p so that r_t (share of real logits > 0) -> this
    ada_speed: float = 0.001  # ADA: change of p per step
    # signals that stop the run after the current step with a checkpoint ("" or "none": off)
    save_on_signals: str = preemption.DEFAULT_SIGNALS
    # a new run's initial weights: a run directory (its latest checkpoint; DIR@STEP,
    # DIR@best), an export or a weights package (crfgan_tf.training.initialize); "" = the seed
    init_from: str = ""
    # which networks init_from takes: "all" (every network the source holds) or groups of
    # models.options.INIT_GROUPS ("generator,encoder"); the others start from the seed
    init_networks: str = "all"

    def __post_init__(self):
        # not a field (config.json does not hold it): the factor was the size's default,
        # which a resumed run replaces by its own (rundir.resume_config)
        self.factor_is_default = self.embedding_factor == 0
        if self.embedding_factor == 0 and self.img_size in geometry.SIZES:
            self.embedding_factor = geometry.default_factor(self.img_size, self.model)

    def validate(self) -> None:
        """Raises ValueError naming the flag of any invalid setting."""
        def need(ok, msg):
            if not ok:
                raise ValueError(msg)
        need(bool(self.model_dir), "`model_dir` is required")
        need(self.model in MODELS, f"`model` must be one of {MODELS}, got {self.model!r}")
        geometry.check_size(self.img_size, self.model)
        geometry.check_factor(self.img_size, self.embedding_factor, self.model)
        need(self.batch_size >= 1, f"`batch_size` must be >= 1, got {self.batch_size}")
        need(self.per_replica_batch_size >= 0,
             f"`per_replica_batch_size` must be >= 0, got {self.per_replica_batch_size}")
        need(self.train_steps >= 0, f"`train_steps` must be >= 0, got {self.train_steps}")
        need(self.latent_dim >= 1, f"`latent_dim` must be >= 1, got {self.latent_dim}")
        need(0 < self.width <= 4, f"`width` must be in (0, 4], got {self.width}")
        need(0 <= self.d_width <= 4, f"`d_width` must be in (0, 4], or 0 for `width`, got "
             f"{self.d_width}")
        need(0 <= self.head_width <= 4, f"`head_width` must be in (0, 4], or 0 for `width`, "
             f"got {self.head_width}")
        for name in ("lr_g", "lr_d", "lr_crf", "lr_e", "adam_epsilon"):
            need(getattr(self, name) > 0, f"`{name}` must be > 0, got {getattr(self, name)}")
        need(0 <= self.beta_1 < 1 and 0 <= self.beta_2 < 1, "`beta_1` and `beta_2` must be in [0, 1)")
        need(self.crf_weight_decay_steps >= 1, "`crf_weight_decay_steps` must be >= 1")
        need(0 <= self.crf_decay_fraction <= 1,
             f"`crf_decay_fraction` must be in [0, 1] (0: `crf_weight_decay_steps`), got "
             f"{self.crf_decay_fraction}")
        need(self.weight_init in WEIGHT_INITS,
             f"`weight_init` must be one of {WEIGHT_INITS}, got {self.weight_init!r}")
        need(self.r1_gamma >= 0, f"`r1_gamma` must be >= 0, got {self.r1_gamma}")
        need(0 <= self.ema_decay < 1, f"`ema_decay` must be in [0, 1) (0: no EMA), got "
             f"{self.ema_decay}")
        need(0 <= self.crf_weight_start <= 1, "`crf_weight_start` must be in [0, 1]")
        need(self.crf_iterations >= 0, "`crf_iterations` must be >= 0")
        need(self.crf_encoder_slab >= 0, "`crf_encoder_slab` must be >= 1 embedding slices "
             f"or 0 (one pass), got {self.crf_encoder_slab}")
        need(self.crf_nodes in CRF_NODES,
             f"`crf_nodes` must be slices or channels, got {self.crf_nodes!r}")
        need(self.num_classes >= 0, f"`num_classes` must be >= 0, got {self.num_classes}")
        need(self.num_classes != 1, "`num_classes=1` conditions on nothing; use 0 "
             "(unconditional) or >= 2")
        need(self.lambda_class >= 0, f"`lambda_class` must be >= 0, got {self.lambda_class}")
        need(self.num_classes > 0 or not self.balance_classes,
             "`balance_classes` needs `num_classes` >= 2")
        for name, allowed in (("adam", ADAM_VARIANTS), ("crf_sample", CRF_SAMPLES),
                              ("hagan_low_res", LOW_RES_MODES), ("fake_labels", FAKE_LABELS)):
            need(getattr(self, name) in allowed,
                 f"`{name}` must be one of {allowed}, got {getattr(self, name)!r}")
        need(self.mixed_precision in PRECISIONS,
             f"`mixed_precision` must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        need(self.strategy in STRATEGIES,
             f"`strategy` must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in ("log_every", "checkpoint_every", "image_every", "keep_checkpoints",
                     "shuffle_buffer", "cpu_devices"):
            need(getattr(self, name) >= 1, f"`{name}` must be >= 1, got {getattr(self, name)}")
        need(self.eval_every >= 0, f"`eval_every` must be >= 0, got {self.eval_every}")
        need(self.eval_samples >= 2, f"`eval_samples` must be >= 2, got {self.eval_samples}")
        need(self.eval_feature_side >= MIN_FEATURE_SIDE and (
            self.img_size <= self.eval_feature_side or self.img_size % self.eval_feature_side == 0),
            f"`eval_feature_side` must be >= {MIN_FEATURE_SIDE} and divide `img_size` "
            f"({self.img_size}) when below it, got {self.eval_feature_side}")
        need(self.best_metric in BEST_METRICS,
             f"`best_metric` must be one of {BEST_METRICS}, got {self.best_metric!r}")
        self.augment_transforms()
        need(0 <= self.augment_p <= 1, f"`augment_p` must be in [0, 1], got {self.augment_p}")
        need(0 <= self.ada_target < 1, f"`ada_target` must be in [0, 1), got {self.ada_target}")
        need(not self.ada_target or self.augment,
             "`ada_target` adapts the augmentation probability: give `augment` too")
        need(self.ada_speed > 0, f"`ada_speed` must be > 0, got {self.ada_speed}")
        self.profile_range()
        preemption.parse_signals(self.save_on_signals)
        self.init_groups()

    def crf_decay_steps(self) -> int:
        """The steps over which the CRF weight w decays to 0: `crf_decay_fraction` of
        `train_steps` when set (at least 1), else `crf_weight_decay_steps`."""
        if self.crf_decay_fraction > 0:
            return max(1, int(round(self.crf_decay_fraction * self.train_steps)))
        return self.crf_weight_decay_steps

    def init_groups(self) -> tuple:
        """`init_networks` as a tuple of INIT_GROUPS names ("all" -> all of them)."""
        names = tuple(n.strip() for n in self.init_networks.split(",") if n.strip())
        if names == ("all",):
            return tuple(INIT_GROUPS)
        bad = [n for n in names if n not in INIT_GROUPS]
        if bad or not names:
            raise ValueError(f"`init_networks` must be 'all' or a comma-separated list of "
                             f"{tuple(INIT_GROUPS)}, got {self.init_networks!r}")
        return names

    def global_batch(self, replicas: int) -> int:
        """The global batch on `replicas` replicas: `per_replica_batch_size` times the
        replicas when it is set, else `batch_size`, which must divide by the replicas.

        Raises:
          ValueError: `batch_size` does not divide; the message names the nearest valid
            global batches and `per_replica_batch_size`.
        """
        if self.per_replica_batch_size:
            return self.per_replica_batch_size * replicas
        if self.batch_size % replicas == 0:
            return self.batch_size
        below = self.batch_size // replicas * replicas
        above = below + replicas
        nearest = " or ".join(f"`batch_size={b}`" for b in (below, above) if b >= 1)
        raise ValueError(
            f"`batch_size={self.batch_size}` is the global batch (all replicas together) and "
            f"does not divide by the {replicas} replicas. Use {nearest}, or "
            f"`per_replica_batch_size=N` for a global batch of N x {replicas} (it overrides "
            "`batch_size`). The learning rates are used as given whatever the batch "
            "(docs/training.md, \"Several GPUs\").")

    def augment_transforms(self) -> tuple:
        """`augment` as a tuple of transform names ('' -> ())."""
        names = tuple(n.strip() for n in self.augment.split(",") if n.strip())
        bad = [n for n in names if n not in AUGMENT_TRANSFORMS]
        if bad:
            raise ValueError(f"`augment`: unknown transform(s) {bad}; choose from "
                             f"{AUGMENT_TRANSFORMS} (no flips: chest anatomy is asymmetric)")
        return names

    def profile_range(self):
        """(first, last) steps to trace, or None."""
        if not self.profile_steps:
            return None
        try:
            first, last = (int(v) for v in self.profile_steps.split(","))
        except ValueError:
            raise ValueError(f"`profile_steps` must be 'first,last', got {self.profile_steps!r}")
        if not 1 <= first <= last:
            raise ValueError(f"`profile_steps` needs 1 <= first <= last, got {self.profile_steps!r}")
        return first, last

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls(**json.loads(text))


def step_config(request) -> TrainConfig:
    """The TrainConfig whose training step a request dataclass describes (memory_plan's
    PlanRequest, bench.training's ProfileRequest): its fields that TrainConfig has, by
    name (`precision` is mixed_precision); everything else TrainConfig's default. Not a
    run: no model directory."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {("mixed_precision" if k == "precision" else k): v
              for k, v in dataclasses.asdict(request).items()}
    return TrainConfig(model_dir="(not a run)",
                       **{k: v for k, v in values.items() if k in names})
