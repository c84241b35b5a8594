"""`python -m tools.memorization`: crfgan-memorization, the command of crfgan_tf/cli/memorization.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.memorization import run

if __name__ == "__main__":
    run()
