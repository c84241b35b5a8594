"""Trains CRF-GAN.

  python -m crfgan_tf.train --flagfile=configs/luna.flags

Starting again with the same --model_dir resumes from its latest checkpoint; raising
--train_steps continues a finished run. Only --train_steps, the logging, image and
checkpoint intervals, --keep_checkpoints, --profile_steps, --jit_compile, --strategy and
--cpu_devices may change on resume, and with --allow_change=FIELD the learning rates,
precision, batch, augmentation and evaluation settings; other changes are refused
(crfgan_tf/run/rundir.py). --init_from=SOURCE starts a new run from another model's
weights (fine-tuning).
--dry_run checks the flags and the records (they exist and hold --img_size^3 volumes),
prints the resolved config and exits.

SIGTERM, SIGINT and SIGUSR1 (--save_on_signals) stop the run after the step in progress
with a checkpoint at that step; the exit status is then 128 + the signal's number (143
for SIGTERM, 130 for SIGINT, 138 for SIGUSR1), or 0 with --exit_zero_on_signal. A second
signal ends the process at once (the previous checkpoint stays intact). While it runs,
the command holds the lock `--model_dir/.crfgan.lock`: a second writer is refused.
Exit status: 0 done, 2 invalid flags or inputs, a locked or unwritable run directory, a
full disk; 3 a non-finite loss; 4 out of memory (one line: the phase, the memory
planner's largest batch on this device, the flags that cut memory); 128 + N stopped by
signal N.
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.train: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.train").run())

import os
import sys

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.core import geometry
from crfgan_tf.run import config as config_lib
from crfgan_tf.run import rundir
from crfgan_tf.utils import runtime

FLAGS = flags.FLAGS
_D = config_lib.TrainConfig  # defaults live in one place: the dataclass
_defaults = {f.name: f.default for f in __import__("dataclasses").fields(_D)}

flags.DEFINE_string("model_dir", None, "Run directory: checkpoints, TensorBoard logs, config.json.")
flags.DEFINE_string("train_records", _defaults["train_records"],
                    "Glob(s) of training TFRecords (comma-separated), from crfgan-convert.")
flags.DEFINE_enum("model", _defaults["model"], list(config_lib.MODELS),
                  "crfgan (the paper) or hagan (the HA-GAN baseline: 128, 256 and, beyond the reference, "
                  "512; docs/resolution.md).")
flags.DEFINE_integer("img_size", _defaults["img_size"],
                     "Volume side S: 64, 128, 256 or 512 (crfgan_tf.core.geometry.SIZES; 512 is "
                     "beyond the references, docs/resolution.md).")
flags.DEFINE_integer("embedding_factor", _defaults["embedding_factor"],
                     common.EMBEDDING_FACTOR_HELP)
common.validate_embedding_factor("model")
flags.DEFINE_integer("batch_size", _defaults["batch_size"],
                     "Global batch size: all replicas together; it must divide by the "
                     "replicas. Learning rates are not scaled with it.")
flags.DEFINE_integer("per_replica_batch_size", _defaults["per_replica_batch_size"],
                     "> 0: the global batch is this times the replicas (GPUs, workers x GPUs "
                     "or --cpu_devices), whatever their number; --batch_size is then not used.")
flags.DEFINE_integer("train_steps", _defaults["train_steps"], "Total training iterations.")
flags.DEFINE_integer("latent_dim", _defaults["latent_dim"], "Size of the latent z.")
flags.DEFINE_float("width", _defaults["width"], "Channel multiplier (1 = the paper's networks).")
flags.DEFINE_float("d_width", _defaults["d_width"],
                   "D's channel multiplier (HA-GAN: D and D^L); 0 = --width. A wider D on "
                   "small data: docs/training.md. Exports hold no D.")
flags.DEFINE_float("head_width", _defaults["head_width"],
                   "G2's hidden channel multiplier (its blocks before the output); 0 = "
                   "--width. A wider G2 renders HU closer to the data's at small width: "
                   "docs/training.md. Part of the architecture (exports keep it).")
flags.DEFINE_bool("d_minibatch_std", _defaults["d_minibatch_std"],
                  "D also sees the standard deviation of its features over the batch "
                  "(StyleGAN's minibatch std): a batch of one repeated body looks fake. "
                  "Needs >= 2 examples per replica. Not the reference's.")
flags.DEFINE_bool("rec_trains_head", _defaults["rec_trains_head"],
                  "The reconstruction phase (L1 of G2(hE(x)) against real crops) also updates "
                  "G2, not hE alone (the reference): a direct signal for G2's HU.")
flags.DEFINE_float("lr_g", _defaults["lr_g"], "Generator (G1, G2) learning rate.")
flags.DEFINE_float("lr_d", _defaults["lr_d"], "Discriminator learning rate.")
flags.DEFINE_float("lr_crf", _defaults["lr_crf"],
                   "CRF learning rate: 4e-4 as the reference code (lr_d); the paper states 1e-4.")
flags.DEFINE_float("lr_e", _defaults["lr_e"], "Half-encoder learning rate.")
flags.DEFINE_float("beta_1", _defaults["beta_1"], "Adam beta_1 (all optimizers).")
flags.DEFINE_float("beta_2", _defaults["beta_2"], "Adam beta_2 (all optimizers).")
flags.DEFINE_float("adam_epsilon", _defaults["adam_epsilon"], "Adam epsilon.")
flags.DEFINE_enum("adam", _defaults["adam"], list(config_lib.ADAM_VARIANTS),
                  "pytorch: epsilon after the bias correction (the reference's torch.optim.Adam); "
                  "keras: keras.optimizers.Adam (epsilon before it, 31.6x larger at step 1).")
flags.DEFINE_float("crf_weight_start", _defaults["crf_weight_start"], "w at step 0.")
flags.DEFINE_integer("crf_weight_decay_steps", _defaults["crf_weight_decay_steps"],
                     "w = max(start - start * step / this, 0).")
flags.DEFINE_float("crf_decay_fraction", _defaults["crf_decay_fraction"],
                   "> 0: w decays to 0 over this fraction of --train_steps (the paper's "
                   "60,000 of 80,000: 0.75) instead of --crf_weight_decay_steps; 0: off.")
flags.DEFINE_enum("weight_init", _defaults["weight_init"], list(config_lib.WEIGHT_INITS),
                  "Initial weights of G1, G2, hE (and HA-GAN's other networks): pytorch = "
                  "U(+-1/sqrt(fan_in)) kernels and biases, the reference's PyTorch defaults; "
                  "keras = glorot-uniform kernels, zero biases (crfgan-tf before 0.3.0). "
                  "D: PyTorch's in both.")
flags.DEFINE_float("r1_gamma", _defaults["r1_gamma"],
                   "> 0: R1 penalty (gamma/2) E||grad D(x)||^2 on real sub-volumes in D's "
                   "phase (small data: docs/training.md); 0: the paper's loss.")
flags.DEFINE_float("ema_decay", _defaults["ema_decay"],
                   "> 0: keep an exponential moving average of G1 and G2 with this decay "
                   "(e.g. 0.999), used for evaluation, images, export and sampling; 0: none.")
flags.DEFINE_integer("crf_iterations", _defaults["crf_iterations"], "Mean-field iterations.")
flags.DEFINE_enum("crf_nodes", _defaults["crf_nodes"], ["slices", "channels"],
                  "CRF nodes: axial slices (paper) or channel groups (reference code).")
flags.DEFINE_enum("crf_sample", _defaults["crf_sample"], list(config_lib.CRF_SAMPLES),
                  "CRF phase: fresh = a new z, G and D run again on it (the reference); "
                  "reuse = phase 2's embedding and D logit (one G and D forward less).")
flags.DEFINE_integer("crf_encoder_slab", _defaults["crf_encoder_slab"],
                     "CRF phase: hE encodes the whole real volume this many embedding slices "
                     "(--embedding_factor times as many volume slices) at a time: the same "
                     "embedding up to float rounding in less memory, for more time (512^3 "
                     "batch 1 on CPU with 8: -51 % memory, +110 % per iteration). 0: in one "
                     "pass (the reference). May change when a run resumes.")
flags.DEFINE_bool("remat", _defaults["remat"], common.REMAT_HELP)
flags.DEFINE_enum("hagan_low_res", _defaults["hagan_low_res"], list(config_lib.LOW_RES_MODES),
                  "HA-GAN's S/4 real volume: nearest (every 4th voxel, the reference) or "
                  "average (4^3 average pooling, anti-aliased).")
flags.DEFINE_integer("num_classes", _defaults["num_classes"],
                     "Classes of a conditional model (the references' --num-class; 0: "
                     "unconditional). Needs records converted with --labels_csv.")
flags.DEFINE_float("lambda_class", _defaults["lambda_class"],
                   "Weight of G's auxiliary-classifier loss (the references' --lambda-class).")
flags.DEFINE_enum("fake_labels", _defaults["fake_labels"], list(config_lib.FAKE_LABELS),
                  "Labels of generated samples: batch = the real batch's (the references), "
                  "uniform = drawn uniformly.")
flags.DEFINE_bool("balance_classes", _defaults["balance_classes"],
                  "Draw every class equally often (records with replacement), for imbalanced "
                  "archives.")
flags.DEFINE_enum("mixed_precision", _defaults["mixed_precision"], list(config_lib.PRECISIONS),
                  "Keras dtype policy.")
flags.DEFINE_enum("strategy", _defaults["strategy"], list(config_lib.STRATEGIES),
                  "tf.distribute strategy (multi_worker reads TF_CONFIG).")
flags.DEFINE_integer("cpu_devices", _defaults["cpu_devices"],
                     "Split the CPU into this many logical devices; with --strategy=mirrored "
                     "on a machine without GPUs each is a replica (to try multi-replica runs).")
flags.DEFINE_integer("seed", _defaults["seed"], "Seed of the data order, crops and latents.")
flags.DEFINE_integer("shuffle_buffer", _defaults["shuffle_buffer"], "Records in the shuffle buffer.")
flags.DEFINE_integer("log_every", _defaults["log_every"], "Steps between progress lines and scalars.")
flags.DEFINE_integer("checkpoint_every", _defaults["checkpoint_every"], "Steps between checkpoints.")
flags.DEFINE_integer("image_every", _defaults["image_every"], "Steps between image summaries.")
flags.DEFINE_integer("keep_checkpoints", _defaults["keep_checkpoints"], "Checkpoints kept.")
flags.DEFINE_string("profile_steps", _defaults["profile_steps"],
                    "'first,last': capture a TensorBoard profiler trace of these steps.")
flags.DEFINE_bool("jit_compile", _defaults["jit_compile"], "XLA-compile the train step.")
flags.DEFINE_integer("eval_every", _defaults["eval_every"],
                     "Steps between in-training evaluations (FD/MMD, intensity and lung "
                     "statistics, MS-SSIM diversity, r_t; eval.jsonl and TensorBoard's eval/); "
                     "0: off. A fresh run also evaluates at step 0.")
flags.DEFINE_string("eval_records", _defaults["eval_records"],
                    "Records to evaluate against (default: the val-* records beside "
                    "--train_records).")
flags.DEFINE_integer("eval_samples", _defaults["eval_samples"],
                     "Volumes generated per evaluation, from fixed latents.")
flags.DEFINE_integer("eval_feature_side", _defaults["eval_feature_side"],
                     "MedicalNet's input side in the evaluation. " + common.FEATURE_SIDE_HELP)
flags.DEFINE_string("fid_weights", _defaults["fid_weights"],
                    "MedicalNet ResNet-50 .npz (tools.import_medicalnet) for FD = FID; without "
                    "it a fixed-seed random network (labelled; the run's own trend only).")
flags.DEFINE_enum("best_metric", _defaults["best_metric"], list(config_lib.BEST_METRICS),
                  "Evaluation metric that picks the best checkpoint (model_dir/best; "
                  "crfgan_tf.export --step=best): coverage (k-NN coverage of the real "
                  "volumes, higher is better, ties to the lower FD: what noise and a "
                  "collapse cannot fake) or a distance (lower is better).")
flags.DEFINE_string("augment", _defaults["augment"],
                    "Differentiable augmentation of every volume D sees, comma-separated: "
                    "translation, cutout, intensity (no flips). Off by default (the paper).")
flags.DEFINE_float("augment_p", _defaults["augment_p"],
                   "Probability per example and transform (with --ada_target: the start).")
flags.DEFINE_float("ada_target", _defaults["ada_target"],
                   "> 0: adapt --augment_p so that r_t, the share of D's real logits above 0, "
                   "stays at this (ADA's 0.6 on E[sign] is 0.8 here).")
flags.DEFINE_float("ada_speed", _defaults["ada_speed"], "ADA: change of p per step.")
flags.DEFINE_string("save_on_signals", _defaults["save_on_signals"],
                    "Signals that stop training after the current step with a checkpoint at "
                    "that step (Slurm: SIGTERM, or SIGUSR1 with #SBATCH --signal=USR1@120); "
                    "'none': off (the signals' default action).")
flags.DEFINE_string("init_from", _defaults["init_from"],
                    "Start a new run from another model's weights (fine-tuning): a run "
                    "directory (its latest checkpoint; DIR@STEP, DIR@best), an export "
                    "directory (its weights package, or its SavedModel's variables) or a run "
                    "imported by crfgan-import-reference. The architecture flags must be the "
                    "source's; data, learning rates, augmentation and schedule may differ; "
                    "optimizers start fresh at step 0. Used only when --model_dir has no "
                    "checkpoint (docs/fine-tuning.md).")
flags.DEFINE_string("init_networks", _defaults["init_networks"],
                    "Which networks --init_from gives: all (every network the source holds; "
                    "an export holds G1, G2 and the encoders) or a comma-separated list of "
                    "generator, encoder, discriminator, crf.")
flags.DEFINE_list("allow_change", [],
                  "On resume, accept these changed settings (logged with their step in "
                  "--model_dir/config_changes.jsonl): " + ", ".join(rundir.CHANGEABLE_FIELDS)
                  + ". Architecture, data and seed cannot change (use --init_from).")
flags.DEFINE_bool("exit_zero_on_signal", False,
                  "Exit with status 0 after a --save_on_signals stop (default: 128 + the "
                  "signal's number, e.g. 143 for SIGTERM, as for a process the signal ended).")
flags.DEFINE_bool("break_lock", False,
                  "Take over the run directory's lock when it was written on another host "
                  "whose process cannot be checked from here (only when that run is gone). "
                  "A lock of this host whose process has ended is taken over without it.")
flags.DEFINE_bool("dry_run", False, "Check the flags and the records, print the resolved "
                  "config and exit.")
flags.DEFINE_string("demo_data_dir", "",
                    "If set, first write and convert the phantom CT demo data there "
                    "(skipped when present, and when --train_records lies elsewhere: your "
                    "own data); configs/demo.flags sets it.")
flags.DEFINE_bool("demo_nodules", False,
                  "With --demo_data_dir: phantoms with lung nodules in half of the scans, "
                  "labelled 0/1 (configs/demo_conditional.flags).")
flags.mark_flag_as_required("model_dir")
flags.register_validator("img_size", lambda v: v in geometry.SIZES,
                         message=f"--img_size must be one of {geometry.SIZES}")
flags.register_validator("batch_size", lambda v: v >= 1, message="--batch_size must be >= 1")
flags.register_validator("train_steps", lambda v: v >= 0, message="--train_steps must be >= 0")
flags.register_validator("width", lambda v: 0 < v <= 4, message="--width must be in (0, 4]")


def config_from_flags() -> config_lib.TrainConfig:
    """The flags as a TrainConfig, with the run directory's resume rules applied
    (rundir.resume_config: what a start of --model_dir runs with)."""
    names = [f.name for f in __import__("dataclasses").fields(config_lib.TrainConfig)]
    return rundir.resume_config(config_lib.TrainConfig(**{n: getattr(FLAGS, n) for n in names}))


def _flags_text() -> str:
    """The command line as a flagfile (flags.txt, which resumes the run): this command's
    own flags only (TensorFlow and absl.testing define flags of their own once loaded,
    which a fresh process does not know), without --break_lock: a one-off decision, not
    a setting of the run."""
    own = FLAGS.get_flags_for_module(sys.modules[__name__])
    return "".join(flag.serialize() + "\n" for flag in sorted(own, key=lambda f: f.name)
                   if flag.name not in ("break_lock", "allow_change") and flag.serialize())


def _own_flags_of_run_flagfiles(argv):
    """argv with each `--flagfile=<run>/flags.txt` replaced by that file's lines for this
    command's own flags. Earlier versions wrote every flag the process had defined, also
    TensorFlow's and absl.testing's (--test_random_seed, --hbm_oom_exit, ...), which
    this command does not define; a flags.txt is this command's own output, so those
    lines are dropped, with a note. Any other flagfile is left to absl (an unknown flag
    there is an error)."""
    own = {flag.name for flag in FLAGS.get_flags_for_module(sys.modules[__name__])}
    out = []
    for arg in argv:
        path = arg.split("=", 1)[1] if arg.startswith(("--flagfile=", "-flagfile=")) else ""
        if os.path.basename(path) != rundir.FLAGS_FILE or not os.path.isfile(path):
            out.append(arg)
            continue
        kept, dropped = [], []
        for line in open(path).read().splitlines():
            name = line.lstrip("-").split("=", 1)[0]
            if not line.startswith("-"):
                continue
            if name in own or (name.startswith("no") and name[2:] in own):
                kept.append(line)
            else:
                dropped.append(name)
        if dropped:
            print(f"train: {path}: ignoring {len(dropped)} flags this command does not define "
                  f"(written by an earlier version: {', '.join(dropped[:4])}, ...)",
                  file=sys.stderr)
        out.extend(kept)
    return out


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Data": "train_records demo_data_dir demo_nodules shuffle_buffer seed",
    "Model": "model img_size embedding_factor latent_dim width num_classes lambda_class "
             "fake_labels balance_classes crf_iterations crf_nodes crf_sample crf_encoder_slab "
             "remat crf_weight_start crf_weight_decay_steps crf_decay_fraction hagan_low_res",
    "Optimisation": "batch_size per_replica_batch_size train_steps lr_g lr_d lr_crf lr_e beta_1 "
                    "beta_2 adam_epsilon adam",
    "Stabilisers (small data)": "weight_init r1_gamma ema_decay d_width head_width "
                                "d_minibatch_std rec_trains_head",
    "Augmentation": "augment augment_p ada_target ada_speed",
    "Speed and devices": "mixed_precision jit_compile strategy cpu_devices",
    "Evaluation during training": "eval_every eval_records eval_samples eval_feature_side fid_weights best_metric",
    "Output and monitoring": "model_dir log_every checkpoint_every image_every keep_checkpoints "
                             "profile_steps",
    "Starting from a trained model": "init_from init_networks",
    "Stopping and resuming": "allow_change save_on_signals exit_zero_on_signal break_lock dry_run",
}
EXAMPLE = "crfgan-train --flagfile=configs/luna.flags --model_dir=runs/luna256"


def _out_of_memory(err) -> str:
    """The line crfgan-train ends with when a device runs out of memory: the phase and step,
    the device, the memory planner's largest batch for this configuration on it, and the
    flags that cut memory."""
    config = config_from_flags()
    phase = f"the {err.phase} at step {err.step}" if hasattr(err, "phase") else "training"
    batch = config.per_replica_batch_size or config.batch_size
    if phase.startswith("the input pipeline"):
        cuts, plan = ("a lower `batch_size` (a batch of whole volumes is assembled in host "
                      "memory), which resumes this run with `allow_change=batch_size`"), ""
    elif phase.startswith("the in-training"):
        cuts, plan = ("`eval_every=0`, which resumes this run (evaluate afterwards with "
                      "crfgan-fid-mmd); `eval_feature_side=128` or fewer `eval_samples`, which "
                      "resume it with `allow_change=eval_feature_side,eval_samples`"), ""
    else:
        cuts = ("`crf_encoder_slab=16` (CRF-GAN) or `remat`, which resume this run; a lower "
                "`batch_size` (or `per_replica_batch_size`) or `mixed_precision=mixed_float16` "
                "on a GPU, which resume it with `allow_change=batch_size,mixed_precision`")
        plan = _planner_says(config, batch)
    described = common.device_text()
    kept = "" if not hasattr(err, "phase") else (
        f"; the last checkpoint, {err.checkpoint}, is intact" if err.checkpoint else
        "; no checkpoint was written yet")
    return (f"out of memory in {phase} on {described}{plan}; what cuts memory: {cuts} "
            f"(crfgan-plan-memory --model={config.model} --img_size={config.img_size} "
            f"--width={config.width:g} --batch_size={batch} breaks it down){kept}")


def _planner_says(config, batch: int) -> str:
    """"; the memory planner's largest batch per device here is N (this run: B)", or why
    it is not below this run's batch, or "" when the planner cannot run."""
    try:
        import tensorflow as tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
        described, device_bytes = runtime.device_memory()
        if not device_bytes:
            return ""
        print(f"train: out of memory; asking the memory planner what fits on {described} ...",
              file=sys.stderr, flush=True)
        fit = _planned_batch(config, device_bytes, gpu)
    except Exception as plan_err:  # noqa: BLE001 - a planner failure must not hide the error
        print(f"train: the memory planner could not run: {plan_err}"[:300], file=sys.stderr)
        fit = None
    if fit is None:
        return ""
    if fit < batch:
        return f"; the memory planner's largest batch per device here is {fit} (this run: {batch})"
    return (f"; the memory planner puts the largest batch per device here at {fit}, no lower "
            f"than this run's {batch}: what ran out is outside what it models (on a CPU it "
            "models oneDNN's allocator and resident memory; docs/training.md#out-of-memory)")


