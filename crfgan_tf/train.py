"""`python -m crfgan_tf.train`: crfgan-train, the command of crfgan_tf/cli/train.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.train import run

if __name__ == "__main__":
    run()
