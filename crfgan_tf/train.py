"""`python -m crfgan_tf.train`: the command of crfgan_tf/cli/train.py (console script crfgan-train)."""

from crfgan_tf.cli.train import run

if __name__ == "__main__":
    run()
