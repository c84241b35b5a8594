"""`python -m data_prep.convert` from the checkout: the command of crfgan_tf/cli/convert.py (console
script crfgan-convert)."""

from crfgan_tf.cli.convert import run

if __name__ == "__main__":
    run()
