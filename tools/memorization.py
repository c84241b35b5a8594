"""`python -m tools.memorization` from the checkout: the command of crfgan_tf/cli/memorization.py (console
script crfgan-memorization)."""

from crfgan_tf.cli.memorization import run

if __name__ == "__main__":
    run()
