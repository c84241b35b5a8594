"""`python -m tools.deviation_effects` from the checkout: the command of crfgan_tf/cli/deviation_effects.py (console
script crfgan-deviation-effects)."""

from crfgan_tf.cli.deviation_effects import run

if __name__ == "__main__":
    run()
