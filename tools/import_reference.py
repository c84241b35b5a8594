"""`python -m tools.import_reference`: crfgan-import-reference, the command of crfgan_tf/cli/import_reference.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.import_reference import run

if __name__ == "__main__":
    run()
