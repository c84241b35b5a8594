"""`python -m tools.import_reference` from the checkout: the command of crfgan_tf/cli/import_reference.py (console
script crfgan-import-reference)."""

from crfgan_tf.cli.import_reference import run

if __name__ == "__main__":
    run()