def _planned_batch(config, device_bytes: int, gpu: bool) -> int:
    """The memory planner's largest batch for `config` in `device_bytes` (a GPU's
    gpu_bytes, or the CPU's working memory), from crfgan-plan-memory in a process of its
    own: this one has just run out of memory, and the planner builds the model."""
    import json
    import subprocess

    memory = f"--{'gpu' if gpu else 'cpu'}_memory={device_bytes / 2 ** 20:.0f}MiB"
    args = [f"--model={config.model}", f"--img_size={config.img_size}", "--batch_size=1",
            f"--precision={config.mixed_precision}", f"--width={config.width}",
            f"--latent_dim={config.latent_dim}", f"--crf_sample={config.crf_sample}",
            f"--crf_encoder_slab={config.crf_encoder_slab}",
            f"--num_classes={config.num_classes}",
            f"--embedding_factor={config.embedding_factor}",
            f"--{'' if config.remat else 'no'}remat", memory, "--nofits", "--json"]
    code = "import sys; from crfgan_tf.cli import plan_memory; sys.argv[1:] = %r; " \
           "plan_memory.run()" % args
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=900, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip()
                           else f"exit {out.returncode}")
    plan = json.loads(out.stdout.strip().splitlines()[-1])
    return plan[f"largest_batch_on_{'gpu' if gpu else 'cpu'}_memory"]


