"""`python -m data_prep.lidc_labels`: crfgan-lidc-labels, the command of crfgan_tf/cli/lidc_labels.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.lidc_labels import run

if __name__ == "__main__":
    run()
