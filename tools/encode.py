"""`python -m tools.encode` from the checkout: the command of crfgan_tf/cli/encode.py (console
script crfgan-encode)."""

from crfgan_tf.cli.encode import run

if __name__ == "__main__":
    run()
