r"""The head-to-head study: CRF-GAN against HA-GAN (or any arms) trained with several seeds
on the same records, measured against the real volumes, compared with intervals and tests.

  crfgan-study --study_dir=studies/luna128 --train_records='data/luna16_128/train-*.tfrecord' \
      --real_records='data/luna16_128/val-*.tfrecord' --arms=crfgan,hagan --seeds=0,1 \
      --train_steps=20000 --eval_every=5000 --num_samples=64 --img_size=128 \
      --fid_weights=weights/medicalnet_resnet50.npz --fid25d_weights=weights/RadImageNet-ResNet50_notop.h5

Each arm is a model (crfgan, hagan) or NAME=FLAGFILE, a flagfile of training flags (its
--model and its overrides of the common ones). --img_size, --width and --batch_size and any
--train_flags are given to every arm. The stages (train -> export -> sample and measure ->
report) resume: a rerun continues, a finished study does nothing. It writes
STUDY_DIR/report.html (figures embedded, opens offline), report.json (every number) and
report.md. docs/study.md explains the page; docs/evaluation.md each statistic.
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.study: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.study").run())

import os
import shlex

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.core.geometry import FEATURE_SIDE, MIN_FEATURE_SIDE, SIZES

FLAGS = flags.FLAGS
flags.DEFINE_string("study_dir", None, "The study's directory (created; a rerun continues it).")
flags.DEFINE_string("train_records", None, "TFRecord glob every arm trains on.")
flags.DEFINE_string("real_records", None, "TFRecord glob of the real volumes the arms are "
                    "measured against (e.g. the val-* split, or all records).")
flags.DEFINE_list("arms", ["crfgan", "hagan"], "Arms: crfgan, hagan, or NAME=FLAGFILE.")
flags.DEFINE_list("seeds", ["0", "1"], "Training seeds; every arm trains once per seed.")
flags.DEFINE_integer("train_steps", None, "Training steps of every run.")
flags.DEFINE_integer("eval_every", 0, "Also measure every N steps (0: the last step only).")
flags.DEFINE_integer("num_samples", 32, "Generated volumes per arm, seed and step.")
flags.DEFINE_integer("img_size", 128, "Volume side of every arm.")
flags.DEFINE_float("width", 1.0, "Channel width factor of every arm.")
flags.DEFINE_integer("batch_size", 2, "Training batch of every arm.")
flags.DEFINE_string("train_flags", "", "Further crfgan-train flags for every arm, as one "
                    "string (e.g. '--lr_g=1e-4 --crf_weight_decay_steps=1000').")
flags.DEFINE_string("fid_weights", "", "MedicalNet ResNet-50 .npz for the 3D FID "
                    "(crfgan-import-medicalnet).")
flags.DEFINE_string("fid25d_weights", "", "RadImageNet ResNet-50 Keras .h5 for the 2.5D FID.")
flags.DEFINE_bool("allow_random_features", False, "Without weights, the fixed-seed random "
                  "networks (labelled; the study's own comparison only).")
flags.DEFINE_integer("feature_side", FEATURE_SIDE, "MedicalNet's input side. "
                     + common.FEATURE_SIDE_HELP)
flags.DEFINE_integer("resamples", 1000, "Bootstrap resamples of each interval (the 2.5D "
                     "FID's: a twentieth).")
flags.DEFINE_integer("permutations", 1000, "Permutations of each between-arm test.")
flags.DEFINE_bool("break_lock", False, "Take over the study directory's lock from a holder "
                  "known to be gone (another host's).")
flags.mark_flags_as_required(["study_dir", "train_records", "real_records", "train_steps"])
flags.register_validator("img_size", lambda v: v in SIZES,
                         f"--img_size must be one of {list(SIZES)}")
flags.register_validator("feature_side", lambda v: v >= MIN_FEATURE_SIDE,
                         f"--feature_side must be >= {MIN_FEATURE_SIDE}")

HELP_GROUPS = {
    "Study": "study_dir arms seeds train_steps eval_every num_samples",
    "Data": "train_records real_records",
    "Training (every arm)": "img_size width batch_size train_flags",
    "Features": "fid_weights fid25d_weights allow_random_features feature_side",
    "Statistics": "resamples permutations",
    "Running": "break_lock",
}
EXAMPLE = ("crfgan-study --study_dir=studies/mini --train_records='data/p128/train-*.tfrecord' "
           "--real_records='data/p128/*.tfrecord' --arms=crfgan,hagan --seeds=0,1 "
           "--train_steps=1500 --num_samples=16 --width=0.125 --allow_random_features")


def _seeds(values) -> list:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise common.CommandError(f"--seeds must be integers, got {','.join(values)}") from None


@common.command(oom=common.default_out_of_memory(
    "the study", "a lower `batch_size` or `num_samples`, or `feature_side=128`"),
    errors=("crfgan_tf.studies.study:StudyError",))
def main(argv):
    del argv
    from crfgan_tf.studies import study as study_lib

    config = study_lib.StudyConfig(
        study_dir=FLAGS.study_dir, train_records=FLAGS.train_records,
        real_records=FLAGS.real_records, arms=study_lib.parse_arms(FLAGS.arms),
        seeds=_seeds(FLAGS.seeds), train_steps=FLAGS.train_steps, num_samples=FLAGS.num_samples,
        eval_every=FLAGS.eval_every, img_size=FLAGS.img_size, width=FLAGS.width,
        batch_size=FLAGS.batch_size, train_flags=shlex.split(FLAGS.train_flags),
        fid_weights=FLAGS.fid_weights, fid25d_weights=FLAGS.fid25d_weights,
        allow_random_features=FLAGS.allow_random_features, feature_side=FLAGS.feature_side,
        resamples=FLAGS.resamples, permutations=FLAGS.permutations)
    config.validate()
    if FLAGS.fid25d_weights and not os.path.isfile(FLAGS.fid25d_weights):
        raise common.CommandError(f"--fid25d_weights: no file {FLAGS.fid25d_weights!r}")
    if FLAGS.fid_weights and not os.path.isfile(FLAGS.fid_weights):
        raise common.CommandError(f"--fid_weights: no file {FLAGS.fid_weights!r}")
    from crfgan_tf.utils import runtime

    runtime.quiet_tensorflow()  # the stages load it: without its C++ start-up lines
    report = study_lib.Study(config, common.log).run(FLAGS.break_lock)
    for pair in report["pairs"]:
        fd = pair["fd"]
        common.say(f"{pair['a']} - {pair['b']}: FD difference {fd['value']:.4g} "
                   f"[{fd['ci95'][0]:.4g}, {fd['ci95'][1]:.4g}], p = {fd['p_value']:.3g}")
    for name, arm in report["arms"].items():
        for alarm in arm["final"]["alarms"]:
            common.say(f"warning: {name}: {alarm}")
    common.say(f"report: {os.path.join(FLAGS.study_dir, 'report.html')}")
    return 0


def run():
    """The command (console script, python -m shim). TensorFlow loads only when a stage
    needs it: a refused flag costs no import."""
    common.run_command(main, load_tensorflow=False)
