"""`python -m tools.make_2afc` from the checkout: the command of crfgan_tf/cli/make_2afc.py (console
script crfgan-make-2afc)."""

from crfgan_tf.cli.make_2afc import run

if __name__ == "__main__":
    run()
