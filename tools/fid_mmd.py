"""`python -m tools.fid_mmd` from the checkout: the command of crfgan_tf/cli/fid_mmd.py (console
script crfgan-fid-mmd)."""

from crfgan_tf.cli.fid_mmd import run

if __name__ == "__main__":
    run()
