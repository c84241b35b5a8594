r"""Builds the paper's 2AFC reader study (section 2.3.2) as one offline HTML page + a key.

  python -m tools.make_2afc --real='data/luna16_256/val-*.tfrecord' \
      --model_a=exports/luna256 --model_a_name=CRF-GAN \
      --model_b=exports/luna256_hagan --model_b_name=HA-GAN --output_dir=results/study --seed=0

--real, --model_a and --model_b each take a TFRecord glob, a folder / glob of NIfTI,
MetaImage or NRRD volumes, or a SavedModel (then --volumes_per_source volumes are generated
from --seed). Section 1: --section1_pairs real-vs-model-A pairs with a difficulty rating;
section 2: --section2_pairs model-A-vs-model-B pairs. Give readers `results/study/readers/study.html`
only; `results/study/key/` holds the answer key for tools.analyze_2afc. --label=K builds the study
from one class (labelled records, conditional models).
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.make_2afc: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.make_2afc").run())

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.core import intensity
from crfgan_tf.utils import dirlock

FLAGS = flags.FLAGS
flags.DEFINE_string("real", None, "Real volumes (section 1).")
flags.DEFINE_string("model_a", None, "Model A volumes or SavedModel (sections 1 and 2).")
flags.DEFINE_string("model_b", None, "Model B volumes or SavedModel (section 2).")
flags.DEFINE_string("model_a_name", "model A", "Name of model A in the key and the analysis.")
flags.DEFINE_string("model_b_name", "model B", "Name of model B in the key and the analysis.")
flags.DEFINE_string("output_dir", None, "Where readers/ and key/ are written.")
flags.DEFINE_integer("section1_pairs", 10, "Real vs model A pairs (the paper: 10).")
flags.DEFINE_integer("section2_pairs", 30, "Model A vs model B pairs (the paper: 30).")
flags.DEFINE_integer("volumes_per_source", 10, "Volumes read or generated per source.")
flags.DEFINE_integer("seed", 0, "Drives pairing, planes, positions, sides and generation.")
flags.DEFINE_list("planes", list(intensity.PLANES), "Planes to draw from.")
flags.DEFINE_list("position_range", ["0.3", "0.7"],
                  "Slice positions are drawn in this fraction of the axis.")
flags.DEFINE_list("window", [f"{v:g}" for v in intensity.CT_WINDOW],
                  "Training window (HU for CT): [-1, 1] volumes map back to it; integer "
                  "volume files are read in it.")
flags.DEFINE_integer("label", None, "One class only: real records of that label and conditional "
                     "models' samples of it.")
flags.DEFINE_bool("overwrite", False, "Replace a study already in --output_dir (its collected "
                  "answers can then no longer be analysed).")
flags.DEFINE_bool("break_lock", False,
                  "Take over --output_dir's lock when it was written on another host whose "
                  "process cannot be checked from here (only when that command is gone).")
flags.mark_flags_as_required(["output_dir"])
for _name in ("section1_pairs", "section2_pairs"):
    flags.register_validator(_name, lambda v: v >= 0, f"--{_name} must be >= 0")
flags.register_validator("volumes_per_source", lambda v: v >= 1,
                         "--volumes_per_source must be >= 1")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Data": "real model_a model_b model_a_name model_b_name label window",
    "Study design": "section1_pairs section2_pairs volumes_per_source planes position_range seed",
    "Output": "output_dir overwrite break_lock",
}
EXAMPLE = ("crfgan-make-2afc --real='data/luna16_256/val-*.tfrecord' --model_a=exports/luna256 "
           "--model_b=exports/luna256_hagan --output_dir=results/study")


@common.command()
def main(argv):
    del argv
    from crfgan_tf.evaluation import sources
    from crfgan_tf.studies.reader_study import build, StudyError

    window = sources.parse_range(FLAGS.window, "window")
    position_range = sources.parse_range(FLAGS.position_range, "position_range")
    needed = {"real": FLAGS.section1_pairs > 0,
              "model_a": FLAGS.section1_pairs + FLAGS.section2_pairs > 0,
              "model_b": FLAGS.section2_pairs > 0}
    # everything that can be refused is refused before a volume is generated
    for name, need in needed.items():
        if need and not getattr(FLAGS, name):
            if name == "model_b":
                raise StudyError(f"--model_b is required for section 2 (--section2_pairs="
                                 f"{FLAGS.section2_pairs}: model A against model B); with one "
                                 "model give --section2_pairs=0 for section 1 alone")
            raise StudyError(f"--{name} is required for the sections asked for")
    build.check_output_dir(FLAGS.output_dir, FLAGS.overwrite)
    with dirlock.DirLock(FLAGS.output_dir, "--output_dir", FLAGS.break_lock, common.log):
        _build(window, position_range, needed)


def _build(window, position_range, needed: dict) -> None:
    """The study's volumes, generated or read, and its files (under the output lock)."""
    from crfgan_tf.evaluation import sources
    from crfgan_tf.studies.reader_study import build

    volumes, specs = {}, {}
    for name, need in needed.items():
        spec = getattr(FLAGS, name)
        if not (need and spec):
            continue
        source = sources.open_source(spec, FLAGS.volumes_per_source, FLAGS.seed, 1, window,
                                     FLAGS.label)
        count = min(FLAGS.volumes_per_source, source.count or FLAGS.volumes_per_source)
        volumes[name] = build.load_hu_volumes(source, count, window, name, log=common.say)
        specs[name] = spec if FLAGS.label is None else f"{spec} (class {FLAGS.label})"
    build.make_study(
        volumes, FLAGS.output_dir, FLAGS.section1_pairs, FLAGS.section2_pairs,
        (FLAGS.model_a_name, FLAGS.model_b_name), FLAGS.seed, tuple(FLAGS.planes),
        position_range, sources=specs, overwrite=FLAGS.overwrite, log=common.say)


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main)
