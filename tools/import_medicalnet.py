"""`python -m tools.import_medicalnet` from the checkout: the command of crfgan_tf/cli/import_medicalnet.py (console
script crfgan-import-medicalnet)."""

from crfgan_tf.cli.import_medicalnet import run

if __name__ == "__main__":
    run()
