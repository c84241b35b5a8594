"""`python -m data_prep.make_phantoms` from the checkout: the command of crfgan_tf/cli/make_phantoms.py (console
script crfgan-make-phantoms)."""

from crfgan_tf.cli.make_phantoms import run

if __name__ == "__main__":
    run()