@common.command(statuses={"crfgan_tf.training.loop:NonFiniteLossError": 3}, oom=_out_of_memory)
def main(argv):
    del argv
    config = config_from_flags()
    config.validate()
    rundir.parse_allow_change(",".join(FLAGS.allow_change))
    common.warn_if_gpu_unseen()  # loads TensorFlow only where an NVIDIA driver is
    if FLAGS.dry_run:  # what a start checks before any work, the records too
        from crfgan_tf.data import record_files  # no TensorFlow

        record_files.check_records(config.train_records, config.img_size)
        source = config.init_from.rsplit("@", 1)[0] if "@" in config.init_from and \
            not os.path.exists(config.init_from) else config.init_from
        if source and not os.path.isdir(source):
            raise common.CommandError(f"--init_from {source!r} is not a directory (a run "
                                      "directory, or an export of crfgan-export)")
        print(config.to_json())
        return 0
    runtime.quiet_tensorflow()
    runtime.note_baseline_memory()  # what the out-of-memory line's free memory leaves out
    from crfgan_tf.training import loop as train_lib
    from crfgan_tf.utils import preemption

    if FLAGS.demo_data_dir and not _under(config.train_records, FLAGS.demo_data_dir):
        common.log(f"train: --train_records is not under --demo_data_dir "
                   f"({FLAGS.demo_data_dir}): training on those records, no phantoms made")
    elif FLAGS.demo_data_dir:
        from crfgan_tf.data import demo

        demo.prepare_demo_data(FLAGS.demo_data_dir, size=config.img_size, log=common.log,
                               nodules=FLAGS.demo_nodules)
    try:
        train_lib.train(config, log=common.log, flags_text=_flags_text(),
                        break_lock=FLAGS.break_lock, allow_change=tuple(FLAGS.allow_change))
    except preemption.Interrupted as err:  # a stop, not an error: train has said where it saved
        return preemption.exit_status(err.signum, FLAGS.exit_zero_on_signal)
    return 0


def _under(pattern: str, directory: str) -> bool:
    """Whether every part of a records pattern lies inside `directory`."""
    root = os.path.abspath(directory)
    return all(os.path.commonpath([root, os.path.abspath(part)]) == root
               for part in pattern.split(",") if part)


def run():
    """The command (console script, python -m shim)."""
    sys.argv[1:] = _own_flags_of_run_flagfiles(sys.argv[1:])
    common.run_command(main, load_tensorflow=False)
