"""`python -m crfgan_tf.sample`: crfgan-sample, the command of crfgan_tf/cli/sample.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.sample import run

if __name__ == "__main__":
    run()
