"""`python -m data_prep.lidc_labels` from the checkout: the command of crfgan_tf/cli/lidc_labels.py (console
script crfgan-lidc-labels)."""

from crfgan_tf.cli.lidc_labels import run

if __name__ == "__main__":
    run()
