"""`python -m tools.class_contrast` from the checkout: the command of crfgan_tf/cli/class_contrast.py (console
script crfgan-class-contrast)."""

from crfgan_tf.cli.class_contrast import run

if __name__ == "__main__":
    run()
