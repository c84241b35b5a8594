r"""3D FID and MMD of generated volumes against real ones, on MedicalNet ResNet-50 features.

  python -m tools.fid_mmd --real='data/luna16_256/val-*.tfrecord' --fake=exports/luna256 \
      --num_samples=2048 --seed=0 --weights=weights/medicalnet_resnet50.npz --json

--real and --fake each take a TFRecord glob, a folder / file / glob of NIfTI, MetaImage or
NRRD volumes, or a SavedModel (then --num_samples volumes are generated from --seed).
--label=K compares one class (labelled records of class K, a conditional model's class K).
Features of the real set are cached in --cache_dir, keyed on the data, the extractor and its
weights. Without --weights the tool refuses, unless --allow_random_features asks for the
labelled fixed-seed random network (smoke tests, relative comparisons only).
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.fid_mmd: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.fid_mmd").run())

import json
import os

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.core import intensity
from crfgan_tf.core.geometry import FEATURE_SIDE, MIN_FEATURE_SIDE

FLAGS = flags.FLAGS
flags.DEFINE_string("real", None, "Real volumes: TFRecord glob, volume folder/glob, or SavedModel.")
flags.DEFINE_string("fake", None, "Generated volumes: SavedModel, volume folder/glob or TFRecords.")
flags.DEFINE_integer("num_samples", 2048, "Volumes to generate from a SavedModel source.")
flags.DEFINE_integer("seed", 0, "Sample i of a SavedModel source uses latent (seed, i).")
flags.DEFINE_integer("batch_size", 1, "Volumes per generator / feature-extractor call.")
flags.DEFINE_string("weights", None, "MedicalNet ResNet-50 .npz from tools.import_medicalnet.")
flags.DEFINE_bool("allow_random_features", False,
                  "Without --weights, use a fixed-seed random ResNet-50 (labelled; not FID).")
flags.DEFINE_list("window", [f"{v:g}" for v in intensity.CT_WINDOW],
                  "Intensity window of integer volume files (HU for CT), mapped to [-1, 1].")
flags.DEFINE_string("cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "crfgan_tf"),
                    "Where real-set features are cached ('' to disable).")
flags.DEFINE_integer("feature_side", FEATURE_SIDE, "MedicalNet's input side. " + common.FEATURE_SIDE_HELP)
flags.DEFINE_bool("json", False, "Print one JSON object.")
flags.DEFINE_bool("quality_check", False,
                  "Also report the share of --fake's generated volumes that pass the quality "
                  "gate of its export (quality_ranges.json; docs/generation.md), in the "
                  "output and as `quality` in --json.")
flags.DEFINE_integer("label", None, "Compare one class: the records of that label and a "
                     "conditional SavedModel's samples of it.")
flags.mark_flags_as_required(["real", "fake"])
flags.register_validator("num_samples", lambda v: v >= 2, "--num_samples must be >= 2")
flags.register_validator("batch_size", lambda v: v >= 1, "--batch_size must be >= 1")
flags.register_validator("feature_side", lambda v: v >= MIN_FEATURE_SIDE,
                         f"--feature_side must be >= {MIN_FEATURE_SIDE} (MedicalNet "
                         "down-samples 16x)")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Data": "real fake num_samples seed label window",
    "Features": "weights allow_random_features feature_side cache_dir",
    "Running": "batch_size",
    "Output": "json quality_check",
}
EXAMPLE = ("crfgan-fid-mmd --real='data/luna16_256/val-*.tfrecord' --fake=exports/luna256 "
           "--weights=weights/medicalnet_resnet50.npz")


@common.command(oom=common.default_out_of_memory(
    "evaluation (generating volumes and extracting MedicalNet features)",
    "a lower `batch_size`, or `feature_side=128` (features at another side are not comparable)"))
def main(argv):
    del argv
    from crfgan_tf.evaluation import features, fid_mmd, sources

    log = common.log if FLAGS.json else common.say
    window = sources.parse_range(FLAGS.window, "window")
    opened = {name: sources.open_source(getattr(FLAGS, name), FLAGS.num_samples,
                                        FLAGS.seed, FLAGS.batch_size, window, FLAGS.label)
              for name in ("real", "fake")}
    extractor = features.load_extractor(FLAGS.weights, FLAGS.allow_random_features,
                                        max_side=FLAGS.feature_side)
    log(f"extractor {extractor.name}, weights sha256 {extractor.weights_sha256}")
    for name, source in opened.items():
        log(f"--{name}: {source.kind}, {source.count} volumes")
    gate_summary = None
    if FLAGS.quality_check:
        from crfgan_tf.evaluation import quality

        if opened["fake"].kind != "savedmodel":
            raise common.CommandError("--quality_check needs --fake to be an export (its "
                                      "quality_ranges.json holds the gate's ranges)")
        ranges = quality.read_ranges(FLAGS.fake)
        opened["fake"], gate_summary = quality.observed(opened["fake"], ranges,
                                                        ranges.get("window", window))
    result = fid_mmd.fid_mmd(opened["real"], opened["fake"], extractor,
                             FLAGS.batch_size, FLAGS.cache_dir or None, log)
    if gate_summary:
        result["quality"] = gate_summary()
        q = result["quality"]
        log(f"quality gate: {q['passed']} of {q['volumes']} generated volumes pass "
            f"({q['pass_rate']:.0%}); failing statistics {q['failed'] or 'none'}")
    if FLAGS.json:
        print(json.dumps(result))
        return 0
    label = "FID" if result["pretrained"] else "FD on RANDOM features (not FID)"
    print(f"{label}: {result['fid']:.6g}")
    print(f"MMD^2 (unbiased, Gaussian kernel, sigma {result['mmd_sigma']:.4g}): "
          f"{result['mmd']:.6g}")
    print(f"n_real {result['n_real']}, n_fake {result['n_fake']}, extractor "
          f"{result['extractor']}, weights sha256 {result['weights_sha256']}")
    sides = (result["real_feature_side"], result["fake_feature_side"])
    shapes = (max(result["real_shape"]), max(result["fake_shape"]))
    if sides != shapes:
        print(f"features taken at {sides[0]}^3 (real, from {shapes[0]}^3) and {sides[1]}^3 "
              f"(fake, from {shapes[1]}^3): --feature_side={FLAGS.feature_side}")
    return 0


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main)
