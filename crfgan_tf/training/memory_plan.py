"""The memory of a training run, known before it starts (`crfgan-plan-memory`).

The plan is read off the real training step, not a formula written beside it: the
model of the configuration is built as `crfgan-train` builds it (every network, every
phase's Adam with its slots), its `train_step` is traced on input specs shaped like the
input stream's batches (the whole volume int16, the crop float32; the batch dimension left
free), and the traced graph, forward passes, gradient tape and optimizer updates of all
phases, is replayed op by op in the order the program creates it. Every op's outputs are
allocated with their static shapes and dtypes; a buffer is released after its last reader
(reshapes, identities and variable reads alias their input; element-wise ops write into an
input that is read for the last time, as TensorFlow forwards such buffers; shape queries
keep nothing alive, Grappler folds them). The largest sum of live buffers is the step's
transient peak; weights, optimizer slots and the input batch stay for the whole run. The
step runs its phases in program order (SubVolumeGAN.phase_in_order), so the replay's
order is, phase by phase, the order TensorFlow can run them in.

    working memory = weights + optimizer slots + input batch + transient peak x factor + runtime

The factor and the runtime term are the allocator's, not the graph's:

- CPU, default allocator (CPU_DEFAULT): TensorFlow's oneDNN allocator keeps the blocks it
  freed in pools, so a process holds more than the live tensors; the factor and runtime
  term were fitted once to CRF-GAN's measured working memory (peak RSS minus the RSS after
  the framework import, `crfgan-profile-memory`) and HA-GAN's measurements check them
  (docs/benchmarks.md).
- CPU, lean allocator (CPU_LEAN, `--lean_cpu_memory`): freed memory goes back to the
  system, so the live tensors are what is held.
- GPU (GPU): TensorFlow's BFC allocator; its peak (`get_memory_info`) is the live tensors;
  GPU_RESERVE_BYTES (CUDA context, cuDNN and cuBLAS handles and workspaces, outside that
  allocator) is added before comparing with a card's memory. Not yet checked on a GPU.

What is not modelled: Grappler's other graph rewrites (fusions shrink a few temporaries),
two independent branches of one phase running concurrently, and convolution scratch memory
inside oneDNN or cuDNN kernels.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Optional

from crfgan_tf.core import geometry

GIB = 2 ** 30
MIB = 2 ** 20
GB = 10 ** 9
DEVICE_MEMORY_GB = (12, 16, 24, 40, 48, 80, 141)  # the cards the fits table names
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class Allocator:
    """How an allocator holds a step's tensors: held = factor x transient + runtime_bytes."""

    name: str
    factor: float
    runtime_bytes: int
    note: str


# Fitted, by least squares, to CRF-GAN's float32 working memory at 64^3-512^3, batch 1 and
# 2 (docs/benchmarks.md, "The memory planner against measurement"); HA-GAN's cells, which
# the fit did not see, check it. The runtime term is what a step costs beyond its tensors
# at any size (compiled graph, kernels, thread pools); the factor is the pools' share.
CPU_DEFAULT = Allocator("cpu", 1.79, 410 * MIB,
                        "CPU, default allocator: oneDNN's pools keep freed blocks (fitted)")
CPU_LEAN = Allocator("cpu_lean", 1.0, 410 * MIB,
                     "CPU, `lean_cpu_memory`: freed blocks go back to the system")
GPU = Allocator("gpu", 1.0, 0, "GPU: TensorFlow's BFC allocator peak (not yet checked on a GPU)")
ALLOCATORS = {a.name: a for a in (CPU_DEFAULT, CPU_LEAN, GPU)}
GPU_RESERVE_BYTES = GIB  # CUDA context, cuDNN/cuBLAS handles and workspaces (per GPU)

# ops whose output is (a view of) their input: no new buffer
_ALIASES = {"Identity", "Reshape", "Squeeze", "ExpandDims", "StopGradient", "Snapshot",
            "IdentityN", "EnsureShape", "PreventGradient", "BitCast"}
# ops that allocate nothing a step holds (variables and their reads, constants, inputs)
_NOTHING = {"VarHandleOp", "ReadVariableOp", "NoOp", "Placeholder", "Const",
            "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp"}
