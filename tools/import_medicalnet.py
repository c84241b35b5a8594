"""`python -m tools.import_medicalnet`: crfgan-import-medicalnet, the command of crfgan_tf/cli/import_medicalnet.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.import_medicalnet import run

if __name__ == "__main__":
    run()
