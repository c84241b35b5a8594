"""`python -m tools.make_2afc`: crfgan-make-2afc, the command of crfgan_tf/cli/make_2afc.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.make_2afc import run

if __name__ == "__main__":
    run()