# ops that read only their input's shape: with the batch known at run time Grappler folds
# them to constants, so they keep no tensor alive
_METADATA = {"Shape", "ShapeN", "Size", "Rank"}
# element-wise ops TensorFlow lets write into an input buffer read for the last time
_FORWARDING = {"AddV2", "Add", "Sub", "Mul", "RealDiv", "Maximum", "Minimum", "Neg", "Square",
               "Sqrt", "Rsqrt", "Relu", "ReluGrad", "LeakyRelu", "LeakyReluGrad", "Tanh",
               "TanhGrad", "Sigmoid", "SigmoidGrad", "SquaredDifference", "BiasAdd",
               "Exp", "Log", "Abs", "Sign", "Reciprocal", "SelectV2"}

# categories of the live tensors at the peak
ACTIVATIONS = "forward-pass tensors (activations, temporaries)"
GRADIENTS = "gradients and backward temporaries"
UPDATES = "optimizer update temporaries"


@dataclasses.dataclass
class PlanRequest:
    """One training configuration (crfgan-train's flags of the same names)."""

    model: str = "crfgan"
    img_size: int = 256
    batch_size: int = 2
    precision: str = "float32"
    width: float = 1.0
    latent_dim: int = 1024
    crf_sample: str = "fresh"
    crf_encoder_slab: int = 0
    num_classes: int = 0
    embedding_factor: int = 0  # 0: the size's default (geometry.default_factor)
    remat: bool = False

    def check(self) -> None:
        """ValueError naming the flag of the first setting that cannot be planned."""
        if self.model not in ("crfgan", "hagan"):
            raise ValueError(f"`model` must be crfgan or hagan, got {self.model!r}")
        geometry.check_size(self.img_size, self.model)
        geometry.check_factor(self.img_size, geometry.resolve_factor(
            self.img_size, self.embedding_factor, self.model), self.model)
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {', '.join(PRECISIONS)}, "
                             f"got {self.precision!r}")
        if not self.width > 0:
            raise ValueError(f"`width` must be positive, got {self.width}")
        if self.crf_encoder_slab < 0:
            raise ValueError("`crf_encoder_slab` must be >= 1 or 0 (one pass), "
                             f"got {self.crf_encoder_slab}")


@dataclasses.dataclass
class _Buffer:
    bytes_fixed: int  # bytes that do not grow with the batch
    bytes_per_example: int  # bytes per example (tensors with a free batch dimension)
    kind: str
    phase: str
    op: str

    def size(self, batch: int) -> int:
        return self.bytes_fixed + batch * self.bytes_per_example


