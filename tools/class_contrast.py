"""`python -m tools.class_contrast`: crfgan-class-contrast, the command of crfgan_tf/cli/class_contrast.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.class_contrast import run

if __name__ == "__main__":
    run()
