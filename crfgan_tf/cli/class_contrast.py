r"""How a conditional model's classes differ, measured without a network: the lung
fraction and the dense (soft-tissue) structures within the lungs (crfgan_tf/evaluation/physical.py)
of its samples of each class, with the same latents for every class, next to the real
volumes of each class.

  python -m tools.class_contrast --saved_model=exports/luna256_cond \
      --records='data/luna16_256_labelled/*.tfrecord' --num_samples=32 --seed=0
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.class_contrast: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.class_contrast").run())

import json

from absl import flags

from crfgan_tf.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "A conditional export of crfgan_tf.export.")
flags.DEFINE_string("records", None, "Labelled TFRecords (glob) of the real volumes.")
flags.DEFINE_integer("num_samples", 32, "Samples per class (sample i of every class uses z "
                     "from (seed, i)).")
flags.DEFINE_integer("seed", 0, "Latent seed.")
flags.DEFINE_bool("json", False, "Print one JSON object.")
flags.mark_flags_as_required(["saved_model", "records"])
flags.register_validator("num_samples", lambda v: v >= 2, "--num_samples must be >= 2")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Input": "saved_model records",
    "Sampling": "num_samples seed",
    "Output": "json",
}
EXAMPLE = ("crfgan-class-contrast --saved_model=exports/luna256_cond "
           "--records='data/luna16_256_labelled/val-*.tfrecord' --num_samples=32")


@common.command()
def main(argv):
    del argv
    from crfgan_tf.evaluation import physical

    out = physical.class_contrast(FLAGS.saved_model, FLAGS.records, FLAGS.num_samples,
                                  FLAGS.seed, log=common.log)
    if FLAGS.json:
        print(json.dumps(out))
        return 0
    fmt = lambda s: f"{s['mean']:.4f} +- {s['sd']:.4f} (n={s['n']})"
    for k, name in enumerate(out["classes"]):
        for source in ("real", "generated"):
            stats = out[source].get(k)
            if stats:
                print(f"class {k} ({name}) {source:9s}: " + "; ".join(
                    f"{stat} {fmt(v)}" for stat, v in stats.items()))
        if k in out["paired"]:
            print(f"class {k} - class 0, same z: " + "; ".join(
                f"{stat} {v['mean']:+.4f} +- {v['sd']:.4f}, larger in {v['larger']:.0%}"
                for stat, v in out["paired"][k].items()))
    return 0


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main)