class StepGraph:
    """A traced graph as a list of buffer events, ready to replay at any batch size
    (`peak`), with the model's persistent bytes beside it.

    Args:
      graph: a tf.Graph (a concrete function's) whose inputs have a free batch dimension.
      phases: the training phases in order; an op belongs to the phase whose optimizer
        ("adam_<phase>") ends at or after it.
      weight_bytes, optimizer_bytes, params: the model's variables, its optimizers'
        variables, its trainable parameter count.
    """

    def __init__(self, graph, phases: tuple = (), weight_bytes: int = 0,
                 optimizer_bytes: int = 0, params: int = 0, trace_seconds: float = 0.0):
        self.phases = tuple(phases)
        self.trace_seconds = trace_seconds
        self.num_ops = len(graph.get_operations())
        self.weight_bytes = weight_bytes
        self.optimizer_bytes = optimizer_bytes
        self.params = params
        self._build(graph)

    def _build(self, graph):
        ops = graph.get_operations()
        phase_end = {}
        for i, op in enumerate(ops):  # phase p ends with the last op of its optimizer
            for p in self.phases:
                if op.name.startswith(f"adam_{p}/") or op.name.startswith(f"adam_{p}_loss_scale/"):
                    phase_end[p] = i
        ends = sorted((i, p) for p, i in phase_end.items())

        def phase_of(i):
            for end, p in ends:
                if i <= end:
                    return p
            return ends[-1][1] if ends else "step"  # ops after the last update

        self.input_fixed = self.input_per_example = 0
        buffer_of = {}  # tensor name -> buffer index (None: holds nothing)
        self.buffers = []
        last_read = {}
        created = []  # (op index, buffer, op type, input buffers)
        for i, op in enumerate(ops):
            inputs = [None if op.type in _METADATA else buffer_of.get(t.name)
                      for t in op.inputs]
            for k in inputs:
                if k is not None:
                    last_read[k] = i
            for j, t in enumerate(op.outputs):
                if op.type == "Placeholder":
                    fixed, per = _tensor_bytes(t)
                    self.input_fixed += fixed
                    self.input_per_example += per
                    buffer_of[t.name] = None
                elif op.type in _NOTHING:
                    buffer_of[t.name] = None
                elif op.type in _ALIASES and op.inputs:
                    buffer_of[t.name] = inputs[j if op.type == "IdentityN" else 0]
                else:
                    fixed, per = _tensor_bytes(t)
                    kind = (UPDATES if op.name.startswith("adam_") else
                            GRADIENTS if op.name.startswith("gradient_tape/") else ACTIVATIONS)
                    self.buffers.append(_Buffer(fixed, per, kind, phase_of(i), op.name))
                    k = len(self.buffers) - 1
                    buffer_of[t.name] = k
                    last_read.setdefault(k, i)
                    created.append((i, k, op.type, inputs))
        self._allocs = collections.defaultdict(list)
        for i, k, op_type, inputs in created:
            forwarded = None
            if op_type in _FORWARDING:  # may write into an input read for the last time here
                forwarded = next((x for x in inputs if x is not None and last_read[x] == i
                                  and _same_size(self.buffers[x], self.buffers[k])), None)
            self._allocs[i].append((k, forwarded))
        self._frees = collections.defaultdict(list)
        for k, i in last_read.items():
            self._frees[i].append(k)
        self._num_ops = len(ops)

    def peak(self, batch: int) -> dict:
        """Replays the step at `batch`: the transient peak, where it is, what is live then,
        and each phase's own peak."""
        live, alive, best, best_at = 0, set(), -1, 0
        best_alive = set()
        phase_peak = collections.defaultdict(int)
        for i in range(self._num_ops):
            for k, forwarded in self._allocs.get(i, ()):
                if forwarded is not None and forwarded in alive:
                    alive.discard(forwarded)  # the output takes the input's buffer
                    live -= self.buffers[forwarded].size(batch)
                alive.add(k)
                live += self.buffers[k].size(batch)
                phase = self.buffers[k].phase
                phase_peak[phase] = max(phase_peak[phase], live)
                if live > best:
                    best, best_at, best_alive = live, k, set(alive)
            for k in self._frees.get(i, ()):
                if k in alive:
                    alive.discard(k)
                    live -= self.buffers[k].size(batch)
        by_kind = collections.Counter()
        for k in best_alive:
            by_kind[self.buffers[k].kind] += self.buffers[k].size(batch)
        top = sorted(best_alive, key=lambda k: -self.buffers[k].size(batch))[:8]
        at = self.buffers[best_at] if self.buffers else None
        return {"transient_bytes": max(best, 0), "phase": at.phase if at else "",
                "op": at.op if at else "", "by_kind": dict(by_kind),
                "largest": [(self.buffers[k].op, self.buffers[k].size(batch)) for k in top],
                "phase_bytes": {p: phase_peak.get(p, 0) for p in self.phases}}


def _same_size(a: _Buffer, b: _Buffer) -> bool:
    return (a.bytes_fixed, a.bytes_per_example) == (b.bytes_fixed, b.bytes_per_example)


def _tensor_bytes(t) -> tuple:
    """(bytes not scaling with the batch, bytes per example) of a symbolic tensor whose
    only free dimension, if any, is the leading batch dimension."""
    if t.dtype.name in ("resource", "variant") or t.shape.rank is None:
        return 0, 0
    dims = t.shape.as_list()
    size = t.dtype.size
    if not dims:
        return size, 0
    if dims[0] is None and all(d is not None for d in dims[1:]):
        return 0, size * math.prod(dims[1:])
    if all(d is not None for d in dims):
        return size * math.prod(dims), 0
    return 0, 0  # small shape vectors of the gradient code (BroadcastGradientArgs)


