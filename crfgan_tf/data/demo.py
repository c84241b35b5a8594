"""The embedded default data behind `make demo` and configs/demo.flags: phantom chest CTs,
converted to TFRecords. Each stage is skipped when its output exists. With nodules (for
configs/demo_conditional.flags) half of the phantoms get lung nodules, labelled from their
annotations.csv as LUNA16's are (data_prep.luna16_labels)."""

from __future__ import annotations

import os

from crfgan_tf.data import convert, labels, phantom, preprocess

# Small enough for a few minutes on 2 CPU cores, large enough to look like a chest CT.
DEMO_SPEC = phantom.PhantomSpec(in_plane=128, num_slices=72, spacing_zyx=(2.5, 2.8, 2.8),
                                blank_slices=2)
# 36 phantoms: 32 train and 4 val (DEMO_VAL_FRACTION); the family's variety
# (phantom.family_variety) is docs/data.md's figure.
DEMO_SCANS = 36
DEMO_VAL_FRACTION = 0.1  # round(36 * 0.1) = 4 val scans
# At 64^3 a voxel of the demo is about 5.6 mm: nodules of 12-30 mm span 2-5 voxels.
DEMO_NODULE_DIAMETER_MM = (12.0, 30.0)


def prepare_demo_data(work_dir: str, size: int = 64, log=print, nodules: bool = False) -> str:
    """Writes the phantom archive and converts it; returns the records directory
    (`work_dir/records_{size}`). nodules: the labelled variant (label 1 = a nodule)."""
    archive = os.path.join(work_dir, "phantoms")
    records_dir = os.path.join(work_dir, f"records_{size}")
    if not os.path.isdir(archive) or not convert.discover_scans(archive, "luna16"):
        paths = phantom.make_luna_archive(archive, DEMO_SCANS, DEMO_SPEC, seed=0,
                                          nodules=nodules,
                                          nodule_diameter_mm=DEMO_NODULE_DIAMETER_MM)
        log(f"demo: wrote {len(paths)} phantom CT scans to {archive}")
    labels_csv = ""
    if nodules:
        labels_csv = os.path.join(work_dir, "labels.csv")
        case_ids = [preprocess.case_id_from_path(p)
                    for p in convert.discover_scans(archive, "luna16")]
        table = labels.luna16_labels(
            labels.read_luna_annotations(os.path.join(archive, "annotations.csv")), case_ids)
        labels.write_labels_csv(labels_csv, table, labels.LUNA_CLASS_NAMES)
    summary = convert.run_conversion(convert.ConvertConfig(
        dataset="luna16", input_dir=archive, output_dir=records_dir, size=size,
        num_shards=4, val_fraction=DEMO_VAL_FRACTION, workers=2, labels_csv=labels_csv), log=log)
    if summary["failed"]:
        raise RuntimeError(f"demo conversion failed for {summary['failed']} scans")
    return records_dir
