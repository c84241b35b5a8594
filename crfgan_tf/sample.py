"""`python -m crfgan_tf.sample`: the command of crfgan_tf/cli/sample.py (console script crfgan-sample)."""

from crfgan_tf.cli.sample import run

if __name__ == "__main__":
    run()