def _variable_bytes(variables) -> int:
    import tensorflow as tf

    return sum(int(math.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in variables)


def trace(req: PlanRequest) -> StepGraph:
    """Builds `req`'s model as crfgan-train does and traces its train_step with a free
    batch dimension (float32 policy restored afterwards)."""
    import keras
    import tensorflow as tf

    from crfgan_tf.run import config as config_lib
    from crfgan_tf.run import factory
    from crfgan_tf.training import distribute

    req.check()
    start = time.perf_counter()
    keras.backend.clear_session()
    factory.set_precision(req.precision)
    try:
        model = factory.build_model(config_lib.step_config(req))
        s, d = req.img_size, geometry.crop_depth(req.img_size)
        spec = {"volume": tf.TensorSpec((None, s, s, s, 1), tf.int16),
                "crop": tf.TensorSpec((None, d, s, s, 1), tf.float32),
                "position": tf.TensorSpec((None,), tf.int32)}
        for z in ("z_d", "z_g", "z_c"):
            spec[z] = tf.TensorSpec((None, req.latent_dim), tf.float32)
        if req.num_classes:
            spec["label"] = spec["fake_label"] = tf.TensorSpec((None,), tf.int32)
        graph = distribute.trace_step(model.train_step).get_concrete_function(spec).graph
        return StepGraph(
            graph, model.PHASES, weight_bytes=_variable_bytes(model.variables),
            optimizer_bytes=sum(_variable_bytes(o.variables)
                                for o in model.phase_optimizers().values()),
            params=sum(int(math.prod(v.shape)) for v in model.trainable_variables),
            trace_seconds=time.perf_counter() - start)
    finally:
        factory.set_precision("float32")


def plan(req: PlanRequest, step: Optional[StepGraph] = None,
         allocator: Allocator = CPU_DEFAULT) -> dict:
    """The memory plan of `req` (`step`: its traced graph, traced here when None).

    Returns a JSON-ready dict: the configuration, the persistent terms, the transient
    peak and where it is (phase, op, what is live by kind, the largest live tensors),
    each phase's peak, and `working_bytes` (what `allocator` holds: on CPU comparable to
    crfgan-profile-memory's working memory) and `gpu_bytes` (the GPU allocator's peak plus
    GPU_RESERVE_BYTES: what a card needs).
    """
    step = step or trace(req)
    b = req.batch_size
    peak = step.peak(b)
    persistent = step.weight_bytes + step.optimizer_bytes + step.input_fixed \
        + b * step.input_per_example
    working = persistent + allocator.factor * peak["transient_bytes"] + allocator.runtime_bytes
    gpu = persistent + GPU.factor * peak["transient_bytes"] + GPU.runtime_bytes + GPU_RESERVE_BYTES
    return {**dataclasses.asdict(req), "params": step.params, "graph_ops": step.num_ops,
            "embedding_factor": geometry.resolve_factor(req.img_size, req.embedding_factor,
                                                        req.model),
            "trace_seconds": round(step.trace_seconds, 1),
            "weights_bytes": step.weight_bytes, "optimizer_bytes": step.optimizer_bytes,
            "input_bytes": step.input_fixed + b * step.input_per_example,
            "transient_bytes": peak["transient_bytes"], "peak_phase": peak["phase"],
            "peak_op": peak["op"], "peak_by_kind": peak["by_kind"],
            "largest_at_peak": [{"op": op, "bytes": n} for op, n in peak["largest"]],
            "phase_transient_bytes": peak["phase_bytes"],
            "allocator": allocator.name, "allocator_factor": allocator.factor,
            "runtime_bytes": allocator.runtime_bytes, "working_bytes": int(working),
            "gpu_bytes": int(gpu)}


# The only GPU measurements of the method there are: the paper's Table 4, PyTorch's
# maximum memory allocated while training the reference code at full width in float32 on
# a 12 GB TITAN V (MB = 10^6 bytes). The planner's GPU figure counts this code's live
# tensors and a CUDA reserve, a lower bound; until a GPU measurement of this code exists
# (crfgan-bench-device), the figure to plan with is scaled to agree with the paper's.
PAPER_TABLE4_BYTES = {
    ("crfgan", 128): {2: 2_622_000_000, 4: 2_712_000_000, 6: 2_774_000_000},
    ("crfgan", 256): {2: 7_494_000_000, 4: 9_010_000_000},
    ("hagan", 128): {2: 2_812_000_000, 4: 2_984_000_000, 6: 3_098_000_000},
    ("hagan", 256): {2: 7_710_000_000, 4: 10_434_000_000},
}
PAPER_TABLE4 = ("the paper's Table 4 (PyTorch's maximum memory allocated, the reference "
                "code at full width, float32, on a TITAN V)")


def calibration_point(model: str, img_size: int, batch: int) -> tuple:
    """(size, batch, kind) of the paper's measurement a plan is scaled by: the same size
    or the nearest measured one, then the nearest measured batch (ties to the larger);
    kind: "measured", "nearest measured batch" or "extrapolated from another size"."""
    sizes = sorted(s for m, s in PAPER_TABLE4_BYTES if m == model)
    size = min(sizes, key=lambda s: (abs(math.log2(s / img_size)), -s))
    batches = sorted(PAPER_TABLE4_BYTES[(model, size)])
    ref = min(batches, key=lambda b: (abs(b - batch), -b))
    kind = ("measured" if (size, ref) == (img_size, batch) else
            "nearest measured batch" if size == img_size else "extrapolated from another size")
    return size, ref, kind


_REFERENCE_STEPS = {}  # (model, size) -> the traced full-width float32 step
_REFERENCE_PLANS = {}  # (model, size, batch) -> its allocator peak


def calibration(req: PlanRequest) -> dict:
    """How `req`'s GPU figure is scaled to the paper's measurements: the ratio of the
    paper's figure (an allocator's peak: no CUDA context) to this planner's allocator peak
    (its GPU figure less GPU_RESERVE_BYTES) at the calibration point (full width, float32,
    the reference's latent size), with the point and its kind."""
    size, batch, kind = calibration_point(req.model, req.img_size, req.batch_size)
    key = (req.model, size, batch)
    if key not in _REFERENCE_PLANS:  # one trace per (model, size), one plan per point
        ref = PlanRequest(model=req.model, img_size=size, batch_size=batch)
        if (req.model, size) not in _REFERENCE_STEPS:
            _REFERENCE_STEPS[(req.model, size)] = trace(ref)
        _REFERENCE_PLANS[key] = plan(ref, _REFERENCE_STEPS[(req.model, size)])["gpu_bytes"] \
            - GPU_RESERVE_BYTES
    planned = _REFERENCE_PLANS[key]
    paper = PAPER_TABLE4_BYTES[(req.model, size)][batch]
    return {"ratio": paper / planned, "img_size": size, "batch_size": batch, "kind": kind,
            "paper_bytes": paper, "planned_bytes": planned, "source": PAPER_TABLE4}


def calibrated_gpu_bytes(req: PlanRequest, gpu_bytes: int) -> int:
    """The GPU figure to plan with: the planner's allocator peak (`gpu_bytes` less the
    reserve) times the calibration ratio (never below 1), plus GPU_RESERVE_BYTES. At the
    paper's points it is the paper's figure plus the reserve, which the paper's PyTorch
    figure does not count (a TITAN V's 12 GB did not hold 256^3 batch 6, whose
    allocations alone this puts at 12.6 GB)."""
    ratio = max(1.0, calibration(req)["ratio"])
    return int(round((gpu_bytes - GPU_RESERVE_BYTES) * ratio)) + GPU_RESERVE_BYTES


def largest_batch(step: StepGraph, req: PlanRequest, device_bytes: int,
                  limit: int = 256, measure: str = "gpu_bytes",
                  allocator: Allocator = CPU_DEFAULT) -> int:
    """The largest batch up to `limit` whose `measure` (gpu_calibrated_bytes: a GPU's
    need scaled to the paper's measurements; gpu_bytes: the planner's lower bound;
    working_bytes: the CPU's working memory) fits in `device_bytes` (0: not even batch 1).
    It grows with the batch, so a bisection finds it in log2(limit) plans (a scan of every
    batch took 1,792 plans for seven cards)."""
    def need(b):
        r = dataclasses.replace(req, batch_size=b)
        if measure == "gpu_calibrated_bytes":
            return calibrated_gpu_bytes(r, plan(r, step, allocator)["gpu_bytes"])
        return plan(r, step, allocator)[measure]

    fits = lambda b: need(b) <= device_bytes
    low, high = 0, limit  # fits(low) (batch 0 always "fits"); the answer is in [low, high]
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def parse_memory(text: str) -> int:
    """'24GiB', '24GB', '80G', '16000MiB' -> bytes (G = GB, decimal, as cards are sold)."""
    units = {"gib": GIB, "gb": GB, "g": GB, "mib": MIB, "mb": 10 ** 6, "m": 10 ** 6, "": GB}
    s = text.strip().lower().replace(" ", "")
    number = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(number):]
    if unit not in units or not number:
        raise ValueError(f"`gpu_memory` must be a size like 24GB, 24GiB or 16000MiB, got {text!r}")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"`gpu_memory` must be a size like 24GB, 24GiB or 16000MiB, "
                         f"got {text!r}") from None
    if value <= 0:
        raise ValueError(f"`gpu_memory` must be positive, got {text!r}")
    return int(value * units[unit])
