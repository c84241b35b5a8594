"""`python -m data_prep.make_phantoms`: crfgan-make-phantoms, the command of crfgan_tf/cli/make_phantoms.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.make_phantoms import run

if __name__ == "__main__":
    run()
