r"""Is the synthetic data useful? A scan-level classification study on held-out real scans
(arms: real only, real + k x synthetic, synthetic only, and a real-data curve), and with
--features a logistic-regression probe of a model's encoder features against MedicalNet's.

  python -m tools.downstream --saved_model=exports/luna256_cond \
      --train_records='data/luna16_256/train-*.tfrecord' \
      --test_records='data/luna16_256/val-*.tfrecord' --output_dir=studies/downstream

The labels are the records' (converted with --labels_csv) or --labels_csv's; the target is
--positive_class against the rest. The test scans must be ones the generator never saw
(checked against the export's training cases). Writes downstream.json and downstream.png.
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.downstream: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.downstream").run())

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.core.geometry import FEATURE_SIDE

FLAGS = flags.FLAGS
# data
flags.DEFINE_string("train_records", None, "Real training scans (TFRecord glob), labelled.")
flags.DEFINE_string("test_records", None, "Held-out real test scans (TFRecord glob), labelled; "
                    "never seen by the generator.")
flags.DEFINE_string("labels_csv", "", "case_id,label CSV overriding the records' labels.")
flags.DEFINE_integer("positive_class", 1, "The class to detect (against all others).")
# synthetic data
flags.DEFINE_string("saved_model", "", "The generator (export of crfgan_tf.export): runs the "
                    "classification study.")
flags.DEFINE_list("synthetic_ratios", ["0.5", "1", "2", "5"],
                  "Arms real + k x synthetic, k as many synthetic volumes as real scans.")
flags.DEFINE_enum("synthetic_labels", "class", ["class", "real_classifier"],
                  "How synthetic volumes get labels: 'class' (a conditional model's class) or "
                  "'real_classifier' (an unconditional model's volumes labelled by the "
                  "real-only classifier of the same seed).")
flags.DEFINE_integer("sample_seed", 0, "Synthetic volume i uses latent (sample_seed, i).")
flags.DEFINE_integer("generate_batch_size", 1, "Volumes per generator call.")
flags.DEFINE_string("generator_train_records", "", "The generator's training records, when "
                    "its export does not list its training cases (older exports).")
# the classifier
flags.DEFINE_list("real_fractions", ["0.25", "0.5"],
                  "Real-data curve: arms with these fractions of the real scans.")
flags.DEFINE_integer("seeds", 3, "Seeds per arm (initial weights, batches, augmentation).")
flags.DEFINE_integer("steps", 400, "Training steps per classifier (every arm alike).")
flags.DEFINE_integer("batch_size", 8, "Classifier batch size.")
flags.DEFINE_float("learning_rate", 1e-3, "Classifier Adam learning rate.")
flags.DEFINE_integer("input_size", 64, "Classifier input side: volumes are averaged over "
                     "blocks down to input_size^3.")
flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples of the test set for the AUC CI.")
# the probe
flags.DEFINE_string("features", "", "crfgan-encode output for the train and test cases: "
                    "runs the logistic-regression probe (vs MedicalNet features).")
flags.DEFINE_string("weights", "", "MedicalNet ResNet-50 .npz (tools.import_medicalnet) for "
                    "the probe's comparison.")
flags.DEFINE_bool("allow_random_features", False, "Without --weights, the probe compares with "
                  "a fixed-seed random ResNet-50 (labelled as such).")
flags.DEFINE_integer("feature_side", FEATURE_SIDE, "MedicalNet's input side in the probe. "
                     + common.FEATURE_SIDE_HELP)
flags.DEFINE_float("probe_l2", 1.0, "L2 penalty of the logistic regression (standardised "
                   "features).")
# output
flags.DEFINE_string("output_dir", None, "Where downstream.json and downstream.png go.")
flags.mark_flags_as_required(["train_records", "test_records", "output_dir"])


def _floats(values, flag):
    from crfgan_tf.evaluation.sources import EvaluationError

    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise EvaluationError(f"--{flag} must be numbers, got {values}") from None


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Data": "train_records test_records labels_csv positive_class generator_train_records",
    "Synthetic data": "saved_model synthetic_ratios synthetic_labels sample_seed "
                      "generate_batch_size",
    "Study": "real_fractions seeds bootstrap",
    "Classifier": "steps batch_size learning_rate input_size",
    "Feature probe": "features weights allow_random_features feature_side probe_l2",
    "Output": "output_dir",
}
EXAMPLE = ("crfgan-downstream --saved_model=exports/luna256_cond "
           "--train_records='data/luna16_256_labelled/train-*.tfrecord' "
           "--test_records='data/luna16_256_labelled/val-*.tfrecord' "
           "--output_dir=results/downstream")


@common.command()
def main(argv):
    del argv
    from crfgan_tf.studies import downstream

    config = downstream.StudyConfig(
        train_records=FLAGS.train_records, test_records=FLAGS.test_records,
        output_dir=FLAGS.output_dir, saved_model=FLAGS.saved_model, features=FLAGS.features,
        labels_csv=FLAGS.labels_csv, positive_class=FLAGS.positive_class,
        synthetic_ratios=_floats(FLAGS.synthetic_ratios, "synthetic_ratios"),
        real_fractions=_floats(FLAGS.real_fractions, "real_fractions"), seeds=FLAGS.seeds,
        steps=FLAGS.steps, batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
        input_size=FLAGS.input_size, sample_seed=FLAGS.sample_seed,
        synthetic_labels=FLAGS.synthetic_labels,
        generator_train_records=FLAGS.generator_train_records, bootstrap=FLAGS.bootstrap,
        weights=FLAGS.weights, allow_random_features=FLAGS.allow_random_features,
        feature_side=FLAGS.feature_side,
        probe_l2=FLAGS.probe_l2, generate_batch_size=FLAGS.generate_batch_size)
    result = downstream.run_study(config, log=common.log)
    if "arms" in result:
        print(f"{'arm':<12} {'real':>5} {'synth':>6}  AUC mean +- sd (per-seed 95 % CI)  "
              "balanced acc.  real-data equivalent")
        for arm in result["arms"]:
            cis = " ".join(f"[{r['auc_ci'][0]:.2f},{r['auc_ci'][1]:.2f}]" for r in arm["runs"])
            eq = result["real_data_equivalent"].get(arm["name"])
            eq_text = "" if eq is None else (f"{eq['real_scans']:g} real scans"
                                              if eq["real_scans"] is not None else eq["note"])
            print(f"{arm['name']:<12} {arm['real']:>5} {arm['synthetic']:>6}  "
                  f"{arm['auc_mean']:.3f} +- {arm['auc_sd']:.3f} {cis}  "
                  f"{arm['balanced_accuracy_mean']:.3f}  {eq_text}")
    for probe in result.get("probe", {}).get("probes", []):
        print(f"probe {probe['features']}: AUC {probe['auc']:.3f} [{probe['auc_ci'][0]:.3f}, "
              f"{probe['auc_ci'][1]:.3f}], balanced accuracy {probe['balanced_accuracy']:.3f}")
    return 0


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main)
