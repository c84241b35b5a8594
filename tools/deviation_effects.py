"""`python -m tools.deviation_effects`: crfgan-deviation-effects, the command of crfgan_tf/cli/deviation_effects.py
(crfgan_tf/cli/registry.py)."""

from crfgan_tf.cli.deviation_effects import run

if __name__ == "__main__":
    run()
