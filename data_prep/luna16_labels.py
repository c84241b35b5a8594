"""`python -m data_prep.luna16_labels`: crfgan-luna16-labels, the command of crfgan_tf/cli/luna16_labels.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.luna16_labels import run

if __name__ == "__main__":
    run()
