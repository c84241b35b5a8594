"""The typed training configuration. Only `crfgan_tf/train.py` reads flags; tests and
library users build a TrainConfig directly."""

from __future__ import annotations

import dataclasses
import json

MODELS = ("crfgan", "hagan")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker")
IMG_SIZES = (64, 128, 256)
ADAM_VARIANTS = ("pytorch", "keras")
CRF_SAMPLES = ("fresh", "reuse")
LOW_RES_MODES = ("nearest", "average")
FAKE_LABELS = ("batch", "uniform")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; saved as `config.json` in the model dir.

    Defaults are the reference code's training semantics (README, "Reference semantics and
    deviations"): learning rates G 1e-4, D 4e-4, CRF 4e-4 (the reference trains the CRF with
    lr_d; the paper states 1e-4), hE 1e-4; Adam with PyTorch's epsilon, betas (0, 0.999);
    a fresh sample for the CRF phase; HA-GAN's low-resolution real volume by nearest
    down-sampling. Each choice is one flag away.
    """

    model_dir: str
    train_records: str = ""
    model: str = "crfgan"
    img_size: int = 256
    batch_size: int = 2  # global, over all replicas
    train_steps: int = 80000
    latent_dim: int = 1024
    width: float = 1.0
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
    crf_iterations: int = 10
    crf_nodes: str = "slices"
    crf_sample: str = "fresh"  # CRF phase: "fresh" z (the reference) or "reuse" phase 2's
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

    def validate(self) -> None:
        """Raises ValueError naming the flag of any invalid setting."""
        def need(ok, msg):
            if not ok:
                raise ValueError(msg)
        need(bool(self.model_dir), "--model_dir is required")
        need(self.model in MODELS, f"--model must be one of {MODELS}, got {self.model!r}")
        need(self.img_size in IMG_SIZES,
             f"--img_size must be one of {IMG_SIZES}, got {self.img_size}")
        need(self.model != "hagan" or self.img_size in (128, 256),
             f"--model=hagan needs --img_size 128 or 256 (the reference has no 64^3 HA-GAN), "
             f"got {self.img_size}")
        need(self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}")
        need(self.train_steps >= 0, f"--train_steps must be >= 0, got {self.train_steps}")
        need(self.latent_dim >= 1, f"--latent_dim must be >= 1, got {self.latent_dim}")
        need(0 < self.width <= 4, f"--width must be in (0, 4], got {self.width}")
        for name in ("lr_g", "lr_d", "lr_crf", "lr_e", "adam_epsilon"):
            need(getattr(self, name) > 0, f"--{name} must be > 0, got {getattr(self, name)}")
        need(0 <= self.beta_1 < 1 and 0 <= self.beta_2 < 1, "--beta_1 and --beta_2 must be in [0, 1)")
        need(self.crf_weight_decay_steps >= 1, "--crf_weight_decay_steps must be >= 1")
        need(0 <= self.crf_weight_start <= 1, "--crf_weight_start must be in [0, 1]")
        need(self.crf_iterations >= 0, "--crf_iterations must be >= 0")
        need(self.crf_nodes in ("slices", "channels"),
             f"--crf_nodes must be slices or channels, got {self.crf_nodes!r}")
        need(self.num_classes >= 0, f"--num_classes must be >= 0, got {self.num_classes}")
        need(self.num_classes != 1, "--num_classes=1 conditions on nothing; use 0 "
             "(unconditional) or >= 2")
        need(self.lambda_class >= 0, f"--lambda_class must be >= 0, got {self.lambda_class}")
        need(self.num_classes > 0 or not self.balance_classes,
             "--balance_classes needs --num_classes >= 2")
        for name, allowed in (("adam", ADAM_VARIANTS), ("crf_sample", CRF_SAMPLES),
                              ("hagan_low_res", LOW_RES_MODES), ("fake_labels", FAKE_LABELS)):
            need(getattr(self, name) in allowed,
                 f"--{name} must be one of {allowed}, got {getattr(self, name)!r}")
        need(self.mixed_precision in PRECISIONS,
             f"--mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        need(self.strategy in STRATEGIES,
             f"--strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in ("log_every", "checkpoint_every", "image_every", "keep_checkpoints",
                     "shuffle_buffer", "cpu_devices"):
            need(getattr(self, name) >= 1, f"--{name} must be >= 1, got {getattr(self, name)}")
        self.profile_range()

    def profile_range(self):
        """(first, last) steps to trace, or None."""
        if not self.profile_steps:
            return None
        try:
            first, last = (int(v) for v in self.profile_steps.split(","))
        except ValueError:
            raise ValueError(f"--profile_steps must be 'first,last', got {self.profile_steps!r}")
        if not 1 <= first <= last:
            raise ValueError(f"--profile_steps needs 1 <= first <= last, got {self.profile_steps!r}")
        return first, last

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls(**json.loads(text))
