"""`python -m crfgan_tf.export`: crfgan-export, the command of crfgan_tf/cli/export.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.export import run

if __name__ == "__main__":
    run()
