r"""Features of real volumes from a model's own encoder: per case the pooled hE embedding
(and HA-GAN's latent z) and the reconstruction error of G2(hE(x)) in HU, one .npz keyed
by case id (crfgan-downstream --features probes it).

  python -m tools.encode --saved_model=exports/luna256 \
      --records='data/luna16_256/val-*.tfrecord' --output=features_val.npz

--records takes a TFRecord glob (case ids and labels from the records); --scans a folder
or glob of NIfTI / MetaImage / NRRD / .npy files (case id: the file stem; scans not at the
model's size are preprocessed as the conversion does). The SavedModel must come from an
export with the `encode` signature (any export of this version; older ones: export again).
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.encode: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.encode").run())

import json

from absl import flags

from crfgan_tf.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "An export of crfgan_tf.export (CRF-GAN or HA-GAN).")
flags.DEFINE_string("records", None, "Real volumes: TFRecord glob (comma-separated globs).")
flags.DEFINE_string("scans", None, "Real volumes: folder / glob of NIfTI, MetaImage, NRRD or "
                    ".npy files (instead of --records).")
flags.DEFINE_string("output", None, "The .npz to write (case_ids, labels, features, "
                    "reconstruction_mae/_rmse, meta; latent for HA-GAN).")
flags.DEFINE_integer("batch_size", 1, "Volumes per encoder call.")
flags.DEFINE_bool("save_embeddings", False, "Also store each whole embedding (float16; "
                  "(S/4)^3 x 64 values per case: 32 MiB at 256^3).")
flags.DEFINE_bool("json", False, "Print one JSON object (the file's meta).")
flags.mark_flags_as_required(["saved_model", "output"])
flags.register_validator("batch_size", lambda v: v >= 1, "--batch_size must be >= 1")
flags.register_validator("output", lambda v: v.endswith(".npz"), "--output must end in .npz")
flags.register_multi_flags_validator(
    ["records", "scans"], lambda f: bool(f["records"]) != bool(f["scans"]),
    "give exactly one of --records and --scans")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Input": "saved_model records scans",
    "Output": "output save_embeddings json",
    "Running": "batch_size",
}
EXAMPLE = ("crfgan-encode --saved_model=exports/luna256 "
           "--records='data/luna16_256/val-*.tfrecord' --output=results/features.npz")


@common.command()
def main(argv):
    del argv
    import os

    from crfgan_tf.data import records
    from crfgan_tf.evaluation import encoding, sources
    from crfgan_tf.utils import fileio

    log = common.log if FLAGS.json else common.say
    fileio.ensure_output_dir(os.path.dirname(os.path.abspath(FLAGS.output)), "--output")
    encoder = encoding.load_encoder(FLAGS.saved_model)
    module = encoder[0]
    size = int(module.img_size.numpy())
    if FLAGS.records:
        try:
            count = records.count_records(records.list_record_files(FLAGS.records))
        except (FileNotFoundError, records.RecordsError) as err:
            raise sources.EvaluationError(f"--records: {err}") from None
        cases, source = sources.record_cases(FLAGS.records), FLAGS.records
    else:
        window = [float(v) for v in module.window.numpy()]
        paths = sources.scan_paths(FLAGS.scans)
        count, cases, source = len(paths), sources.scan_cases(paths, size, window), FLAGS.scans
    info = encoding.encode_cases(encoder, cases, count, FLAGS.output, source,
                                 FLAGS.batch_size, FLAGS.save_embeddings, log)
    if FLAGS.json:
        print(json.dumps(info))
        return 0
    print(f"encode: {info['cases']} cases -> {FLAGS.output}; features: {info['features']}; "
          f"reconstruction G2(hE(x)) - x: mean abs {info['reconstruction_mae_mean']:.1f}, "
          f"rms {info['reconstruction_rmse_mean']:.1f} {info['reconstruction_units']}")
    return 0


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main)
