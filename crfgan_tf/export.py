"""`python -m crfgan_tf.export`: the command of crfgan_tf/cli/export.py (console script crfgan-export)."""

from crfgan_tf.cli.export import run

if __name__ == "__main__":
    run()
