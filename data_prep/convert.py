"""`python -m data_prep.convert`: crfgan-convert, the command of crfgan_tf/cli/convert.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.convert import run

if __name__ == "__main__":
    run()
