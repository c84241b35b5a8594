"""Makes tests/fixtures/v0.x/: a tiny run directory and its SavedModel, written by the
code of one commit, so that later code must resume and sample them as they are
(tests/run/test_formats.py). Only commands are used, so this script runs at any commit.

  python tests/support/format_fixtures.py OUT_DIR

OUT_DIR gets run/ (config.json, flags.txt, data.json, checkpoints/ckpt-2.*), export/
(the SavedModel) and expected_sample.npy (sample 0, seed 0, every 8th voxel). The
training records are not kept: the test makes them again with the same command
(phantoms with seed 10), and the run names them relatively (records/train-*.tfrecord),
so it resumes from any folder that holds run/ and records/.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PHANTOMS = ["--num_scans=5", "--in_plane=48", "--num_slices=32", "--seed=10"]
CONVERT = ["--dataset=luna16", "--size=64", "--num_shards=2", "--val_fraction=0.2",
           "--workers=1", "--seed=3"]
TRAIN = ["--model_dir=run", "--train_records=records/train-*.tfrecord", "--img_size=64",
         "--batch_size=2", "--train_steps=2", "--latent_dim=16", "--width=0.0625",
         "--log_every=1", "--checkpoint_every=2", "--image_every=100", "--seed=1"]


def command(cwd, module, *args):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, check=True)


def make_records(work):
    """The phantom archive and its 64^3 records under work/records (as the run names them)."""
    command(REPO, "data_prep.make_phantoms", f"--output_dir={work}/archive", *PHANTOMS)
    command(REPO, "data_prep.convert", f"--input_dir={work}/archive",
            f"--output_dir={work}/records", *CONVERT)


def main(out):
    work = tempfile.mkdtemp()
    make_records(work)
    command(work, "crfgan_tf.train", *TRAIN)
    command(work, "crfgan_tf.export", "--model_dir=run", "--export_dir=export")
    command(work, "crfgan_tf.sample", "--saved_model=export", "--num_samples=1", "--seed=0",
            "--output_dir=samples", "--format=npy")
    os.makedirs(out, exist_ok=True)
    run = os.path.join(out, "run")
    shutil.copytree(os.path.join(work, "run"), run,
                    ignore=shutil.ignore_patterns("events.*", "train", "eval", "*.lock"))
    shutil.copytree(os.path.join(work, "export"), os.path.join(out, "export"))
    sample = [f for f in sorted(os.listdir(os.path.join(work, "samples"))) if f.endswith(".npy")][0]
    volume = np.load(os.path.join(work, "samples", sample))
    np.save(os.path.join(out, "expected_sample.npy"), volume[::8, ::8, ::8])
    shutil.rmtree(work)


if __name__ == "__main__":
    main(sys.argv[1])
