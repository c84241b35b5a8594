"""`python -m data_prep.luna16_labels` from the checkout: the command of crfgan_tf/cli/luna16_labels.py (console
script crfgan-luna16-labels)."""

from crfgan_tf.cli.luna16_labels import run

if __name__ == "__main__":
    run()
