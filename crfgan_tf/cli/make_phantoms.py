r"""Writes a LUNA16-like archive of synthetic chest-CT phantoms (`subsetK/<uid>.mhd/.raw`),
or with --format=dicom one DICOM series per phantom (`caseK/`, one file per slice).

  python -m data_prep.make_phantoms --output_dir=data/phantoms --num_scans=8 \
      --in_plane=128 --num_slices=80 [--nodules]
  python -m data_prep.make_phantoms --output_dir=data/phantoms_dicom --format=dicom
"""

if __name__ == "__main__":  # python -m crfgan_tf.cli.make_phantoms: run the module as imported
    from importlib import import_module

    raise SystemExit(import_module("crfgan_tf.cli.make_phantoms").run())

import sys

from absl import flags

from crfgan_tf.cli import common
from crfgan_tf.data import phantom

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Archive root to create.")
flags.DEFINE_integer("num_scans", 8, "Number of scans.")
flags.DEFINE_integer("in_plane", 512, "Rows and columns per axial slice (>= 16).")
flags.DEFINE_integer("num_slices", 300, "Axial slices per scan (varies by +-10%).")
flags.DEFINE_float("slice_thickness", 2.5, "Axial spacing in mm.")
flags.DEFINE_float("pixel_spacing", 0.7, "In-plane spacing in mm at 512 columns; scaled for smaller sizes.")
flags.DEFINE_integer("seed", 0, "Base seed; scan i uses seed + i.")
flags.DEFINE_bool("nodules", False, "Draw 1-3 solid lung nodules in half of the scans and write "
                  "LUNA16's annotations.csv beside the subsets (for conditional training).")
flags.DEFINE_list("nodule_diameter_mm", ["4", "30"], "min,max nodule diameter in mm.")
flags.DEFINE_enum("format", "mhd", ["mhd", "dicom"], "MetaImage files like LUNA16, or DICOM "
                  "series (without --nodules).")
flags.mark_flag_as_required("output_dir")
flags.register_validator("in_plane", lambda v: v >= 16, message="--in_plane must be >= 16")
flags.register_validator("num_slices", lambda v: v >= 16, message="--num_slices must be >= 16")
flags.register_validator("num_scans", lambda v: v >= 1, message="--num_scans must be >= 1")


# --help (crfgan_tf/cli/helptext.py): every flag above, by group, then the example
HELP_GROUPS = {
    "Phantoms": "num_scans in_plane num_slices slice_thickness pixel_spacing seed nodules "
                "nodule_diameter_mm",
    "Output": "output_dir format",
}
EXAMPLE = "crfgan-make-phantoms --output_dir=phantoms --num_scans=8"


@common.command()
def main(argv):
    del argv
    spec = phantom.PhantomSpec(
        in_plane=FLAGS.in_plane, num_slices=FLAGS.num_slices,
        spacing_zyx=(FLAGS.slice_thickness, FLAGS.pixel_spacing * 512 / FLAGS.in_plane,
                     FLAGS.pixel_spacing * 512 / FLAGS.in_plane))
    try:
        low, high = (float(v) for v in FLAGS.nodule_diameter_mm)
        if not 0 < low <= high:
            raise ValueError
    except ValueError:
        raise common.CommandError(f"--nodule_diameter_mm must be min,max with 0 < min <= max, "
                                  f"got {FLAGS.nodule_diameter_mm}") from None
    if FLAGS.format == "dicom":
        if FLAGS.nodules:
            raise common.CommandError("--nodules writes LUNA16's annotations.csv: use "
                                      "--format=mhd")
        from crfgan_tf.data import dicom_write

        folders = dicom_write.write_phantom_archive(FLAGS.output_dir, FLAGS.num_scans, spec,
                                                    FLAGS.seed)
        print(f"make_phantoms: wrote {len(folders)} DICOM series to {FLAGS.output_dir}",
              file=sys.stderr)
        return 0
    paths = phantom.make_luna_archive(FLAGS.output_dir, FLAGS.num_scans, spec, seed=FLAGS.seed,
                                      nodules=FLAGS.nodules, nodule_diameter_mm=(low, high))
    print(f"make_phantoms: wrote {len(paths)} scans to {FLAGS.output_dir}"
          + (" and annotations.csv" if FLAGS.nodules else ""), file=sys.stderr)


def run():
    """The command (console script, python -m shim)."""
    common.run_command(main, load_tensorflow=False)
