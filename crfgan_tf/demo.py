"""The embedded default data behind `make demo` and configs/demo.flags: phantom chest CTs,
converted to TFRecords. Each stage is skipped when its output exists."""

from __future__ import annotations

import os

from crfgan_tf import convert, phantom

# Small enough for a few minutes on 2 CPU cores, large enough to look like a chest CT.
DEMO_SPEC = phantom.PhantomSpec(in_plane=128, num_slices=72, spacing_zyx=(2.5, 2.8, 2.8),
                                blank_slices=2)
DEMO_SCANS = 12


def prepare_demo_data(work_dir: str, size: int = 64, log=print) -> str:
    """Writes the phantom archive and converts it; returns the records directory
    (`work_dir/records_{size}`)."""
    archive = os.path.join(work_dir, "phantoms")
    records_dir = os.path.join(work_dir, f"records_{size}")
    if not os.path.isdir(archive) or not convert.discover_scans(archive, "luna16"):
        paths = phantom.make_luna_archive(archive, DEMO_SCANS, DEMO_SPEC, seed=0)
        log(f"demo: wrote {len(paths)} phantom CT scans to {archive}")
    summary = convert.run_conversion(convert.ConvertConfig(
        dataset="luna16", input_dir=archive, output_dir=records_dir, size=size,
        num_shards=4, val_fraction=0.17, workers=2), log=log)
    if summary["failed"]:
        raise RuntimeError(f"demo conversion failed for {summary['failed']} scans")
    return records_dir
