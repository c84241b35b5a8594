"""`python -m tools.fid_mmd`: crfgan-fid-mmd, the command of crfgan_tf/cli/fid_mmd.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.fid_mmd import run

if __name__ == "__main__":
    run()
